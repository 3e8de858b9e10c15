//! Quotas through `kiln serve`: a team's concurrency quota makes a task's
//! attempts run one at a time even with free workers, the waiting one
//! saying why; a monthly budget spent holds the next task back until an
//! admin raises it (`kiln quota set`). docs/quotas.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::time::Duration;

use kiln_protocol::Usage;
use kiln_testkit::{fixtures, Script, ScriptedServer, Turn};
use serde_json::{json, Value};
use serve_support::{Installation, KilnServer, ADMIN_TOKEN};

const LONG: Duration = Duration::from_secs(120);

fn finished(attempt: &Value) -> bool {
    matches!(
        attempt["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled" | "checks_failed")
    )
}

async fn put_quota(server: &KilnServer, token: &str, path: &str, body: Value) -> (u16, Value) {
    server
        .request(reqwest::Method::PUT, path, Some(token), Some(body))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_quota_of_one_runs_a_tasks_attempts_one_at_a_time_with_free_workers() {
    let repo = fixtures::repo("calc-py");
    let script = Script::new(Vec::new()).with_route(
        "[one at a time]",
        vec![
            Turn::held(Turn::message("First look done."), "first"),
            Turn::message("Second look done."),
        ],
    );
    let model = ScriptedServer::start(script).await;
    let install = Installation::new();
    // milo, not an admin, may use the fixture's host path.
    let allowed = repo.path().display().to_string();
    let server = KilnServer::start_with(&install, &model, 4, &["--allow-repo", &allowed]).await;
    let milo = server.new_user("milo").await;
    let ana = server.new_user("ana").await;
    server.environment(&milo, "calc", repo.path()).await;

    // Only admins set quotas; others' teams are not revealed.
    let (status, body) = put_quota(
        &server,
        &milo,
        "/api/teams/milo/quota",
        json!({"max_concurrent_attempts": 9}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = server.get("/api/teams/milo/quota", &ana).await;
    assert_eq!(status, 404, "{body}");
    // A misspelt limit is refused rather than read as "no limit".
    let (status, body) = put_quota(
        &server,
        ADMIN_TOKEN,
        "/api/teams/milo/quota",
        json!({"max_concurrent": 1}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = put_quota(
        &server,
        ADMIN_TOKEN,
        "/api/teams/milo/quota",
        json!({"max_concurrent_attempts": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["quota"]["max_concurrent_attempts"], 1, "{body}");
    assert_eq!(body["name"], "milo");

    let task = server
        .task(
            &milo,
            json!({"environment": "calc", "prompt": "[one at a time] look around", "attempts": 2}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let reason = "waiting for a slot: team milo runs 1 of its 1 concurrent attempts (quota)";
    let waiting = server
        .wait_task(&milo, &id, LONG, |t| {
            t["attempts"][0]["status"] == "running" && t["attempts"][1]["wait_reason"] == reason
        })
        .await;
    assert_eq!(waiting["status"], "running", "{waiting:#}");
    assert_eq!(waiting["attempts"][1]["status"], "queued", "{waiting:#}");
    // Held on its model answer, the first attempt asked exactly once; the
    // second never started.
    model.wait_for_requests(1, LONG).await.unwrap();
    assert_eq!(model.requests().len(), 1);
    let (status, usage) = server.get("/api/teams/milo/quota", &milo).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["usage"]["running_attempts"], 1, "{usage}");

    let shown = server.cli(&milo, &["task", "show", &id]).await;
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(stdout.contains(&format!("    {reason}")), "{stdout}");
    let quota = server
        .cli(&milo, &["quota", "show", "--team", "milo"])
        .await;
    let stdout = String::from_utf8_lossy(&quota.stdout);
    assert!(
        quota.status.success(),
        "{}",
        String::from_utf8_lossy(&quota.stderr)
    );
    assert!(
        stdout.contains("concurrent attempts: 1 of 1 running"),
        "{stdout}"
    );

    model.release("first");
    let done = server
        .wait_task(&milo, &id, LONG, |t| {
            t["attempts"].as_array().unwrap().iter().all(finished)
        })
        .await;
    assert_eq!(done["attempts"][1]["wait_reason"], Value::Null, "{done:#}");
    assert_eq!(model.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_monthly_budget_holds_the_next_task_until_an_admin_raises_it() {
    let repo = fixtures::repo("calc-py");
    let spend = Usage {
        input_tokens: 10_000,
        cached_input_tokens: 0,
        output_tokens: 1_000,
    };
    let script = Script::new(Vec::new())
        // $0.02 in + $0.008 out at $2/M in, $8/M out.
        .with_route("[spend]", vec![Turn::message("Spent.").with_usage(spend)])
        .with_route("[after]", vec![Turn::message("Ran after the raise.")]);
    let model = ScriptedServer::start(script).await;
    let install = Installation::new();
    std::fs::write(
        install.home.path().join("config.toml"),
        "model = \"kiln-test-model\"\n\
         [model_prices.\"kiln-test-model\"]\ninput = 2\ncached_input = 0.5\noutput = 8\n",
    )
    .unwrap();
    let allowed = repo.path().display().to_string();
    let server = KilnServer::start_with(&install, &model, 2, &["--allow-repo", &allowed]).await;
    let milo = server.new_user("milo").await;
    server.environment(&milo, "calc", repo.path()).await;
    let set = server
        .cli(
            ADMIN_TOKEN,
            &[
                "quota",
                "set",
                "--team",
                "milo",
                "--monthly-budget-usd",
                "0.02",
            ],
        )
        .await;
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );

    let first = server
        .task(
            &milo,
            json!({"environment": "calc", "prompt": "[spend] look"}),
        )
        .await;
    let first = server
        .wait_finished(&milo, first["id"].as_str().unwrap(), LONG)
        .await;
    assert_eq!(first["cost_usd"], 0.028, "{first:#}");

    let next = server
        .task(
            &milo,
            json!({"environment": "calc", "prompt": "[after] look"}),
        )
        .await;
    let id = next["id"].as_str().unwrap().to_string();
    let waiting = server
        .wait_task(&milo, &id, LONG, |t| {
            !t["attempts"][0]["wait_reason"].is_null()
        })
        .await;
    let reason = waiting["attempts"][0]["wait_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("waiting: team milo spent $0.0280 of a $0.0200 monthly budget (quota)"),
        "{reason}"
    );
    assert!(
        reason.contains("kiln quota set --team milo --monthly-budget-usd N"),
        "{reason}"
    );
    assert_eq!(waiting["status"], "queued", "{waiting:#}");
    let listed = server.cli(&milo, &["task", "list"]).await;
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(stdout.contains(&format!("    {reason}")), "{stdout}");

    let raised = server
        .cli(
            ADMIN_TOKEN,
            &[
                "quota",
                "set",
                "--team",
                "milo",
                "--monthly-budget-usd",
                "1",
            ],
        )
        .await;
    let stdout = String::from_utf8_lossy(&raised.stdout);
    assert!(
        raised.status.success(),
        "{}",
        String::from_utf8_lossy(&raised.stderr)
    );
    assert!(
        stdout.contains("monthly budget: $0.0280 of $1.00 spent"),
        "{stdout}"
    );
    let done = server.wait_finished(&milo, &id, LONG).await;
    assert_eq!(done["attempts"][0]["wait_reason"], Value::Null, "{done:#}");
    assert_eq!(model.requests().len(), 2);

    // Only the concurrency limit changes; the raised budget stays.
    let limited = server
        .cli(
            ADMIN_TOKEN,
            &["quota", "set", "--team", "milo", "--max-concurrent", "3"],
        )
        .await;
    assert!(
        limited.status.success(),
        "{}",
        String::from_utf8_lossy(&limited.stderr)
    );
    let (_, status) = server.get("/api/teams/milo/quota", ADMIN_TOKEN).await;
    assert_eq!(status["quota"]["max_concurrent_attempts"], 3, "{status}");
    assert_eq!(status["quota"]["monthly_budget_usd"], 1.0, "{status}");
}
