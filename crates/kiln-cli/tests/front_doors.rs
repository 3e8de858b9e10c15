//! One attempt path: the same scripted fix through every front door
//! (`kiln exec --worktree`, `kiln serve`'s in-process pool, and a remote
//! `kiln worker`), checked the same way: the events in the same order, one
//! `attempt.finished` and last, the same diff, a commit on the attempt's
//! branch that the events name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::path::Path;
use std::time::Duration;

use kiln_testkit::{fixtures, scenarios, ScriptedServer};
use serde_json::{json, Value};
use serve_support::ADMIN_TOKEN;
use serve_support::{git, mirror_dir, worker_token, Installation, KilnServer, KilnWorker};

const LONG: Duration = Duration::from_secs(120);
const PROMPT: &str = "Make the test suite pass.";

/// What a door produced for the fix, in the same shape for every door.
struct Result {
    door: &'static str,
    events: Vec<Value>,
    /// The diff as the door hands it out (the event for exec, the API otherwise).
    diff: String,
    /// The commit the attempt's branch points at, read with git.
    branch_tip: String,
}

/// The event types that say what the attempt did, in order (streamed
/// deltas, usage, the SSE-only status frames and the task's `task.ranked`,
/// which the server's store appends after the finish and `kiln exec` has no
/// task for, left out; a command's output counted once, since how the pipes
/// split it varies from run to run).
fn steps(events: &[Value]) -> Vec<String> {
    let mut steps: Vec<String> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .filter(|t| {
            !matches!(
                t.as_str(),
                "model.delta" | "usage" | "task.status" | "task.ranked"
            )
        })
        .collect();
    steps.dedup_by(|a, b| a == "exec.output" && b == "exec.output");
    steps
}

fn the_one<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = events.iter().filter(|e| e["type"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}: {found:?}");
    found[0]
}

fn check(result: &Result) {
    let door = result.door;
    let events = &result.events;
    let steps = steps(events);
    assert_eq!(
        steps.last().map(String::as_str),
        Some("attempt.finished"),
        "{door}: {steps:?}"
    );
    let finished = the_one(events, "attempt.finished");
    assert_eq!(finished["status"], "succeeded", "{door}: {finished}");
    assert!(
        finished["final_message"]
            .as_str()
            .unwrap()
            .contains("median()"),
        "{door}: {finished}"
    );
    let at = |kind: &str| steps.iter().position(|s| s == kind).unwrap();
    assert!(at("diff.ready") < at("commit.created"), "{door}: {steps:?}");
    assert!(
        at("commit.created") < at("attempt.finished"),
        "{door}: {steps:?}"
    );

    let ready = the_one(events, "diff.ready");
    assert_eq!(
        ready["stat"],
        json!({"files_changed": 1, "insertions": 1, "deletions": 1}),
        "{door}"
    );
    assert_eq!(
        ready["diff"].as_str().unwrap(),
        result.diff,
        "{door}: the event and the door's diff agree"
    );
    assert!(
        result
            .diff
            .contains("+    return (ordered[middle - 1] + ordered[middle]) / 2"),
        "{door}: {}",
        result.diff
    );
    let commit = the_one(events, "commit.created");
    assert_eq!(
        commit["sha"].as_str().unwrap(),
        result.branch_tip,
        "{door}: {commit}"
    );

    // The tests ran twice, failing then passing, as the script says.
    let exits: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "exec.end")
        .map(|e| &e["exit_code"])
        .collect();
    assert_eq!(exits, [&json!(1), &json!(0)], "{door}");
}

async fn through_exec() -> Result {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(scenarios::fix_calc_py()).await;
    let home = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["exec", "--worktree", "--json", PROMPT])
        .current_dir(repo.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("KILN_HOME", home.path())
        .env("OPENAI_BASE_URL", model.base_url())
        .env("OPENAI_API_KEY", "sk-test-key")
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let diff = the_one(&events, "diff.ready")["diff"]
        .as_str()
        .unwrap()
        .to_string();
    let branch = the_one(&events, "commit.created")["branch"]
        .as_str()
        .unwrap()
        .to_string();
    let branch_tip = git(repo.path(), &["rev-parse", &branch]).trim().to_string();
    Result {
        door: "kiln exec --worktree",
        events,
        diff,
        branch_tip,
    }
}

/// The fix as a task of `server`, whose attempts something else runs.
async fn through_server(door: &'static str, server: &KilnServer, data: &Path) -> Result {
    let repo = fixtures::repo("calc-py");
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": PROMPT}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{door}: {task:#}");
    let events = server
        .events(ADMIN_TOKEN, &id, None)
        .await
        .all(LONG)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    let (status, diff) = server
        .get(&format!("/api/tasks/{id}/attempts/1/diff"), ADMIN_TOKEN)
        .await;
    assert_eq!(status, 200, "{door}");
    let branch = format!("kiln/{id}/1");
    assert_eq!(task["attempts"][0]["branch"], branch.as_str(), "{door}");
    let branch_tip = git(&mirror_dir(data), &["rev-parse", &branch])
        .trim()
        .to_string();
    Result {
        door,
        events,
        diff: diff.as_str().unwrap().to_string(),
        branch_tip,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scripted_fix_is_the_same_through_exec_serve_and_a_remote_worker() {
    let exec = through_exec().await;
    check(&exec);

    let model = ScriptedServer::start(scenarios::fix_calc_py()).await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    let serve = through_server("kiln serve", &server, install.data_dir()).await;
    check(&serve);

    let model = ScriptedServer::start(scenarios::fix_calc_py()).await;
    let install = Installation::new();
    let server = KilnServer::start_with(&install, &model, 1, &["--no-local-workers"]).await;
    let token = worker_token(&server, "front-doors").await;
    let worker = KilnWorker::start(&server, &token, "front-doors", 1);
    let remote = through_server("kiln worker", &server, install.data_dir()).await;
    check(&remote);
    assert!(
        remote
            .events
            .iter()
            .any(|e| e["type"] == "attempt.started" && worker.ran_in(e["cwd"].as_str().unwrap())),
        "the remote worker ran it"
    );

    // The same steps, in the same order, whichever door.
    let exec_steps = steps(&exec.events);
    assert_eq!(steps(&serve.events), exec_steps, "kiln serve vs kiln exec");
    assert_eq!(
        steps(&remote.events),
        exec_steps,
        "kiln worker vs kiln exec"
    );
    // And the same change (each door's diff of the same fix).
    let body = |diff: &str| {
        diff.lines()
            .filter(|l| l.starts_with('+') || l.starts_with('-'))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(body(&serve.diff), body(&exec.diff));
    assert_eq!(body(&remote.diff), body(&exec.diff));
}
