//! The two backends behind one small interface.
//!
//! Every operation is written once against [`Db`] and [`Tx`] with one SQL
//! text; these enums forward a [`Query`] to the native sqlx driver of the
//! backend in use. Arguments are a closed set ([`Arg`]) that both drivers
//! bind the same way, and rows are read through [`DbRow`] accessors.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqlitePool, SqliteRow};
use sqlx::{Row, Transaction};

use crate::changes::Change;

/// The migrations, embedded in the binary. Each file in `migrations/` is
/// listed here (a test checks the two agree).
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/0001_initial.sql")),
    (
        2,
        "repo_credential",
        include_str!("../migrations/0002_repo_credential.sql"),
    ),
    (3, "workers", include_str!("../migrations/0003_workers.sql")),
    (
        4,
        "evidence_delivery",
        include_str!("../migrations/0004_evidence_delivery.sql"),
    ),
    (5, "teams", include_str!("../migrations/0005_teams.sql")),
    (6, "sso", include_str!("../migrations/0006_sso.sql")),
];

/// A migration's text for one backend: lines between `-- kiln:sqlite-only`
/// (or `-- kiln:postgres-only`) and `-- kiln:end` are kept only for that
/// database. Everything else is shared, as most of the schema is.
///
/// A migration without markers is returned unchanged: databases store each
/// applied migration's checksum, and earlier files must keep theirs.
pub(crate) fn migration_for(sql: &'static str, backend: Backend) -> Cow<'static, str> {
    if !sql.contains("-- kiln:") {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut only: Option<Backend> = None;
    for line in sql.lines() {
        match line.trim() {
            "-- kiln:sqlite-only" => only = Some(Backend::Sqlite),
            "-- kiln:postgres-only" => only = Some(Backend::Postgres),
            "-- kiln:end" => only = None,
            _ if only.is_none_or(|b| b == backend) => {
                out.push_str(line);
                out.push('\n');
            }
            _ => {}
        }
    }
    Cow::Owned(out)
}

#[derive(Debug)]
struct EmbeddedMigrations(Backend);

impl<'s> MigrationSource<'s> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send + 's>>
    {
        let backend = self.0;
        Box::pin(async move {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        migration_for(sql, backend),
                        false,
                    )
                })
                .collect())
        })
    }
}

pub(crate) async fn migrator(backend: Backend) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(EmbeddedMigrations(backend)).await
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One bind argument. Nullable variants keep their SQL type, which
/// PostgreSQL needs even for NULL.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(bool),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}
impl From<u32> for Arg {
    fn from(v: u32) -> Self {
        Arg::Int(Some(i64::from(v)))
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_string()))
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(Some(v.clone()))
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_string))
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}

/// SQL text (with `$1`-style parameters, which both drivers accept) and its
/// arguments.
#[derive(Debug)]
pub(crate) struct Query {
    sql: &'static str,
    args: Vec<Arg>,
}

pub(crate) fn query(sql: &'static str) -> Query {
    Query {
        sql,
        args: Vec::new(),
    }
}

impl Query {
    pub(crate) fn bind(mut self, arg: impl Into<Arg>) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// Builds the native sqlx query of one backend; the two expansions differ
/// only in the database type.
macro_rules! native_query {
    ($db:ty, $q:expr) => {{
        let q: &Query = $q;
        let mut native = sqlx::query::<$db>(q.sql);
        for arg in &q.args {
            native = match arg {
                Arg::Int(v) => native.bind(*v),
                Arg::Text(v) => native.bind(v.as_deref()),
                Arg::Bool(v) => native.bind(*v),
            };
        }
        native
    }};
}

/// A connection pool of either backend.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// An open transaction of either backend, and the change notifications
/// that its statements found to send once it commits. Dropping it rolls
/// back (and sends nothing).
pub(crate) struct Tx {
    native: NativeTx,
    notify_on_commit: Vec<Change>,
}

enum NativeTx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// A result row of either backend.
pub(crate) enum DbRow {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

impl Db {
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Starts a read-write transaction. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`), so a transaction that reads before it writes
    /// waits for other writers instead of failing with a stale snapshot.
    pub(crate) async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pool) => {
                Tx::new(NativeTx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?))
            }
            Db::Postgres(pool) => Tx::new(NativeTx::Postgres(pool.begin().await?)),
        })
    }

    pub(crate) async fn fetch_all(&self, q: Query) -> Result<Vec<DbRow>, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pool) => native_query!(Sqlite, &q)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(DbRow::Sqlite)
                .collect(),
            Db::Postgres(pool) => native_query!(Postgres, &q)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(DbRow::Postgres)
                .collect(),
        })
    }

    pub(crate) async fn fetch_optional(&self, q: Query) -> Result<Option<DbRow>, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pool) => native_query!(Sqlite, &q)
                .fetch_optional(pool)
                .await?
                .map(DbRow::Sqlite),
            Db::Postgres(pool) => native_query!(Postgres, &q)
                .fetch_optional(pool)
                .await?
                .map(DbRow::Postgres),
        })
    }

    pub(crate) async fn fetch_one(&self, q: Query) -> Result<DbRow, sqlx::Error> {
        self.fetch_optional(q)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    pub(crate) async fn close(&self) {
        match self {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

impl Tx {
    fn new(native: NativeTx) -> Tx {
        Tx {
            native,
            notify_on_commit: Vec::new(),
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        match self.native {
            NativeTx::Sqlite(_) => Backend::Sqlite,
            NativeTx::Postgres(_) => Backend::Postgres,
        }
    }

    /// Sends `change` to subscribers if (and once) this transaction commits,
    /// after the changes given to `Store::commit`.
    pub(crate) fn notify_on_commit(&mut self, change: Change) {
        if !self.notify_on_commit.contains(&change) {
            self.notify_on_commit.push(change);
        }
    }

    pub(crate) fn take_notifications(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.notify_on_commit)
    }

    /// Runs a statement; returns the number of rows it changed.
    pub(crate) async fn execute(&mut self, q: Query) -> Result<u64, sqlx::Error> {
        Ok(match &mut self.native {
            NativeTx::Sqlite(tx) => native_query!(Sqlite, &q)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            NativeTx::Postgres(tx) => native_query!(Postgres, &q)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    pub(crate) async fn fetch_all(&mut self, q: Query) -> Result<Vec<DbRow>, sqlx::Error> {
        Ok(match &mut self.native {
            NativeTx::Sqlite(tx) => native_query!(Sqlite, &q)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(DbRow::Sqlite)
                .collect(),
            NativeTx::Postgres(tx) => native_query!(Postgres, &q)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(DbRow::Postgres)
                .collect(),
        })
    }

    pub(crate) async fn fetch_optional(&mut self, q: Query) -> Result<Option<DbRow>, sqlx::Error> {
        Ok(match &mut self.native {
            NativeTx::Sqlite(tx) => native_query!(Sqlite, &q)
                .fetch_optional(&mut **tx)
                .await?
                .map(DbRow::Sqlite),
            NativeTx::Postgres(tx) => native_query!(Postgres, &q)
                .fetch_optional(&mut **tx)
                .await?
                .map(DbRow::Postgres),
        })
    }

    pub(crate) async fn fetch_one(&mut self, q: Query) -> Result<DbRow, sqlx::Error> {
        self.fetch_optional(q)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self.native {
            NativeTx::Sqlite(tx) => tx.commit().await,
            NativeTx::Postgres(tx) => tx.commit().await,
        }
    }
}

macro_rules! row_get {
    ($row:expr, $ty:ty, $col:expr) => {
        match $row {
            DbRow::Sqlite(r) => r.try_get::<$ty, _>($col),
            DbRow::Postgres(r) => r.try_get::<$ty, _>($col),
        }
    };
}

impl DbRow {
    pub(crate) fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
        row_get!(self, i64, col)
    }

    pub(crate) fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        row_get!(self, Option<i64>, col)
    }

    pub(crate) fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        row_get!(self, String, col)
    }

    pub(crate) fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        row_get!(self, Option<String>, col)
    }

    pub(crate) fn bool(&self, col: &str) -> Result<bool, sqlx::Error> {
        row_get!(self, bool, col)
    }

    /// A count or attempt number that the schema keeps non-negative.
    pub(crate) fn uint(&self, col: &str) -> Result<u32, sqlx::Error> {
        let v = self.int(col)?;
        u32::try_from(v).map_err(|_| sqlx::Error::ColumnDecode {
            index: col.to_string(),
            source: format!("{v} is not a valid count").into(),
        })
    }

    pub(crate) fn u64(&self, col: &str) -> Result<u64, sqlx::Error> {
        Ok(u64::try_from(self.int(col)?).unwrap_or(0))
    }
}

/// Where a read goes: the transaction of a change, or the pool for a
/// plain read (which on SQLite must not take the write lock).
pub(crate) trait Reads: Send {
    fn rows(&mut self, q: Query) -> impl Future<Output = Result<Vec<DbRow>, sqlx::Error>> + Send;
    fn row(&mut self, q: Query) -> impl Future<Output = Result<Option<DbRow>, sqlx::Error>> + Send;
}

impl Reads for Tx {
    fn rows(&mut self, q: Query) -> impl Future<Output = Result<Vec<DbRow>, sqlx::Error>> + Send {
        self.fetch_all(q)
    }
    fn row(&mut self, q: Query) -> impl Future<Output = Result<Option<DbRow>, sqlx::Error>> + Send {
        self.fetch_optional(q)
    }
}

impl Reads for &Db {
    fn rows(&mut self, q: Query) -> impl Future<Output = Result<Vec<DbRow>, sqlx::Error>> + Send {
        Db::fetch_all(self, q)
    }
    fn row(&mut self, q: Query) -> impl Future<Output = Result<Option<DbRow>, sqlx::Error>> + Send {
        Db::fetch_optional(self, q)
    }
}
