//! A throwaway PostgreSQL server for one test: `initdb` into a temp dir,
//! `postgres` on a Unix socket only (no TCP port), fsync off, stopped and
//! deleted on drop. As root it runs as the `postgres` user. With
//! `KILN_TEST_DATABASE_URL` set, that server is used instead.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    pub url: String,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Postgres {
    pub fn start() -> Postgres {
        if let Ok(url) = std::env::var("KILN_TEST_DATABASE_URL") {
            return Postgres {
                url,
                child: None,
                _dir: None,
            };
        }
        let bin = find_bin();
        let run_as = postgres_user();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let as_user = |command: &mut Command| {
            if let Some((uid, gid)) = run_as {
                command.uid(uid).gid(gid);
            }
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null());
        as_user(&mut initdb);
        let status = initdb.status().expect("run initdb");
        assert!(status.success(), "initdb failed");
        let mut postgres = Command::new(bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut postgres);
        let child = postgres.spawn().expect("start postgres");
        let ready = data.join("postmaster.pid");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&ready)
            .map(|s| s.lines().any(|l| l.trim() == "ready"))
            .unwrap_or(false)
        {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start in 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Postgres {
            url: format!(
                "postgres://postgres@localhost/postgres?host={}",
                dir.path().display()
            ),
            child: Some(child),
            _dir: Some(dir),
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // SAFETY: signalling our own child; SIGQUIT is PostgreSQL's immediate shutdown.
            unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
            let _ = child.wait();
        }
    }
}

fn find_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("KILN_TEST_PG_BIN") {
        return PathBuf::from(bin);
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
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries were not found: apt-get install -y postgresql, \
             or set KILN_TEST_PG_BIN or KILN_TEST_DATABASE_URL"
        )
    })
}

fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "as root PostgreSQL needs a `postgres` user (the Debian package creates it)"
    );
    // SAFETY: pw is non-null and points to a valid passwd record.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}
