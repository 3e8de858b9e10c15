//! The audit trail after a scripted day of work against a real `kiln
//! serve` (SQLite and PostgreSQL): every change in order with its actor,
//! target and origin, the filters of `kiln audit list`, the JSON lines of
//! `kiln audit export`, admins only, and never a secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::process::Output;
use std::time::Duration;

use kiln_testkit::postgres::PostgresServer;
use kiln_testkit::{fixtures, Script, ScriptedServer, Turn};
use serde_json::{json, Value};
use serve_support::{Installation, KilnServer, ADMIN_TOKEN};

const LONG: Duration = Duration::from_secs(120);
const DEPLOY_KEY: &str = "s3cret-deploy-value-4242";
const FOLLOW_UP: &str = "please also check the empty list case";

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "kiln failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// (action, actor user name, target id) of each event.
fn summary(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["actor"]["user_name"].as_str().unwrap().to_string(),
                e["target"]["id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn ids(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["id"].as_i64().unwrap()).collect()
}

async fn new_token(server: &KilnServer, name: &str) -> (String, String) {
    let (status, token) = server
        .post("/api/tokens", ADMIN_TOKEN, json!({ "name": name }))
        .await;
    assert_eq!(status, 201, "{token}");
    (
        token["id"].as_str().unwrap().to_string(),
        token["secret"].as_str().unwrap().to_string(),
    )
}

async fn scripted_day(extra: &[&str]) {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![
        // The first task, then its follow-up.
        Turn::message("The median looks right to me."),
        Turn::message("The empty list raises, as documented."),
        // The second task waits until it is cancelled.
        Turn::shell("sleep 30"),
        Turn::message("Stopped."),
    ]))
    .await;
    let install = Installation::new();
    let allowed = repo.path().display().to_string();
    let mut args = vec!["--allow-repo", allowed.as_str()];
    args.extend_from_slice(extra);
    let server = KilnServer::start_with(&install, &model, 1, &args).await;

    // The day: the admin gives alice a token and a bot one; alice works.
    let (alice_token_id, alice) = new_token(&server, "alice").await;
    let (bot_token_id, bot) = new_token(&server, "ci-bot").await;
    let (status, env) = server
        .post(
            "/api/environments",
            &alice,
            json!({
                "name": "calc",
                "repo": allowed,
                "secrets": {"DEPLOY_KEY": DEPLOY_KEY},
            }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    let env_id = env["id"].as_str().unwrap().to_string();
    let task = server
        .task(
            &alice,
            json!({"environment": "calc", "prompt": "check median"}),
        )
        .await;
    let first = task["id"].as_str().unwrap().to_string();
    server.wait_finished(&alice, &first, LONG).await;
    let (status, body) = server
        .post(
            &format!("/api/tasks/{first}/messages"),
            &alice,
            json!({ "text": FOLLOW_UP }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    server
        .wait_task(&alice, &first, LONG, |t| {
            t["status"] == "succeeded"
                && t["attempts"][0]["final_message"] == "The empty list raises, as documented."
        })
        .await;
    let (status, body) = server
        .post(
            &format!("/api/tasks/{first}/attempts/1/prefer"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let task = server
        .task(&alice, json!({"environment": "calc", "prompt": "wait"}))
        .await;
    let second = task["id"].as_str().unwrap().to_string();
    server
        .events(&alice, &second, None)
        .await
        .until("exec.begin", LONG)
        .await;
    let (status, body) = server
        .post(&format!("/api/tasks/{second}/cancel"), &alice, json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    server.wait_finished(&alice, &second, LONG).await;
    server.revoke("ci-bot").await;

    // The whole trail, as an admin exports it.
    let exported = stdout(&server.cli(ADMIN_TOKEN, &["audit", "export"]).await);
    let events = json_lines(&exported);
    let admin_token_id = events[0]["target"]["id"].as_str().unwrap().to_string();
    let admin_user_id = events[0]["details"]["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    let admin_name = events[1]["actor"]["user_name"]
        .as_str()
        .unwrap()
        .to_string();
    let expected: Vec<(&str, &str, &str)> = vec![
        // Registered from KILN_ADMIN_TOKEN at the first start: by the server.
        ("token.created", "kiln", &admin_token_id),
        ("token.created", &admin_name, &alice_token_id),
        ("token.created", &admin_name, &bot_token_id),
        ("environment.created", "alice", &env_id),
        ("task.created", "alice", &first),
        ("task.replied", "alice", &first),
        ("task.preferred", "alice", &first),
        ("task.created", "alice", &second),
        ("task.cancelled", "alice", &second),
        ("token.revoked", &admin_name, &bot_token_id),
    ];
    let expected: Vec<(String, String, String)> = expected
        .into_iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(summary(&events), expected, "{exported}");
    assert!(ids(&events).windows(2).all(|w| w[0] < w[1]), "oldest first");
    assert_eq!(events[0]["actor"]["user_id"], Value::Null);
    assert_eq!(events[0]["origin"], Value::Null, "no request: no origin");
    for event in &events[1..] {
        assert_eq!(event["origin"], "127.0.0.1", "{event}");
    }
    for event in [&events[1], &events[2], &events[9]] {
        assert_eq!(event["actor"]["user_id"], admin_user_id.as_str());
        assert_eq!(event["actor"]["token_id"], admin_token_id.as_str());
        assert_eq!(event["target"]["kind"], "token");
    }
    let alice_user_id = events[1]["details"]["user_id"].as_str().unwrap();
    for event in &events[3..9] {
        assert_eq!(event["actor"]["user_id"], alice_user_id, "{event}");
        assert_eq!(event["actor"]["token_id"], alice_token_id.as_str());
        assert_eq!(event["team_id"], env["team_id"], "{event}");
    }
    assert_eq!(events[3]["details"]["secret_names"], json!(["DEPLOY_KEY"]));
    assert_eq!(events[5]["details"]["length"], FOLLOW_UP.chars().count());
    assert_eq!(events[6]["details"]["attempt"], 1);
    assert_eq!(
        events[8]["details"]["cancel_requested"],
        json!([1]),
        "{exported}"
    );

    // Never a secret: not the environment's, not a token's, not the follow-up's text.
    for secret in [DEPLOY_KEY, ADMIN_TOKEN, &alice, &bot, FOLLOW_UP] {
        assert!(!exported.contains(secret), "{secret:?} is in the export");
    }

    // Over HTTP: JSON lines, as a file to save.
    let response = server
        .http
        .get(format!("{}/api/audit/export?action=token.", server.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"kiln-audit.jsonl\""
    );
    let body = response.text().await.unwrap();
    let token_events = [&events[..3], &events[9..]].concat();
    assert_eq!(json_lines(&body), token_events);

    // The same export into a file.
    let file = install.home.path().join("trail.jsonl");
    let file_arg = file.display().to_string();
    let output = server
        .cli(ADMIN_TOKEN, &["audit", "export", "-o", &file_arg])
        .await;
    stdout(&output);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), exported);

    // Filters: by actor (name or id), by action prefix, from a time on.
    let filtered = |args: &'static [&'static str]| {
        let server = &server;
        async move {
            let mut full = vec!["audit", "export"];
            full.extend_from_slice(args);
            json_lines(&stdout(&server.cli(ADMIN_TOKEN, &full).await))
        }
    };
    let by_alice = filtered(&["--actor", "alice"]).await;
    assert_eq!(ids(&by_alice), ids(&events[3..9]));
    let tasks = filtered(&["--action", "task."]).await;
    assert_eq!(ids(&tasks), ids(&events[4..9]));
    let tokens = filtered(&["--action", "token.created"]).await;
    assert_eq!(ids(&tokens), ids(&events[..3]));
    let since = events[7]["ts"].as_str().unwrap().to_string();
    let output = server
        .cli(ADMIN_TOKEN, &["audit", "export", "--since", &since])
        .await;
    let recent = json_lines(&stdout(&output));
    let since_ts = chrono::DateTime::parse_from_rfc3339(&since).unwrap();
    let expected_recent: Vec<Value> = events
        .iter()
        .filter(|e| {
            chrono::DateTime::parse_from_rfc3339(e["ts"].as_str().unwrap()).unwrap() >= since_ts
        })
        .cloned()
        .collect();
    assert_eq!(recent, expected_recent);
    assert!(
        recent.len() >= 3 && recent.len() < events.len(),
        "{recent:?}"
    );
    let output = server
        .cli(
            ADMIN_TOKEN,
            &[
                "audit", "list", "--since", "1h", "--action", "task.", "--json",
            ],
        )
        .await;
    let page: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let mut newest_first = ids(&events[4..9]);
    newest_first.reverse();
    assert_eq!(ids(page["events"].as_array().unwrap()), newest_first);

    // The readable table.
    let table = stdout(
        &server
            .cli(ADMIN_TOKEN, &["audit", "list", "--actor", "alice"])
            .await,
    );
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 6, "{table}");
    assert!(
        rows[0].contains("task.cancelled") && rows[0].contains(&second),
        "{table}"
    );
    assert!(
        rows.iter()
            .all(|r| r.contains("alice") && r.contains("127.0.0.1")),
        "{table}"
    );
    // Pages: two at a time, the cursor to the next printed on stderr.
    let output = server
        .cli(ADMIN_TOKEN, &["audit", "list", "--limit", "2"])
        .await;
    assert_eq!(stdout(&output).lines().count(), 3);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--cursor"),
        "{output:?}"
    );

    // Not an admin: refused on both routes, and by the CLI with the reason.
    for path in ["/api/audit", "/api/audit/export"] {
        let (status, body) = server.get(path, &alice).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("admin"),
            "{body}"
        );
    }
    let output = server.cli(&alice, &["audit", "export"]).await;
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("403"),
        "{output:?}"
    );
    let (status, body) = server.get("/api/audit?limit=0", ADMIN_TOKEN).await;
    assert_eq!(status, 422, "{body}");

    // Reading the trail changed nothing in it.
    let again = stdout(&server.cli(ADMIN_TOKEN, &["audit", "export"]).await);
    assert_eq!(again, exported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_day_of_work_leaves_its_audit_trail_on_sqlite() {
    scripted_day(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_day_of_work_leaves_its_audit_trail_on_postgresql() {
    let postgres = PostgresServer::from_env_or_start().unwrap_or_else(|e| panic!("{e}"));
    let database_url = postgres
        .fresh_database()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    scripted_day(&["--database-url", database_url.as_str()]).await;
}
