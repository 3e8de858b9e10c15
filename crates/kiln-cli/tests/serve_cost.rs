//! Cost through `kiln serve`: the operator's `[model_prices]` price the
//! scripted usage, `GET /api/tasks/{id}` carries each attempt's cost and the
//! task's, `kiln task show` prints them, and a budget (the task's, else the
//! environment's) stops an attempt cleanly with its work committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::time::Duration;

use kiln_protocol::{micros_from_usd, Usage};
use kiln_testkit::{fixtures, scenarios, Script, ScriptedServer, Turn};
use serde_json::{json, Value};
use serve_support::{
    git, mirror_dir, worker_token, Installation, KilnServer, KilnWorker, ADMIN_TOKEN,
};

const LONG: Duration = Duration::from_secs(120);

fn usage(input: u64, cached: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        cached_input_tokens: cached,
        output_tokens: output,
    }
}

/// The fix ($0.01 at $2/M in), then turns of $0.01 each until stopped.
fn fix_then_look_around() -> Vec<Turn> {
    std::iter::once(
        Turn::tool_call(
            "apply_patch",
            json!({ "input": scenarios::CALC_PY_FIX_PATCH }),
        )
        .with_usage(usage(5_000, 0, 0)),
    )
    .chain((0..5).map(|_| Turn::shell("ls").with_usage(usage(5_000, 0, 0))))
    .collect()
}

/// A server installation whose operator priced the model it runs.
fn priced_installation() -> Installation {
    let install = Installation::new();
    std::fs::write(
        install.home.path().join("config.toml"),
        "model = \"kiln-test-model\"\n\
         [model_prices.\"kiln-test-model\"]\ninput = 2\ncached_input = 0.5\noutput = 8\n",
    )
    .unwrap();
    install
}

/// `kiln ARGS` as a client of `server`, with the admin token.
async fn kiln_cli(server: &KilnServer, args: &[&str]) -> std::process::Output {
    server.cli(ADMIN_TOKEN, args).await
}

fn micros(value: &Value) -> u64 {
    micros_from_usd(
        value
            .as_f64()
            .unwrap_or_else(|| panic!("not a cost: {value}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_each_attempts_cost_and_a_budget_stops_an_attempt_with_its_work_committed() {
    let repo = fixtures::repo("calc-py");
    let script = Script::new(Vec::new())
        .with_route(
            "[costed]",
            vec![
                // $0.02 + $0.008 at $2/M in, $8/M out.
                Turn::shell("ls").with_usage(usage(10_000, 0, 1_000)),
                // 4,000 uncached × $2/M + 16,000 cached × $0.50/M + 500 × $8/M.
                Turn::message("Looked.").with_usage(usage(20_000, 16_000, 500)),
            ],
        )
        .with_route("[budget]", fix_then_look_around());
    let model = ScriptedServer::start(script).await;
    let install = priced_installation();
    let server = KilnServer::start(&install, &model, 1).await;
    let (status, env) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({"name": "calc", "repo": repo.path().display().to_string(), "budget_usd": 0.015}),
        )
        .await;
    assert_eq!(status, 201, "{env}");

    // The task's own budget wins over the environment's $0.015, which the
    // first turn ($0.028) would have reached.
    let new = kiln_cli(
        &server,
        &[
            "task",
            "new",
            "--env",
            "calc",
            "--budget-usd",
            "10",
            "[costed] look around",
        ],
    )
    .await;
    assert!(
        new.status.success(),
        "{}",
        String::from_utf8_lossy(&new.stderr)
    );
    let costed = String::from_utf8_lossy(&new.stdout).trim().to_string();
    let task = server.wait_finished(ADMIN_TOKEN, &costed, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(task["budget_usd"], 10.0);
    assert_eq!(micros(&task["attempts"][0]["cost_usd"]), 48_000, "{task:#}");
    assert_eq!(micros(&task["cost_usd"]), 48_000, "{task:#}");

    // Without one, the environment's budget holds: two turns of $0.01 reach it.
    let created = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "[budget] fix median"}),
        )
        .await;
    let budgeted = created["id"].as_str().unwrap().to_string();
    let task = server.wait_finished(ADMIN_TOKEN, &budgeted, LONG).await;
    let attempt = &task["attempts"][0];
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(
        attempt["reason"], "budget $0.0150 reached ($0.0200 spent)",
        "{task:#}"
    );
    assert_eq!(micros(&attempt["cost_usd"]), 20_000);
    assert_eq!(micros(&task["cost_usd"]), 20_000);
    // The work done before the budget ran out is committed on its branch.
    let sha = attempt["commit_sha"]
        .as_str()
        .expect("a commit")
        .to_string();
    let mirror = mirror_dir(install.data_dir());
    let branch = format!("kiln/{budgeted}/1");
    assert_eq!(git(&mirror, &["rev-parse", &branch]), sha);
    let shown = git(&mirror, &["show", &format!("{sha}:calc.py")]);
    assert!(shown.contains("ordered[middle - 1]"), "{shown}");

    // The usage events of the log carry each turn's cost and the running total.
    let events = server
        .events(ADMIN_TOKEN, &budgeted, None)
        .await
        .all(LONG)
        .await;
    let costs: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e.kind == "usage")
        .map(|e| {
            (
                micros(&e.data["turn_cost_usd"]),
                micros(&e.data["total_cost_usd"]),
            )
        })
        .collect();
    assert_eq!(costs, vec![(10_000, 10_000), (10_000, 20_000)]);

    // And the CLI shows them.
    let shown = kiln_cli(&server, &["task", "show", &costed]).await;
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(
        stdout.contains("cost $0.0480 · budget $10.00 per attempt"),
        "{stdout}"
    );
    assert!(stdout.contains("attempt 1: succeeded"), "{stdout}");
    assert!(stdout.contains("  $0.0480  "), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_measures_cost_and_budget_with_the_servers_price() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(fix_then_look_around())).await;
    let install = priced_installation();
    let server = KilnServer::start_with(&install, &model, 1, &["--no-local-workers"]).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let created = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "fix median", "budget_usd": 0.025}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    // The worker's own configuration knows no price of kiln-test-model: what
    // it measures comes from the claim.
    let _worker = KilnWorker::start(&server, &worker_token(&server, "w").await, "w", 1);
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;

    let attempt = &task["attempts"][0];
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(
        attempt["reason"], "budget $0.0250 reached ($0.0300 spent)",
        "{task:#}"
    );
    assert_eq!(micros(&attempt["cost_usd"]), 30_000);
    assert_eq!(model.turns_served(), 3);
    // The commit came back from the worker to the server's mirror.
    let sha = attempt["commit_sha"]
        .as_str()
        .expect("a commit")
        .to_string();
    let mirror = mirror_dir(install.data_dir());
    let shown = git(&mirror, &["show", &format!("{sha}:calc.py")]);
    assert!(shown.contains("ordered[middle - 1]"), "{shown}");
}
