//! Real databases for the tests: a SQLite file in a temp dir, and a fresh
//! PostgreSQL database per test.
//!
//! PostgreSQL comes from `KILN_TEST_DATABASE_URL` (a superuser URL of a
//! server the caller runs; each test creates and drops its own database)
//! or, when unset, from a throwaway server this module starts once per test
//! process: `initdb` once per machine into a cached template, then a copy of
//! it in a temp dir run by `postgres` directly, on a Unix socket only, with
//! fsync off. As root it runs as the `postgres` user (initdb refuses root).
//! The server dies with the test process (parent-death signal) and its
//! directory is removed at exit (or by the next run when the process was
//! killed). Without PostgreSQL the tests fail, naming what to install.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln_store::{
    Backend, Environment, ManualClock, NewEnvironment, NewTask, Principal, Store, StoreOptions,
    TaskDetail,
};
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
        self.store
            .create_token("test admin", true)
            .await
            .unwrap()
            .info
            .principal()
    }

    pub async fn user(&self, name: &str) -> Principal {
        self.store
            .create_token(name, false)
            .await
            .unwrap()
            .info
            .principal()
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

static NEXT_ENV: AtomicU32 = AtomicU32::new(1);

async fn open_with_clock(url: &str, clock: &ManualClock, poll: Duration) -> Store {
    let options = StoreOptions::from_url(url)
        .unwrap()
        .clock(Arc::new(clock.clone()))
        .poll_interval(poll);
    Store::open(options)
        .await
        .unwrap_or_else(|e| panic!("cannot open the test store: {e}"))
}

/// A new, empty database on the test server; returns its URL.
async fn fresh_pg_database() -> String {
    let admin_url = match std::env::var("KILN_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => tokio::task::spawn_blocking(|| throwaway_server().clone())
            .await
            .expect("starting PostgreSQL panicked")
            .unwrap_or_else(|e| panic!("{e}")),
    };
    static NEXT_DB: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "kiln_test_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to the test PostgreSQL ({e}); is KILN_TEST_DATABASE_URL right?")
        });
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.ok();
    with_database(&admin_url, &name)
}

/// `url` with its database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (before_query, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let scheme_end = before_query.find("://").map_or(0, |i| i + 3);
    let base = match before_query[scheme_end..].find('/') {
        Some(slash) => &before_query[..scheme_end + slash],
        None => before_query,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// The admin URL of this process's throwaway server, started on first use.
fn throwaway_server() -> &'static Result<String, String> {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    SERVER.get_or_init(start_throwaway_server)
}

struct Running {
    pid: i32,
    dir: PathBuf,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

fn start_throwaway_server() -> Result<String, String> {
    let bin = find_pg_bin()?;
    let run_as = postgres_user()?;
    remove_stale_dirs();
    let template = template_dir(&bin, run_as)?;

    let dir = std::env::temp_dir().join(format!(
        "kiln-store-pg-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    chown(&dir, run_as)?;
    let data = dir.join("data");
    run(Command::new("cp").arg("-a").arg(&template).arg(&data))?;

    // Spawned from a thread that lives as long as the process, so that the
    // parent-death signal fires when the process ends, not when a test
    // thread does.
    let (tx, rx) = std::sync::mpsc::channel();
    let postgres = bin.join("postgres");
    let (data2, dir2) = (data.clone(), dir.clone());
    std::thread::spawn(move || {
        let log = std::fs::File::create(dir2.join("postgres.log"));
        let mut command = Command::new(&postgres);
        command
            .arg("-D")
            .arg(&data2)
            .arg("-k")
            .arg(&dir2)
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=300"])
            .stdin(Stdio::null());
        if let Ok(log) = log {
            let err = log.try_clone();
            command.stdout(log);
            if let Ok(err) = err {
                command.stderr(err);
            }
        }
        if let Some((uid, gid)) = run_as {
            command.uid(uid).gid(gid);
        }
        // SAFETY: prctl is async-signal-safe; it runs in the child between
        // fork and exec (after the uid change, which would clear it).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let _ = tx.send(command.spawn().map(|child| child.id()));
        loop {
            std::thread::park();
        }
    });
    let pid = rx
        .recv()
        .map_err(|_| "the PostgreSQL starter thread died".to_string())?
        .map_err(|e| format!("cannot start {}: {e}", bin.join("postgres").display()))?;
    let pid = i32::try_from(pid).map_err(|_| "odd pid".to_string())?;
    *RUNNING.lock().unwrap() = Some(Running {
        pid,
        dir: dir.clone(),
    });
    // SAFETY: registering a plain extern "C" fn with no captured state.
    unsafe {
        libc::atexit(stop_throwaway_server);
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let pid_file = data.join("postmaster.pid");
    loop {
        let ready = std::fs::read_to_string(&pid_file)
            .map(|s| s.lines().any(|l| l.trim() == "ready"))
            .unwrap_or(false);
        if ready {
            break;
        }
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        let mut status = 0;
        // SAFETY: reaping our own child if it already exited.
        let exited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid;
        if !alive || exited || Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            return Err(format!("the test PostgreSQL did not start:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(format!(
        "postgres://postgres@localhost:5432/postgres?host={}",
        dir.display()
    ))
}

extern "C" fn stop_throwaway_server() {
    let Ok(mut running) = RUNNING.lock() else {
        return;
    };
    let Some(Running { pid, dir }) = running.take() else {
        return;
    };
    // SAFETY: signalling and reaping our own child process.
    unsafe {
        libc::kill(pid, libc::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut status = 0;
        while libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Directories of throwaway servers whose test process is gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("kiln-store-pg-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// An initialized cluster to copy, made once per machine and version.
fn template_dir(bin: &Path, run_as: Option<(u32, u32)>) -> Result<PathBuf, String> {
    let version = bin
        .parent()
        .and_then(|p| p.file_name())
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    let uid = run_as.map_or_else(|| unsafe { libc::getuid() }, |(uid, _)| uid);
    let template = std::env::temp_dir().join(format!("kiln-pg-template-{version}-{uid}"));
    if template.join("PG_VERSION").exists() {
        return Ok(template);
    }
    let staging = std::env::temp_dir().join(format!(
        "kiln-pg-template-{version}-{uid}.{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    chown(&staging, run_as)?;
    let mut initdb = Command::new(bin.join("initdb"));
    initdb.arg("-D").arg(&staging).args([
        "-A",
        "trust",
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
    ]);
    if let Some((uid, gid)) = run_as {
        initdb.uid(uid).gid(gid);
    }
    run(&mut initdb)?;
    // Another process may have won the race; either template is fine.
    if std::fs::rename(&staging, &template).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(template)
}

fn find_pg_bin() -> Result<PathBuf, String> {
    if let Ok(bin) = std::env::var("KILN_TEST_PG_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").exists() && p.join("postgres").exists())
    });
    on_path.ok_or_else(|| {
        "PostgreSQL server binaries (initdb, postgres) were not found: install them \
         (Debian: apt-get install -y postgresql), point KILN_TEST_PG_BIN at their directory, \
         or set KILN_TEST_DATABASE_URL to a running server's superuser URL"
            .to_string()
    })
}

/// As root, the uid/gid of the `postgres` user to run the server as.
fn postgres_user() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns a pointer to static storage or null; we read
    // two integers from it immediately.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(
            "running as root, and PostgreSQL refuses to run as root: create a \
                    `postgres` user (the Debian package postgresql does) or set \
                    KILN_TEST_DATABASE_URL"
                .to_string(),
        );
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn chown(path: &Path, run_as: Option<(u32, u32)>) -> Result<(), String> {
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
    }
    Ok(())
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
