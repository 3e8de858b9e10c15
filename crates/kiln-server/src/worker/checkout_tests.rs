use super::*;

#[test]
fn mirror_names_are_stable_readable_and_distinct_per_location() {
    let a = mirror_name("https://example.com/org/app.git");
    assert!(a.starts_with("app-"), "{a}");
    assert_eq!(a, mirror_name("https://example.com/org/app.git"));
    assert_ne!(a, mirror_name("/srv/git/app"));
}

#[test]
fn owners_get_distinct_directory_names_made_of_hex_only() {
    let a = owner_dir_name("tok_a");
    assert_ne!(a, owner_dir_name("tok_b"));
    assert_eq!(a, owner_dir_name("tok_a"));
    assert!(owner_dir_name("../../etc")
        .bytes()
        .all(|b| b.is_ascii_hexdigit()));
}

/// Clones `source` into a fresh mirror of `data` under `rules`.
fn clone_under(data: &Path, source: &Path, rules: FetchRules) -> Result<Checkout, CheckoutError> {
    let mirrors = Mirrors::new(data);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let repo = source.to_string_lossy();
    let source = Source {
        repo: &repo,
        owner: "tok_owner",
        fetch: rules,
    };
    runtime.block_on(mirrors.checkout(source, None, "task1", 1, false))
}

#[test]
fn a_fetch_runs_only_the_transport_the_location_check_allowed() {
    let source = kiln_testkit::fixtures::repo("calc-py");
    let data = tempfile::tempdir().unwrap();
    let mirrors = Mirrors::new(data.path());

    // A location checked as an https URL never gets git to read the disk,
    // however it is later spelt (a redirect, an insteadOf rule).
    let https = CheckedRepo {
        protocol: "https",
        curl_resolve: None,
    };
    let refused = clone_under(
        data.path(),
        source.path(),
        mirrors.fetch_rules(&https, "", None).unwrap(),
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
    let rules = mirrors.fetch_rules(&file, "", None).unwrap();
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
