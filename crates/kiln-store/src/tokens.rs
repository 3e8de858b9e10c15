//! Bearer tokens: only the SHA-256 of a secret is stored; the secret is
//! shown once, when the token is created.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::clock::from_millis;
use crate::db::{query, Backend, DbRow, Tx};
use crate::error::{OpError, Result, StoreError};
use crate::ids::{hash_secret, new_token_secret};
use crate::Store;
use kiln_protocol::teams::{Membership, ServerRole};

/// The PostgreSQL advisory lock key servers take turns on while creating
/// the first admin token (`kiln` in ASCII).
const ADMIN_BOOTSTRAP_LOCK: i64 = 0x6b_69_6c_6e;

/// Shortest secret accepted from `KILN_ADMIN_TOKEN`.
pub const MIN_SECRET_LEN: usize = 24;

/// Who is calling: the token a request was authenticated with, the user it
/// belongs to and that user's teams. Every access decision reads it
/// (`access.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub token_id: String,
    /// The token's name.
    pub name: String,
    /// The user's server role is owner or admin: they see and act on
    /// everything.
    pub admin: bool,
    /// A worker token (`kiln worker`): it claims and runs attempts and may
    /// call nothing else.
    #[serde(default)]
    pub worker: bool,
    /// The user the token belongs to (`None` for worker tokens).
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub user_name: String,
    #[serde(default)]
    pub role: ServerRole,
    /// The user's teams and roles in them.
    #[serde(default)]
    pub teams: Vec<Membership>,
    /// Where the request came from (the client's address), for the audit trail.
    #[serde(default)]
    pub origin: Option<String>,
}

/// A token as listed (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub admin: bool,
    /// A worker token: it may only claim and run attempts.
    #[serde(default)]
    pub worker: bool,
    /// The user it belongs to (`None` for worker tokens).
    #[serde(default)]
    pub user_id: Option<String>,
    /// `local`, or `sso` for a token `kiln login` got through single sign-on.
    #[serde(default = "local_source")]
    pub source: String,
    /// When it stops working (SSO tokens); `None`: never.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

fn local_source() -> String {
    "local".to_string()
}

impl TokenInfo {
    /// The principal of this token without its user's teams (tests and
    /// bootstrap output; requests get theirs from [`Store::verify_token`]).
    pub fn principal(&self) -> Principal {
        Principal {
            token_id: self.id.clone(),
            name: self.name.clone(),
            admin: self.admin,
            worker: self.worker,
            user_id: self.user_id.clone(),
            ..Principal::default()
        }
    }
}

/// A freshly created token and its secret, which is not stored anywhere:
/// show it to the user now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub info: TokenInfo,
    pub secret: String,
}

/// What [`Store::ensure_admin_token`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminBootstrap {
    /// No admin token existed: this one was created; print its secret once.
    Created(NewToken),
    /// The secret from the environment was registered as an admin token.
    Registered(TokenInfo),
    /// An admin token exists already (or the one from the environment is
    /// registered already); nothing to print.
    Present,
}

pub(crate) fn token_from_row(row: &DbRow) -> Result<TokenInfo, OpError> {
    Ok(TokenInfo {
        id: row.text("id")?,
        name: row.text("name")?,
        admin: row.bool("admin")?,
        worker: row.bool("worker")?,
        user_id: row.opt_text("user_id")?,
        source: row.text("source")?,
        expires_at: row.opt_int("expires_at")?.map(from_millis),
        created_at: from_millis(row.int("created_at")?),
        revoked_at: row.opt_int("revoked_at")?.map(from_millis),
    })
}

impl Store {
    /// Creates a token for a new user of its own; the returned secret is
    /// the only copy. The audit trail names the server (`kiln`) as the
    /// actor: requests use [`Store::create_token_by`].
    pub async fn create_token(&self, name: &str, admin: bool) -> Result<NewToken> {
        self.create_token_by(&crate::audit::server_actor(), name, admin)
            .await
    }

    /// [`Store::create_token`] on behalf of `who`, who the audit trail's
    /// `token.created` names.
    pub async fn create_token_by(
        &self,
        who: &Principal,
        name: &str,
        admin: bool,
    ) -> Result<NewToken> {
        let name = validate_token_name(name)?;
        let secret = new_token_secret();
        let info = self
            .run("create token", || {
                self.insert_token(who, name, &secret, TokenKind::user(admin))
            })
            .await?;
        Ok(NewToken { info, secret })
    }

    /// Creates a worker token for `kiln worker`: it claims and runs
    /// attempts, and is refused on every user API.
    pub async fn create_worker_token(&self, name: &str) -> Result<NewToken> {
        self.create_worker_token_by(&crate::audit::server_actor(), name)
            .await
    }

    /// [`Store::create_worker_token`] on behalf of `who` (for the audit trail).
    pub async fn create_worker_token_by(&self, who: &Principal, name: &str) -> Result<NewToken> {
        let name = validate_token_name(name)?;
        let secret = new_token_secret();
        let info = self
            .run("create worker token", || {
                self.insert_token(who, name, &secret, TokenKind::WORKER)
            })
            .await?;
        Ok(NewToken { info, secret })
    }

    /// An admin token with `secret`, unless a live one exists (`None`). The
    /// check and the insert are one transaction that servers starting at
    /// the same time on one database take in turns (SQLite's `BEGIN
    /// IMMEDIATE`; on PostgreSQL a transaction-scoped advisory lock), so
    /// only one of them creates a token and prints it.
    async fn insert_first_admin(&self, secret: &str) -> Result<Option<TokenInfo>, OpError> {
        let mut tx = self.begin().await?;
        if tx.backend() == Backend::Postgres {
            tx.execute(query("SELECT pg_advisory_xact_lock($1)").bind(ADMIN_BOOTSTRAP_LOCK))
                .await?;
        }
        let live_admins = tx
            .fetch_one(query(
                "SELECT COUNT(*) AS n FROM tokens t JOIN users u ON u.id = t.user_id
                 WHERE u.role IN ('owner', 'admin') AND u.disabled_at IS NULL
                   AND t.revoked_at IS NULL",
            ))
            .await?
            .int("n")?;
        if live_admins > 0 {
            self.commit(tx, Vec::new()).await?;
            return Ok(None);
        }
        let info = self
            .insert_token_in(
                &mut tx,
                &crate::audit::server_actor(),
                "admin",
                secret,
                TokenKind::user(true),
            )
            .await?;
        self.commit(tx, Vec::new()).await?;
        Ok(Some(info))
    }

    async fn insert_token(
        &self,
        who: &Principal,
        name: &str,
        secret: &str,
        kind: TokenKind,
    ) -> Result<TokenInfo, OpError> {
        let mut tx = self.begin().await?;
        let info = self
            .insert_token_in(&mut tx, who, name, secret, kind)
            .await?;
        self.commit(tx, Vec::new()).await?;
        Ok(info)
    }

    /// Inserts a token. A user token without `kind.user_id` is a new
    /// identity: a user of its own (named after the token) with a personal
    /// team, as every token was before users existed. Records
    /// `token.created` with `who` as the actor, whatever path created it.
    pub(crate) async fn insert_token_in(
        &self,
        tx: &mut Tx,
        who: &Principal,
        name: &str,
        secret: &str,
        kind: TokenKind,
    ) -> Result<TokenInfo, OpError> {
        let now = self.now_ms();
        let user_id = match (&kind.user_id, kind.worker) {
            (_, true) => None,
            (Some(user), false) => Some(user.clone()),
            (None, false) => {
                let role = if kind.admin {
                    ServerRole::Admin
                } else {
                    ServerRole::User
                };
                Some(
                    crate::users::create_identity_in(self, tx, name, None, role)
                        .await?
                        .0,
                )
            }
        };
        let row = tx
            .fetch_one(
                query(
                    "INSERT INTO tokens (id, name, secret_sha256, admin, worker, created_at,
                        user_id, source, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     RETURNING id, name, admin, worker, user_id, source, expires_at, created_at,
                        revoked_at",
                )
                .bind(self.new_id("tok_"))
                .bind(name)
                .bind(hash_secret(secret))
                .bind(kind.admin)
                .bind(kind.worker)
                .bind(now)
                .bind(user_id)
                .bind(kind.source)
                .bind(kind.expires_at),
            )
            .await?;
        let info = token_from_row(&row)?;
        crate::audit::audit_in(
            tx,
            who,
            "token.created",
            crate::AuditSubject::new("token", &info.id),
            serde_json::json!({
                "name": info.name,
                "user_id": info.user_id,
                "new_user": kind.user_id.is_none() && !kind.worker,
                "admin": info.admin,
                "worker": info.worker,
                "source": info.source,
                "expires_at": info.expires_at,
            }),
            now,
        )
        .await?;
        Ok(info)
    }

    /// Creates a token for an existing user (their own `kiln token create`,
    /// or `kiln login` through single sign-on with `source = "sso"` and an
    /// expiry). The secret in the answer is the only copy. The audit
    /// trail names the user as the actor of `token.created`; use
    /// [`Store::create_user_token_by`] when someone else (an admin) asks.
    pub async fn create_user_token(
        &self,
        user_id: &str,
        name: &str,
        source: &'static str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<NewToken> {
        self.create_user_token_by(None, user_id, name, source, expires_at)
            .await
    }

    /// [`Store::create_user_token`] on behalf of `who` (`None`: the user
    /// themself), for the audit trail.
    pub async fn create_user_token_by(
        &self,
        who: Option<&Principal>,
        user_id: &str,
        name: &str,
        source: &'static str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<NewToken> {
        let name = validate_token_name(name)?;
        let secret = new_token_secret();
        let info = self
            .run("create token", || async {
                let mut tx = self.begin().await?;
                let user = tx
                    .fetch_optional(
                        query("SELECT name, role FROM users WHERE id = $1").bind(user_id),
                    )
                    .await?
                    .ok_or_else(|| StoreError::not_found(format!("user {user_id}")))?;
                let role = user.text("role")?;
                let themself = Principal {
                    name: user.text("name")?,
                    user_name: user.text("name")?,
                    user_id: Some(user_id.to_string()),
                    ..Principal::default()
                };
                let kind = TokenKind {
                    admin: role == "owner" || role == "admin",
                    worker: false,
                    user_id: Some(user_id.to_string()),
                    source,
                    expires_at: expires_at.map(crate::clock::to_millis),
                };
                let info = self
                    .insert_token_in(&mut tx, who.unwrap_or(&themself), name, &secret, kind)
                    .await?;
                self.commit(tx, Vec::new()).await?;
                Ok(info)
            })
            .await?;
        Ok(NewToken { info, secret })
    }

    /// The principal of a live token, or `None` for an unknown, revoked or
    /// expired one, or one whose user is disabled.
    pub async fn verify_token(&self, secret: &str) -> Result<Option<Principal>> {
        let hash = hash_secret(secret);
        self.run("verify token", || async {
            let row = self
                .inner
                .db
                .fetch_optional(
                    query(
                        "SELECT t.id, t.name, t.admin, t.worker, t.user_id, t.expires_at,
                            u.name AS user_name, u.role, u.disabled_at
                         FROM tokens t LEFT JOIN users u ON u.id = t.user_id
                         WHERE t.secret_sha256 = $1 AND t.revoked_at IS NULL",
                    )
                    .bind(&hash),
                )
                .await?;
            let Some(row) = row else { return Ok(None) };
            if row
                .opt_int("expires_at")?
                .is_some_and(|at| at <= self.now_ms())
                || row.opt_int("disabled_at")?.is_some()
            {
                return Ok(None);
            }
            let user_id = row.opt_text("user_id")?;
            let role: ServerRole = match row.opt_text("role")? {
                Some(role) => role
                    .parse()
                    .map_err(|e| StoreError::corrupt("user role", e))?,
                None => ServerRole::User,
            };
            let teams = match &user_id {
                Some(user) => crate::users::memberships_in(&mut &self.inner.db, user).await?,
                None => Vec::new(),
            };
            let worker = row.bool("worker")?;
            Ok(Some(Principal {
                token_id: row.text("id")?,
                name: row.text("name")?,
                admin: !worker && role.is_admin(),
                worker,
                user_name: row
                    .opt_text("user_name")?
                    .unwrap_or_else(|| row.text("name").unwrap_or_default()),
                user_id,
                role,
                teams,
                origin: None,
            }))
        })
        .await
    }

    /// Whether `token_id` is live and its user is, now, an owner or admin
    /// (not disabled). What an environment's creator may reach (host paths,
    /// internal addresses) is judged by this at every clone and delivery, so
    /// a demoted admin's environments lose those rights with them.
    pub async fn token_holder_is_admin(&self, token_id: &str) -> Result<bool> {
        self.run("check a token's admin rights", || async {
            let row = self
                .inner
                .db
                .fetch_optional(
                    query(
                        "SELECT u.role, u.disabled_at, t.expires_at FROM tokens t
                         JOIN users u ON u.id = t.user_id
                         WHERE t.id = $1 AND t.revoked_at IS NULL AND t.worker = FALSE",
                    )
                    .bind(token_id),
                )
                .await?;
            let Some(row) = row else { return Ok(false) };
            let live = row.opt_int("disabled_at")?.is_none()
                && row
                    .opt_int("expires_at")?
                    .is_none_or(|at| at > self.now_ms());
            let role = row.text("role")?;
            Ok(live && (role == "owner" || role == "admin"))
        })
        .await
    }

    /// Every token, oldest first, revoked ones included.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        self.run("list tokens", || async {
            let rows = self
                .inner
                .db
                .fetch_all(query(
                    "SELECT id, name, admin, worker, user_id, source, expires_at, created_at, revoked_at FROM tokens ORDER BY id",
                ))
                .await?;
            rows.iter().map(token_from_row).collect()
        })
        .await
    }

    /// Revokes a token (again is fine). Its tasks and environments stay.
    /// The audit trail names the server as the actor: requests use
    /// [`Store::revoke_token_by`].
    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo> {
        self.revoke_token_by(&crate::audit::server_actor(), id)
            .await
    }

    /// [`Store::revoke_token`] on behalf of `who`: `token.revoked` names
    /// them (a second revocation changes nothing and records nothing).
    pub async fn revoke_token_by(&self, who: &Principal, id: &str) -> Result<TokenInfo> {
        self.run("revoke token", || async {
            let mut tx = self.begin().await?;
            let now = self.now_ms();
            let revoked = tx
                .execute(
                    query("UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                        .bind(id)
                        .bind(now),
                )
                .await?;
            let row = tx
                .fetch_optional(
                    query(
                        "SELECT id, name, admin, worker, user_id, source, expires_at, created_at,
                            revoked_at FROM tokens WHERE id = $1",
                    )
                    .bind(id),
                )
                .await?
                .ok_or_else(|| StoreError::not_found(format!("token {id}")))?;
            let info = token_from_row(&row)?;
            if revoked > 0 {
                crate::audit::audit_in(
                    &mut tx,
                    who,
                    "token.revoked",
                    crate::AuditSubject::new("token", id),
                    serde_json::json!({
                        "name": info.name,
                        "user_id": info.user_id,
                        "worker": info.worker,
                    }),
                    now,
                )
                .await?;
            }
            self.commit(tx, Vec::new()).await?;
            Ok(info)
        })
        .await
    }

    /// First-start bootstrap of the admin token.
    ///
    /// With `from_env` (the value of `KILN_ADMIN_TOKEN`), that secret is
    /// registered as an admin token unless it already is. Without it, an
    /// admin token is created when no live one exists, and its secret is
    /// returned to be printed once.
    pub async fn ensure_admin_token(&self, from_env: Option<&str>) -> Result<AdminBootstrap> {
        match from_env {
            Some(secret) => self.register_admin_secret(secret.trim()).await,
            None => {
                let secret = new_token_secret();
                let created = self
                    .run("create the first admin token", || {
                        self.insert_first_admin(&secret)
                    })
                    .await?;
                Ok(match created {
                    Some(info) => AdminBootstrap::Created(NewToken { info, secret }),
                    None => AdminBootstrap::Present,
                })
            }
        }
    }

    async fn register_admin_secret(&self, secret: &str) -> Result<AdminBootstrap> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(StoreError::invalid(
                "KILN_ADMIN_TOKEN",
                format!(
                    "it is {} characters long; use at least {MIN_SECRET_LEN} random characters (e.g. `openssl rand -hex 32`)",
                    secret.len()
                ),
            ));
        }
        let hash = hash_secret(secret);
        let existing = self
            .run("look up KILN_ADMIN_TOKEN", || async {
                let row = self
                    .inner
                    .db
                    .fetch_optional(
                        query(
                            "SELECT id, name, admin, worker, user_id, source, expires_at, created_at,
                            revoked_at FROM tokens
                             WHERE secret_sha256 = $1",
                        )
                        .bind(&hash),
                    )
                    .await?;
                row.as_ref().map(token_from_row).transpose()
            })
            .await?;
        match existing {
            Some(token) if token.revoked_at.is_some() => Err(StoreError::invalid(
                "KILN_ADMIN_TOKEN",
                format!(
                    "it is token {} which was revoked; set a new secret",
                    token.id
                ),
            )),
            Some(token) if !token.admin => Err(StoreError::invalid(
                "KILN_ADMIN_TOKEN",
                format!(
                    "it is token {} which is not an admin token; set a new secret",
                    token.id
                ),
            )),
            Some(_) => Ok(AdminBootstrap::Present),
            None => {
                let server = crate::audit::server_actor();
                let info = self
                    .run("register KILN_ADMIN_TOKEN", || {
                        self.insert_token(
                            &server,
                            "admin (KILN_ADMIN_TOKEN)",
                            secret,
                            TokenKind::user(true),
                        )
                    })
                    .await?;
                Ok(AdminBootstrap::Registered(info))
            }
        }
    }
}

/// What a new token may do (a user's, admin or not, or a worker's) and
/// whose it is.
#[derive(Debug, Clone)]
pub(crate) struct TokenKind {
    admin: bool,
    worker: bool,
    /// `None` for a user token: a new user of its own.
    user_id: Option<String>,
    source: &'static str,
    expires_at: Option<i64>,
}

impl TokenKind {
    pub(crate) const WORKER: TokenKind = TokenKind {
        admin: false,
        worker: true,
        user_id: None,
        source: "local",
        expires_at: None,
    };

    /// A token of an existing user.
    pub(crate) fn of_user(user_id: String, admin: bool) -> TokenKind {
        TokenKind {
            admin,
            worker: false,
            user_id: Some(user_id),
            source: "local",
            expires_at: None,
        }
    }

    pub(crate) fn user(admin: bool) -> TokenKind {
        TokenKind {
            admin,
            worker: false,
            user_id: None,
            source: "local",
            expires_at: None,
        }
    }
}

pub(crate) fn validate_token_name(name: &str) -> Result<&str> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            "name",
            "a token name must be 1 to 200 printable characters",
        ));
    }
    Ok(name)
}
