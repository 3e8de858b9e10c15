//! `kiln worker` end to end: `kiln serve` (SQLite) without local workers,
//! two `kiln worker` processes with their own data directories and no model
//! key, the scripted model reachable only by the server. The built binaries,
//! real HTTP, real git over the server's smart HTTP endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_testkit::{fixtures, Script, ScriptedServer, Turn};
use serde_json::{json, Value};
use serve_support::{worker_token, Installation, KilnServer, KilnWorker, ADMIN_TOKEN};

const LONG: Duration = Duration::from_secs(60);
const MODEL_KEY: &str = "sk-test-key";
const TASKS: usize = 20;

/// Every file under `dir` (not following links) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                if let Ok(bytes) = std::fs::read(&path) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push(path);
                    }
                }
            }
        }
    }
    found
}

fn marker(i: usize) -> String {
    format!("[t-{i:02}]")
}

fn add_file(name: &str, line: &str) -> Turn {
    Turn::apply_patch(format!(
        "*** Begin Patch\n*** Add File: {name}\n+{line}\n*** End Patch\n"
    ))
}

/// The events of a task's attempt 1, as the server stored them.
async fn events_of(server: &KilnServer, id: &str) -> Vec<Value> {
    let reader = server.events(ADMIN_TOKEN, id, None).await;
    // A finished task's stream ends after its last event.
    reader
        .all(LONG)
        .await
        .into_iter()
        .map(|event| {
            let mut data = event.data;
            data["type"] = Value::String(event.kind);
            data
        })
        .collect()
}

/// The `cwd` of every `attempt.started` in `events`.
fn started_in(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "attempt.started")
        .map(|e| e["cwd"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_remote_workers_run_tasks_survive_a_killed_worker_and_continue_a_follow_up() {
    let repo = fixtures::repo("calc-py");
    // Routes keep each task's conversation in order however requests
    // interleave; the follow-up's marker comes first, since its requests
    // also hold the original task's marker.
    let mut script = Script::new(Vec::new())
        .with_route(
            "[follow-up]",
            vec![
                add_file("FOLLOW.md", "second change"),
                Turn::message("Added FOLLOW.md."),
            ],
        )
        .with_route(
            "[killed]",
            vec![
                // The worker running this is killed while the command runs;
                // the next worker's run goes on with the script's next turns.
                Turn::shell("sleep 60"),
                add_file("SURVIVED.md", "finished elsewhere"),
                Turn::message("Finished on the other worker."),
            ],
        );
    for i in 0..TASKS {
        script = script.with_route(
            marker(i),
            vec![
                add_file(&format!("f{i:02}.txt"), &format!("change {i}")),
                Turn::message(format!("Added f{i:02}.txt.")),
            ],
        );
    }
    let model = ScriptedServer::start(script).await;
    let install = Installation::new();
    let server = KilnServer::start_with(
        &install,
        &model,
        1,
        &["--no-local-workers", "--lease-secs", "3"],
    )
    .await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;

    // Worker tokens: an admin makes them; they run nothing of a user's API,
    // and a user's token cannot claim.
    let mut tokens = Vec::new();
    for name in ["machine-a", "machine-b"] {
        let (status, token) = server
            .post(
                "/api/tokens",
                ADMIN_TOKEN,
                json!({"name": name, "worker": true}),
            )
            .await;
        assert_eq!(status, 201, "{token}");
        tokens.push(token["secret"].as_str().unwrap().to_string());
    }
    let (status, body) = server.get("/api/tasks", &tokens[0]).await;
    assert_eq!(status, 403, "a worker token lists no tasks: {body}");
    let (status, body) = server
        .post(
            "/api/environments",
            &tokens[0],
            json!({"name": "x", "repo": "/"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let user = server.new_user("someone").await;
    let claim = json!({"worker": {"name": "thief", "version": "0"}, "wait_secs": 0});
    let (status, body) = server.post("/api/worker/claim", &user, claim.clone()).await;
    assert_eq!(status, 403, "a user token cannot claim: {body}");
    let (status, body) = server.post("/api/worker/claim", ADMIN_TOKEN, claim).await;
    assert_eq!(status, 403, "an admin token cannot claim either: {body}");

    let mut workers = vec![
        KilnWorker::start(&server, &tokens[0], "machine-a", 2),
        KilnWorker::start(&server, &tokens[1], "machine-b", 2),
    ];

    // 20 tasks, each with its own change, on whichever worker is free.
    let mut ids = Vec::new();
    for i in 0..TASKS {
        let task = server
            .task(
                ADMIN_TOKEN,
                json!({"environment": "calc", "prompt": format!("{} add a file", marker(i))}),
            )
            .await;
        ids.push(task["id"].as_str().unwrap().to_string());
    }
    let mut ran_on: BTreeMap<String, usize> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let task = server.wait_finished(ADMIN_TOKEN, id, LONG).await;
        assert_eq!(task["status"], "succeeded", "{task:#}");
        let attempt = &task["attempts"][0];
        assert_eq!(attempt["diff_stat"]["files_changed"], 1, "{attempt:#}");
        let (status, diff) = server
            .get(&format!("/api/tasks/{id}/attempts/1/diff"), ADMIN_TOKEN)
            .await;
        assert_eq!(status, 200);
        let diff = diff.as_str().unwrap();
        assert!(diff.contains(&format!("+change {i}\n")), "{diff}");
        for other in (0..TASKS).filter(|&j| j != i) {
            assert!(!diff.contains(&format!("f{other:02}.txt")), "{diff}");
        }
        assert_eq!(attempt["branch"], format!("kiln/{id}/1"));
        let started = started_in(&events_of(&server, id).await);
        assert_eq!(started.len(), 1, "{started:?}");
        let worker = workers
            .iter()
            .position(|w| w.ran_in(&started[0]))
            .unwrap_or_else(|| panic!("{} ran in no worker's data dir", started[0]));
        ran_on.insert(id.clone(), worker);
    }
    // The server's mirror has each attempt's pushed commit.
    let mirror = serve_support::mirror_dir(install.data_dir());
    for (i, id) in ids.iter().enumerate() {
        let shown = serve_support::git(&mirror, &["show", &format!("kiln/{id}/1:f{i:02}.txt")]);
        assert_eq!(shown, format!("change {i}"));
    }

    // A worker killed mid-command: its lease expires and the other worker
    // runs the attempt again, after the events the first one sent.
    let killed = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "[killed] take your time"}),
        )
        .await;
    let killed_id = killed["id"].as_str().unwrap().to_string();
    let mut stream = server.events(ADMIN_TOKEN, &killed_id, None).await;
    let started = stream.until("attempt.started", LONG).await;
    stream.until("exec.begin", LONG).await;
    let cwd = started.data["cwd"].as_str().unwrap().to_string();
    let victim = workers
        .iter()
        .position(|w| w.ran_in(&cwd))
        .unwrap_or_else(|| panic!("{cwd} is in no worker's data dir"));
    let survivor = 1 - victim;
    workers[victim].kill9().await;
    let task = server.wait_finished(ADMIN_TOKEN, &killed_id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(
        task["attempts"][0]["final_message"],
        "Finished on the other worker."
    );
    let events = events_of(&server, &killed_id).await;
    let starts = started_in(&events);
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(workers[victim].ran_in(&starts[0]), "{starts:?}");
    assert!(workers[survivor].ran_in(&starts[1]), "{starts:?}");
    let commands: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "exec.begin")
        .collect();
    assert!(
        commands
            .first()
            .is_some_and(|e| e.to_string().contains("sleep 60")),
        "the first worker's command is kept: {commands:?}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let n = events.len();
    assert_eq!(events[n - 2]["type"], "attempt.finished");
    assert_eq!(events[n - 1]["type"], "task.ranked");

    // A follow-up to a task the dead worker ran continues its branch on
    // the other worker, with the conversation restored.
    let (follow_id, follow_i) = ids
        .iter()
        .enumerate()
        .find(|(_, id)| ran_on[*id] == victim)
        .map(|(i, id)| (id.clone(), i))
        .expect("the killed worker ran some of the 20 tasks");
    let before = server
        .get(&format!("/api/tasks/{follow_id}"), ADMIN_TOKEN)
        .await
        .1;
    let first_sha = before["attempts"][0]["commit_sha"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = server
        .post(
            &format!("/api/tasks/{follow_id}/messages"),
            ADMIN_TOKEN,
            json!({"text": "[follow-up] now add FOLLOW.md", "attempt": 1}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let task = server
        .wait_task(ADMIN_TOKEN, &follow_id, LONG, |t| {
            t["status"] == "succeeded" && t["attempts"][0]["final_message"] == "Added FOLLOW.md."
        })
        .await;
    let attempt = &task["attempts"][0];
    assert_eq!(attempt["branch"], format!("kiln/{follow_id}/1"));
    assert_ne!(attempt["commit_sha"].as_str().unwrap(), first_sha);
    let (_, diff) = server
        .get(
            &format!("/api/tasks/{follow_id}/attempts/1/diff"),
            ADMIN_TOKEN,
        )
        .await;
    let diff = diff.as_str().unwrap();
    assert!(diff.contains(&format!("+change {follow_i}\n")), "{diff}");
    assert!(diff.contains("+second change\n"), "{diff}");
    let starts = started_in(&events_of(&server, &follow_id).await);
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(workers[survivor].ran_in(&starts[1]), "{starts:?}");
    let follow_request = model
        .requests()
        .into_iter()
        .map(|r| r.body.to_string())
        .find(|body| body.contains("[follow-up]"))
        .unwrap();
    assert!(
        follow_request.contains(&marker(follow_i)),
        "the follow-up's conversation holds the first run's"
    );

    // The model key never reached a worker: not in their files, not in
    // their environment; the server's model calls carried it.
    for worker in &workers {
        for dir in [worker.data.path(), worker.home.path()] {
            let found = files_containing(dir, MODEL_KEY.as_bytes());
            assert!(found.is_empty(), "{}: {found:?}", worker.name);
        }
    }
    let environ = std::fs::read(format!("/proc/{}/environ", workers[survivor].pid())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains(MODEL_KEY), "{environ}");
    assert!(!environ.contains("OPENAI_API_KEY"), "{environ}");
    assert!(model
        .requests()
        .iter()
        .all(|r| r.header("authorization") == Some(format!("Bearer {MODEL_KEY}").as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_comes_back_after_its_lease_was_taken_writes_nothing_more() {
    let repo = fixtures::repo("calc-py");
    let script = Script::new(Vec::new())
        .with_route(
            "[stale]",
            vec![
                Turn::shell("sleep 60"),
                Turn::message("Finished by the second worker."),
            ],
        )
        .with_route("[after]", vec![Turn::message("Still working.")]);
    let model = ScriptedServer::start(script).await;
    let install = Installation::new();
    let server = KilnServer::start_with(
        &install,
        &model,
        1,
        &["--no-local-workers", "--lease-secs", "3"],
    )
    .await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let first = KilnWorker::start(&server, &worker_token(&server, "first").await, "first", 1);

    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "[stale] wait"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let mut stream = server.events(ADMIN_TOKEN, &id, None).await;
    stream.until("exec.begin", LONG).await;
    // The machine freezes (a network partition looks the same to the
    // server): its lease expires and another worker takes the attempt.
    first.signal(libc::SIGSTOP);
    let mut second =
        KilnWorker::start(&server, &worker_token(&server, "second").await, "second", 1);
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(
        task["attempts"][0]["final_message"],
        "Finished by the second worker."
    );
    let before = events_of(&server, &id).await;
    second.kill9().await;

    // The first worker wakes up with its attempt still running: its lease
    // is refused, it stops the attempt without a word to the server, and
    // goes on to claim new work.
    first.signal(libc::SIGCONT);
    let next = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "[after] anything left?"}),
        )
        .await;
    let next_id = next["id"].as_str().unwrap().to_string();
    let next = server.wait_finished(ADMIN_TOKEN, &next_id, LONG).await;
    assert_eq!(next["status"], "succeeded", "{next:#}");
    let started = started_in(&events_of(&server, &next_id).await);
    assert!(first.ran_in(&started[0]), "{started:?}");

    let after = events_of(&server, &id).await;
    assert_eq!(after, before, "the stale worker wrote into the attempt");
    let task = server.get(&format!("/api/tasks/{id}"), ADMIN_TOKEN).await.1;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(
        task["attempts"][0]["final_message"],
        "Finished by the second worker."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_an_attempt_that_outlives_the_drain_back_to_the_server() {
    let repo = fixtures::repo("calc-py");
    let script = Script::new(Vec::new()).with_route(
        "[drain]",
        vec![
            Turn::shell("sleep 60"),
            Turn::message("Finished after the hand-back."),
        ],
    );
    let model = ScriptedServer::start(script).await;
    let install = Installation::new();
    let server = KilnServer::start_with(
        &install,
        &model,
        1,
        &["--no-local-workers", "--lease-secs", "3"],
    )
    .await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let token = worker_token(&server, "drained").await;
    let mut first = KilnWorker::start_with(&server, &token, "first", 1, &["--drain-secs", "1"]);
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "[drain] wait"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let mut stream = server.events(ADMIN_TOKEN, &id, None).await;
    stream.until("exec.begin", LONG).await;

    first.signal(libc::SIGTERM);
    let status = tokio::time::timeout(LONG, first.child.wait())
        .await
        .expect("the worker exits once the drain time is over")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // Not reported as cancelled or failed: the attempt waits for its lease
    // to expire and runs again.
    let task = server.get(&format!("/api/tasks/{id}"), ADMIN_TOKEN).await.1;
    assert!(
        matches!(task["status"].as_str(), Some("running" | "queued")),
        "{task:#}"
    );
    let _second = KilnWorker::start(&server, &token, "second", 1);
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(
        task["attempts"][0]["final_message"],
        "Finished after the hand-back."
    );
    let events = events_of(&server, &id).await;
    assert_eq!(started_in(&events).len(), 2);
    let finished = events
        .iter()
        .filter(|e| e["type"] == "attempt.finished")
        .count();
    assert_eq!(finished, 1, "the first run reported no end: {events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_the_setup_with_its_secret_and_keeps_its_products_out_of_the_diff() {
    const SECRET: &str = "setup-only-secret-7f3a9c";
    let repo = fixtures::repo("calc-py");
    let script = Script::new(vec![
        add_file("AGENT.md", "the agent's change"),
        Turn::message("Added AGENT.md."),
    ]);
    let model = ScriptedServer::start(script).await;
    let install = Installation::new();
    let server = KilnServer::start_with(&install, &model, 1, &["--no-local-workers"]).await;
    let (status, env) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({
                "name": "calc",
                "repo": repo.path().display().to_string(),
                "setup_script": "echo \"TOKEN=$API_SECRET\" > .env.local; echo \"setup saw $API_SECRET\"",
                "secrets": {"API_SECRET": SECRET},
            }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    let _worker = KilnWorker::start(&server, &worker_token(&server, "w").await, "w", 1);
    let task = server
        .task(ADMIN_TOKEN, json!({"environment": "calc", "prompt": "add"}))
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(
        task["attempts"][0]["diff_stat"]["files_changed"], 1,
        "{task:#}"
    );
    let (_, diff) = server
        .get(&format!("/api/tasks/{id}/attempts/1/diff"), ADMIN_TOKEN)
        .await;
    let diff = diff.as_str().unwrap();
    assert!(diff.contains("+the agent's change"), "{diff}");
    assert!(
        !diff.contains(".env.local") && !diff.contains(SECRET),
        "{diff}"
    );
    let events = events_of(&server, &id).await;
    let setup: String = events
        .iter()
        .filter(|e| e["type"] == "setup.output")
        .map(|e| e["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(setup.contains("setup saw [REDACTED:API_SECRET]"), "{setup}");
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(SECRET), "{all}");
    let mirror = serve_support::mirror_dir(install.data_dir());
    let files = serve_support::git(
        &mirror,
        &["ls-tree", "-r", "--name-only", &format!("kiln/{id}/1")],
    );
    assert!(files.lines().any(|f| f == "AGENT.md"), "{files}");
    assert!(!files.lines().any(|f| f == ".env.local"), "{files}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_the_environments_checks_and_gives_the_model_its_fix_turns() {
    let repo = fixtures::repo("calc-py");
    let script = Script::new(vec![
        Turn::message("Done."),
        // The fix turn: the change the check wants.
        add_file("FIXED.md", "fixed"),
        Turn::message("Added FIXED.md."),
    ]);
    let model = ScriptedServer::start(script).await;
    let install = Installation::new();
    let server = KilnServer::start_with(&install, &model, 1, &["--no-local-workers"]).await;
    let (status, env) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({
                "name": "calc",
                "repo": repo.path().display().to_string(),
                "checks": [{"name": "fixed", "command": "test -f FIXED.md"}],
            }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    let _worker = KilnWorker::start(&server, &worker_token(&server, "w").await, "w", 1);
    let task = server
        .task(ADMIN_TOKEN, json!({"environment": "calc", "prompt": "fix"}))
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;

    assert_eq!(task["status"], "succeeded", "{task:#}");
    let checks = task["attempts"][0]["checks"].as_array().unwrap().clone();
    assert_eq!(checks.len(), 1, "{task:#}");
    assert_eq!(checks[0]["passed"], true);
    assert_eq!(checks[0]["chunk_id"], "t2");
    let events = events_of(&server, &id).await;
    let verdicts: Vec<bool> = events
        .iter()
        .filter(|e| e["type"] == "check.finished")
        .map(|e| e["passed"].as_bool().unwrap())
        .collect();
    assert_eq!(verdicts, [false, true]);
    let requests = model.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests[1]
        .body
        .to_string()
        .contains("`fixed` (`test -f FIXED.md`): exit code 1"));
}
