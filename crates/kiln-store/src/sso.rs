//! Single sign-on state (docs/sso.md): sign-ins waiting for the provider's
//! answer, `kiln login`'s device requests, and browser sessions. Every
//! secret a browser or the CLI holds is stored only as its SHA-256, and
//! each is single-use or expires.

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::clock::from_millis;
use crate::db::query;
use crate::error::{OpError, Result};
use crate::ids::hash_secret;
use crate::Store;

/// How long a sign-in may stay at the provider.
pub const SSO_LOGIN_TTL_SECS: i64 = 600;
/// How long `kiln login`'s user code stays usable.
pub const DEVICE_REQUEST_TTL_SECS: i64 = 600;
/// How often `kiln login` polls for its token.
pub const DEVICE_POLL_INTERVAL_SECS: i64 = 2;
/// How long a browser session lasts.
pub const SESSION_TTL_SECS: i64 = 12 * 3600;

/// Letters of a user code: consonants only (no words, no 0/O or 1/I/L to
/// confuse when typed from another screen).
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKMNPQRSTVWXZ";

/// A sign-in sent to the provider, kept until its callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    pub nonce: String,
    pub pkce_verifier: String,
    /// A same-origin path the browser returns to.
    pub return_to: String,
    /// The device request (its id, the hash of the device code) that this
    /// sign-in approves, for `kiln login`.
    pub device_request: Option<String>,
}

/// A new device request: the device code goes to the CLI only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeviceRequest {
    pub device_code: String,
    /// `ABCD-EFGH`: what the person types or sees in the link.
    pub user_code: String,
    pub expires_at: DateTime<Utc>,
}

/// A device request found by its user code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    /// The SHA-256 of its device code.
    pub id: String,
    pub user_code: String,
    pub expires_at: DateTime<Utc>,
    /// Approved, denied or redeemed already: the code cannot be used again.
    pub settled: bool,
}

/// What a poll of the device code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePoll {
    /// No one has signed in with the user code yet.
    Pending,
    /// Polled again sooner than the interval.
    SlowDown,
    /// Expired, or never issued.
    Expired,
    /// The sign-in was refused; the reason is for the CLI to show.
    Denied(String),
    /// Approved for this user; the request is now redeemed (a second poll
    /// finds it expired).
    Approved { user_id: String },
}

/// A browser session, as found by its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: String,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

/// A new browser session: `id` goes into the cookie, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    pub id: String,
    pub session: Session,
}

impl Store {
    /// Remembers a sign-in sent to the provider under `state` (a random
    /// value only the browser and the provider see).
    pub async fn begin_sso_login(&self, state: &str, login: &PendingLogin) -> Result<()> {
        let state_hash = hash_secret(state);
        self.run("begin a sign-in", || async {
            let now = self.now_ms();
            let mut tx = self.begin().await?;
            // Abandoned sign-ins go away as new ones start.
            tx.execute(query("DELETE FROM sso_logins WHERE expires_at < $1").bind(now))
                .await?;
            tx.execute(
                query(
                    "INSERT INTO sso_logins (state_sha256, nonce, pkce_verifier, return_to,
                         device_code_sha256, created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&state_hash)
                .bind(&login.nonce)
                .bind(&login.pkce_verifier)
                .bind(&login.return_to)
                .bind(login.device_request.as_deref())
                .bind(now)
                .bind(now + SSO_LOGIN_TTL_SECS * 1000),
            )
            .await?;
            self.commit(tx, Vec::new()).await
        })
        .await
    }

    /// Takes the sign-in `state` answers: at most once, and only before it
    /// expires. `None` for an unknown, used or expired state.
    pub async fn take_sso_login(&self, state: &str) -> Result<Option<PendingLogin>> {
        let state_hash = hash_secret(state);
        self.run("finish a sign-in", || async {
            let mut tx = self.begin().await?;
            let row = tx
                .fetch_optional(
                    query(
                        "DELETE FROM sso_logins WHERE state_sha256 = $1
                         RETURNING nonce, pkce_verifier, return_to, device_code_sha256, expires_at",
                    )
                    .bind(&state_hash),
                )
                .await?;
            self.commit(tx, Vec::new()).await?;
            let Some(row) = row else { return Ok(None) };
            if row.int("expires_at")? < self.now_ms() {
                return Ok(None);
            }
            Ok(Some(PendingLogin {
                nonce: row.text("nonce")?,
                pkce_verifier: row.text("pkce_verifier")?,
                return_to: row.text("return_to")?,
                device_request: row.opt_text("device_code_sha256")?,
            }))
        })
        .await
    }

    /// Starts a device request for `kiln login`.
    pub async fn create_device_request(&self) -> Result<NewDeviceRequest> {
        self.run("start a device request", || async {
            let now = self.now_ms();
            let expires = now + DEVICE_REQUEST_TTL_SECS * 1000;
            let mut tx = self.begin().await?;
            tx.execute(
                query("DELETE FROM sso_device_requests WHERE expires_at < $1").bind(now),
            )
            .await?;
            let device_code = crate::ids::new_token_secret();
            // 19^8 codes: a clash with a live one is rare, and redrawn.
            let mut user_code = new_user_code();
            while tx
                .fetch_optional(
                    query("SELECT user_code FROM sso_device_requests WHERE user_code = $1")
                        .bind(&user_code),
                )
                .await?
                .is_some()
            {
                user_code = new_user_code();
            }
            tx.execute(
                query(
                    "INSERT INTO sso_device_requests (device_code_sha256, user_code, created_at, expires_at)
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(hash_secret(&device_code))
                .bind(&user_code)
                .bind(now)
                .bind(expires),
            )
            .await?;
            self.commit(tx, Vec::new()).await?;
            Ok(NewDeviceRequest {
                device_code,
                user_code: format!("{}-{}", &user_code[..4], &user_code[4..]),
                expires_at: from_millis(expires),
            })
        })
        .await
    }

    /// The live device request with `user_code` (dashes, spaces and case
    /// ignored), or `None`.
    pub async fn device_request(&self, user_code: &str) -> Result<Option<DeviceRequest>> {
        let code = normalize_user_code(user_code);
        self.run("look up a device request", || async {
            let Some(code) = &code else { return Ok(None) };
            let row = self
                .inner
                .db
                .fetch_optional(
                    query(
                        "SELECT device_code_sha256, user_code, expires_at, approved_user_id,
                                denied_reason, redeemed_at
                         FROM sso_device_requests WHERE user_code = $1 AND expires_at >= $2",
                    )
                    .bind(code)
                    .bind(self.now_ms()),
                )
                .await?;
            row.map(|row| {
                let code = row.text("user_code")?;
                Ok(DeviceRequest {
                    id: row.text("device_code_sha256")?,
                    user_code: format!(
                        "{}-{}",
                        &code[..4.min(code.len())],
                        &code[4.min(code.len())..]
                    ),
                    expires_at: from_millis(row.int("expires_at")?),
                    settled: row.opt_text("approved_user_id")?.is_some()
                        || row.opt_text("denied_reason")?.is_some()
                        || row.opt_int("redeemed_at")?.is_some(),
                })
            })
            .transpose()
        })
        .await
    }

    /// Settles device request `id` (see [`DeviceRequest::id`]): approved for
    /// `user_id`, or denied with `denied` as the reason. Only an unsettled,
    /// live request changes; `false` otherwise.
    pub async fn settle_device_request(
        &self,
        id: &str,
        outcome: std::result::Result<&str, &str>,
    ) -> Result<bool> {
        let (user, denied) = match outcome {
            Ok(user) => (Some(user), None),
            Err(reason) => (None, Some(reason)),
        };
        self.run("settle a device request", || async {
            let mut tx = self.begin().await?;
            let changed = tx
                .execute(
                    query(
                        "UPDATE sso_device_requests SET approved_user_id = $2, denied_reason = $3
                         WHERE device_code_sha256 = $1 AND approved_user_id IS NULL
                           AND denied_reason IS NULL AND redeemed_at IS NULL AND expires_at >= $4",
                    )
                    .bind(id)
                    .bind(user)
                    .bind(denied)
                    .bind(self.now_ms()),
                )
                .await?;
            self.commit(tx, Vec::new()).await?;
            Ok(changed == 1)
        })
        .await
    }

    /// A poll by the CLI holding `device_code`. An approved request is
    /// redeemed by this call: the caller issues the token, and any later
    /// poll finds the request expired.
    pub async fn poll_device_request(&self, device_code: &str) -> Result<DevicePoll> {
        let id = hash_secret(device_code);
        self.run("poll a device request", || async {
            let now = self.now_ms();
            let mut tx = self.begin().await?;
            let Some(row) = tx
                .fetch_optional(
                    query(
                        "SELECT expires_at, last_polled_at, approved_user_id, denied_reason, redeemed_at
                         FROM sso_device_requests WHERE device_code_sha256 = $1",
                    )
                    .bind(&id),
                )
                .await?
            else {
                self.commit(tx, Vec::new()).await?;
                return Ok(DevicePoll::Expired);
            };
            if row.opt_int("redeemed_at")?.is_some() || row.int("expires_at")? < now {
                self.commit(tx, Vec::new()).await?;
                return Ok(DevicePoll::Expired);
            }
            if let Some(reason) = row.opt_text("denied_reason")? {
                tx.execute(
                    query("UPDATE sso_device_requests SET redeemed_at = $2 WHERE device_code_sha256 = $1")
                        .bind(&id)
                        .bind(now),
                )
                .await?;
                self.commit(tx, Vec::new()).await?;
                return Ok(DevicePoll::Denied(reason));
            }
            if let Some(user_id) = row.opt_text("approved_user_id")? {
                // Redeemed in the same statement that checks it was not, so
                // two polls racing cannot both get a token.
                let redeemed = tx
                    .execute(
                        query(
                            "UPDATE sso_device_requests SET redeemed_at = $2
                             WHERE device_code_sha256 = $1 AND redeemed_at IS NULL",
                        )
                        .bind(&id)
                        .bind(now),
                    )
                    .await?;
                self.commit(tx, Vec::new()).await?;
                return Ok(if redeemed == 1 {
                    DevicePoll::Approved { user_id }
                } else {
                    DevicePoll::Expired
                });
            }
            // Half the interval of slack: a client sleeping the interval
            // between polls is never told to slow down.
            let too_soon = row
                .opt_int("last_polled_at")?
                .is_some_and(|last| now - last < DEVICE_POLL_INTERVAL_SECS * 500);
            tx.execute(
                query("UPDATE sso_device_requests SET last_polled_at = $2 WHERE device_code_sha256 = $1")
                    .bind(&id)
                    .bind(now),
            )
            .await?;
            self.commit(tx, Vec::new()).await?;
            Ok(if too_soon {
                DevicePoll::SlowDown
            } else {
                DevicePoll::Pending
            })
        })
        .await
    }

    /// Starts a browser session for `user_id`.
    pub async fn create_session(&self, user_id: &str) -> Result<NewSession> {
        let id = random_secret();
        let csrf_token = random_secret();
        self.run("start a session", || async {
            let now = self.now_ms();
            let expires = now + SESSION_TTL_SECS * 1000;
            let mut tx = self.begin().await?;
            tx.execute(
                query("DELETE FROM sessions WHERE expires_at < $1")
                    .bind(now - SESSION_TTL_SECS * 1000),
            )
            .await?;
            tx.execute(
                query(
                    "INSERT INTO sessions (id_sha256, user_id, csrf_token, created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(hash_secret(&id))
                .bind(user_id)
                .bind(&csrf_token)
                .bind(now)
                .bind(expires),
            )
            .await?;
            self.commit(tx, Vec::new()).await?;
            Ok(NewSession {
                id: id.clone(),
                session: Session {
                    user_id: user_id.to_string(),
                    csrf_token: csrf_token.clone(),
                    expires_at: from_millis(expires),
                },
            })
        })
        .await
    }

    /// The live session whose cookie holds `id`, or `None`.
    pub async fn session(&self, id: &str) -> Result<Option<Session>> {
        let hash = hash_secret(id);
        self.run("look up a session", || async {
            let row = self
                .inner
                .db
                .fetch_optional(
                    query(
                        "SELECT user_id, csrf_token, expires_at FROM sessions
                         WHERE id_sha256 = $1 AND ended_at IS NULL AND expires_at >= $2",
                    )
                    .bind(&hash)
                    .bind(self.now_ms()),
                )
                .await?;
            row.map(|row| {
                Ok::<_, OpError>(Session {
                    user_id: row.text("user_id")?,
                    csrf_token: row.text("csrf_token")?,
                    expires_at: from_millis(row.int("expires_at")?),
                })
            })
            .transpose()
        })
        .await
    }

    /// Ends the session whose cookie holds `id` (again is fine).
    pub async fn end_session(&self, id: &str) -> Result<()> {
        let hash = hash_secret(id);
        self.run("end a session", || async {
            let mut tx = self.begin().await?;
            tx.execute(
                query(
                    "UPDATE sessions SET ended_at = $2 WHERE id_sha256 = $1 AND ended_at IS NULL",
                )
                .bind(&hash)
                .bind(self.now_ms()),
            )
            .await?;
            self.commit(tx, Vec::new()).await
        })
        .await
    }
}

fn new_user_code() -> String {
    let mut rng = rand::rng();
    (0..8)
        .map(|_| char::from(USER_CODE_ALPHABET[rng.random_range(0..USER_CODE_ALPHABET.len())]))
        .collect()
}

/// The stored form of a typed user code: 8 letters of the alphabet.
fn normalize_user_code(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == 8 && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b))).then_some(code)
}

/// 256 random bits, URL-safe (session ids and CSRF tokens).
fn random_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
#[path = "sso_tests.rs"]
mod tests;

/// Who the provider says signed in, and what their groups grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoIdentity {
    pub issuer: String,
    pub subject: String,
    /// `preferred_username`, else the local part of a trusted email.
    pub preferred_name: Option<String>,
    pub email: Option<String>,
    /// (team name, team role) from `--oidc-map`.
    pub teams: Vec<(String, String)>,
    pub admin: bool,
    /// The groups that mapped to something, for the audit trail.
    pub groups: Vec<String>,
    /// `web` or `device`.
    pub via: String,
}

/// A user signed in by SSO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoUser {
    pub id: String,
    pub name: String,
}

/// What a sign-in came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SsoOutcome {
    SignedIn(SsoUser),
    /// Refused (a disabled user); the message is for the person.
    Refused(String),
}

/// A token `kiln login` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSsoToken {
    pub secret: String,
    pub token_id: String,
    pub user_id: String,
    pub user_name: String,
    pub expires_at: DateTime<Utc>,
}

impl Store {
    /// PROVISIONAL until the teams contract lands.
    pub async fn sso_sign_in(&self, identity: &SsoIdentity) -> Result<SsoOutcome> {
        let name = identity
            .preferred_name
            .clone()
            .unwrap_or_else(|| identity.subject.clone());
        Ok(SsoOutcome::SignedIn(SsoUser {
            id: format!("usr_{name}"),
            name,
        }))
    }

    /// PROVISIONAL until the teams contract lands.
    pub async fn sso_sign_in_failed(&self, _issuer: &str, _reason: &str, _via: &str) -> Result<()> {
        Ok(())
    }

    /// PROVISIONAL until the teams contract lands.
    pub async fn create_sso_token(&self, user_id: &str, days: u32) -> Result<IssuedSsoToken> {
        let name = user_id.trim_start_matches("usr_").to_string();
        let token = self.create_token(&name, false).await?;
        Ok(IssuedSsoToken {
            secret: token.secret,
            token_id: token.info.id,
            user_id: user_id.to_string(),
            user_name: name,
            expires_at: from_millis(self.now_ms() + i64::from(days) * 86_400_000),
        })
    }

    /// PROVISIONAL until the teams contract lands.
    pub async fn session_principal(&self, session: &Session) -> Result<Option<crate::Principal>> {
        Ok(Some(crate::Principal {
            token_id: format!("session:{}", session.user_id),
            name: session.user_id.trim_start_matches("usr_").to_string(),
            admin: false,
            worker: false,
        }))
    }
}
