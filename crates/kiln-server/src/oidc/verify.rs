//! ID token verification: the one place a provider's word about who signed
//! in is accepted, so everything in the token is hostile until its signature
//! and claims pass here.
//!
//! Only asymmetric signatures verified with a key from the provider's JWKS
//! are accepted (RS*, PS*, ES256/ES384, EdDSA). `none` and the HMAC family
//! are refused before any key is looked at: with HS256 an attacker could
//! sign with the provider's *public* key as the shared secret.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

/// How far `exp` and `iat` may be off (clocks of two machines disagree).
pub const CLOCK_LEEWAY_SECS: u64 = 60;

/// The shortest time between two JWKS fetches caused by tokens naming a key
/// kiln does not know: a flood of forged tokens must not become a flood of
/// requests to the provider.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Why an ID token was refused. The message names the claim or key at
/// fault, never the token itself.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the ID token is not a well-formed signed JWT ({0})")]
    Malformed(String),
    #[error("the ID token is signed with {0}, which kiln refuses: only RS256/384/512, PS256/384/512, ES256/384 and EdDSA signatures checked with the provider's published keys are accepted")]
    AlgorithmRefused(String),
    #[error("the ID token names signing key {kid:?}, which the provider's key set does not hold (fetched again at most every {}s)", JWKS_REFRESH_INTERVAL.as_secs())]
    UnknownKey { kid: String },
    #[error("the provider's key set has no key for {alg} signatures")]
    NoKeyForAlgorithm { alg: String },
    #[error("cannot fetch the provider's keys from {uri}: {message}")]
    Jwks { uri: String, message: String },
    #[error("the ID token's signature does not verify with the provider's key")]
    BadSignature,
    #[error("the ID token has expired: sign in again")]
    Expired,
    #[error("the ID token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the ID token was issued in the future (iat); check the clocks of kiln's host and the provider")]
    IssuedInFuture,
    #[error("the ID token was issued by another issuer than the configured --oidc-issuer")]
    WrongIssuer,
    #[error(
        "the ID token is not meant for this client: its audience does not contain --oidc-client-id"
    )]
    WrongAudience,
    #[error("the ID token was issued to another party (azp is not --oidc-client-id)")]
    WrongAuthorizedParty,
    #[error("the ID token's nonce does not match the sign-in it answers")]
    WrongNonce,
    #[error("the ID token lacks the {0} claim")]
    MissingClaim(String),
}

impl VerifyError {
    /// A short stable reason for the audit trail and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed_id_token",
            VerifyError::AlgorithmRefused(_) => "algorithm_refused",
            VerifyError::UnknownKey { .. } => "unknown_key",
            VerifyError::NoKeyForAlgorithm { .. } => "no_key_for_algorithm",
            VerifyError::Jwks { .. } => "jwks_unavailable",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::IssuedInFuture => "issued_in_future",
            VerifyError::WrongIssuer => "wrong_issuer",
            VerifyError::WrongAudience => "wrong_audience",
            VerifyError::WrongAuthorizedParty => "wrong_azp",
            VerifyError::WrongNonce => "wrong_nonce",
            VerifyError::MissingClaim(_) => "missing_claim",
        }
    }
}

/// The verified claims of an ID token.
#[derive(Debug, Clone, PartialEq)]
pub struct IdClaims {
    pub issuer: String,
    pub subject: String,
    pub preferred_username: Option<String>,
    pub email: Option<String>,
    /// `false` only when the provider says so; absent is `None`.
    pub email_verified: Option<bool>,
    raw: Map<String, Value>,
}

impl IdClaims {
    /// The groups in claim `name`: an array of strings, or one string as a
    /// single group; anything else (absent, numbers, objects) is no group.
    pub fn groups(&self, name: &str) -> Vec<String> {
        match self.raw.get(name) {
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The email address to record: only when the provider does not say it
    /// is unverified.
    pub fn trusted_email(&self) -> Option<&str> {
        match self.email_verified {
            Some(false) => None,
            _ => self.email.as_deref(),
        }
    }
}

/// Checks ID tokens of one provider for one client, with the provider's
/// keys cached and refreshed on rotation.
pub struct IdTokenVerifier {
    issuer: String,
    client_id: String,
    jwks_uri: String,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<KeyCache>,
}

#[derive(Default)]
struct KeyCache {
    keys: Vec<Jwk>,
    fetched_at: Option<Instant>,
}

#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<Value>,
}

impl IdTokenVerifier {
    pub fn new(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        jwks_uri: impl Into<String>,
        http: reqwest::Client,
    ) -> Self {
        IdTokenVerifier {
            issuer: issuer.into(),
            client_id: client_id.into(),
            jwks_uri: jwks_uri.into(),
            http,
            keys: tokio::sync::Mutex::new(KeyCache::default()),
        }
    }

    /// Verifies `token`'s signature and claims; `nonce` is the one kiln sent
    /// with the sign-in this token answers.
    pub async fn verify(&self, token: &str, nonce: &str) -> Result<IdClaims, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|err| {
            // `alg: none` (and any other unknown name) fails here.
            VerifyError::Malformed(err.to_string())
        })?;
        let alg = header.alg;
        if !accepted(alg) {
            return Err(VerifyError::AlgorithmRefused(format!("{alg:?}")));
        }
        let candidates = self.keys_for(header.kid.as_deref(), alg).await?;
        let mut last = VerifyError::NoKeyForAlgorithm {
            alg: format!("{alg:?}"),
        };
        for key in candidates {
            match self.check(token, alg, &key, nonce) {
                Err(VerifyError::BadSignature) => last = VerifyError::BadSignature,
                other => return other,
            }
        }
        Err(last)
    }

    fn check(
        &self,
        token: &str,
        alg: Algorithm,
        key: &DecodingKey,
        nonce: &str,
    ) -> Result<IdClaims, VerifyError> {
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = CLOCK_LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.client_id]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(from_jwt_error)?;
        let claims = data.claims;
        let now = jsonwebtoken::get_current_timestamp();
        let issued_at = claims
            .get("iat")
            .and_then(Value::as_f64)
            .ok_or_else(|| VerifyError::MissingClaim("iat".into()))?;
        if issued_at > (now + CLOCK_LEEWAY_SECS) as f64 {
            return Err(VerifyError::IssuedInFuture);
        }
        let audiences = match claims.get("aud") {
            Some(Value::Array(items)) => items.len(),
            _ => 1,
        };
        match claims.get("azp").and_then(Value::as_str) {
            Some(azp) if azp != self.client_id => return Err(VerifyError::WrongAuthorizedParty),
            None if audiences > 1 => return Err(VerifyError::WrongAuthorizedParty),
            _ => {}
        }
        match claims.get("nonce").and_then(Value::as_str) {
            Some(sent) if sent == nonce => {}
            Some(_) => return Err(VerifyError::WrongNonce),
            None => return Err(VerifyError::MissingClaim("nonce".into())),
        }
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        Ok(IdClaims {
            issuer: text("iss").ok_or_else(|| VerifyError::MissingClaim("iss".into()))?,
            subject: text("sub")
                .filter(|sub| !sub.is_empty())
                .ok_or_else(|| VerifyError::MissingClaim("sub".into()))?,
            preferred_username: text("preferred_username"),
            email: text("email"),
            email_verified: claims.get("email_verified").and_then(Value::as_bool),
            raw: claims,
        })
    }

    /// The keys that may have signed a token naming `kid` with `alg`:
    /// from the cache, or after one refresh when none fits and the last
    /// fetch is old enough.
    async fn keys_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<DecodingKey>, VerifyError> {
        // Held across the fetch: concurrent tokens with an unknown key wait
        // for one refresh instead of each starting their own.
        let mut cache = self.keys.lock().await;
        let mut found = matching(&cache.keys, kid, alg);
        if found.is_empty() {
            let may_refresh = cache
                .fetched_at
                .is_none_or(|at| at.elapsed() >= JWKS_REFRESH_INTERVAL);
            if may_refresh {
                let keys = self.fetch_keys().await?;
                cache.keys = keys;
                cache.fetched_at = Some(Instant::now());
                found = matching(&cache.keys, kid, alg);
            }
        }
        if found.is_empty() {
            return Err(match kid {
                Some(kid) => VerifyError::UnknownKey {
                    kid: kid.chars().take(100).collect(),
                },
                None => VerifyError::NoKeyForAlgorithm {
                    alg: format!("{alg:?}"),
                },
            });
        }
        Ok(found)
    }

    async fn fetch_keys(&self) -> Result<Vec<Jwk>, VerifyError> {
        let failed = |message: String| VerifyError::Jwks {
            uri: self.jwks_uri.clone(),
            message,
        };
        let response = self
            .http
            .get(&self.jwks_uri)
            .send()
            .await
            .map_err(|err| failed(err.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!(
                "the provider answered {}",
                response.status()
            )));
        }
        let set: RawKeySet = response
            .json()
            .await
            .map_err(|err| failed(format!("not a JSON Web Key Set: {err}")))?;
        // A key kiln cannot use (an encryption key, a new key type) must not
        // make the whole set unusable.
        Ok(set
            .keys
            .into_iter()
            .filter_map(|key| serde_json::from_value::<Jwk>(key).ok())
            .filter(|key| !matches!(key.algorithm, AlgorithmParameters::OctetKey(_)))
            .filter(|key| {
                matches!(
                    key.common.public_key_use,
                    None | Some(PublicKeyUse::Signature)
                )
            })
            .collect())
    }
}

#[cfg(test)]
impl IdTokenVerifier {
    /// Moves the last JWKS fetch `ago` into the past, so a test can show
    /// what happens once the refresh interval has passed without waiting.
    pub(crate) async fn pretend_keys_fetched(&self, ago: Duration) {
        let mut cache = self.keys.lock().await;
        cache.fetched_at = Instant::now().checked_sub(ago);
    }
}

fn accepted(alg: Algorithm) -> bool {
    matches!(
        alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
            | Algorithm::ES256
            | Algorithm::ES384
            | Algorithm::EdDSA
    )
}

/// The keys of `keys` that may verify `alg` (and carry `kid` when the token
/// names one): the key type must fit the algorithm, and a key that states
/// its algorithm must state this one.
fn matching(keys: &[Jwk], kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
    keys.iter()
        .filter(|key| kid.is_none_or(|kid| key.common.key_id.as_deref() == Some(kid)))
        .filter(|key| key_fits(key, alg))
        .filter_map(|key| DecodingKey::from_jwk(key).ok())
        .collect()
}

fn key_fits(key: &Jwk, alg: Algorithm) -> bool {
    let type_fits = match &key.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(_) => {
            matches!(alg, Algorithm::ES256 | Algorithm::ES384)
        }
        AlgorithmParameters::OctetKeyPair(_) => alg == Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => false,
    };
    let stated_fits = match &key.common.key_algorithm {
        None => true,
        Some(stated) => serde_json::to_value(stated).ok() == serde_json::to_value(alg).ok(),
    };
    type_fits && stated_fits
}

fn from_jwt_error(err: jsonwebtoken::errors::Error) -> VerifyError {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::InvalidSignature => VerifyError::BadSignature,
        ErrorKind::ExpiredSignature => VerifyError::Expired,
        ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
        ErrorKind::InvalidIssuer => VerifyError::WrongIssuer,
        ErrorKind::InvalidAudience => VerifyError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => VerifyError::MissingClaim(claim.clone()),
        ErrorKind::InvalidAlgorithm => {
            VerifyError::AlgorithmRefused("a mismatched algorithm".into())
        }
        other => VerifyError::Malformed(format!("{other:?}")),
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
