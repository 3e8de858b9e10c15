use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::broadcast;

use crate::changes::{
    connect_listener, forward_pg_notifications, Change, Subscription, PG_CHANNEL,
};
use crate::clock::{to_millis, Clock};
use crate::db::{migrator, query, Backend, Db, Tx};
use crate::error::{OpError, Result, StoreError};
use crate::ids::IdGenerator;
use crate::options::{DatabaseTarget, StoreOptions};
use crate::secrets::SecretKey;

/// How many times an operation runs when the database reports a transient
/// conflict (deadlock, serialization failure, busy).
const TRANSIENT_TRIES: u32 = 4;

/// kiln's persistent state. Cheap to clone; clones share the pool.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) db: Db,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) ids: IdGenerator,
    pub(crate) changes: broadcast::Sender<Change>,
    /// Tells this store's own PostgreSQL notifications apart from others'.
    pub(crate) origin: String,
    pub(crate) poll_interval: Duration,
    pub(crate) display_url: String,
    pub(crate) secret_key: Option<SecretKey>,
    _listener: Option<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Store {
    /// Connects (creating the SQLite file and its directory when missing)
    /// and brings the schema up to date.
    pub async fn open(options: StoreOptions) -> Result<Store> {
        let display_url = options.display_url();
        let db = match &options.target {
            DatabaseTarget::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                let connect = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // In WAL mode NORMAL survives a crash of the process (the
                    // WAL is in the OS cache); only a power cut can lose the
                    // last commits, and it never corrupts the file.
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(options.busy_timeout)
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(options.max_connections)
                    .connect_with(connect)
                    .await
                    .map_err(|source| open_error(&display_url, source))?;
                Db::Sqlite(pool)
            }
            DatabaseTarget::Postgres(url) => {
                let connect =
                    PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl {
                        url: display_url.clone(),
                        reason: e.to_string(),
                    })?;
                // One direct connection first: the pool would retry a refused
                // connection until its timeout and then only say "timed out".
                connect
                    .connect()
                    .await
                    .map_err(|source| open_error(&display_url, source))?
                    .close()
                    .await
                    .ok();
                let pool = PgPoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(Duration::from_secs(15))
                    .connect_with(connect)
                    .await
                    .map_err(|source| open_error(&display_url, source))?;
                Db::Postgres(pool)
            }
        };
        let migrate = |source| StoreError::Migrate {
            url: display_url.clone(),
            source,
        };
        let migrator = migrator(db.backend()).await.map_err(migrate)?;
        match &db {
            Db::Sqlite(pool) => migrator.run(pool).await.map_err(migrate)?,
            Db::Postgres(pool) => migrator.run(pool).await.map_err(migrate)?,
        }

        let (changes, _) = broadcast::channel(1024);
        let ids = IdGenerator::default();
        let origin = ids.next("p", to_millis(options.clock.now()));
        // Listening before open returns: changes committed after it are seen.
        let listener = match &db {
            Db::Postgres(pool) => {
                let listener = connect_listener(pool)
                    .await
                    .map_err(|source| open_error(&display_url, source))?;
                Some(AbortOnDrop(tokio::spawn(forward_pg_notifications(
                    pool.clone(),
                    listener,
                    origin.clone(),
                    changes.clone(),
                ))))
            }
            Db::Sqlite(_) => None,
        };
        let store = Store {
            inner: Arc::new(Inner {
                db,
                clock: options.clock,
                ids,
                changes,
                origin,
                poll_interval: options.poll_interval,
                display_url,
                secret_key: options.secret_key,
                _listener: listener,
            }),
        };
        store.migrate_identities().await?;
        if store.inner.secret_key.is_some() {
            store.seal_plaintext_secrets().await?;
            store.seal_repo_url_credentials().await?;
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.inner.db.backend()
    }

    /// The database this store uses, safe to print (no password).
    pub fn display_url(&self) -> &str {
        &self.inner.display_url
    }

    /// Closes the pool; further operations fail. Dropping every clone of the
    /// store has the same effect without waiting.
    pub async fn close(&self) {
        self.inner.db.close().await;
    }

    /// Checks that the database answers (for `/healthz`).
    pub async fn ping(&self) -> Result<()> {
        self.run("ping the database", || async {
            self.inner.db.fetch_one(query("SELECT 1 AS one")).await?;
            Ok(())
        })
        .await
    }

    /// Now, per the store's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    pub(crate) fn now_ms(&self) -> i64 {
        to_millis(self.inner.clock.now())
    }

    pub(crate) fn new_id(&self, prefix: &str) -> String {
        self.inner.ids.next(prefix, self.now_ms())
    }

    /// Starts receiving [`Change`]s. Subscribe before reading what you watch.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.inner.changes.subscribe(),
            poll_interval: self.inner.poll_interval,
        }
    }

    /// Runs an operation body, retrying it when the database reports a
    /// transient conflict, and names the operation in its error.
    pub(crate) async fn run<T, F, Fut>(&self, operation: &'static str, mut body: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OpError>>,
    {
        let mut tries = 1;
        loop {
            match body().await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_transient() && tries < TRANSIENT_TRIES => {
                    tracing::debug!(operation, tries, "transient database conflict; retrying");
                    tries += 1;
                }
                Err(e) => return Err(e.into_store(operation)),
            }
        }
    }

    pub(crate) async fn begin(&self) -> Result<Tx, OpError> {
        Ok(self.inner.db.begin().await?)
    }

    /// Commits `tx` and tells subscribers about `changes` (on PostgreSQL
    /// through NOTIFY in the same transaction, so they fire only on commit).
    pub(crate) async fn commit(&self, mut tx: Tx, mut changes: Vec<Change>) -> Result<(), OpError> {
        changes.extend(tx.take_notifications());
        if tx.backend() == Backend::Postgres {
            for change in &changes {
                tx.execute(
                    query("SELECT pg_notify($1, $2)")
                        .bind(PG_CHANNEL)
                        .bind(change.encode(&self.inner.origin)),
                )
                .await?;
            }
        }
        tx.commit().await?;
        for change in changes {
            // No receiver is not an error: nobody is waiting.
            let _ = self.inner.changes.send(change);
        }
        Ok(())
    }
}

fn open_error(url: &str, source: sqlx::Error) -> StoreError {
    let hint = match &source {
        sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused: is PostgreSQL running and listening at that host and port?"
        }
        sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "no such socket or host: check the host in the URL"
        }
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01" | "28000") => "check the user and password in the URL",
            Some("3D000") => "the database does not exist: create it (createdb NAME)",
            Some("14") => "SQLite cannot open the file: check that its directory is writable",
            _ => "check the URL and that the database accepts connections",
        },
        sqlx::Error::PoolTimedOut => {
            "timed out connecting: is the database reachable from this machine?"
        }
        sqlx::Error::Tls(_) => "TLS failed: check sslmode and the server certificate",
        _ => "check the URL and that the database accepts connections",
    };
    StoreError::Open {
        url: url.to_string(),
        hint,
        source,
    }
}

/// Statement run first in every transaction that changes attempts of a task:
/// it takes the task row's lock, so transitions of one task serialize and
/// the status derivation that follows sees every committed attempt. It
/// returns the status before the derivation.
const LOCK_TASK: &str = "UPDATE tasks SET updated_at = $2 WHERE id = $1 RETURNING status";

/// The task status rule (see `TaskStatus`), as one portable statement.
const DERIVE_TASK_STATUS: &str = "UPDATE tasks SET status = CASE
    WHEN NOT EXISTS (SELECT 1 FROM attempts a WHERE a.task_id = $1 AND a.status <> 'queued')
        THEN 'queued'
    WHEN EXISTS (SELECT 1 FROM attempts a WHERE a.task_id = $1
                 AND a.status IN ('queued', 'running', 'interrupted'))
        THEN 'running'
    WHEN EXISTS (SELECT 1 FROM attempts a WHERE a.task_id = $1 AND a.status = 'succeeded')
        THEN 'succeeded'
    WHEN EXISTS (SELECT 1 FROM attempts a WHERE a.task_id = $1 AND a.status = 'checks_failed')
        THEN 'checks_failed'
    WHEN EXISTS (SELECT 1 FROM attempts a WHERE a.task_id = $1 AND a.status = 'cancelled')
        THEN 'cancelled'
    ELSE 'failed' END
  WHERE id = $1
  RETURNING status";

/// Re-derives a task's status after its attempts changed in `tx`, and
/// notifies [`Change::TaskStatus`] on commit when it changed: event streams
/// learn of status changes from that, without polling.
///
/// The lock and the derivation are two statements on purpose: on
/// PostgreSQL (READ COMMITTED) each statement reads a fresh snapshot, so the
/// derivation, which runs after the lock is granted, sees the attempts that
/// a concurrent transaction of the same task committed while we waited.
pub(crate) async fn refresh_task_status(
    tx: &mut Tx,
    task_id: &str,
    now_ms: i64,
) -> Result<(), OpError> {
    let Some(before) = tx
        .fetch_optional(query(LOCK_TASK).bind(task_id).bind(now_ms))
        .await?
    else {
        return Ok(());
    };
    let after = tx
        .fetch_one(query(DERIVE_TASK_STATUS).bind(task_id))
        .await?;
    if before.text("status")? != after.text("status")? {
        tx.notify_on_commit(Change::TaskStatus {
            task_id: task_id.to_string(),
        });
    }
    Ok(())
}
