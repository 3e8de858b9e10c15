//! Single sign-on state (docs/sso.md): sign-ins waiting for the provider's
//! answer, `kiln login`'s device requests, and browser sessions. Every
//! secret a browser or the CLI holds is stored only as its SHA-256, and
//! each is single-use or expires.

use chrono::{DateTime, Utc};
use rand::Rng;

use kiln_protocol::teams::{ServerRole, TeamRole};
use serde_json::json;

use crate::audit::{audit_in, AuditSubject};
use crate::clock::from_millis;
use crate::db::query;
use crate::error::{OpError, Result, StoreError};
use crate::ids::hash_secret;
use crate::users::{create_team_in, memberships_in, set_member_in, unique_name_in, NameTable};
use crate::{Principal, Store};

/// How long a sign-in may stay at the provider.
pub const SSO_LOGIN_TTL_SECS: i64 = 600;
/// How long `kiln login`'s user code stays usable.
pub const DEVICE_REQUEST_TTL_SECS: i64 = 600;
/// How often `kiln login` polls for its token.
pub const DEVICE_POLL_INTERVAL_SECS: i64 = 2;
/// Device requests one address may have in progress at once.
pub const MAX_DEVICE_REQUESTS_PER_ORIGIN: i64 = 20;
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

    /// Starts a device request for `kiln login` asked from `origin`;
    /// `None` when that address has [`MAX_DEVICE_REQUESTS_PER_ORIGIN`] in
    /// progress already (the route needs no sign-in, so this bounds what
    /// one client can make the server store).
    pub async fn create_device_request(
        &self,
        origin: Option<&str>,
    ) -> Result<Option<NewDeviceRequest>> {
        self.run("start a device request", || async {
            let now = self.now_ms();
            let expires = now + DEVICE_REQUEST_TTL_SECS * 1000;
            let mut tx = self.begin().await?;
            tx.execute(
                query("DELETE FROM sso_device_requests WHERE expires_at < $1").bind(now),
            )
            .await?;
            let in_progress = tx
                .fetch_one(
                    query(
                        "SELECT COUNT(*) AS n FROM sso_device_requests
                         WHERE COALESCE(origin, '') = COALESCE($1, '') AND redeemed_at IS NULL",
                    )
                    .bind(origin),
                )
                .await?
                .int("n")?;
            if in_progress >= MAX_DEVICE_REQUESTS_PER_ORIGIN {
                self.commit(tx, Vec::new()).await?;
                return Ok(None);
            }
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
                    "INSERT INTO sso_device_requests (device_code_sha256, user_code, origin, created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(hash_secret(&device_code))
                .bind(&user_code)
                .bind(origin)
                .bind(now)
                .bind(expires),
            )
            .await?;
            self.commit(tx, Vec::new()).await?;
            Ok(Some(NewDeviceRequest {
                device_code,
                user_code: format!("{}-{}", &user_code[..4], &user_code[4..]),
                expires_at: from_millis(expires),
            }))
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

/// Who the provider says signed in, and what their groups grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoIdentity {
    pub issuer: String,
    pub subject: String,
    /// `preferred_username`, else the local part of a trusted email; the
    /// subject when neither is there.
    pub preferred_name: Option<String>,
    pub email: Option<String>,
    /// The memberships the groups map to (team names; created if missing).
    pub teams: Vec<(String, TeamRole)>,
    /// The groups map to the server role admin.
    pub admin: bool,
    /// The groups that mapped to something, for the audit trail.
    pub groups: Vec<String>,
    /// `web` or `device`.
    pub via: String,
    /// The client's address, for the audit trail.
    pub origin: Option<String>,
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

/// The actor of an audit event a user caused without a token (a sign-in).
fn user_actor(user_id: &str, user_name: &str, origin: Option<&str>) -> Principal {
    Principal {
        name: user_name.to_string(),
        user_id: Some(user_id.to_string()),
        user_name: user_name.to_string(),
        origin: origin.map(str::to_string),
        ..Principal::default()
    }
}

impl Store {
    /// Signs in the user the provider vouches for: found by (issuer,
    /// subject) or created (a unique name from the preferred one), their
    /// `oidc` memberships replaced by the ones the groups map to (teams
    /// created when missing; `local` memberships untouched) and the server
    /// role admin granted when mapped. A disabled user is refused. Audited
    /// as `user.signed_in` (and `user.created`, `team.created`,
    /// `user.updated` as they happen), all in one transaction.
    pub async fn sso_sign_in(&self, identity: &SsoIdentity) -> Result<SsoOutcome> {
        self.run("sign in with single sign-on", || async {
            let now = self.now_ms();
            let origin = identity.origin.as_deref();
            let mut tx = self.begin().await?;
            let existing = tx
                .fetch_optional(
                    query(
                        "SELECT id, name, role, email, disabled_at FROM users
                         WHERE oidc_issuer = $1 AND oidc_subject = $2",
                    )
                    .bind(&identity.issuer)
                    .bind(&identity.subject),
                )
                .await?;
            let (user_id, name, role) = match existing {
                Some(row) if row.opt_int("disabled_at")?.is_some() => {
                    self.commit(tx, Vec::new()).await?;
                    return Ok(SsoOutcome::Refused(format!(
                        "Your kiln account {} is disabled: ask a kiln admin to enable it.",
                        row.text("name")?
                    )));
                }
                Some(row) => {
                    let id = row.text("id")?;
                    if identity.email.is_some() && identity.email != row.opt_text("email")? {
                        tx.execute(
                            query("UPDATE users SET email = $2 WHERE id = $1")
                                .bind(&id)
                                .bind(identity.email.as_deref()),
                        )
                        .await?;
                    }
                    (id, row.text("name")?, row.text("role")?)
                }
                None => {
                    let hint = identity
                        .preferred_name
                        .as_deref()
                        .filter(|name| !name.trim().is_empty())
                        .unwrap_or(&identity.subject);
                    let name = unique_name_in(&mut tx, NameTable::Users, hint).await?;
                    let id = self.new_id("usr_");
                    tx.execute(
                        query(
                            "INSERT INTO users (id, name, email, role, oidc_issuer, oidc_subject, created_at)
                             VALUES ($1, $2, $3, 'user', $4, $5, $6)",
                        )
                        .bind(&id)
                        .bind(&name)
                        .bind(identity.email.as_deref())
                        .bind(&identity.issuer)
                        .bind(&identity.subject)
                        .bind(now),
                    )
                    .await?;
                    audit_in(
                        &mut tx,
                        &user_actor(&id, &name, origin),
                        "user.created",
                        AuditSubject::new("user", &id),
                        json!({ "name": name, "issuer": identity.issuer, "source": "oidc" }),
                        now,
                    )
                    .await?;
                    (id, name, ServerRole::User.as_str().to_string())
                }
            };
            let actor = user_actor(&user_id, &name, origin);
            if identity.admin && role == ServerRole::User.as_str() {
                tx.execute(
                    query("UPDATE users SET role = $2 WHERE id = $1")
                        .bind(&user_id)
                        .bind(ServerRole::Admin.as_str()),
                )
                .await?;
                audit_in(
                    &mut tx,
                    &actor,
                    "user.updated",
                    AuditSubject::new("user", &user_id),
                    json!({ "role": "admin", "source": "oidc" }),
                    now,
                )
                .await?;
            }
            // The provider's groups are the truth for `oidc` memberships;
            // an admin's `local` ones stay whatever the groups say.
            tx.execute(
                query("DELETE FROM team_members WHERE user_id = $1 AND source = 'oidc'")
                    .bind(&user_id),
            )
            .await?;
            for (team, team_role) in &identity.teams {
                let team_id = match tx
                    .fetch_optional(query("SELECT id FROM teams WHERE name = $1").bind(team))
                    .await?
                {
                    Some(row) => row.text("id")?,
                    None => {
                        let team_id = create_team_in(self, &mut tx, team).await?;
                        audit_in(
                            &mut tx,
                            &actor,
                            "team.created",
                            AuditSubject::new("team", &team_id).in_team(Some(&team_id)),
                            json!({ "name": team, "source": "oidc" }),
                            now,
                        )
                        .await?;
                        team_id
                    }
                };
                let local = tx
                    .fetch_optional(
                        query("SELECT role FROM team_members WHERE team_id = $1 AND user_id = $2")
                            .bind(&team_id)
                            .bind(&user_id),
                    )
                    .await?;
                if local.is_none() {
                    set_member_in(&mut tx, &team_id, &user_id, *team_role, "oidc", now).await?;
                }
            }
            audit_in(
                &mut tx,
                &actor,
                "user.signed_in",
                AuditSubject::new("user", &user_id),
                json!({ "issuer": identity.issuer, "groups": identity.groups, "via": identity.via }),
                now,
            )
            .await?;
            self.commit(tx, Vec::new()).await?;
            Ok(SsoOutcome::SignedIn(SsoUser { id: user_id, name }))
        })
        .await
    }

    /// Audits a refused sign-in (`sign_in.failed`) with its `reason`, never
    /// the token. `subject` is the provider's, when the ID token got that far.
    pub async fn sso_sign_in_failed(
        &self,
        issuer: &str,
        subject: Option<&str>,
        reason: &str,
        via: &str,
        origin: Option<&str>,
    ) -> Result<()> {
        self.run("record a refused sign-in", || async {
            let mut tx = self.begin().await?;
            let known = match subject {
                Some(subject) => tx
                    .fetch_optional(
                        query("SELECT id, name FROM users WHERE oidc_issuer = $1 AND oidc_subject = $2")
                            .bind(issuer)
                            .bind(subject),
                    )
                    .await?
                    .map(|row| Ok::<_, OpError>((row.text("id")?, row.text("name")?)))
                    .transpose()?,
                None => None,
            };
            let actor = match &known {
                Some((id, name)) => user_actor(id, name, origin),
                None => Principal {
                    name: "anonymous".into(),
                    origin: origin.map(str::to_string),
                    ..Principal::default()
                },
            };
            let subject_id = known.as_ref().map(|(id, _)| id.as_str());
            audit_in(
                &mut tx,
                &actor,
                "sign_in.failed",
                AuditSubject {
                    kind: "user",
                    id: subject_id,
                    team_id: None,
                },
                json!({ "reason": reason, "issuer": issuer, "subject": subject, "via": via }),
                self.now_ms(),
            )
            .await?;
            self.commit(tx, Vec::new()).await
        })
        .await
    }

    /// A token for `kiln login` (source `sso`), expiring after `days`,
    /// audited as `token.created`.
    pub async fn create_sso_token(
        &self,
        user_id: &str,
        days: u32,
        origin: Option<&str>,
    ) -> Result<IssuedSsoToken> {
        let expires_at = from_millis(self.now_ms() + i64::from(days) * 86_400_000);
        let user_name = self
            .run("find the signed-in user", || async {
                Ok(self
                    .inner
                    .db
                    .fetch_one(query("SELECT name FROM users WHERE id = $1").bind(user_id))
                    .await?
                    .text("name")?)
            })
            .await?;
        // The user asks for it from their address: the token's creation
        // (one `token.created`, in its own transaction) names them.
        let actor = user_actor(user_id, &user_name, origin);
        let token = self
            .create_user_token_by(Some(&actor), user_id, "kiln login", "sso", Some(expires_at))
            .await?;
        Ok(IssuedSsoToken {
            secret: token.secret,
            token_id: token.info.id,
            user_id: user_id.to_string(),
            user_name,
            expires_at,
        })
    }

    /// The caller a live session stands for (no token: `token_id` is
    /// empty), or `None` when its user is disabled or gone.
    pub async fn session_principal(&self, session: &Session) -> Result<Option<Principal>> {
        self.run("look up a session's user", || async {
            let Some(row) = self
                .inner
                .db
                .fetch_optional(
                    query("SELECT name, role, disabled_at FROM users WHERE id = $1")
                        .bind(&session.user_id),
                )
                .await?
            else {
                return Ok(None);
            };
            if row.opt_int("disabled_at")?.is_some() {
                return Ok(None);
            }
            let role: ServerRole = row
                .text("role")?
                .parse()
                .map_err(|e| StoreError::corrupt("user role", e))?;
            let name = row.text("name")?;
            Ok(Some(Principal {
                name: name.clone(),
                admin: role.is_admin(),
                user_id: Some(session.user_id.clone()),
                user_name: name,
                role,
                teams: memberships_in(&mut &self.inner.db, &session.user_id).await?,
                ..Principal::default()
            }))
        })
        .await
    }
}

#[cfg(test)]
#[path = "sso_tests.rs"]
mod tests;
