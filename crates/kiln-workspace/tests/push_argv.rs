//! The push credential never reaches git's argv, which `ps` shows every
//! user of the machine. Its own test binary: it puts a recording `git`
//! first on the PATH of the whole process.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::os::unix::fs::PermissionsExt;

use kiln_testkit::git_http::{bare_repository, serve_with_basic_auth};
use kiln_workspace::{push_branch, PushAuth};
use support::git;

const TOKEN: &str = "argv-test-token-5c4b3a";

#[test]
fn the_push_credential_is_in_gits_environment_never_its_arguments() {
    let place = tempfile::tempdir().unwrap();
    let bare = bare_repository(place.path());
    let mirror = place.path().join("mirror");
    git(
        place.path(),
        &["clone", "-q", &bare.display().to_string(), "mirror"],
    );
    std::fs::write(mirror.join("README.md"), "changed\n").unwrap();
    git(&mirror, &["commit", "-qam", "change"]);
    let commit = git(&mirror, &["rev-parse", "HEAD"]).trim().to_string();

    let real_git = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let bin = place.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let record = place.path().join("argv.log");
    let wrapper = bin.join("git");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{log}'\nif [ -n \"$GIT_CONFIG_VALUE_0\" ]; then echo ENV-HAS-HEADER >> '{log}'; fi\nexec '{real_git}' \"$@\"\n",
            log = record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The only test in this binary: nothing else reads PATH meanwhile.
    std::env::set_var("PATH", path);

    let auth = PushAuth::basic("x-access-token", TOKEN);
    let header = {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"))
        )
    };
    let base = serve_with_basic_auth(place.path().to_path_buf(), header.clone());
    let url = format!("{base}/app.git");
    push_branch(
        &mirror.join(".git"),
        &commit,
        &url,
        "kiln/argv",
        Some(&auth),
        false,
    )
    .unwrap();

    let recorded = std::fs::read_to_string(&record).unwrap();
    assert!(
        recorded.contains(" push "),
        "the wrapper saw the push: {recorded}"
    );
    assert!(recorded.contains("ENV-HAS-HEADER"), "{recorded}");
    assert!(!recorded.contains(TOKEN), "{recorded}");
    assert!(!recorded.contains(&header[6..]), "{recorded}");
}
