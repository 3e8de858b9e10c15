//! Real databases for the tests: a SQLite file in a temp dir, and a fresh
//! PostgreSQL database per test.
//!
//! PostgreSQL is [`PostgresServer::shared`]: `KILN_TEST_DATABASE_URL` (a
//! superuser URL of a server the caller runs) or, when unset, a throwaway
//! server started once per test process from a template made by `initdb`
//! once per machine, on a Unix socket only, with fsync off, that dies with
//! the test process. Each test creates its own database on it. Without
//! PostgreSQL the tests fail, naming what to install.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::teams::{Membership, TeamRole};
use kiln_store::{
    Backend, Environment, ManualClock, NewEnvironment, NewTask, Principal, SecretKey, Store,
    StoreError, StoreOptions, TaskDetail,
};
use kiln_testkit::postgres::PostgresServer;
use sqlx::Connection;

/// Runs the test body once against SQLite and once against PostgreSQL:
/// `on_both_backends!(async fn name(t) { … })` makes `name::sqlite` and
/// `name::postgres`, each with `t: TestStore`.
#[macro_export]
macro_rules! on_both_backends {
    ($(async fn $name:ident($t:ident) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                #[allow(unused_mut)]
                let mut $t = $crate::support::TestStore::open(kiln_store::Backend::Sqlite).await;
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                #[allow(unused_mut)]
                let mut $t = $crate::support::TestStore::open(kiln_store::Backend::Postgres).await;
                $body
            }
        }
    )*};
}

/// A store on a fresh database, with a manual clock and helpers.
pub struct TestStore {
    pub store: Store,
    pub clock: ManualClock,
    pub backend: Backend,
    /// Opens the same database again (another "process" or a restart).
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    pub async fn open(backend: Backend) -> TestStore {
        let (url, dir) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
                (url, Some(dir))
            }
            Backend::Postgres => (fresh_pg_database().await, None),
        };
        let clock = ManualClock::at_epoch_2030();
        let store = open_with_clock(&url, &clock, Duration::from_secs(30)).await;
        TestStore {
            store,
            clock,
            backend,
            url,
            _dir: dir,
        }
    }

    /// Another store on the same database and clock with `key` (or none);
    /// opening seals plaintext secrets when there is a key.
    pub async fn reopen_with_key(&self, key: Option<SecretKey>) -> Result<Store, StoreError> {
        let mut options = StoreOptions::from_url(&self.url)
            .unwrap()
            .clock(Arc::new(self.clock.clone()));
        if let Some(key) = key {
            options = options.secret_key(key);
        }
        Store::open(options).await
    }

    /// The `secrets_json` column of an environment, read past the store.
    pub async fn raw_secrets(&self, environment_id: &str) -> String {
        let sql = "SELECT secrets_json FROM environments WHERE id = $1";
        match self.backend {
            Backend::Sqlite => {
                let mut db = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql)
                    .bind(environment_id)
                    .fetch_one(&mut db)
                    .await
                    .unwrap()
            }
            Backend::Postgres => {
                let mut db = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql)
                    .bind(environment_id)
                    .fetch_one(&mut db)
                    .await
                    .unwrap()
            }
        }
    }

    /// Every text column of an environment's row, read past the store: what
    /// someone with a copy of the database sees.
    pub async fn raw_environment_row(&self, environment_id: &str) -> Vec<String> {
        use sqlx::{Column, Row};
        let sql = "SELECT * FROM environments WHERE id = $1";
        let texts = |names: Vec<String>, values: Vec<Option<String>>| {
            names
                .into_iter()
                .zip(values)
                .filter_map(|(name, value)| value.map(|v| format!("{name}={v}")))
                .collect::<Vec<_>>()
        };
        match self.backend {
            Backend::Sqlite => {
                let mut db = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                let row = sqlx::query(sql)
                    .bind(environment_id)
                    .fetch_one(&mut db)
                    .await
                    .unwrap();
                let names = row.columns().iter().map(|c| c.name().to_string()).collect();
                let values = (0..row.len())
                    .map(|i| row.try_get::<Option<String>, _>(i).ok().flatten())
                    .collect();
                texts(names, values)
            }
            Backend::Postgres => {
                let mut db = sqlx::PgConnection::connect(&self.url).await.unwrap();
                let row = sqlx::query(sql)
                    .bind(environment_id)
                    .fetch_one(&mut db)
                    .await
                    .unwrap();
                let names = row.columns().iter().map(|c| c.name().to_string()).collect();
                let values = (0..row.len())
                    .map(|i| row.try_get::<Option<String>, _>(i).ok().flatten())
                    .collect();
                texts(names, values)
            }
        }
    }

    /// Overwrites the `repo` column of an environment, as a kiln from before
    /// URL credentials were split out would have written it.
    pub async fn set_raw_repo(&self, environment_id: &str, repo: &str) {
        let sql = "UPDATE environments SET repo = $1 WHERE id = $2";
        let updated = match self.backend {
            Backend::Sqlite => {
                let mut db = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .bind(repo)
                    .bind(environment_id)
                    .execute(&mut db)
                    .await
                    .unwrap()
                    .rows_affected()
            }
            Backend::Postgres => {
                let mut db = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .bind(repo)
                    .bind(environment_id)
                    .execute(&mut db)
                    .await
                    .unwrap()
                    .rows_affected()
            }
        };
        assert_eq!(updated, 1, "no environment {environment_id}");
    }

    /// Overwrites the `secrets_json` column of an environment, as an older
    /// kiln or someone with access to the database would.
    pub async fn set_raw_secrets(&self, environment_id: &str, stored: &str) {
        let sql = "UPDATE environments SET secrets_json = $1 WHERE id = $2";
        let updated = match self.backend {
            Backend::Sqlite => {
                let mut db = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .bind(stored)
                    .bind(environment_id)
                    .execute(&mut db)
                    .await
                    .unwrap()
                    .rows_affected()
            }
            Backend::Postgres => {
                let mut db = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .bind(stored)
                    .bind(environment_id)
                    .execute(&mut db)
                    .await
                    .unwrap()
                    .rows_affected()
            }
        };
        assert_eq!(updated, 1, "no environment {environment_id}");
    }

    /// Runs one statement past the store, as someone with a connection to
    /// the database would; the database's error as text when it refuses.
    pub async fn raw_execute(&self, sql: &str) -> Result<u64, String> {
        let done = match self.backend {
            Backend::Sqlite => {
                let mut db = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .execute(&mut db)
                    .await
                    .map(|r| r.rows_affected())
            }
            Backend::Postgres => {
                let mut db = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .execute(&mut db)
                    .await
                    .map(|r| r.rows_affected())
            }
        };
        done.map_err(|e| e.to_string())
    }

    /// The action and details of every audit event a user did, oldest
    /// first, read past the store. The harness's own setup (`admin()`,
    /// `user()`: `create_token`, whose actor is the server) is left out.
    pub async fn raw_audit(&self) -> Vec<(String, serde_json::Value)> {
        let sql = "SELECT action, details FROM audit_events
                   WHERE actor_user_id IS NOT NULL ORDER BY id";
        let rows: Vec<(String, String)> = match self.backend {
            Backend::Sqlite => {
                let mut db = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_as(sql).fetch_all(&mut db).await.unwrap()
            }
            Backend::Postgres => {
                let mut db = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_as(sql).fetch_all(&mut db).await.unwrap()
            }
        };
        rows.into_iter()
            .map(|(action, details)| (action, serde_json::from_str(&details).unwrap()))
            .collect()
    }

    /// `(target_kind, target_id, details)` of the audit events with
    /// `action`, oldest first, read past the store.
    pub async fn raw_audit_of(&self, action: &str) -> Vec<(String, String, String)> {
        let sql = "SELECT target_kind, target_id, details FROM audit_events
                   WHERE action = $1 ORDER BY id";
        match self.backend {
            Backend::Sqlite => {
                let mut db = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_as(sql)
                    .bind(action)
                    .fetch_all(&mut db)
                    .await
                    .unwrap()
            }
            Backend::Postgres => {
                let mut db = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_as(sql)
                    .bind(action)
                    .fetch_all(&mut db)
                    .await
                    .unwrap()
            }
        }
    }

    /// Another store on the same database and clock.
    pub async fn reopen(&self) -> Store {
        open_with_clock(&self.url, &self.clock, Duration::from_secs(30)).await
    }

    /// Drops the store without closing it, as a dying process would, and
    /// opens the database again.
    pub async fn restart(&mut self) {
        let fresh = self.reopen().await;
        let old = std::mem::replace(&mut self.store, fresh);
        drop(old);
    }

    /// Like [`TestStore::reopen`], with another safety-net poll interval.
    pub async fn reopen_with_poll_interval(&self, poll: Duration) -> Store {
        open_with_clock(&self.url, &self.clock, poll).await
    }

    pub async fn admin(&self) -> Principal {
        let token = self.store.create_token("test admin", true).await.unwrap();
        // As a request sees it: with the user's teams.
        self.store
            .verify_token(&token.secret)
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn user(&self, name: &str) -> Principal {
        let token = self.store.create_token(name, false).await.unwrap();
        // As a request sees it: with the user's teams.
        self.store
            .verify_token(&token.secret)
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn environment(&self, owner: &Principal, name: &str) -> Environment {
        let new = NewEnvironment {
            name: name.into(),
            repo: "/srv/git/app".into(),
            ..Default::default()
        };
        self.store.create_environment(owner, &new).await.unwrap()
    }

    /// A task with `attempts` attempts on a new environment of `owner`.
    pub async fn task(&self, owner: &Principal, attempts: u32) -> TaskDetail {
        let env_name = format!("env-{}", NEXT_ENV.fetch_add(1, Ordering::Relaxed));
        let env = self.environment(owner, &env_name).await;
        let mut new = NewTask::new(env.id, "make the tests pass");
        new.attempts = attempts;
        let task = self.store.create_task(owner, &new).await.unwrap();
        // Ids carry the millisecond: keep tasks apart in time like real ones.
        self.clock.advance(Duration::from_millis(1));
        task
    }
}

impl TestStore {
    /// Makes `who` a `role` of the personal team of `owner`, as an admin's
    /// membership change would (written past the store: the users API is
    /// not part of the store under test here), and adds the membership to
    /// `who` as their next request would see it.
    pub async fn join(&self, who: &mut Principal, owner: &Principal, role: TeamRole) {
        let team = owner.teams[0].clone();
        let sql = "INSERT INTO team_members (team_id, user_id, role, source, created_at)
                   VALUES ($1, $2, $3, 'local', 0)";
        let user_id = who.user_id.clone().expect("a user's principal");
        match self.backend {
            Backend::Sqlite => {
                let mut db = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .bind(&team.team_id)
                    .bind(&user_id)
                    .bind(role.as_str())
                    .execute(&mut db)
                    .await
                    .unwrap();
            }
            Backend::Postgres => {
                let mut db = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .bind(&team.team_id)
                    .bind(&user_id)
                    .bind(role.as_str())
                    .execute(&mut db)
                    .await
                    .unwrap();
            }
        }
        who.teams.push(Membership {
            role,
            source: "local".into(),
            ..team
        });
    }

    /// The text of column 0 of every row `sql` (one `$1`) returns, read
    /// past the store.
    pub async fn raw_texts(&self, sql: &'static str, bind: &str) -> Vec<String> {
        match self.backend {
            Backend::Sqlite => {
                let mut db = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql)
                    .bind(bind)
                    .fetch_all(&mut db)
                    .await
                    .unwrap()
            }
            Backend::Postgres => {
                let mut db = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql)
                    .bind(bind)
                    .fetch_all(&mut db)
                    .await
                    .unwrap()
            }
        }
    }
}

static NEXT_ENV: AtomicU32 = AtomicU32::new(1);

/// The key every test store seals secrets with.
pub fn test_key() -> SecretKey {
    SecretKey::from_bytes([7; 32]).with_recovery_hint("use the test key")
}

async fn open_with_clock(url: &str, clock: &ManualClock, poll: Duration) -> Store {
    let options = StoreOptions::from_url(url)
        .unwrap()
        .clock(Arc::new(clock.clone()))
        .poll_interval(poll)
        .secret_key(test_key());
    Store::open(options)
        .await
        .unwrap_or_else(|e| panic!("cannot open the test store: {e}"))
}

/// A database with no schema at all, on `backend`: its URL, and the temp
/// dir holding it for SQLite (for tests that build an older schema).
pub async fn empty_database(backend: Backend) -> (String, Option<tempfile::TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
            (url, Some(dir))
        }
        Backend::Postgres => (fresh_pg_database().await, None),
    }
}

/// Opens a store on `url` as the tests do (manual clock, the test key).
pub async fn open_url(url: &str, clock: &ManualClock) -> Store {
    open_with_clock(url, clock, Duration::from_secs(30)).await
}

/// A new, empty database on this test process's PostgreSQL; returns its URL.
async fn fresh_pg_database() -> String {
    let server = tokio::task::spawn_blocking(PostgresServer::shared)
        .await
        .expect("starting PostgreSQL panicked")
        .unwrap_or_else(|e| panic!("{e}"));
    server
        .fresh_database()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
