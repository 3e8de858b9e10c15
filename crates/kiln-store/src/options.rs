use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Result, StoreError};
use crate::secrets::SecretKey;

/// The file name of the SQLite database inside a data directory.
pub const SQLITE_FILE_NAME: &str = "kiln.db";

/// Where the data lives. `Debug` hides a PostgreSQL password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// A SQLite file (created with its directory when missing).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

impl std::fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseTarget::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            DatabaseTarget::Postgres(url) => {
                f.debug_tuple("Postgres").field(&redact_url(url)).finish()
            }
        }
    }
}

/// How to open a [`crate::Store`]. The defaults suit one `kiln serve`.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub(crate) target: DatabaseTarget,
    pub(crate) max_connections: u32,
    pub(crate) busy_timeout: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) secret_key: Option<SecretKey>,
}

impl StoreOptions {
    fn new(target: DatabaseTarget) -> Self {
        StoreOptions {
            target,
            max_connections: 8,
            busy_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
            secret_key: None,
        }
    }

    /// SQLite in `dir`/kiln.db: the embedded default of `kiln serve`.
    pub fn sqlite_in_dir(dir: impl Into<PathBuf>) -> Self {
        Self::new(DatabaseTarget::Sqlite(dir.into().join(SQLITE_FILE_NAME)))
    }

    /// SQLite in exactly this file.
    pub fn sqlite_file(path: impl Into<PathBuf>) -> Self {
        Self::new(DatabaseTarget::Sqlite(path.into()))
    }

    /// `postgres://…`, `postgresql://…`, `sqlite:PATH` or `sqlite://PATH`.
    pub fn from_url(url: &str) -> Result<Self> {
        let invalid = |reason: &str| StoreError::InvalidUrl {
            url: redact_url(url),
            reason: reason.to_string(),
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::new(DatabaseTarget::Postgres(url.to_string())));
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(invalid("the SQLite URL names no file"));
            }
            return Ok(Self::sqlite_file(path));
        }
        match url.split_once("://") {
            Some((scheme, _)) => Err(invalid(&format!("scheme {scheme:?} is not supported"))),
            None => Err(invalid("it has no scheme")),
        }
    }

    /// Pool size (default 8). SQLite still runs one writer at a time.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long a SQLite writer waits for the lock before failing (default 10 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// The safety-net wake-up of [`crate::Subscription`] when no notification
    /// arrives (default 5 s).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The source of "now" for timestamps and leases (tests pass a
    /// [`crate::ManualClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The key environment secrets are sealed with (see docs/store.md).
    /// Without one, creating an environment with secrets fails with
    /// [`StoreError::NoSecretKey`]; with one, [`crate::Store::open`] also
    /// seals secrets still stored in plaintext.
    pub fn secret_key(mut self, key: SecretKey) -> Self {
        self.secret_key = Some(key);
        self
    }

    pub fn target(&self) -> &DatabaseTarget {
        &self.target
    }

    /// The target as a URL safe to print.
    pub fn display_url(&self) -> String {
        match &self.target {
            DatabaseTarget::Sqlite(path) => format!("sqlite://{}", path.display()),
            DatabaseTarget::Postgres(url) => redact_url(url),
        }
    }
}

/// `url` with any password replaced by `***`, in the user-info part
/// (`postgres://user:secret@host`) and in a `password=` query parameter.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = out[authority_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| authority_start + i);
        if let Some(at) = out[authority_start..authority_end].rfind('@') {
            let userinfo = &out[authority_start..authority_start + at];
            if let Some(colon) = userinfo.find(':') {
                let password_start = authority_start + colon + 1;
                out.replace_range(password_start..authority_start + at, "***");
            }
        }
    }
    if let Some(query_start) = out.find('?') {
        let (head, query) = out.split_at(query_start + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_in_userinfo_is_hidden() {
        assert_eq!(
            redact_url("postgres://kiln:s3cr@t@db.example:5432/kiln"),
            "postgres://kiln:***@db.example:5432/kiln"
        );
    }

    #[test]
    fn password_query_parameter_is_hidden() {
        assert_eq!(
            redact_url("postgres://db/kiln?user=k&password=hunter2&sslmode=require"),
            "postgres://db/kiln?user=k&password=***&sslmode=require"
        );
    }

    #[test]
    fn url_without_password_is_unchanged() {
        assert_eq!(
            redact_url("postgres://kiln@localhost/kiln"),
            "postgres://kiln@localhost/kiln"
        );
    }

    #[test]
    fn sqlite_urls_name_the_file() {
        let options = StoreOptions::from_url("sqlite:///var/lib/kiln/kiln.db").unwrap();
        assert_eq!(
            options.target(),
            &DatabaseTarget::Sqlite("/var/lib/kiln/kiln.db".into())
        );
        let options = StoreOptions::from_url("sqlite:data/kiln.db?mode=rwc").unwrap();
        assert_eq!(
            options.target(),
            &DatabaseTarget::Sqlite("data/kiln.db".into())
        );
    }

    #[test]
    fn unsupported_scheme_is_named_in_the_error() {
        let err = StoreOptions::from_url("mysql://root:pw@host/db").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("\"mysql\""), "{message}");
        assert!(!message.contains("pw"), "{message}");
    }
}
