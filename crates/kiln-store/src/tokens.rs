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

/// The PostgreSQL advisory lock key servers take turns on while creating
/// the first admin token (`kiln` in ASCII).
const ADMIN_BOOTSTRAP_LOCK: i64 = 0x6b_69_6c_6e;

/// Shortest secret accepted from `KILN_ADMIN_TOKEN`.
pub const MIN_SECRET_LEN: usize = 24;

/// Who is calling: the token a request was authenticated with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub token_id: String,
    pub name: String,
    /// Admins see and act on every user's tasks and environments.
    pub admin: bool,
    /// A worker token (`kiln worker`): it claims and runs attempts and may
    /// call nothing else.
    #[serde(default)]
    pub worker: bool,
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
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenInfo {
    pub fn principal(&self) -> Principal {
        Principal {
            token_id: self.id.clone(),
            name: self.name.clone(),
            admin: self.admin,
            worker: self.worker,
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

fn token_from_row(row: &DbRow) -> Result<TokenInfo, OpError> {
    Ok(TokenInfo {
        id: row.text("id")?,
        name: row.text("name")?,
        admin: row.bool("admin")?,
        worker: row.bool("worker")?,
        created_at: from_millis(row.int("created_at")?),
        revoked_at: row.opt_int("revoked_at")?.map(from_millis),
    })
}

impl Store {
    /// Creates a token; the returned secret is the only copy.
    pub async fn create_token(&self, name: &str, admin: bool) -> Result<NewToken> {
        let name = validate_token_name(name)?;
        let secret = new_token_secret();
        let info = self
            .run("create token", || {
                self.insert_token(name, &secret, TokenKind::user(admin))
            })
            .await?;
        Ok(NewToken { info, secret })
    }

    /// Creates a worker token for `kiln worker`: it claims and runs
    /// attempts, and is refused on every user API.
    pub async fn create_worker_token(&self, name: &str) -> Result<NewToken> {
        let name = validate_token_name(name)?;
        let secret = new_token_secret();
        let info = self
            .run("create worker token", || {
                self.insert_token(name, &secret, TokenKind::WORKER)
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
                "SELECT COUNT(*) AS n FROM tokens WHERE admin = TRUE AND revoked_at IS NULL",
            ))
            .await?
            .int("n")?;
        if live_admins > 0 {
            self.commit(tx, Vec::new()).await?;
            return Ok(None);
        }
        let info = self
            .insert_token_in(&mut tx, "admin", secret, TokenKind::user(true))
            .await?;
        self.commit(tx, Vec::new()).await?;
        Ok(Some(info))
    }

    async fn insert_token(
        &self,
        name: &str,
        secret: &str,
        kind: TokenKind,
    ) -> Result<TokenInfo, OpError> {
        let mut tx = self.begin().await?;
        let info = self.insert_token_in(&mut tx, name, secret, kind).await?;
        self.commit(tx, Vec::new()).await?;
        Ok(info)
    }

    async fn insert_token_in(
        &self,
        tx: &mut Tx,
        name: &str,
        secret: &str,
        kind: TokenKind,
    ) -> Result<TokenInfo, OpError> {
        let row = tx
            .fetch_one(
                query(
                    "INSERT INTO tokens (id, name, secret_sha256, admin, worker, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     RETURNING id, name, admin, worker, created_at, revoked_at",
                )
                .bind(self.new_id("tok_"))
                .bind(name)
                .bind(hash_secret(secret))
                .bind(kind.admin)
                .bind(kind.worker)
                .bind(self.now_ms()),
            )
            .await?;
        token_from_row(&row)
    }

    /// The principal of a live token, or `None` for an unknown or revoked one.
    pub async fn verify_token(&self, secret: &str) -> Result<Option<Principal>> {
        let hash = hash_secret(secret);
        self.run("verify token", || async {
            let row = self
                .inner
                .db
                .fetch_optional(
                    query(
                        "SELECT id, name, admin, worker FROM tokens
                         WHERE secret_sha256 = $1 AND revoked_at IS NULL",
                    )
                    .bind(&hash),
                )
                .await?;
            row.map(|row| {
                Ok(Principal {
                    token_id: row.text("id")?,
                    name: row.text("name")?,
                    admin: row.bool("admin")?,
                    worker: row.bool("worker")?,
                })
            })
            .transpose()
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
                    "SELECT id, name, admin, worker, created_at, revoked_at FROM tokens ORDER BY id",
                ))
                .await?;
            rows.iter().map(token_from_row).collect()
        })
        .await
    }

    /// Revokes a token (again is fine). Its tasks and environments stay.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo> {
        self.run("revoke token", || async {
            let mut tx = self.begin().await?;
            tx.execute(
                query("UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                    .bind(id)
                    .bind(self.now_ms()),
            )
            .await?;
            let row = tx
                .fetch_optional(
                    query(
                        "SELECT id, name, admin, worker, created_at, revoked_at FROM tokens
                         WHERE id = $1",
                    )
                    .bind(id),
                )
                .await?
                .ok_or_else(|| StoreError::not_found(format!("token {id}")))?;
            let info = token_from_row(&row)?;
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
                            "SELECT id, name, admin, worker, created_at, revoked_at FROM tokens
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
                let info = self
                    .run("register KILN_ADMIN_TOKEN", || {
                        self.insert_token("admin (KILN_ADMIN_TOKEN)", secret, TokenKind::user(true))
                    })
                    .await?;
                Ok(AdminBootstrap::Registered(info))
            }
        }
    }
}

/// What a new token may do: a user's (admin or not) or a worker's.
#[derive(Debug, Clone, Copy)]
struct TokenKind {
    admin: bool,
    worker: bool,
}

impl TokenKind {
    const WORKER: TokenKind = TokenKind {
        admin: false,
        worker: true,
    };

    fn user(admin: bool) -> TokenKind {
        TokenKind {
            admin,
            worker: false,
        }
    }
}

fn validate_token_name(name: &str) -> Result<&str> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            "name",
            "a token name must be 1 to 200 printable characters",
        ));
    }
    Ok(name)
}
