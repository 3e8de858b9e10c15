//! How attempts of `kiln serve` live and end: cancellation mid-command,
//! a server killed with SIGKILL and restarted, steering and follow-ups.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::time::{Duration, Instant};

use kiln_testkit::{fixtures, Script, ScriptedServer, Turn};
use serde_json::json;
use serve_support::{Installation, KilnServer, ADMIN_TOKEN};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_an_attempt_in_the_middle_of_a_long_command() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![Turn::shell("sleep 30")])).await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "wait"}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    let mut events = server.events(ADMIN_TOKEN, id, None).await;
    events.until("exec.begin", LONG).await;

    let asked = Instant::now();
    let (status, body) = server
        .post(&format!("/api/tasks/{id}/cancel"), ADMIN_TOKEN, json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["cancel_requested"], json!([1]));
    let task = server.wait_finished(ADMIN_TOKEN, id, LONG).await;
    // Far less than the command's 30 s: the command was killed, not awaited.
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(task["status"], "cancelled", "{task:#}");
    assert_eq!(task["attempts"][0]["status"], "cancelled");
    let finished = events.until("attempt.finished", LONG).await;
    assert_eq!(finished.data["status"], "cancelled", "{:?}", finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_attempt_reruns_it_after_restart_and_keeps_its_events() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![
        Turn::shell("sleep 30"),
        Turn::message("Done after the restart."),
    ]))
    .await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "wait"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let before = {
        let mut events = server.events(ADMIN_TOKEN, &id, None).await;
        events.until("exec.begin", LONG).await
    };
    server.kill9().await;

    let server = KilnServer::start(&install, &model, 1).await;
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let attempt = &task["attempts"][0];
    assert_eq!(attempt["tries"], 2, "{attempt:#}");
    assert_eq!(attempt["final_message"], "Done after the restart.");

    let events = server.events(ADMIN_TOKEN, &id, None).await.all(LONG).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    // The first run's events are kept, under their ids, before the rerun's.
    let kept = events
        .iter()
        .find(|e| e.id == before.id)
        .expect("exec.begin kept");
    assert_eq!(kept.kind, "exec.begin");
    assert_eq!(
        kinds.iter().filter(|k| **k == "attempt.started").count(),
        2,
        "{kinds:?}"
    );
    let warning = events
        .iter()
        .position(|e| e.kind == "warning")
        .expect("a warning about the interruption");
    assert!(warning > events.iter().position(|e| e.id == before.id).unwrap());
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["attempt.finished", "task.ranked"]
    );
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e.data["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq continues: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_steers_a_running_attempt_and_a_follow_up_continues_a_finished_one() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![
        Turn::shell("sleep 3"),
        Turn::message("Checked the tests too."),
        Turn::apply_patch("*** Begin Patch\n*** Add File: NOTES.md\n+follow-up\n*** End Patch\n"),
        Turn::message("Added NOTES.md."),
    ]))
    .await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "look at calc.py"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let mut events = server.events(ADMIN_TOKEN, &id, None).await;
    events.until("exec.begin", LONG).await;

    let (status, body) = server
        .post(
            &format!("/api/tasks/{id}/messages"),
            ADMIN_TOKEN,
            json!({"text": "also run the tests", "attempt": 1}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let second_request = model.requests()[1].body.to_string();
    assert!(
        second_request.contains("also run the tests"),
        "{second_request}"
    );

    let (status, body) = server
        .post(
            &format!("/api/tasks/{id}/messages"),
            ADMIN_TOKEN,
            json!({"text": "now add a NOTES.md"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let task = server
        .wait_task(ADMIN_TOKEN, &id, LONG, |t| {
            t["attempts"][0]["final_message"] == "Added NOTES.md." && t["status"] == "succeeded"
        })
        .await;
    let follow_up_request = model.requests()[2].body.to_string();
    assert!(
        follow_up_request.contains("look at calc.py"),
        "the history is kept"
    );
    assert!(follow_up_request.contains("now add a NOTES.md"));
    assert_eq!(
        task["attempts"][0]["diff_stat"]["files_changed"], 1,
        "{task:#}"
    );
    let (_, diff) = server
        .get(&format!("/api/tasks/{id}/attempts/1/diff"), ADMIN_TOKEN)
        .await;
    assert!(diff.as_str().unwrap().contains("+follow-up"), "{diff}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_with_a_stream_open_and_the_attempt_resumes_on_restart() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![
        Turn::shell("sleep 30"),
        Turn::message("Finished on the second start."),
    ]))
    .await;
    let install = Installation::new();
    // No drain: the attempt is still running when the server exits.
    let server = KilnServer::start_with(&install, &model, 1, &["--drain-secs", "0"]).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "wait"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let mut events = server.events(ADMIN_TOKEN, &id, None).await;
    events.until("exec.begin", LONG).await;

    let status = server.terminate().await;
    assert!(status.success(), "{status:?}");
    // The open stream ends instead of hanging.
    while events.next(LONG).await.is_some() {}

    let server = KilnServer::start(&install, &model, 1).await;
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(
        task["attempts"][0]["final_message"],
        "Finished on the second start."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_is_refused_until_the_first_is_gone() {
    let model = ScriptedServer::start(Script::new(vec![])).await;
    let install = Installation::new();
    let first = KilnServer::start(&install, &model, 1).await;
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(install.data_dir())
        .env("KILN_HOME", install.home.path())
        .output();
    let second = tokio::time::timeout(LONG, second).await.unwrap().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("another kiln serve") && stderr.contains("--data-dir"),
        "{stderr}"
    );
    // The lock dies with its process, even on SIGKILL.
    first.kill9().await;
    let again = KilnServer::start(&install, &model, 1).await;
    let (status, _) = again
        .request(reqwest::Method::GET, "/healthz", None, None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_finds_what_setup_and_the_first_turn_left_in_the_checkout() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![
        Turn::shell("echo draft > scratch.txt"),
        Turn::message("Left a draft."),
        // Setup does not run again for a follow-up: its product is only
        // there if the attempt's own checkout came back.
        Turn::shell("cat .setup-done scratch.txt"),
        Turn::message("Both are still there."),
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
                "setup_script": "echo installed > .setup-done",
            }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "draft something"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");

    let (status, body) = server
        .post(
            &format!("/api/tasks/{id}/messages"),
            ADMIN_TOKEN,
            json!({"text": "are the setup and the draft still there?"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    server
        .wait_task(ADMIN_TOKEN, &id, LONG, |t| {
            t["attempts"][0]["final_message"] == "Both are still there."
                && t["status"] == "succeeded"
        })
        .await;
    let events = server.events(ADMIN_TOKEN, &id, None).await.all(LONG).await;
    let outputs: String = events
        .iter()
        .filter(|e| e.kind == "exec.output")
        .map(|e| e.data["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        outputs.contains("installed\ndraft"),
        "the follow-up read both files: {outputs:?}"
    );
    let warned: Vec<_> = events.iter().filter(|e| e.kind == "warning").collect();
    assert!(warned.is_empty(), "copy-on-write, no warnings: {warned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_attempt_finish_before_the_server_exits() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![
        // A command that outlasts the signal (the test signals at its start).
        Turn::shell("sleep 2; echo 'draining' > DRAIN.md"),
        Turn::message("Finished while the server drained."),
    ]))
    .await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "write DRAIN.md"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let mut events = server.events(ADMIN_TOKEN, &id, None).await;
    events.until("exec.begin", LONG).await;

    let status = server.terminate().await;
    assert!(status.success(), "{status:?}");

    // The attempt finished in the first server's run: the restarted server
    // finds it done, run once, not taken up again from scratch.
    let server = KilnServer::start(&install, &model, 1).await;
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(
        task["attempts"][0]["final_message"],
        "Finished while the server drained."
    );
    assert_eq!(task["attempts"][0]["tries"], 1, "{task:#}");
    assert_eq!(model.requests().len(), 2, "no second run asked the model");
}
