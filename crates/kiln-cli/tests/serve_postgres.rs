//! `kiln serve --database-url postgres://…`: the same server on PostgreSQL,
//! started by the test itself (`kiln_testkit::postgres`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::time::Duration;

use kiln_testkit::postgres::PostgresServer;
use kiln_testkit::{fixtures, scenarios, Script, ScriptedServer, Turn};
use serde_json::json;
use serve_support::{Installation, KilnServer, ADMIN_TOKEN};

const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_tasks_run_and_an_attempt_survives_a_kill_9() {
    // Its own server (stopped on drop) unless KILN_TEST_DATABASE_URL names one.
    let postgres = PostgresServer::from_env_or_start().unwrap_or_else(|e| panic!("{e}"));
    let database_url = postgres
        .fresh_database()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let repo = fixtures::repo("calc-py");
    let mut turns = vec![Turn::shell("sleep 30"), Turn::message("Rerun done.")];
    turns.extend(scenarios::fix_calc_py().turns);
    let model = ScriptedServer::start(Script::new(turns)).await;
    let install = Installation::new();
    let args = ["--database-url", database_url.as_str()];
    let server = KilnServer::start_with(&install, &model, 1, &args).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;

    let waiting = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "wait"}),
        )
        .await;
    let waiting = waiting["id"].as_str().unwrap().to_string();
    let mut events = server.events(ADMIN_TOKEN, &waiting, None).await;
    events.until("exec.begin", LONG).await;
    server.kill9().await;
    assert!(
        !install.data_dir().join("kiln.db").exists(),
        "the store is PostgreSQL, not the SQLite default"
    );

    let server = KilnServer::start_with(&install, &model, 1, &args).await;
    let task = server.wait_finished(ADMIN_TOKEN, &waiting, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(task["attempts"][0]["tries"], 2);
    assert_eq!(task["attempts"][0]["final_message"], "Rerun done.");

    let fix = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "fix median"}),
        )
        .await;
    let fix = fix["id"].as_str().unwrap();
    let task = server.wait_finished(ADMIN_TOKEN, fix, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let (status, diff) = server
        .get(&format!("/api/tasks/{fix}/attempts/1/diff"), ADMIN_TOKEN)
        .await;
    assert_eq!(status, 200);
    assert!(
        diff.as_str().unwrap().contains("ordered[middle - 1]"),
        "{diff}"
    );
    let all = server.events(ADMIN_TOKEN, fix, None).await.all(LONG).await;
    let kinds: Vec<&str> = all.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["attempt.finished", "task.ranked"]
    );
}
