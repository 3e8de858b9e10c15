//! A repository URL's credential reaches the server's git for the clone and
//! the fetch, and nothing the sandbox reads: the mirror's `.git/config`
//! holds only the clean URL. The remote is real smart HTTP (`git
//! http-backend` behind a small server on 127.0.0.1 that requires Basic
//! auth).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_testkit::git_http::{bare_repository, git, serve_with_basic_auth};

use kiln_server::{git_credential_env, CheckedRepo, RepoAccess, GIT_FETCH_ENV_REMOVE};
use kiln_store::RepoCredential;

const USER: &str = "ci-bot-deployer";
const TOKEN: &str = "ghp_url-token-7Qx9pL2m";

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
    bare_repository(served.path());
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
