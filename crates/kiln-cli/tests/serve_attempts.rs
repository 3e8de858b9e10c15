//! `kiln serve` runs tasks end to end: the built binary, real HTTP, the
//! scripted model server, real git mirrors and worktrees, the real sandbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::time::Duration;

use kiln_testkit::{fixtures, scenarios, Script, ScriptedServer, Turn};
use serde_json::json;
use serve_support::{base64, git, mirror_dir, Installation, KilnServer, ADMIN_TOKEN};

const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_attempts_on_calc_py_each_end_with_the_fix_committed_on_their_own_branch() {
    let repo = fixtures::repo("calc-py");
    let mut turns = Vec::new();
    // One worker: attempts run one after another, so the script's order holds.
    for _ in 0..3 {
        turns.extend(scenarios::fix_calc_py().turns);
    }
    let model = ScriptedServer::start(Script::new(turns)).await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;

    let created = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "fix median", "attempts": 3}),
        )
        .await;
    // A free worker may have claimed an attempt already.
    assert!(
        matches!(created["status"].as_str(), Some("queued" | "running")),
        "{created}"
    );
    assert_eq!(created["attempts"].as_array().unwrap().len(), 3);
    let id = created["id"].as_str().unwrap().to_string();
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;

    assert_eq!(task["status"], "succeeded", "{task:#}");
    let attempts = task["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    let mirror = mirror_dir(install.data_dir());
    for attempt in attempts {
        let n = attempt["n"].as_u64().unwrap();
        assert_eq!(attempt["status"], "succeeded", "{attempt:#}");
        assert_eq!(attempt["diff_stat"]["files_changed"], 1, "{attempt:#}");
        assert_eq!(attempt["diff_stat"]["insertions"], 1);
        assert_eq!(attempt["diff_stat"]["deletions"], 1);
        let branch = format!("kiln/{id}/{n}");
        assert_eq!(attempt["branch"], branch.as_str());
        let (status, diff) = server
            .get(&format!("/api/tasks/{id}/attempts/{n}/diff"), ADMIN_TOKEN)
            .await;
        assert_eq!(status, 200);
        let diff = diff.as_str().unwrap();
        assert!(
            diff.contains("+    return (ordered[middle - 1] + ordered[middle]) / 2"),
            "{diff}"
        );
        // The commit is on the attempt's branch in the mirror.
        let sha = attempt["commit_sha"].as_str().unwrap();
        assert_eq!(git(&mirror, &["rev-parse", &branch]), sha);
        let shown = git(&mirror, &["show", &format!("{sha}:calc.py")]);
        assert!(shown.contains("ordered[middle - 1]"));
    }
    // The user's repository is untouched.
    let original = std::fs::read_to_string(repo.path().join("calc.py")).unwrap();
    assert!(original.contains("ordered[middle + 1]"));
    assert_eq!(model.turns_remaining(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_attempts_each_get_their_own_checkout_and_all_finish() {
    let repo = fixtures::repo("calc-py");
    // Every request gets the same one-turn answer, whatever order they come in.
    let turns = (0..4)
        .map(|_| Turn::message("Nothing to change."))
        .collect();
    let model = ScriptedServer::start(Script::new(turns)).await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 4).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let mut ids = Vec::new();
    for prompt in ["a", "b"] {
        let task = server
            .task(
                ADMIN_TOKEN,
                json!({"environment": "calc", "prompt": prompt, "attempts": 2}),
            )
            .await;
        ids.push(task["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let task = server.wait_finished(ADMIN_TOKEN, id, LONG).await;
        assert_eq!(task["status"], "succeeded", "{task:#}");
        for attempt in task["attempts"].as_array().unwrap() {
            assert_eq!(attempt["final_message"], "Nothing to change.");
            assert_eq!(attempt["diff_stat"]["files_changed"], 0);
            // A finished attempt's copy-on-write checkout is parked: only
            // its own upper layer (and git metadata) stays on disk.
            let n = attempt["n"].as_u64().unwrap();
            let layers = install
                .data_dir()
                .join("checkouts")
                .join(id)
                .join(format!("{n}.layers"));
            assert!(layers.join("upper/.git").is_file(), "{}", layers.display());
            assert!(!layers.join("upper/calc.py").exists(), "nothing copied up");
        }
    }
    let (_, metrics) = server.get("/metrics", ADMIN_TOKEN).await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("kiln_attempts{state=\"succeeded\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("kiln_queue_depth 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_sees_secrets_the_agent_never_does_and_a_failing_setup_fails_the_attempt() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![
        Turn::shell("echo agent-sees-${API_SECRET:-none}-$GREETING"),
        Turn::message("Looked."),
    ]))
    .await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    let (status, env) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({
                "name": "calc",
                "repo": repo.path().display().to_string(),
                "setup_script": "echo setup-sees-${#API_SECRET}-$GREETING",
                "env": {"GREETING": "hi"},
                "secrets": {"API_SECRET": "s3cr3t-value"},
            }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    let (_, listed) = server.get("/api/environments", ADMIN_TOKEN).await;
    assert_eq!(
        listed["environments"][0]["secret_names"],
        json!(["API_SECRET"])
    );
    assert!(!listed.to_string().contains("s3cr3t-value"), "{listed}");

    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "look"}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    let task = server.wait_finished(ADMIN_TOKEN, id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let events = server.events(ADMIN_TOKEN, id, None).await.all(LONG).await;
    let setup: String = events
        .iter()
        .filter(|e| e.kind == "setup.output")
        .map(|e| e.data["text"].as_str().unwrap().to_string())
        .collect();
    assert!(setup.contains("setup-sees-12-hi"), "{setup:?}");
    let agent: String = events
        .iter()
        .filter(|e| e.kind == "exec.output")
        .map(|e| e.data["text"].as_str().unwrap().to_string())
        .collect();
    assert!(agent.contains("agent-sees-none-hi"), "{agent:?}");

    let (status, _) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({"name": "broken", "repo": repo.path().display().to_string(),
                   "setup_script": "echo preparing; exit 3"}),
        )
        .await;
    assert_eq!(status, 201);
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "broken", "prompt": "look"}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    let task = server.wait_finished(ADMIN_TOKEN, id, LONG).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    let reason = task["attempts"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("setup script exited with 3"), "{reason}");
    assert_eq!(model.turns_remaining(), 0, "the agent never ran");
}

/// The marker that routes task `i`'s model requests to its own conversation.
fn task_marker(i: usize) -> String {
    format!("[task-{i:02}]")
}

/// What task `i` writes: a file of its own with content naming it.
fn task_note(i: usize) -> (String, String) {
    (
        format!("notes/task-{i:02}.md"),
        format!("# Notes for task {i:02}\nmedian() checked by task {i:02}.\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_tasks_submitted_at_once_all_finish_with_their_own_diffs() {
    let repo = fixtures::repo("calc-py");
    // Each task has its own three-turn conversation, routed by the marker in
    // its prompt, so the four workers' requests may interleave in any order.
    let mut script = Script::new(Vec::new());
    for i in 0..20 {
        let (path, content) = task_note(i);
        let added: String = content.lines().map(|line| format!("+{line}\n")).collect();
        let patch = format!("*** Begin Patch\n*** Add File: {path}\n{added}*** End Patch\n");
        script = script.with_route(
            task_marker(i),
            vec![
                Turn::shell("sed -n 1,20p calc.py"),
                Turn::message_then_tool_call(
                    format!("Writing the notes for task {i:02}."),
                    "apply_patch",
                    json!({ "input": patch }),
                ),
                Turn::message(format!("Task {i:02}: wrote {path}.")),
            ],
        );
    }
    let model = ScriptedServer::start(script).await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 4).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;

    let mut posts = tokio::task::JoinSet::new();
    for i in 0..20 {
        let http = server.http.clone();
        let url = format!("{}/api/tasks", server.url);
        let prompt = format!("{} write your notes", task_marker(i));
        posts.spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"environment": "calc", "prompt": prompt}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            let id = response.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            (i, id)
        });
    }
    let mut ids = Vec::new();
    while let Some(posted) = posts.join_next().await {
        ids.push(posted.unwrap());
    }
    assert_eq!(ids.len(), 20);
    for (i, id) in &ids {
        let task = server.wait_finished(ADMIN_TOKEN, id, LONG).await;
        assert_eq!(task["status"], "succeeded", "{task:#}");
        let attempt = &task["attempts"][0];
        let (path, content) = task_note(*i);
        assert_eq!(
            attempt["final_message"],
            format!("Task {i:02}: wrote {path}.").as_str()
        );
        assert_eq!(attempt["diff_stat"]["files_changed"], 1, "{attempt:#}");
        assert_eq!(attempt["diff_stat"]["insertions"], 2, "{attempt:#}");
        assert_eq!(attempt["diff_stat"]["deletions"], 0, "{attempt:#}");
        let (status, diff) = server
            .get(&format!("/api/tasks/{id}/attempts/1/diff"), ADMIN_TOKEN)
            .await;
        assert_eq!(status, 200);
        let diff = diff.as_str().unwrap();
        assert!(diff.contains(&format!("+++ b/{path}")), "{diff}");
        for line in content.lines() {
            assert!(diff.contains(&format!("+{line}\n")), "task {i}: {diff}");
        }
        for other in (0..20).filter(|other| other != i) {
            let (other_path, _) = task_note(other);
            assert!(
                !diff.contains(&other_path),
                "task {i} has {other_path}: {diff}"
            );
            assert!(
                !diff.contains(&format!("task {other:02}")),
                "task {i}: {diff}"
            );
        }
        // The change is committed on the attempt's own branch.
        let mirror = mirror_dir(install.data_dir());
        let sha = attempt["commit_sha"].as_str().unwrap();
        assert_eq!(git(&mirror, &["rev-parse", &format!("kiln/{id}/1")]), sha);
        let notes = git(&mirror, &["ls-tree", "--name-only", sha, "notes/"]);
        assert_eq!(notes.trim(), path);
    }
    assert_eq!(model.turns_remaining(), 0);
    assert_eq!(model.turns_served(), 60);
    let (_, page) = server
        .get("/api/tasks?status=succeeded&limit=50", ADMIN_TOKEN)
        .await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_task_cannot_change_its_checkout() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![
        Turn::shell("echo changed > calc.py; echo extra > new.txt"),
        Turn::message("median() averages the two middle values."),
    ]))
    .await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "what does median do?", "mode": "ask"}),
        )
        .await;
    assert_eq!(task["mode"], "ask");
    let id = task["id"].as_str().unwrap();
    let task = server.wait_finished(ADMIN_TOKEN, id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let attempt = &task["attempts"][0];
    assert_eq!(attempt["diff_stat"]["files_changed"], 0, "{attempt:#}");
    assert!(attempt["commit_sha"].is_null());
    let requests = model.requests();
    let tools = requests[0].body["tools"].to_string();
    assert!(!tools.contains("apply_patch"), "{tools}");
    let refused = requests[1].body.to_string();
    assert!(refused.contains("Read-only file system"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_ref_picks_the_starting_branch_and_an_unknown_one_fails_the_attempt() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![
        Turn::shell("cat FEATURE.txt"),
        Turn::message("Read the feature note."),
    ]))
    .await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    // The mirror is cloned by a first task; the branch appears afterwards,
    // so the next checkout must fetch it.
    let first = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "x", "base_ref": "no-such-branch"}),
        )
        .await;
    let first = first["id"].as_str().unwrap();
    let task = server.wait_finished(ADMIN_TOKEN, first, LONG).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    let reason = task["attempts"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("no-such-branch") && reason.contains("does not exist"),
        "{reason}"
    );

    git(repo.path(), &["checkout", "-q", "-b", "feature"]);
    std::fs::write(repo.path().join("FEATURE.txt"), "feature-branch-note\n").unwrap();
    git(repo.path(), &["add", "FEATURE.txt"]);
    git(
        repo.path(),
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "feature",
        ],
    );
    let feature_head = git(repo.path(), &["rev-parse", "HEAD"]);
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "read it", "base_ref": "feature"}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    let task = server.wait_finished(ADMIN_TOKEN, id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let events = server.events(ADMIN_TOKEN, id, None).await.all(LONG).await;
    let output: String = events
        .iter()
        .filter(|e| e.kind == "exec.output")
        .map(|e| e.data["text"].as_str().unwrap().to_string())
        .collect();
    assert!(output.contains("feature-branch-note"), "{output:?}");
    let mirror = mirror_dir(install.data_dir());
    assert_eq!(
        git(&mirror, &["rev-parse", &format!("kiln/{id}/1")]),
        feature_head
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_setup_leaks_reaches_no_event_stored_diff_or_commit_message() {
    const SECRET: &str = "tok-9f8e7d6c5b4a-live";
    let repo = fixtures::repo("calc-py");
    // A careless model: it reads what setup left, copies it and repeats it.
    let model = ScriptedServer::start(Script::new(vec![
        Turn::shell("cat .env.local; base64 .env.local; cp .env.local notes.txt"),
        Turn::message(format!("Done. The token is {SECRET}.")),
    ]))
    .await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    let (status, env) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({
                "name": "calc",
                "repo": repo.path().display().to_string(),
                // The value printed in two pieces, as two output chunks.
                "setup_script": "printf '%s' \"${API_TOKEN:0:9}\"; sleep 0.3; echo \"${API_TOKEN:9}\"; \
                                 echo \"$API_TOKEN\" > .env.local",
                "secrets": {"API_TOKEN": SECRET},
            }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": format!("Rotate {SECRET} in the notes")}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    let task = server.wait_finished(ADMIN_TOKEN, id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");

    let encoded = base64(format!("{SECRET}\n").as_bytes());
    let events = server.events(ADMIN_TOKEN, id, None).await.all(LONG).await;
    let everything: String = events.iter().map(|e| e.data.to_string()).collect();
    assert!(everything.contains("[REDACTED:API_TOKEN]"), "{everything}");
    assert!(!everything.contains(SECRET), "{everything}");
    assert!(!everything.contains(&encoded), "{everything}");
    // The prompt is the user's own text, kept as written; what kiln and
    // the model produced is not.
    let produced = task["attempts"].to_string();
    assert!(
        produced.contains("The token is [REDACTED:API_TOKEN]"),
        "{task:#}"
    );
    assert!(!produced.contains(SECRET), "{task:#}");

    let (status, diff) = server
        .get(&format!("/api/tasks/{id}/attempts/1/diff"), ADMIN_TOKEN)
        .await;
    assert_eq!(status, 200);
    let diff = diff.as_str().unwrap_or_default();
    assert!(diff.contains("notes.txt"), "{diff}");
    assert!(!diff.contains(SECRET), "{diff}");

    let sha = task["attempts"][0]["commit_sha"].as_str().unwrap();
    let message = git(
        &mirror_dir(install.data_dir()),
        &["log", "-1", "--format=%B", sha],
    );
    assert!(message.contains("[REDACTED:API_TOKEN]"), "{message}");
    assert!(!message.contains(SECRET), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environments_failing_check_marks_the_attempt_checks_failed_with_its_result() {
    let repo = fixtures::repo("calc-py");
    // The model claims success twice (its final message, then its fix turn)
    // without touching the bug.
    let model = ScriptedServer::start(Script::new(vec![
        Turn::message("Fixed; all tests pass."),
        Turn::message("They pass."),
    ]))
    .await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    let (status, env) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({
                "name": "calc",
                "repo": repo.path().display().to_string(),
                "checks": [{"name": "tests", "command": "python3 -m unittest -q", "timeout_secs": 120}],
            }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    assert_eq!(env["checks"][0]["name"], "tests");

    let created = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "fix median"}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;

    assert_eq!(task["status"], "checks_failed", "{task:#}");
    let attempt = &task["attempts"][0];
    assert_eq!(attempt["status"], "checks_failed", "{attempt:#}");
    let checks = attempt["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "{attempt:#}");
    assert_eq!(checks[0]["name"], "tests");
    assert_eq!(checks[0]["command"], "python3 -m unittest -q");
    assert_eq!(checks[0]["passed"], false);
    assert_eq!(checks[0]["exit_code"], 1);
    assert_eq!(checks[0]["chunk_id"], "t2");
    // The fix turn was asked for, naming the check and its chunk.
    let requests = model.requests();
    assert_eq!(requests.len(), 2);
    let asked = requests[1].body.to_string();
    assert!(asked.contains("terminal chunk t1"), "{asked}");
    assert_eq!(model.turns_remaining(), 0);

    // `kiln task show` gives the verdict and where its output is.
    let shown = server.cli(ADMIN_TOKEN, &["task", "show", &id]).await;
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains(&format!("{id}  checks_failed")), "{shown}");
    assert!(
        shown.contains("    check tests: exited with 1 ("),
        "{shown}"
    );
    assert!(shown.contains("ms, output t2)"), "{shown}");
}
