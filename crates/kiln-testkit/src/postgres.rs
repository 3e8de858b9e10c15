//! A throwaway PostgreSQL server for tests, and a fresh database per test
//! (feature `postgres`).
//!
//! [`PostgresServer::start`] runs a server of its own: `initdb` once per
//! machine into a cached template (`$TMPDIR/kiln-pg-template-<version>-<uid>`),
//! then a copy of it in a temp dir run by `postgres` directly, listening only
//! on a Unix socket in that dir (no TCP port, so parallel servers never
//! collide), with fsync off. As root it runs as the `postgres` user, since
//! PostgreSQL refuses root. Dropping the server stops it and removes its
//! directory; it also dies with the test process (parent-death signal), and
//! the next start removes the directories of test processes that were killed.
//! [`PostgresServer::shared`] is one server per test process, stopped at exit.
//! With `KILN_TEST_DATABASE_URL` set to a superuser URL of a running server,
//! [`PostgresServer::from_env_or_start`] and [`PostgresServer::shared`] use
//! that server instead. [`PostgresServer::fresh_database`] creates an empty
//! database and returns its URL.
//!
//! The binaries are taken from `KILN_TEST_PG_BIN`, else from Debian's
//! `/usr/lib/postgresql/<version>/bin` (highest version), else from `PATH`.
//! Without them starting fails with an error naming the package to install:
//! tests that need PostgreSQL fail rather than skip.
//!
//! ```
//! use kiln_testkit::postgres::PostgresServer;
//! use sqlx::Connection;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let server = PostgresServer::start().unwrap();
//! let url = server.fresh_database().await.unwrap();
//! let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
//! let (answer,): (i32,) = sqlx::query_as("SELECT 6 * 7")
//!     .fetch_one(&mut db)
//!     .await
//!     .unwrap();
//! assert_eq!(answer, 42);
//! # });
//! ```
#![cfg(feature = "postgres")]

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::Connection;
use tempfile::TempDir;

/// Names a superuser URL of a running server to use instead of starting one.
const DATABASE_URL_VAR: &str = "KILN_TEST_DATABASE_URL";
/// Names the directory holding `initdb` and `postgres`.
const BIN_DIR_VAR: &str = "KILN_TEST_PG_BIN";
/// Where Debian installs each PostgreSQL version's binaries (`<version>/bin`).
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// Server directories are `$TMPDIR/<prefix><pid>-<random>`; the pid lets a
/// later run tell which ones belong to dead test processes.
const DIR_PREFIX: &str = "kiln-test-pg-";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a test PostgreSQL could not be started or used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PostgresError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found: install them \
         (Debian: apt-get install -y postgresql), point KILN_TEST_PG_BIN at their directory, \
         or set KILN_TEST_DATABASE_URL to a running server's superuser URL"
    )]
    NotInstalled,
    #[error(
        "KILN_TEST_PG_BIN is {}, which holds no initdb: point it at the directory of \
         PostgreSQL's server binaries",
        .0.display()
    )]
    NoInitdbInBinDir(PathBuf),
    #[error(
        "running as root, and PostgreSQL refuses to run as root: create a `postgres` user \
         (the Debian package postgresql does) or set KILN_TEST_DATABASE_URL"
    )]
    NoPostgresUser,
    /// Preparing the server's directory failed (creating, copying, chown, initdb).
    #[error("setting up the test PostgreSQL failed: {0}")]
    Setup(String),
    #[error("the test PostgreSQL did not start ({reason}); its log:\n{log}")]
    DidNotStart { reason: String, log: String },
    #[error(
        "cannot create a database on the test PostgreSQL at {url}: {message} \
         (if this is KILN_TEST_DATABASE_URL, is it a running server's superuser URL?)"
    )]
    Database { url: String, message: String },
}

/// A PostgreSQL server for tests: one this value started (stopped on drop)
/// or an external one it only points at.
pub struct PostgresServer {
    admin_url: String,
    /// `None` for an external server, and once stopped.
    process: Mutex<Option<ServerProcess>>,
}

struct ServerProcess {
    pid: libc::pid_t,
    /// Holds the data directory, the socket and the log; removed on drop.
    dir: TempDir,
}

impl PostgresServer {
    /// Starts a throwaway server in a new temp dir; blocks until it accepts
    /// connections (at most 30 s).
    pub fn start() -> Result<PostgresServer, PostgresError> {
        let bin = find_bin_dir()?;
        let run_as = postgres_user()?;
        remove_stale_dirs();
        let template = template_dir(&bin, run_as)?;

        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .map_err(|e| setup_error("cannot create a temp dir", e))?;
        chown(dir.path(), run_as)?;
        let data = dir.path().join("data");
        run(Command::new("cp").arg("-a").arg(&template).arg(&data))?;

        let log_path = dir.path().join("postgres.log");
        let log = File::create(&log_path)
            .map_err(|e| setup_error(&format!("cannot create {}", log_path.display()), e))?;
        let log_too = log
            .try_clone()
            .map_err(|e| setup_error("cannot duplicate the log file", e))?;
        let mut command = Command::new(bin.join("postgres"));
        command
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=300"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_too);
        if let Some((uid, gid)) = run_as {
            command.uid(uid).gid(gid);
        }
        // SAFETY: prctl is async-signal-safe; it runs in the child between
        // fork and exec, after the uid change (which would clear it).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let pid = spawn_from_long_lived_thread(command).map_err(|e| {
            setup_error(
                &format!("cannot start {}", bin.join("postgres").display()),
                e,
            )
        })?;

        let admin_url = format!(
            "postgres://postgres@localhost:5432/postgres?host={}",
            dir.path().display()
        );
        let server = PostgresServer {
            admin_url,
            process: Mutex::new(Some(ServerProcess { pid, dir })),
        };
        // On an error the server is dropped here, which stops it.
        server.wait_until_ready(pid, &data, &log_path)?;
        Ok(server)
    }

    /// A server already running elsewhere, named by a superuser URL; it is
    /// left running on drop.
    pub fn external(admin_url: impl Into<String>) -> PostgresServer {
        PostgresServer {
            admin_url: admin_url.into(),
            process: Mutex::new(None),
        }
    }

    /// The server named by `KILN_TEST_DATABASE_URL` when it is set and not
    /// empty, else a throwaway one from [`PostgresServer::start`].
    pub fn from_env_or_start() -> Result<PostgresServer, PostgresError> {
        match std::env::var(DATABASE_URL_VAR) {
            Ok(url) if !url.is_empty() => Ok(PostgresServer::external(url)),
            _ => PostgresServer::start(),
        }
    }

    /// This test process's server, from [`PostgresServer::from_env_or_start`]
    /// on first use (concurrent callers wait for the one start) and stopped
    /// when the process exits. Blocks while starting: from async code call it
    /// through `tokio::task::spawn_blocking`.
    pub fn shared() -> Result<&'static PostgresServer, PostgresError> {
        let server = SHARED.get_or_init(|| {
            let server = PostgresServer::from_env_or_start()?;
            // SAFETY: registers a plain extern "C" fn with no captured state.
            unsafe {
                libc::atexit(stop_shared_server);
            }
            Ok(server)
        });
        server.as_ref().map_err(Clone::clone)
    }

    /// A superuser URL of the server's `postgres` database.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Creates a new, empty database (`kiln_test_<pid>_<n>`) and returns
    /// its URL.
    pub async fn fresh_database(&self) -> Result<String, PostgresError> {
        static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kiln_test_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        let failed = |e: sqlx::Error| PostgresError::Database {
            url: self.admin_url.clone(),
            message: e.to_string(),
        };
        let mut admin = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .map_err(failed)?;
        // A database of that name is left over from a killed process whose
        // pid this one reuses.
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut admin)
            .await
            .map_err(failed)?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .map_err(failed)?;
        admin.close().await.ok();
        Ok(with_database(&self.admin_url, &name))
    }

    /// Polls the pid file for the "ready" status the server writes once it
    /// accepts connections; fails early if the server exits.
    fn wait_until_ready(
        &self,
        pid: libc::pid_t,
        data: &Path,
        log_path: &Path,
    ) -> Result<(), PostgresError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let pid_file = data.join("postmaster.pid");
        loop {
            let ready = std::fs::read_to_string(&pid_file)
                .map(|s| s.lines().any(|l| l.trim() == "ready"))
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            let mut status = 0;
            // SAFETY: reaps our own child if it has exited; never blocks.
            let exited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid;
            if exited || Instant::now() > deadline {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                if exited {
                    // Reaped: its pid may be reused, so stop must not signal it.
                    self.forget_process();
                }
                let reason = if exited {
                    format!("it exited with wait status {status}")
                } else {
                    format!("not ready after {} s", START_TIMEOUT.as_secs())
                };
                return Err(PostgresError::DidNotStart { reason, log });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn take_process(&self) -> Option<ServerProcess> {
        // A panic while holding the lock leaves the value intact.
        let mut process = self.process.lock().unwrap_or_else(|p| p.into_inner());
        process.take()
    }

    /// Drops the record of an already reaped server, removing its directory.
    fn forget_process(&self) {
        drop(self.take_process());
    }

    /// Stops the server (immediate shutdown, SIGKILL after 10 s) and removes
    /// its directory. Does nothing for an external or stopped server.
    fn stop(&self) {
        let Some(ServerProcess { pid, dir }) = self.take_process() else {
            return;
        };
        // SAFETY: signals and reaps our own, not yet reaped, child process.
        // SIGQUIT is PostgreSQL's immediate shutdown.
        unsafe {
            libc::kill(pid, libc::SIGQUIT);
            let deadline = Instant::now() + STOP_TIMEOUT;
            let mut status = 0;
            let mut reaped = false;
            while !reaped && Instant::now() < deadline {
                reaped = libc::waitpid(pid, &mut status, libc::WNOHANG) != 0;
                if !reaped {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if !reaped {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
        }
        drop(dir);
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresServer")
            .field("admin_url", &self.admin_url)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceLock<Result<PostgresServer, PostgresError>> = OnceLock::new();

/// Statics are never dropped, so the shared server is stopped from `atexit`.
extern "C" fn stop_shared_server() {
    if let Some(Ok(server)) = SHARED.get() {
        server.stop();
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<u32>>);

/// Spawns `command` from a thread that lives as long as the process: the
/// parent-death signal fires when the thread that forked the child ends, and
/// that must be the process's end, not a test thread's.
fn spawn_from_long_lived_thread(command: Command) -> io::Result<libc::pid_t> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<SpawnRequest>, String>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("kiln-test-postgres-spawner".into())
            .spawn(move || {
                // Ends never: SPAWNER keeps a sender for the process's life.
                for (mut command, reply) in incoming {
                    // The Child is dropped unwaited: the caller reaps the pid.
                    let _ = reply.send(command.spawn().map(|child| child.id()));
                }
            })
            .map(|_| requests)
            .map_err(|e| format!("cannot start the PostgreSQL spawner thread: {e}"))
    });
    let spawner = spawner.as_ref().map_err(|e| io::Error::other(e.clone()))?;
    let (reply, answer) = mpsc::channel();
    let gone = || io::Error::other("the PostgreSQL spawner thread is gone");
    spawner.send((command, reply)).map_err(|_| gone())?;
    let pid = answer.recv().map_err(|_| gone())??;
    libc::pid_t::try_from(pid).map_err(|_| io::Error::other(format!("pid {pid} out of range")))
}

/// Removes the directories of throwaway servers whose test process is gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
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

/// An initialized cluster to copy, made once per machine, version and user.
fn template_dir(bin: &Path, run_as: Option<(u32, u32)>) -> Result<PathBuf, PostgresError> {
    let version = bin
        .parent()
        .and_then(|p| p.file_name())
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    // SAFETY: getuid has no preconditions.
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
        .map_err(|e| setup_error(&format!("cannot create {}", staging.display()), e))?;
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
    // The rename is atomic, so a template that exists is complete. Another
    // process may have won the race; either template is fine.
    if std::fs::rename(&staging, &template).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(template)
}

fn find_bin_dir() -> Result<PathBuf, PostgresError> {
    find_bin_dir_in(
        std::env::var_os(BIN_DIR_VAR),
        Path::new(DEBIAN_ROOT),
        std::env::var_os("PATH"),
    )
}

/// The directory of `initdb` and `postgres`: `configured` when given, else the
/// highest version under `debian_root`, else the first fit on `path`.
fn find_bin_dir_in(
    configured: Option<OsString>,
    debian_root: &Path,
    path: Option<OsString>,
) -> Result<PathBuf, PostgresError> {
    if let Some(bin) = configured.filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.join("initdb").exists() {
            Ok(bin)
        } else {
            Err(PostgresError::NoInitdbInBinDir(bin))
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(debian_root)
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
    path.and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").exists() && p.join("postgres").exists())
    })
    .ok_or(PostgresError::NotInstalled)
}

/// As root, the uid and gid of the `postgres` user to run the server as.
fn postgres_user() -> Result<Option<(u32, u32)>, PostgresError> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    // SAFETY: getpwnam returns a pointer to static storage or null; the two
    // integers are read from it at once. The name is a NUL-terminated literal.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if pw.is_null() {
        return Err(PostgresError::NoPostgresUser);
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn chown(path: &Path, run_as: Option<(u32, u32)>) -> Result<(), PostgresError> {
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| setup_error(&format!("cannot chown {}", path.display()), e))?;
    }
    Ok(())
}

fn run(command: &mut Command) -> Result<(), PostgresError> {
    let output = command
        .output()
        .map_err(|e| setup_error(&format!("cannot run {command:?}"), e))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(PostgresError::Setup(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

fn setup_error(what: &str, error: io::Error) -> PostgresError {
    PostgresError::Setup(format!("{what}: {error}"))
}

/// `url` with its database name replaced by `name`.
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

#[cfg(test)]
#[path = "postgres_tests.rs"]
mod tests;
