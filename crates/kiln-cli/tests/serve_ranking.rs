//! Best-of-N ranking end to end: three attempts with different outcomes
//! from the scripted model, ranked in `GET /api/tasks/{id}`, by `kiln task
//! show`, and on the event stream; a user's preference overrides it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::process::Output;
use std::time::Duration;

use kiln_testkit::scenarios::CALC_PY_FIX_PATCH;
use kiln_testkit::{fixtures, Script, ScriptedServer, Turn};
use serde_json::{json, Value};
use serve_support::{Installation, KilnServer, ADMIN_TOKEN};

const LONG: Duration = Duration::from_secs(120);

async fn kiln(server: &KilnServer, token: &str, args: &[&str]) -> Output {
    server.cli(token, args).await
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "kiln failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn order(ranking: &Value) -> Vec<u64> {
    ranking
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_attempts_are_ranked_in_the_api_the_cli_and_the_stream_and_a_preference_wins() {
    let repo = fixtures::repo("calc-py");
    // One worker: the attempts run in order, so each takes its own turns.
    let model = ScriptedServer::start(Script::new(vec![
        // 1: the one-line fix, citing lines that exist.
        Turn::apply_patch(CALC_PY_FIX_PATCH),
        Turn::message("Fixed median() 【F:calc.py†L11-L20】"),
        // 2: the model's provider refuses: the attempt fails.
        Turn::http_error_message(400, "the request is malformed"),
        // 3: a bigger change, citing lines that do not exist.
        Turn::shell("printf 'a\\nb\\nc\\nd\\n' > notes.txt"),
        Turn::message("Wrote notes 【F:calc.py†L900-L901】"),
        // Told its citation does not hold, it keeps it: still invalid.
        Turn::message("Wrote notes 【F:calc.py†L900-L901】"),
    ]))
    .await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let created = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "fix median", "attempts": 3}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;

    let statuses: Vec<&str> = task["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeeded", "failed", "succeeded"], "{task:#}");
    assert_eq!(order(&task["ranking"]), [1, 3, 2], "{task:#}");
    let ranks: Vec<u64> = task["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["rank"].as_u64().unwrap())
        .collect();
    assert_eq!(ranks, [1, 3, 2]);
    let reasons = task["ranking"][0]["reasons"].as_array().unwrap();
    assert_eq!(
        reasons[..4],
        [
            json!("succeeded"),
            json!("no checks defined"),
            json!("1 of 1 citations valid"),
            json!("diff +1 -1 in 1 file"),
        ],
        "{task:#}"
    );
    // The scripted server's model has a built-in price: the cost is measured.
    let cost = task["attempts"][0]["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0, "{task:#}");
    assert_eq!(
        reasons[4],
        json!(format!("cost {}", kiln_protocol::format_usd(cost))),
        "{task:#}"
    );
    assert_eq!(task["ranking"][1]["reasons"][2], "1 of 1 citations invalid");
    assert_eq!(task["ranking"][1]["reasons"][3], "diff +4 -0 in 1 file");
    assert_eq!(task["ranking"][2]["reasons"][0], "failed");

    let shown = stdout(&kiln(&server, ADMIN_TOKEN, &["task", "show", &id]).await);
    assert!(shown.contains("ranking (best first):"), "{shown}");
    assert!(
        shown.contains(
            "  1. attempt 1: succeeded; no checks defined; 1 of 1 citations valid; diff +1 -1 in 1 file; cost $"
        ),
        "{shown}"
    );
    assert!(shown.contains("  3. attempt 2: failed;"), "{shown}");

    // The stream carries each change of the ranking; the last is the final order.
    let events = server.events(ADMIN_TOKEN, &id, None).await.all(LONG).await;
    let ranked: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e.kind == "task.ranked")
        .map(|e| &e.data)
        .collect();
    assert_eq!(ranked.len(), 3, "{events:?}");
    assert_eq!(order(&ranked[2]["ranking"]), [1, 3, 2]);
    let last_id = events.last().unwrap().id;

    // Someone else's task is not there to prefer; nor is an attempt 9.
    let other = server.new_user("other").await;
    let (status, _) = server
        .post(
            &format!("/api/tasks/{id}/attempts/3/prefer"),
            &other,
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = server
        .post(
            &format!("/api/tasks/{id}/attempts/9/prefer"),
            ADMIN_TOKEN,
            json!({}),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    let preferred = stdout(&kiln(&server, ADMIN_TOKEN, &["task", "prefer", &id, "3"]).await);
    assert!(
        preferred.contains("  1. attempt 3: preferred by a user; succeeded;"),
        "{preferred}"
    );
    let (_, task) = server.get(&format!("/api/tasks/{id}"), ADMIN_TOKEN).await;
    assert_eq!(task["preferred_attempt"], 3);
    assert_eq!(order(&task["ranking"]), [3, 1, 2]);
    assert_eq!(task["ranking"][0]["preferred"], true);

    // A client resuming the stream gets the new ranking.
    let mut resumed = server.events(ADMIN_TOKEN, &id, Some(last_id)).await;
    let event = resumed.until("task.ranked", LONG).await;
    assert_eq!(order(&event.data["ranking"]), [3, 1, 2]);
    assert_eq!(event.data["attempt"], 3);

    let cleared = stdout(
        &kiln(
            &server,
            ADMIN_TOKEN,
            &["task", "prefer", "--clear", &id, "3"],
        )
        .await,
    );
    assert!(cleared.contains("  1. attempt 1: succeeded;"), "{cleared}");
    let (_, task) = server.get(&format!("/api/tasks/{id}"), ADMIN_TOKEN).await;
    assert!(task["preferred_attempt"].is_null(), "{task:#}");
    assert_eq!(order(&task["ranking"]), [1, 3, 2]);
}
