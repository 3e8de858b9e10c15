//! The `kiln env|task|token` client subcommands against a real `kiln serve`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::process::Output;

use kiln_testkit::{fixtures, scenarios, Script, ScriptedServer};
use serde_json::{json, Value};
use serve_support::{Installation, KilnServer, ADMIN_TOKEN};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_adds_an_environment_runs_a_task_follows_it_and_reads_the_diff() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(scenarios::fix_calc_py()).await;
    let install = Installation::new();
    let allowed = repo.path().display().to_string();
    let server = KilnServer::start_with(&install, &model, 1, &["--allow-repo", &allowed]).await;

    let secret = stdout(&kiln(&server, ADMIN_TOKEN, &["token", "create", "carol"]).await);
    let carol = secret.trim();
    let repo_path = repo.path().display().to_string();
    stdout(&kiln(&server, carol, &["env", "add", "calc", &repo_path]).await);
    let listed = stdout(&kiln(&server, carol, &["env", "list"]).await);
    assert!(
        listed.contains("calc") && listed.contains(&repo_path),
        "{listed}"
    );

    // With one environment, --env may be left out.
    let id = stdout(&kiln(&server, carol, &["task", "new", "fix the median"]).await);
    let id = id.trim();
    assert!(id.starts_with("t_"), "{id}");

    let logs = kiln(&server, carol, &["task", "logs", "-f", id]).await;
    let final_message = stdout(&logs);
    assert!(
        final_message.contains("Fixed `median()`"),
        "{final_message}"
    );
    let rendered = String::from_utf8_lossy(&logs.stderr);
    assert!(rendered.contains("python3 -m unittest -q"), "{rendered}");

    let shown = stdout(&kiln(&server, carol, &["task", "show", id, "--json"]).await);
    let task: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(task["status"], "succeeded");
    let diff = stdout(&kiln(&server, carol, &["task", "diff", id]).await);
    assert!(
        diff.contains("+    return (ordered[middle - 1] + ordered[middle]) / 2"),
        "{diff}"
    );
    let list = stdout(&kiln(&server, carol, &["task", "list"]).await);
    assert!(list.contains(id) && list.contains("succeeded"), "{list}");

    let json_logs = stdout(&kiln(&server, carol, &["task", "logs", id, "--json"]).await);
    let frames: Vec<Value> = json_logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The stored events, then the task's status as the last frame.
    let (events, statuses) = frames.split_at(frames.len() - 1);
    assert_eq!(events.first().unwrap()["type"], "attempt.started");
    assert!(events.iter().all(|e| e["attempt"] == 1));
    assert_eq!(
        statuses,
        [serde_json::json!({"type": "task.status", "task_id": id, "status": "succeeded"})]
    );

    // Someone else's token sees nothing of it; a bad one is told what to do.
    let dave = stdout(&kiln(&server, ADMIN_TOKEN, &["token", "create", "dave"]).await);
    let refused = kiln(&server, dave.trim(), &["task", "show", id]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("404"));
    let no_token = kiln(&server, "", &["task", "list"]).await;
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("KILN_TOKEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_add_sets_checks_forge_webhook_and_budget_and_names_what_is_missing() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(Vec::new())).await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    let repo_path = repo.path().display().to_string();
    let hook_secret = "whsec-0123456789abcdef";
    let created = stdout(
        &kiln(
            &server,
            ADMIN_TOKEN,
            &[
                "env",
                "add",
                "calc",
                &repo_path,
                "--secret",
                "FORGE_TOKEN=ghp_not_shown",
                "--check",
                "tests=python3 -m unittest -q",
                "--forge",
                "github",
                "--forge-repo",
                "acme/calc",
                "--forge-token-secret",
                "FORGE_TOKEN",
                "--webhook",
                "https://hooks.example/kiln",
                "--webhook-secret",
                hook_secret,
                "--budget-usd",
                "1.5",
                "--json",
            ],
        )
        .await,
    );
    let env: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(
        env["checks"],
        json!([{"name": "tests", "command": "python3 -m unittest -q"}])
    );
    assert_eq!(
        env["forge"],
        json!({"kind": "github", "repo": "acme/calc", "token_secret": "FORGE_TOKEN"})
    );
    assert_eq!(env["webhook_url"], "https://hooks.example/kiln");
    assert_eq!(env["budget_usd"], 1.5);
    assert!(!created.contains(hook_secret) && !created.contains("ghp_not_shown"));

    // A forge without its token secret is refused before anything is sent.
    let refused = kiln(
        &server,
        ADMIN_TOKEN,
        &[
            "env",
            "add",
            "other",
            &repo_path,
            "--forge",
            "github",
            "--forge-repo",
            "a/b",
        ],
    )
    .await;
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--forge-token-secret"), "{err}");
    let refused = kiln(
        &server,
        ADMIN_TOKEN,
        &[
            "env",
            "add",
            "other",
            &repo_path,
            "--check",
            "no-equals-sign",
        ],
    )
    .await;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("is not NAME=COMMAND"), "{err}");
    let listed = stdout(&kiln(&server, ADMIN_TOKEN, &["env", "list"]).await);
    assert!(!listed.contains("other"), "{listed}");
}
