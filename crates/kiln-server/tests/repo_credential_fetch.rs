//! A repository URL's credential reaches the server's git for the clone and
//! the fetch, and nothing the sandbox reads: the mirror's `.git/config`
//! holds only the clean URL. The remote is real smart HTTP (`git
//! http-backend` behind a small server on 127.0.0.1 that requires Basic
//! auth).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kiln_server::{git_credential_env, CheckedRepo, RepoAccess, GIT_FETCH_ENV_REMOVE};
use kiln_store::RepoCredential;

const USER: &str = "ci-bot-deployer";
const TOKEN: &str = "ghp_url-token-7Qx9pL2m";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bare repository `app.git` under `root` with one commit on `main`.
fn served_repository(root: &Path) -> PathBuf {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(work.join("README.md"), "hello\n").unwrap();
    git(&work, &["add", "README.md"]);
    git(
        &work,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "--quiet",
            "-m",
            "first",
        ],
    );
    let bare = root.join("app.git");
    git(root, &["clone", "--quiet", "--bare", "work", "app.git"]);
    bare
}

/// Serves `project_root` over smart HTTP on 127.0.0.1, answering 401 to any
/// request without `Authorization: <expected>`. Returns the base URL.
fn serve_with_basic_auth(project_root: PathBuf, expected: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let root = project_root.clone();
            let expected = expected.clone();
            std::thread::spawn(move || serve_one(stream, &root, &expected));
        }
    });
    format!("http://127.0.0.1:{port}")
}

fn serve_one(stream: TcpStream, root: &Path, expected: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut out = stream;
    if header("authorization").as_deref() != Some(expected) {
        let _ = out.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut cgi = Command::new("git");
    cgi.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_LENGTH", length.to_string())
        .env("REMOTE_USER", USER)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (name, var) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "HTTP_GIT_PROTOCOL"),
    ] {
        if let Some(value) = header(name) {
            cgi.env(var, value);
        }
    }
    let mut child = cgi.spawn().unwrap();
    child.stdin.take().unwrap().write_all(&body).unwrap();
    let output = child.wait_with_output().unwrap();
    let split = output
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| (at, 4))
        .or_else(|| {
            output
                .stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|at| (at, 2))
        })
        .unwrap();
    let (head, rest) = output.stdout.split_at(split.0);
    let head = String::from_utf8_lossy(head);
    let status = head
        .lines()
        .find_map(|l| l.strip_prefix("Status:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "200 OK".into());
    let mut response = format!("HTTP/1.1 {status}\r\n");
    for line in head.lines().filter(|l| !l.starts_with("Status:")) {
        response.push_str(line.trim_end());
        response.push_str("\r\n");
    }
    response.push_str("Connection: close\r\n\r\n");
    let _ = out.write_all(response.as_bytes());
    let _ = out.write_all(&rest[split.1..]);
}

/// git as the worker runs it for a mirror: the location's `-c` options, the
/// isolated environment, and the credential's variables when given.
fn server_git(dir: &Path, url: &str, credential: Option<&RepoCredential>, args: &[&str]) -> Output {
    let checked: CheckedRepo = RepoAccess::default().check(url, true).unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .args(checked.git_fetch_args())
        .args(args);
    for name in GIT_FETCH_ENV_REMOVE {
        command.env_remove(name);
    }
    command.envs(CheckedRepo::git_fetch_env(home.path()));
    if let Some(credential) = credential {
        command.envs(git_credential_env(url, credential).unwrap());
    }
    command.output().unwrap()
}

#[test]
fn a_clone_and_fetch_with_the_url_credential_leave_no_trace_of_it_in_the_mirror() {
    let served = tempfile::tempdir().unwrap();
    served_repository(served.path());
    let credential = RepoCredential::new(USER, Some(TOKEN.to_string()));
    let base = serve_with_basic_auth(
        served.path().to_path_buf(),
        credential.basic_authorization(),
    );
    let url = format!("{base}/app.git");
    let data = tempfile::tempdir().unwrap();

    // The server really requires the credential.
    let refused = server_git(
        data.path(),
        &url,
        None,
        &["clone", "--quiet", "--no-checkout", "--", &url, "refused"],
    );
    assert!(
        !refused.status.success(),
        "the test server let a clone in without credentials"
    );

    let cloned = server_git(
        data.path(),
        &url,
        Some(&credential),
        &["clone", "--quiet", "--no-checkout", "--", &url, "mirror"],
    );
    assert!(
        cloned.status.success(),
        "clone: {}",
        String::from_utf8_lossy(&cloned.stderr)
    );
    let mirror = data.path().join("mirror");
    assert_eq!(
        git(&mirror, &["log", "--format=%s", "origin/main"]).trim(),
        "first"
    );

    let fetched = server_git(
        &mirror,
        &url,
        Some(&credential),
        &["fetch", "--quiet", "--prune", "origin"],
    );
    assert!(
        fetched.status.success(),
        "fetch: {}",
        String::from_utf8_lossy(&fetched.stderr)
    );

    // What the sandbox can read of the mirror: its whole .git directory.
    let config = std::fs::read_to_string(mirror.join(".git/config")).unwrap();
    assert!(config.contains(&format!("url = {url}")), "{config}");
    let mut everything = config.clone();
    for entry in walk(&mirror.join(".git")) {
        if let Ok(text) = std::fs::read(&entry) {
            everything.push_str(&String::from_utf8_lossy(&text));
        }
    }
    let basic = credential.basic_authorization();
    let encoded = basic.trim_start_matches("Basic ");
    for secret in [TOKEN, USER, encoded] {
        assert!(
            !everything.contains(secret),
            "{secret:?} is in the mirror's .git"
        );
    }
}

#[test]
fn a_credential_is_given_only_to_https_or_to_this_machine() {
    let credential = RepoCredential::new(USER, Some(TOKEN.to_string()));
    let env = git_credential_env("https://git.example.com/team/app.git", &credential).unwrap();
    assert_eq!(env[0], ("GIT_CONFIG_COUNT", "1".to_string()));
    assert_eq!(
        env[1],
        (
            "GIT_CONFIG_KEY_0",
            "http.https://git.example.com/team/app.git.extraHeader".to_string()
        )
    );
    git_credential_env("http://localhost:8080/app.git", &credential).unwrap();
    for refused in [
        "http://git.example.com/app.git",
        "ssh://git@git.example.com/app.git",
        "git://git.example.com/app.git",
        "/srv/git/app",
    ] {
        let err = git_credential_env(refused, &credential)
            .unwrap_err()
            .to_string();
        assert!(err.contains("only over https"), "{refused}: {err}");
        assert!(!err.contains(TOKEN), "{err}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
