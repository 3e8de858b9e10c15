//! Environment secrets at rest: every value is sealed with
//! XChaCha20-Poly1305 under a 32-byte key the store is opened with
//! ([`crate::StoreOptions::secret_key`]); where the key comes from is the
//! caller's business (`kiln serve` keeps it in `DATA/secret.key`).
//!
//! The `environments.secrets_json` column holds one of two forms:
//!
//! - `{"NAME": "value", …}`: plaintext, as written before encryption
//!   existed (or by a store opened without a key). A JSON object always
//!   starts with `{`, so it can never be mistaken for the form below.
//! - `v1:{"key_id": "…", "values": {"NAME": "<base64 of nonce ‖ ciphertext>"}}`:
//!   each value sealed on its own with a fresh random 24-byte nonce, the
//!   associated data binding it to its environment id and its name. The
//!   `v1:` prefix names the scheme so a later one can sit beside it.
//!
//! Values are sealed one by one rather than as one blob so that the names,
//! which the API shows, stay readable without the key: listing environments
//! never decrypts anything, and a wrong key only affects the setup script
//! that needs the values. `key_id` (a hash of the key, which reveals nothing
//! about it) tells "this is another key" apart from "this value was altered
//! or moved", so each gets an error that says what to do.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand::{RngCore, TryRngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::StoreError;

/// Bytes in a [`SecretKey`].
pub const SECRET_KEY_LEN: usize = 32;

const NONCE_LEN: usize = 24;
const V1_PREFIX: &str = "v1:";
const DEFAULT_RECOVERY_HINT: &str = "open the store with the key they were stored with";

/// The key environment secrets are sealed with. `Debug` shows only its id.
#[derive(Clone)]
pub struct SecretKey {
    bytes: [u8; SECRET_KEY_LEN],
    /// Said after "the secret key does not match …": how the operator gets
    /// the right key back, in the terms of whoever supplied this one.
    recovery_hint: Arc<str>,
}

/// A key given as text could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("{origin} is not a secret key: {reason}; write 32 bytes as 64 hex digits or as base64 (44 characters), e.g. the output of `openssl rand -hex 32`")]
    Malformed { origin: String, reason: String },
    #[error("cannot generate a secret key: the operating system's random source failed: {0}")]
    Random(String),
}

impl SecretKey {
    pub fn from_bytes(bytes: [u8; SECRET_KEY_LEN]) -> SecretKey {
        SecretKey {
            bytes,
            recovery_hint: Arc::from(DEFAULT_RECOVERY_HINT),
        }
    }

    /// A new random key from the operating system's CSPRNG.
    pub fn generate() -> Result<SecretKey, SecretKeyError> {
        let mut bytes = [0u8; SECRET_KEY_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| SecretKeyError::Random(e.to_string()))?;
        Ok(SecretKey::from_bytes(bytes))
    }

    /// Reads a key written as 64 hex digits or as base64 (padded or not);
    /// surrounding whitespace is ignored. `origin` names where the text came
    /// from (`KILN_SECRET_KEY`, a file) in the error.
    pub fn parse(text: &str, origin: &str) -> Result<SecretKey, SecretKeyError> {
        let text = text.trim();
        let malformed = |reason: String| SecretKeyError::Malformed {
            origin: origin.to_string(),
            reason,
        };
        if text.is_empty() {
            return Err(malformed("it is empty".into()));
        }
        if text.len() == 2 * SECRET_KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut bytes = [0u8; SECRET_KEY_LEN];
            for (i, byte) in bytes.iter_mut().enumerate() {
                // Every character was checked to be a hex digit above.
                *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                    .map_err(|e| malformed(e.to_string()))?;
            }
            return Ok(SecretKey::from_bytes(bytes));
        }
        let decoded = STANDARD
            .decode(text)
            .or_else(|_| STANDARD_NO_PAD.decode(text))
            .map_err(|_| {
                malformed(format!(
                    "its {} characters are neither 64 hex digits nor base64",
                    text.chars().count()
                ))
            })?;
        let bytes: [u8; SECRET_KEY_LEN] = decoded.as_slice().try_into().map_err(|_| {
            malformed(format!(
                "it is base64 of {} bytes, not {SECRET_KEY_LEN}",
                decoded.len()
            ))
        })?;
        Ok(SecretKey::from_bytes(bytes))
    }

    /// What the error for a mismatching key tells the operator to do, e.g.
    /// "restore DATA/secret.key or set KILN_SECRET_KEY".
    pub fn with_recovery_hint(mut self, hint: impl Into<String>) -> SecretKey {
        self.recovery_hint = Arc::from(hint.into());
        self
    }

    /// The key as 64 lowercase hex digits (what [`SecretKey::parse`] reads).
    pub fn to_hex(&self) -> String {
        self.bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A short public name of the key: 16 hex digits of a hash of it. Two
    /// keys with the same id are the same key.
    pub fn id(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"kiln secret key id\0")
            .chain_update(self.bytes)
            .finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn recovery_hint(&self) -> &str {
        &self.recovery_hint
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.bytes.into())
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// The JSON after `v1:`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedV1 {
    key_id: String,
    values: BTreeMap<String, String>,
}

/// What a sealed column holds. Each kind seals under its own associated
/// data, so a value moved from one column to the other in the database
/// fails to open: a repository URL's credential never turns into a
/// variable of the setup script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sealed {
    /// `environments.secrets_json`: the setup script's variables.
    SetupSecrets,
    /// `environments.repo_credential`: the credential split out of `repo`
    /// (`repo_url.rs`), for the server's own git only.
    RepoCredential,
    /// `environments.webhook_secret`: signs outgoing webhooks, server only.
    WebhookSecret,
}

impl Sealed {
    fn domain(self) -> &'static [u8] {
        match self {
            Sealed::SetupSecrets => b"kiln environment secret v1\0",
            Sealed::RepoCredential => b"kiln repository credential v1\0",
            Sealed::WebhookSecret => b"kiln webhook secret v1\0",
        }
    }
}

/// The associated data of one value: what it is, its environment and its
/// name, so a sealed value copied to another environment, column or name in
/// the database fails to open instead of being handed to the wrong setup.
fn associated_data(kind: Sealed, environment_id: &str, name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(40 + environment_id.len() + name.len());
    aad.extend_from_slice(kind.domain());
    aad.extend_from_slice(environment_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// The column text for `secrets` of `environment_id`. Without secrets the
/// column is `{}` whatever the key: there is nothing to protect, and an
/// environment without secrets keeps working under any key.
pub(crate) fn seal(
    key: Option<&SecretKey>,
    environment_id: &str,
    secrets: &BTreeMap<String, String>,
) -> Result<String, StoreError> {
    seal_as(Sealed::SetupSecrets, key, environment_id, secrets)
}

/// [`seal`] for a column of another kind.
pub(crate) fn seal_as(
    kind: Sealed,
    key: Option<&SecretKey>,
    environment_id: &str,
    secrets: &BTreeMap<String, String>,
) -> Result<String, StoreError> {
    if secrets.is_empty() {
        return Ok("{}".to_string());
    }
    let key = key.ok_or(StoreError::NoSecretKey)?;
    let cipher = key.cipher();
    let mut rng = rand::rng();
    let mut values = BTreeMap::new();
    for (name, value) in secrets {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let aad = associated_data(kind, environment_id, name);
        let ciphertext = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| StoreError::corrupt("environment secrets", "sealing a value failed"))?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        values.insert(name.clone(), STANDARD.encode(sealed));
    }
    let body = serde_json::to_string(&SealedV1 {
        key_id: key.id(),
        values,
    })
    .map_err(|e| StoreError::corrupt("environment secrets", e))?;
    Ok(format!("{V1_PREFIX}{body}"))
}

/// The secret names of a stored column, without the key.
pub(crate) fn names(stored: &str) -> Result<Vec<String>, StoreError> {
    Ok(match stored.strip_prefix(V1_PREFIX) {
        Some(body) => parse_v1(body)?.values.into_keys().collect(),
        None => parse_plaintext(stored)?.into_keys().collect(),
    })
}

/// The key a sealed column was stored with, or `None` for plaintext.
pub(crate) fn key_id(stored: &str) -> Result<Option<String>, StoreError> {
    match stored.strip_prefix(V1_PREFIX) {
        Some(body) => Ok(Some(parse_v1(body)?.key_id)),
        None => Ok(None),
    }
}

/// The values of a stored column: plaintext as it is, sealed ones opened
/// with `key`.
pub(crate) fn open(
    key: Option<&SecretKey>,
    environment_id: &str,
    stored: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    open_as(Sealed::SetupSecrets, key, environment_id, stored)
}

/// [`open`] for a column of another kind.
pub(crate) fn open_as(
    kind: Sealed,
    key: Option<&SecretKey>,
    environment_id: &str,
    stored: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    let Some(body) = stored.strip_prefix(V1_PREFIX) else {
        return parse_plaintext(stored);
    };
    let sealed = parse_v1(body)?;
    let key = key.ok_or(StoreError::NoSecretKey)?;
    if sealed.key_id != key.id() {
        return Err(StoreError::SecretKeyMismatch {
            environment_id: environment_id.to_string(),
            hint: key.recovery_hint().to_string(),
        });
    }
    let cipher = key.cipher();
    let mut values = BTreeMap::new();
    for (name, encoded) in sealed.values {
        let tampered = || StoreError::SecretTampered {
            environment_id: environment_id.to_string(),
            name: name.clone(),
        };
        let bytes = STANDARD.decode(&encoded).map_err(|_| tampered())?;
        if bytes.len() < NONCE_LEN {
            return Err(tampered());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| tampered())?;
        let aad = associated_data(kind, environment_id, &name);
        let plaintext = cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| tampered())?;
        let value = String::from_utf8(plaintext).map_err(|_| tampered())?;
        values.insert(name, value);
    }
    Ok(values)
}

fn parse_v1(body: &str) -> Result<SealedV1, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::corrupt("environment secrets", e))
}

fn parse_plaintext(stored: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(stored).map_err(|e| StoreError::corrupt("environment secrets", e))
}

#[cfg(test)]
#[path = "secrets_tests.rs"]
mod tests;
