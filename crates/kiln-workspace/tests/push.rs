//! Pushing an attempt's commit to real bare repositories: over file://
//! and over git's own smart HTTP (`git http-backend`) behind Basic auth.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kiln_testkit::git_http::{bare_repository, serve_with_basic_auth};
use kiln_workspace::{push_branch, PushAuth, PushError};
use support::git;

const TOKEN: &str = "kiln-test-token-9f8e7d";

/// A repository (standing in for a server's mirror) cloned from `bare`,
/// with two commits of its own that do not descend from each other.
/// Returns (its git dir, commit one, commit two).
fn mirror_of(bare: &Path, place: &Path) -> (PathBuf, String, String) {
    let mirror = place.join("mirror");
    git(
        place,
        &["clone", "-q", &bare.display().to_string(), "mirror"],
    );
    let commit_with = |text: &str| {
        std::fs::write(mirror.join("README.md"), text).unwrap();
        git(&mirror, &["commit", "-qam", text]);
        let sha = git(&mirror, &["rev-parse", "HEAD"]).trim().to_string();
        git(&mirror, &["reset", "-q", "--hard", "HEAD~1"]);
        sha
    };
    let one = commit_with("attempt one\n");
    let two = commit_with("attempt two\n");
    (mirror.join(".git"), one, two)
}

fn remote_ref(bare: &Path, branch: &str) -> String {
    git(bare, &["rev-parse", &format!("refs/heads/{branch}")])
        .trim()
        .to_string()
}

#[test]
fn a_commit_is_pushed_to_a_bare_repository_over_file_urls() {
    let place = tempfile::tempdir().unwrap();
    let bare = bare_repository(place.path());
    let (mirror, one, two) = mirror_of(&bare, place.path());
    let url = format!("file://{}", bare.display());
    push_branch(&mirror, &one, &url, "kiln/t1/1", None, false).unwrap();
    assert_eq!(remote_ref(&bare, "kiln/t1/1"), one);
    // A plain path works the same.
    push_branch(
        &mirror,
        &one,
        &bare.display().to_string(),
        "kiln/plain",
        None,
        false,
    )
    .unwrap();
    assert_eq!(remote_ref(&bare, "kiln/plain"), one);

    // `two` does not descend from `one`: refused without force, named as such.
    let err = push_branch(&mirror, &two, &url, "kiln/t1/1", None, false).unwrap_err();
    assert!(matches!(err, PushError::NonFastForward { .. }), "{err}");
    assert!(err.to_string().contains("non-fast-forward"), "{err}");
    assert_eq!(
        remote_ref(&bare, "kiln/t1/1"),
        one,
        "a refused push moved the branch"
    );
    push_branch(&mirror, &two, &url, "kiln/t1/1", None, true).unwrap();
    assert_eq!(remote_ref(&bare, "kiln/t1/1"), two);
}

#[test]
fn a_commit_is_pushed_over_smart_http_with_basic_auth() {
    let place = tempfile::tempdir().unwrap();
    let bare = bare_repository(place.path());
    let (mirror, one, _two) = mirror_of(&bare, place.path());
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("x-access-token:{TOKEN}"))
    );
    let base = serve_with_basic_auth(place.path().to_path_buf(), expected.clone());
    let url = format!("{base}/app.git");

    let auth = PushAuth::basic("x-access-token", TOKEN);
    push_branch(&mirror, &one, &url, "kiln/http/1", Some(&auth), false).unwrap();
    assert_eq!(remote_ref(&bare, "kiln/http/1"), one);

    // The same header handed over ready-made (as kiln-store builds it).
    let auth = PushAuth::header(&expected);
    push_branch(&mirror, &one, &url, "kiln/http/2", Some(&auth), false).unwrap();
    assert_eq!(remote_ref(&bare, "kiln/http/2"), one);
}

#[test]
fn wrong_credentials_are_an_auth_error_that_never_shows_the_token() {
    let place = tempfile::tempdir().unwrap();
    let bare = bare_repository(place.path());
    let (mirror, one, _two) = mirror_of(&bare, place.path());
    let base = serve_with_basic_auth(
        place.path().to_path_buf(),
        format!("Basic {}", STANDARD.encode("x-access-token:the-right-one")),
    );
    let url = format!("{base}/app.git");
    let auth = PushAuth::basic("x-access-token", TOKEN);
    let err = push_branch(&mirror, &one, &url, "kiln/http/1", Some(&auth), false).unwrap_err();
    assert!(matches!(err, PushError::AuthFailed { .. }), "{err}");
    let text = format!("{err} {err:?}");
    let encoded = STANDARD.encode(format!("x-access-token:{TOKEN}"));
    assert!(!text.contains(TOKEN), "{text}");
    assert!(!text.contains(&encoded), "{text}");
    assert!(text.contains("scopes"), "{text}");
    assert!(
        git(&bare, &["for-each-ref", "refs/heads/kiln"]).is_empty(),
        "nothing was pushed"
    );
}

#[test]
fn a_protected_branch_is_a_rejection_with_the_remotes_reason() {
    use std::os::unix::fs::PermissionsExt;
    let place = tempfile::tempdir().unwrap();
    let bare = bare_repository(place.path());
    let (mirror, one, _two) = mirror_of(&bare, place.path());
    // The remote's own hook protects main (it runs: git http-backend is the
    // remote's git, not kiln's).
    let hook = bare.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\nwhile read old new ref; do\n  if [ \"$ref\" = refs/heads/main ]; then echo 'main is protected'; exit 1; fi\ndone\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let expected = format!("Basic {}", STANDARD.encode(format!("u:{TOKEN}")));
    let base = serve_with_basic_auth(place.path().to_path_buf(), expected);
    let url = format!("{base}/app.git");
    let auth = PushAuth::basic("u", TOKEN);
    let before = remote_ref(&bare, "main");
    let err = push_branch(&mirror, &one, &url, "main", Some(&auth), true).unwrap_err();
    let PushError::Rejected { reason, .. } = &err else {
        panic!("{err}");
    };
    assert!(reason.contains("main is protected"), "{reason}");
    assert_eq!(remote_ref(&bare, "main"), before);
}

#[test]
fn an_unreachable_remote_is_named_as_such() {
    let place = tempfile::tempdir().unwrap();
    let bare = bare_repository(place.path());
    let (mirror, one, _two) = mirror_of(&bare, place.path());
    // A port nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/app.git");
    let auth = PushAuth::basic("u", TOKEN);
    let err = push_branch(&mirror, &one, &url, "kiln/x", Some(&auth), false).unwrap_err();
    assert!(matches!(err, PushError::Unreachable { .. }), "{err}");
    assert!(!format!("{err:?}").contains(TOKEN));
    let missing = format!("file://{}/nothing-here.git", place.path().display());
    let err = push_branch(&mirror, &one, &missing, "kiln/x", None, false).unwrap_err();
    assert!(matches!(err, PushError::Unreachable { .. }), "{err}");
}

#[test]
fn credentials_are_refused_for_plain_http_elsewhere_and_for_ssh() {
    let place = tempfile::tempdir().unwrap();
    let bare = bare_repository(place.path());
    let (mirror, one, _two) = mirror_of(&bare, place.path());
    let auth = PushAuth::basic("u", TOKEN);
    for url in ["http://example.com/app.git", "git@example.com:o/app.git"] {
        let err = push_branch(&mirror, &one, url, "kiln/x", Some(&auth), false).unwrap_err();
        assert!(matches!(err, PushError::Invalid(_)), "{url}: {err}");
        assert!(!err.to_string().contains(TOKEN));
    }
    let err = push_branch(
        &mirror,
        &one,
        &format!("https://u:{TOKEN}@example.com/app.git"),
        "kiln/x",
        None,
        false,
    )
    .unwrap_err();
    assert!(matches!(err, PushError::Invalid(_)), "{err}");
    assert!(!err.to_string().contains(TOKEN), "{err}");
}
