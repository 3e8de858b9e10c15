//! `kiln task apply` against a real `kiln serve`, and `kiln apply LOG`
//! after a real `kiln exec --worktree`: the built binary, real git, the
//! scripted model server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use kiln_testkit::{fixtures, scenarios, ScriptedServer};
use serve_support::{git, Installation, KilnServer, ADMIN_TOKEN};

const FIXED_LINE: &str = "return (ordered[middle - 1] + ordered[middle]) / 2";

/// `kiln ARGS` in `dir` as a client of `server` with `token`.
async fn kiln_task(server: &KilnServer, token: &str, dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KILN_SERVER", &server.url)
        .env("KILN_TOKEN", token)
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "kiln failed: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// What a user could see change in a checkout: status, HEAD, branches,
/// the index, and calc.py.
fn observable(dir: &Path) -> String {
    let mut out = git(dir, &["status", "--porcelain=v1", "--untracked-files=all"]);
    out.push_str(&git(dir, &["rev-parse", "HEAD"]));
    out.push_str(&git(dir, &["for-each-ref"]));
    out.push_str(&git(dir, &["ls-files", "--stage"]));
    out.push_str(&std::fs::read_to_string(dir.join("calc.py")).unwrap());
    out
}

fn clone_of(origin: &Path, place: &Path, name: &str) -> std::path::PathBuf {
    git(place, &["clone", "-q", &origin.display().to_string(), name]);
    let dir = place.join(name);
    git(dir.as_path(), &["config", "user.name", "t"]);
    git(dir.as_path(), &["config", "user.email", "t@t"]);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_apply_brings_an_attempt_into_a_clone_checked_merged_or_as_a_branch() {
    let origin = fixtures::repo("calc-py");
    let model = ScriptedServer::start(scenarios::fix_calc_py()).await;
    let install = Installation::new();
    let allowed = origin.path().display().to_string();
    let server = KilnServer::start_with(&install, &model, 1, &["--allow-repo", &allowed]).await;
    let place = tempfile::tempdir().unwrap();
    let carol = succeeded(
        &kiln_task(
            &server,
            ADMIN_TOKEN,
            place.path(),
            &["token", "create", "carol"],
        )
        .await,
    );
    let carol = carol.trim();
    succeeded(
        &kiln_task(
            &server,
            carol,
            place.path(),
            &["env", "add", "calc", &allowed],
        )
        .await,
    );
    let id = succeeded(
        &kiln_task(
            &server,
            carol,
            place.path(),
            &["task", "new", "fix the median"],
        )
        .await,
    );
    let id = id.trim();
    let task = server
        .wait_finished(carol, id, Duration::from_secs(120))
        .await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let commit = task["attempts"][0]["commit_sha"]
        .as_str()
        .unwrap()
        .to_string();

    // Someone else cannot fetch it.
    let dave = succeeded(
        &kiln_task(
            &server,
            ADMIN_TOKEN,
            place.path(),
            &["token", "create", "dave"],
        )
        .await,
    );
    let (status, _) = server
        .get(&format!("/api/tasks/{id}/attempts/1/bundle"), dave.trim())
        .await;
    assert_eq!(status, 404);

    // --check changes nothing and names the file.
    let clone = clone_of(origin.path(), place.path(), "clone");
    let before = observable(&clone);
    let checked = kiln_task(&server, carol, &clone, &["task", "apply", id, "--check"]).await;
    let out = succeeded(&checked);
    assert!(
        out.contains("calc.py") && out.contains("applies cleanly"),
        "{out}"
    );
    assert!(
        text(&checked.stderr).contains("attempt 1 ("),
        "it says which attempt it picked"
    );
    assert_eq!(observable(&clone), before, "--check changed something");

    // The base moved on (an unrelated commit): the apply merges 3-way.
    std::fs::write(clone.join("NOTES.md"), "upstream moved on\n").unwrap();
    git(&clone, &["add", "NOTES.md"]);
    git(&clone, &["commit", "-qm", "upstream"]);
    let head = git(&clone, &["rev-parse", "HEAD"]);
    let applied = kiln_task(&server, carol, &clone, &["task", "apply", id]).await;
    let out = succeeded(&applied);
    assert!(out.contains("merged 3-way"), "{out}");
    assert!(std::fs::read_to_string(clone.join("calc.py"))
        .unwrap()
        .contains(FIXED_LINE));
    assert_eq!(git(&clone, &["status", "--porcelain=v1"]), "M  calc.py");
    assert_eq!(
        git(&clone, &["rev-parse", "HEAD"]),
        head,
        "nothing was committed"
    );

    // A conflicting change to the same line: every conflict named, nothing changed.
    let conflicted = clone_of(origin.path(), place.path(), "conflicted");
    let calc = std::fs::read_to_string(conflicted.join("calc.py")).unwrap();
    let mine = calc.replace(
        "return (ordered[middle] + ordered[middle + 1]) / 2",
        "return ordered[middle]  # mine",
    );
    assert_ne!(
        mine, calc,
        "the fixture's buggy line moved: update this test"
    );
    std::fs::write(conflicted.join("calc.py"), mine).unwrap();
    git(&conflicted, &["commit", "-qam", "my own fix"]);
    let before = observable(&conflicted);
    let refused = kiln_task(&server, carol, &conflicted, &["task", "apply", id]).await;
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(err.contains("calc.py") && err.contains("CONFLICT"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(observable(&conflicted), before);

    // --branch: a branch at the attempt's commit, the checkout untouched.
    let branched = kiln_task(
        &server,
        carol,
        &conflicted,
        &["task", "apply", id, "--branch"],
    )
    .await;
    succeeded(&branched);
    let branch = format!("kiln/{id}/1");
    assert_eq!(git(&conflicted, &["rev-parse", &branch]).trim(), commit);
    assert_eq!(git(&conflicted, &["status", "--porcelain=v1"]), "");

    // A clone without the base is told how to get it.
    let stranger = place.path().join("stranger");
    std::fs::create_dir(&stranger).unwrap();
    git(&stranger, &["init", "-q"]);
    std::fs::write(stranger.join("calc.py"), "other\n").unwrap();
    git(&stranger, &["add", "."]);
    git(
        &stranger,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "x",
        ],
    );
    let missing = kiln_task(&server, carol, &stranger, &["task", "apply", id]).await;
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("git fetch origin"),
        "{}",
        text(&missing.stderr)
    );

    // git failing before it writes (a base the mirror lacks): an error
    // with git's reason, not an empty bundle, naming no path of the
    // server's data directory.
    let data = install.data_dir().display().to_string();
    let base_file = install.data_dir().join("checkouts").join(id).join("1.base");
    let recorded = std::fs::read_to_string(&base_file).unwrap();
    std::fs::write(&base_file, "1".repeat(40)).unwrap();
    let (status, body) = server
        .get(&format!("/api/tasks/{id}/attempts/1/bundle"), carol)
        .await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.to_string().contains("git bundle wrote nothing"),
        "{body}"
    );
    assert!(!body.to_string().contains(&data), "{body}");
    std::fs::write(&base_file, recorded).unwrap();

    // The branch gone from the server's mirror: the same.
    let mirror = serve_support::mirror_dir(install.data_dir());
    git(
        &mirror,
        &["update-ref", "-d", &format!("refs/heads/{branch}")],
    );
    let (status, body) = server
        .get(&format!("/api/tasks/{id}/attempts/1/bundle"), carol)
        .await;
    assert_eq!(status, 500, "{body}");
    assert!(!body.to_string().contains(&data), "{body}");
}

/// `kiln exec`/`kiln apply` in `dir` with their own home and the model server.
async fn kiln_local(home: &Path, model: &ScriptedServer, dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("KILN_HOME", home)
        .env("OPENAI_BASE_URL", model.base_url())
        .env("OPENAI_API_KEY", "sk-test-key")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_log_brings_a_worktree_runs_commit_into_the_checkout() {
    let repo = fixtures::repo("calc-py");
    let home = tempfile::tempdir().unwrap();
    let model = ScriptedServer::start(scenarios::fix_calc_py()).await;
    let run = kiln_local(
        home.path(),
        &model,
        repo.path(),
        &["exec", "--worktree", "Make the test suite pass."],
    )
    .await;
    succeeded(&run);
    let stderr = text(&run.stderr);
    let log = stderr
        .lines()
        .find_map(|line| line.strip_prefix("log: "))
        .expect("kiln exec names its log")
        .trim()
        .to_string();
    assert!(
        stderr.contains(&format!(
            "bring it into your checkout with: kiln apply {log}"
        )),
        "{stderr}"
    );
    let events = std::fs::read_to_string(&log).unwrap();
    let created: serde_json::Value = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["type"] == "commit.created")
        .expect("a commit.created event");
    let base = git(repo.path(), &["rev-parse", "HEAD"]);
    assert_eq!(created["base"], base.trim(), "the log records the base");

    // A local change to the file the run changed: refused, named, kept.
    let calc = repo.path().join("calc.py");
    let original = std::fs::read_to_string(&calc).unwrap();
    std::fs::write(&calc, format!("{original}# my note\n")).unwrap();
    let before = observable(repo.path());
    let refused = kiln_local(home.path(), &model, repo.path(), &["apply", &log]).await;
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(
        err.contains("calc.py") && err.contains("commit or stash"),
        "{err}"
    );
    assert_eq!(observable(repo.path()), before);

    std::fs::write(&calc, &original).unwrap();
    let applied = kiln_local(home.path(), &model, repo.path(), &["apply", &log]).await;
    let out = succeeded(&applied);
    assert!(out.contains("onto its own base"), "{out}");
    assert!(std::fs::read_to_string(&calc).unwrap().contains(FIXED_LINE));
    assert_eq!(
        git(repo.path(), &["status", "--porcelain=v1"]),
        "M  calc.py"
    );

    // Outside any repository: told where to run it.
    let nowhere = tempfile::tempdir().unwrap();
    let lost = kiln_local(home.path(), &model, nowhere.path(), &["apply", &log]).await;
    assert!(!lost.status.success());
    assert!(
        text(&lost.stderr).contains("in your clone"),
        "{}",
        text(&lost.stderr)
    );

    // The run's branch already holds the commit: --branch says so.
    let branch = created["branch"].as_str().unwrap();
    let branched = kiln_local(
        home.path(),
        &model,
        repo.path(),
        &["apply", &log, "--branch"],
    )
    .await;
    let out = succeeded(&branched);
    assert!(
        out.contains(branch) && out.contains("already points at"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_without_a_commit_has_no_bundle_and_task_apply_says_why() {
    let origin = fixtures::repo("calc-py");
    let model = ScriptedServer::start(kiln_testkit::Script::new(vec![
        kiln_testkit::Turn::message("Nothing needs to change."),
    ]))
    .await;
    let install = Installation::new();
    let allowed = origin.path().display().to_string();
    let server = KilnServer::start_with(&install, &model, 1, &["--allow-repo", &allowed]).await;
    let place = tempfile::tempdir().unwrap();
    succeeded(
        &kiln_task(
            &server,
            ADMIN_TOKEN,
            place.path(),
            &["env", "add", "calc", &allowed],
        )
        .await,
    );
    let id =
        succeeded(&kiln_task(&server, ADMIN_TOKEN, place.path(), &["task", "new", "look"]).await);
    let id = id.trim();
    let task = server
        .wait_finished(ADMIN_TOKEN, id, Duration::from_secs(120))
        .await;
    assert_eq!(task["status"], "succeeded", "{task:#}");

    let (status, body) = server
        .get(&format!("/api/tasks/{id}/attempts/1/bundle"), ADMIN_TOKEN)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("has no commit"), "{body}");
    let (status, _) = server
        .get(&format!("/api/tasks/{id}/attempts/9/bundle"), ADMIN_TOKEN)
        .await;
    assert_eq!(status, 404);

    let clone = clone_of(origin.path(), place.path(), "clone");
    let before = observable(&clone);
    let refused = kiln_task(&server, ADMIN_TOKEN, &clone, &["task", "apply", id]).await;
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(
        err.contains("--attempt N"),
        "no attempt to pick, and how to pick one: {err}"
    );
    let refused = kiln_task(
        &server,
        ADMIN_TOKEN,
        &clone,
        &["task", "apply", id, "--attempt", "1"],
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("has no commit"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(observable(&clone), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_apply_works_for_an_attempt_a_remote_worker_ran() {
    let origin = fixtures::repo("calc-py");
    let model = ScriptedServer::start(scenarios::fix_calc_py()).await;
    let install = Installation::new();
    let allowed = origin.path().display().to_string();
    let server = KilnServer::start_with(
        &install,
        &model,
        1,
        &["--allow-repo", &allowed, "--no-local-workers"],
    )
    .await;
    let token = serve_support::worker_token(&server, "w1").await;
    let worker = serve_support::KilnWorker::start(&server, &token, "w1", 1);
    let place = tempfile::tempdir().unwrap();
    succeeded(
        &kiln_task(
            &server,
            ADMIN_TOKEN,
            place.path(),
            &["env", "add", "calc", &allowed],
        )
        .await,
    );
    let id = succeeded(
        &kiln_task(
            &server,
            ADMIN_TOKEN,
            place.path(),
            &["task", "new", "fix it"],
        )
        .await,
    );
    let id = id.trim();
    let task = server
        .wait_finished(ADMIN_TOKEN, id, Duration::from_secs(120))
        .await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(
        task["attempts"][0]["worker_id"]
            .as_str()
            .map(|w| w.contains("w1")),
        Some(true),
        "{task:#}"
    );
    drop(worker);

    let clone = clone_of(origin.path(), place.path(), "clone");
    let applied = kiln_task(&server, ADMIN_TOKEN, &clone, &["task", "apply", id]).await;
    let out = succeeded(&applied);
    assert!(out.contains("onto its own base"), "{out}");
    assert!(std::fs::read_to_string(clone.join("calc.py"))
        .unwrap()
        .contains(FIXED_LINE));
}
