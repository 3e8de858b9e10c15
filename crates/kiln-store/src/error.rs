use std::path::PathBuf;

/// What went wrong in the store, with the operation and what to do about it.
///
/// Database URLs in messages never carry passwords (see [`crate::redact_url`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database URL {url}: {reason}; use sqlite:PATH or postgres://USER@HOST/DB")]
    InvalidUrl { url: String, reason: String },

    #[error("cannot create the data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot open database at {url}: {source} — {hint}")]
    Open {
        url: String,
        hint: &'static str,
        source: sqlx::Error,
    },

    #[error("cannot migrate database at {url}: {source} — the database may belong to a newer kiln, or a migration was edited after it ran")]
    Migrate {
        url: String,
        source: sqlx::migrate::MigrateError,
    },

    #[error("{operation} failed: {source}")]
    Database {
        operation: &'static str,
        source: sqlx::Error,
    },

    /// The thing does not exist, or the caller may not see it (the two are
    /// not told apart, so that ids of other users' tasks do not leak).
    #[error("{what} not found")]
    NotFound { what: String },

    /// A caller-supplied value is unusable; `field` names it as the API does.
    #[error("invalid {field}: {message}")]
    InvalidInput {
        field: &'static str,
        message: String,
    },

    #[error("{message}")]
    Conflict { message: String },

    /// The caller can see the thing (it is in one of their teams) but their
    /// role does not allow the action; the message names the role needed.
    #[error("{message}")]
    Forbidden { message: String },

    /// The worker no longer holds the attempt: its lease expired and the
    /// attempt was recovered, or it was finished already.
    #[error("attempt {attempt} of task {task_id} is not running on worker {worker_id} any more (its lease expired and it was recovered, or it finished); stop working on it")]
    LeaseLost {
        task_id: String,
        attempt: u32,
        worker_id: String,
    },

    /// A lease token no live worker token was given (or whose worker token
    /// was revoked).
    #[error("unknown lease token: use the lease token of a claim this worker holds (its worker token may have been revoked)")]
    UnknownLease,

    /// Secrets were given (or are stored sealed) but the store was opened
    /// without a key.
    #[error("the store was opened without a secret key, so it cannot store or read environment secrets; open it with StoreOptions::secret_key")]
    NoSecretKey,

    /// The environment's secrets were sealed under another key.
    #[error("cannot read the secrets of environment {environment_id}: the secret key does not match the one the secrets were stored with; {hint}")]
    SecretKeyMismatch {
        environment_id: String,
        hint: String,
    },

    /// A sealed value does not open under the key it names: it was altered
    /// in the database, or copied there from another environment or name.
    #[error("secret {name} of environment {environment_id} does not authenticate under the key it was stored with: the stored value was altered or copied from another environment; create the environment again with its secrets")]
    SecretTampered {
        environment_id: String,
        name: String,
    },

    #[error("the stored {what} is unreadable: {detail}; it was written by an incompatible kiln or edited by hand")]
    Corrupt { what: &'static str, detail: String },
}

impl StoreError {
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        StoreError::NotFound { what: what.into() }
    }

    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        StoreError::InvalidInput {
            field,
            message: message.into(),
        }
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        StoreError::Forbidden {
            message: message.into(),
        }
    }

    pub(crate) fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The error type of operation bodies: a database error gets the operation
/// name attached once, at the boundary, where transient ones are retried.
#[derive(Debug)]
pub(crate) enum OpError {
    Sqlx(sqlx::Error),
    Store(StoreError),
}

impl From<sqlx::Error> for OpError {
    fn from(e: sqlx::Error) -> Self {
        OpError::Sqlx(e)
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Store(e)
    }
}

impl OpError {
    pub(crate) fn into_store(self, operation: &'static str) -> StoreError {
        match self {
            OpError::Sqlx(source) => StoreError::Database { operation, source },
            OpError::Store(e) => e,
        }
    }

    /// Deadlocks and serialization failures (PostgreSQL) and a busy database
    /// (SQLite, after its busy timeout) are worth running the operation again.
    pub(crate) fn is_transient(&self) -> bool {
        let OpError::Sqlx(sqlx::Error::Database(db)) = self else {
            return false;
        };
        matches!(
            db.code().as_deref(),
            Some("40001" | "40P01" | "5" | "6" | "517")
        )
    }
}
