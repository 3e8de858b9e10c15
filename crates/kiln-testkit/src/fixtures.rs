//! Fixture repositories: small real projects under `crates/kiln-testkit/fixtures/`,
//! copied into a temporary directory and committed as a real git repository.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// Why a fixture repository could not be made.
#[derive(Debug)]
pub struct FixtureError {
    pub fixture: String,
    pub step: &'static str,
    pub detail: String,
}

impl fmt::Display for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fixture '{}': {} failed: {}",
            self.fixture, self.step, self.detail
        )
    }
}

impl std::error::Error for FixtureError {}

/// The author every fixture commit carries, so commit ids are reproducible
/// across machines and independent of the user's git configuration.
pub const FIXTURE_AUTHOR: (&str, &str) = ("kiln fixtures", "fixtures@kiln.invalid");
const FIXTURE_DATE: &str = "2026-01-01T00:00:00Z";

/// The source directory of fixture `name`.
pub fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A temporary git repository (branch `main`, one commit) holding a copy of fixture `name`.
///
/// # Panics
/// When the fixture does not exist or git fails; use [`try_repo`] to handle that.
pub fn repo(name: &str) -> TempDir {
    match try_repo(name) {
        Ok(dir) => dir,
        Err(error) => panic!("{error}"),
    }
}

/// Like [`repo`], returning the failure instead of panicking.
pub fn try_repo(name: &str) -> Result<TempDir, FixtureError> {
    let error = |step: &'static str, detail: String| FixtureError {
        fixture: name.to_string(),
        step,
        detail,
    };
    let source = dir(name);
    if !source.is_dir() {
        return Err(error(
            "lookup",
            format!("no directory {} (add the fixture there)", source.display()),
        ));
    }
    let target = tempfile::Builder::new()
        .prefix(&format!("kiln-fixture-{name}-"))
        .tempdir()
        .map_err(|e| error("creating a temporary directory", e.to_string()))?;
    copy_tree(&source, target.path()).map_err(|e| error("copying", e.to_string()))?;
    git(target.path(), &["init", "-q", "-b", "main"]).map_err(|e| error("git init", e))?;
    git(target.path(), &["add", "-A"]).map_err(|e| error("git add", e))?;
    git(
        target.path(),
        &[
            "commit",
            "-q",
            "--no-verify",
            "-m",
            &format!("fixture {name}"),
        ],
    )
    .map_err(|e| error("git commit", e))?;
    Ok(target)
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        // Byte-code caches appear when someone runs a Python fixture in place.
        if name == "__pycache__" {
            continue;
        }
        let destination = to.join(&name);
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&destination)?;
            copy_tree(&entry.path(), &destination)?;
        } else {
            std::fs::copy(entry.path(), &destination)?;
        }
    }
    Ok(())
}

/// Runs git in `cwd`, isolated from the user's and the system's configuration.
fn git(cwd: &Path, args: &[&str]) -> Result<(), String> {
    let (author, email) = FIXTURE_AUTHOR;
    let output = Command::new("git")
        .args(["-c", "commit.gpgsign=false", "-c", "core.autocrlf=false"])
        .args(args)
        .current_dir(cwd)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", author)
        .env("GIT_AUTHOR_EMAIL", email)
        .env("GIT_AUTHOR_DATE", FIXTURE_DATE)
        .env("GIT_COMMITTER_NAME", author)
        .env("GIT_COMMITTER_EMAIL", email)
        .env("GIT_COMMITTER_DATE", FIXTURE_DATE)
        .output()
        .map_err(|e| format!("cannot run git ({e}); is git installed?"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}
