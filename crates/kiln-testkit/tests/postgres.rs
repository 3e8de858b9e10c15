//! Throwaway PostgreSQL servers: real `initdb` and `postgres` processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_testkit::postgres::PostgresServer;
use sqlx::Connection;

fn socket_dir(server: &PostgresServer) -> PathBuf {
    let (_, host) = server
        .admin_url()
        .split_once("?host=")
        .expect("a started server's URL names its socket directory");
    PathBuf::from(host)
}

fn started() -> PostgresServer {
    PostgresServer::start().unwrap_or_else(|e| panic!("{e}"))
}

async fn table_names(url: &str) -> Vec<String> {
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
        .fetch_all(&mut db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_started_server_listens_only_on_a_socket_in_its_own_directory() {
    let server = started();
    let dir = socket_dir(&server);
    assert!(dir.join(".s.PGSQL.5432").exists(), "{}", dir.display());
    let mut db = sqlx::PgConnection::connect(server.admin_url())
        .await
        .unwrap();
    let listen: String = sqlx::query_scalar("SHOW listen_addresses")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(listen, "", "no TCP port");
}

#[tokio::test]
async fn fresh_databases_are_empty_and_kept_apart() {
    let server = started();
    let first = server.fresh_database().await.unwrap();
    let second = server.fresh_database().await.unwrap();
    assert_ne!(first, second);

    let mut db = sqlx::PgConnection::connect(&first).await.unwrap();
    sqlx::raw_sql("CREATE TABLE notes (body text)")
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(table_names(&first).await, ["notes"]);
    assert!(table_names(&second).await.is_empty());
}

#[tokio::test]
async fn dropping_the_server_stops_it_and_removes_its_directory() {
    let server = started();
    let admin_url = server.admin_url().to_string();
    let dir = socket_dir(&server);
    let pid_file = std::fs::read_to_string(dir.join("data").join("postmaster.pid")).unwrap();
    let pid = pid_file.lines().next().unwrap().trim().to_string();
    assert!(PathBuf::from(format!("/proc/{pid}")).exists());

    drop(server);

    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "postgres {pid} still runs"
    );
    assert!(sqlx::PgConnection::connect(&admin_url).await.is_err());
}

#[tokio::test]
async fn an_external_server_is_used_as_named_and_left_running() {
    let running = started();
    let external = PostgresServer::external(running.admin_url());
    assert_eq!(external.admin_url(), running.admin_url());
    let url = external.fresh_database().await.unwrap();
    drop(external);

    assert!(table_names(&url).await.is_empty());
    assert!(sqlx::PgConnection::connect(running.admin_url())
        .await
        .is_ok());
}

#[tokio::test]
async fn a_database_on_an_unreachable_server_is_a_clear_error() {
    let nowhere = tempfile::tempdir().unwrap();
    let url = format!(
        "postgres://postgres@localhost:5432/postgres?host={}",
        nowhere.path().display()
    );
    let error = PostgresServer::external(&url)
        .fresh_database()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains(&url), "{error}");
    assert!(error.contains("KILN_TEST_DATABASE_URL"), "{error}");
}

#[test]
fn the_shared_server_is_started_once_per_process() {
    let first = PostgresServer::shared().unwrap_or_else(|e| panic!("{e}"));
    let second = PostgresServer::shared().unwrap_or_else(|e| panic!("{e}"));
    assert!(std::ptr::eq(first, second));
}

/// Whether process `pid` runs: it exists and is not a zombie (an orphan
/// stays one until init reaps it).
fn runs(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after_name) = stat.rsplit_once(')')?;
            after_name
                .split_whitespace()
                .next()
                .map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// Set in the child process of the kill -9 test.
const CRASHING_CHILD: &str = "KILN_TESTKIT_PG_CRASHING_CHILD";

#[test]
fn a_killed_test_process_takes_its_server_along_and_the_next_start_cleans_up() {
    if std::env::var_os(CRASHING_CHILD).is_some() {
        let server = started();
        let dir = socket_dir(&server);
        let pid_file = std::fs::read_to_string(dir.join("data").join("postmaster.pid")).unwrap();
        let pid = pid_file.lines().next().unwrap().trim();
        println!("\nKILN-PG {pid} {}", dir.display());
        // SAFETY: SIGKILL to ourselves; nothing runs after it, not even Drop.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_test_process_takes_its_server_along_and_the_next_start_cleans_up",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASHING_CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("KILN-PG "))
        .unwrap_or_else(|| panic!("the child started no server: {stdout}"));
    let (pid, dir) = line.split_once(' ').unwrap();
    let dir = PathBuf::from(dir);
    assert_eq!(child.status.signal(), Some(libc::SIGKILL));

    let deadline = Instant::now() + Duration::from_secs(10);
    while runs(pid) {
        assert!(
            Instant::now() < deadline,
            "postgres {pid} outlived its test process by 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        dir.exists(),
        "a killed process cannot clean up after itself"
    );

    let _next = started();
    assert!(!dir.exists(), "{} is left behind", dir.display());
}
