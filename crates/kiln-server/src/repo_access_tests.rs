use super::*;

fn refused_for_users(policy: &RepoAccess, repo: &str) -> RepoAccessError {
    match policy.check(repo, false) {
        Ok(checked) => panic!("{repo:?} was accepted for a non-admin: {checked:?}"),
        Err(err) => err,
    }
}

#[test]
fn non_admins_may_not_name_host_paths_loopback_or_private_hosts() {
    let policy = RepoAccess::default();
    for repo in [
        "/etc",
        "/root/x",
        "file:///etc",
        "file://localhost/etc",
        "http://127.0.0.1:9/x",
        "http://10.0.0.1/x",
        "https://[::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://[fd00::1]/x",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0/x",
        "http://100.64.1.1/x",
        "http://localhost:8080/x",
        "git://192.168.1.1/x",
        "ssh://git@172.16.0.1/x",
        "git@127.0.0.1:org/repo.git",
        "git@[::1]:org/repo.git",
    ] {
        assert!(
            matches!(
                refused_for_users(&policy, repo),
                RepoAccessError::NotAllowed(_)
            ),
            "{repo}"
        );
    }
}

#[test]
fn nobody_may_name_transport_helpers_options_or_odd_schemes() {
    let policy = RepoAccess::default();
    for repo in [
        "ext::sh -c touch% /tmp/pwned",
        "fd::3",
        "-uhack",
        "--upload-pack=touch /tmp/pwned",
        "ftp://example.com/x",
        "relative/path",
        "ssh://-oProxyCommand=x/y",
        "https://a@b@93.184.215.14/x",
        "https://93.184.215.14\\@127.0.0.1/x",
        "https://93.184.215.14/x\n",
    ] {
        for admin in [false, true] {
            assert!(
                matches!(
                    policy.check(repo, admin),
                    Err(RepoAccessError::Unsupported(_))
                ),
                "{repo:?} admin={admin}: {:?}",
                policy.check(repo, admin)
            );
        }
    }
}

#[test]
fn public_addresses_pass_and_admins_may_use_anything_supported() {
    let policy = RepoAccess::default();
    assert!(policy
        .check("https://93.184.215.14/org/x.git", false)
        .is_ok());
    assert!(policy.check("git@93.184.215.14:org/x.git", false).is_ok());
    assert!(policy.check("http://127.0.0.1:9/x", true).is_ok());
    assert!(policy.check("git@example.invalid:org/x.git", true).is_ok());
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir(repo.path().join(".git")).unwrap();
    let path = repo.path().display().to_string();
    assert!(policy.check(&path, true).is_ok());
    assert!(policy.check(&format!("file://{path}"), true).is_ok());
}

#[test]
fn an_allowed_prefix_admits_only_what_lies_inside_it() {
    let root = tempfile::tempdir().unwrap();
    let allowed = root.path().join("repos");
    let inside = allowed.join("app");
    std::fs::create_dir_all(inside.join(".git")).unwrap();
    let sibling = root.path().join("repos-evil");
    std::fs::create_dir_all(sibling.join(".git")).unwrap();
    std::os::unix::fs::symlink(&sibling, allowed.join("link-out")).unwrap();
    let policy = RepoAccess::new(&[
        allowed.display().to_string(),
        "http://127.0.0.1:9/".to_string(),
        "git@10.1.2.3:".to_string(),
    ])
    .unwrap();

    assert!(policy.check(&inside.display().to_string(), false).is_ok());
    assert!(policy
        .check(&format!("file://{}", inside.display()), false)
        .is_ok());
    assert!(policy.check("http://127.0.0.1:9/team/x.git", false).is_ok());
    assert!(policy.check("git@10.1.2.3:team/x.git", false).is_ok());
    for repo in [
        sibling.display().to_string(),
        format!("{}/../repos-evil", allowed.display()),
        allowed.join("link-out").display().to_string(),
        "http://127.0.0.1:90/x".to_string(),
        "http://127.0.0.1:9/../admin/x.git".to_string(),
        "http://127.0.0.1:9/%2e%2e/admin/x.git".to_string(),
        "git@10.1.2.30:team/x.git".to_string(),
    ] {
        assert!(
            matches!(
                refused_for_users(&policy, &repo),
                RepoAccessError::NotAllowed(_)
            ),
            "{repo}"
        );
    }
    assert!(RepoAccess::new(["/"]).is_err());
    assert!(RepoAccess::new(["ext::sh"]).is_err());
}

#[test]
fn a_non_admin_learns_nothing_about_which_host_paths_exist() {
    let policy = RepoAccess::default();
    let existing = policy.check("/etc", false).unwrap_err().to_string();
    let missing = policy
        .check("/nonexistent-dir-kiln", false)
        .unwrap_err()
        .to_string();
    assert_eq!(
        existing.replace("/etc", "X"),
        missing.replace("/nonexistent-dir-kiln", "X")
    );
}

#[test]
fn fetch_options_pin_the_checked_addresses_and_allow_only_the_checked_transport() {
    let policy = RepoAccess::default();
    let checked = policy.check("https://93.184.215.14/x.git", false).unwrap();
    assert_eq!(checked.protocol, "https");
    assert_eq!(checked.curl_resolve, None, "an address needs no pin");
    let checked = CheckedRepo {
        protocol: "https",
        curl_resolve: Some("example.com:443:93.184.215.14".into()),
    };
    let args = checked.git_fetch_args();
    for option in [
        "protocol.allow=never",
        "protocol.https.allow=always",
        "http.followRedirects=false",
        "http.curloptResolve=example.com:443:93.184.215.14",
    ] {
        assert!(args.iter().any(|a| a == option), "{option}: {args:?}");
    }

    // Real git with those options: a location that became another
    // transport after the check (a local path, a helper) does not run.
    let repo = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let init = std::process::Command::new("git")
        .args(["init", "--quiet"])
        .arg(repo.path())
        .status()
        .unwrap();
    assert!(init.success());
    for target in [
        format!("file://{}", repo.path().display()),
        "ext::sh -c true".to_string(),
    ] {
        let mut git = std::process::Command::new("git");
        git.args(checked.git_fetch_args())
            .args(["ls-remote", "--", &target]);
        for (name, value) in CheckedRepo::git_fetch_env(home.path()) {
            git.env(name, value);
        }
        for name in GIT_FETCH_ENV_REMOVE {
            git.env_remove(name);
        }
        let output = git.output().unwrap();
        assert!(!output.status.success(), "{target}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("not allowed"), "{target}: {stderr}");
    }
}

#[test]
fn reasons_lose_every_path_inside_the_data_dir() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let reason = format!(
        "cannot check out x: git clone failed: fatal: could not create work tree dir '{dir}/mirrors/app-0123.partial': No space left; see {dir}/checkouts/t_1/1"
    );
    let scrubbed = scrub_data_dir(&reason, data.path());
    assert!(!scrubbed.contains(&dir), "{scrubbed}");
    assert!(!scrubbed.contains("mirrors/app"), "{scrubbed}");
    assert_eq!(
        scrubbed,
        "cannot check out x: git clone failed: fatal: could not create work tree dir '<server data>': No space left; see <server data>"
    );
}

/// Clones `source` into a fresh mirror of `data` under `rules`.
use kiln_workspace::{Checkout, CheckoutError, Mirrors, Source, Start};

fn clone_under(data: &Path, source: &Path, rules: FetchRules) -> Result<Checkout, CheckoutError> {
    let mirrors = Mirrors::new(data);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let repo = source.to_string_lossy();
    let source = Source {
        url: &repo,
        owner: "tok_owner",
        name: &repo,
        fetch: rules,
    };
    runtime.block_on(mirrors.checkout(source, Start::Fresh { base: None }, "task1", 1))
}

#[test]
fn a_fetch_runs_only_the_transport_the_location_check_allowed() {
    let source = kiln_testkit::fixtures::repo("calc-py");
    let data = tempfile::tempdir().unwrap();
    // A location checked as an https URL never gets git to read the disk,
    // however it is later spelt (a redirect, an insteadOf rule).
    let https = CheckedRepo {
        protocol: "https",
        curl_resolve: None,
    };
    let refused = clone_under(
        data.path(),
        source.path(),
        fetch_rules(data.path(), &https, "", None).unwrap(),
    )
    .err()
    .expect("a host path cloned under https-only rules");
    assert!(
        refused.to_string().contains("transport 'file' not allowed"),
        "{refused}"
    );

    let file = CheckedRepo {
        protocol: "file",
        curl_resolve: None,
    };
    let rules = fetch_rules(data.path(), &file, "", None).unwrap();
    let checkout = clone_under(data.path(), source.path(), rules.clone()).unwrap();
    assert!(checkout.worktree.path().join("calc.py").exists());

    // git's HOME while fetching is empty and private: no `.netrc`, no
    // `.git-credentials` of the server's user is offered.
    let home = rules
        .env
        .set
        .iter()
        .find(|(name, _)| name == "HOME")
        .map(|(_, value)| PathBuf::from(value))
        .unwrap();
    assert!(home.starts_with(data.path()));
    assert_eq!(std::fs::read_dir(&home).unwrap().count(), 0);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&home).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(rules.env.remove.iter().any(|name| name == "SSH_AUTH_SOCK"));
}
