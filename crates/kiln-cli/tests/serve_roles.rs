//! The role matrix against a real `kiln serve`, on SQLite and on
//! PostgreSQL: two teams and five people with different roles. Each tries
//! what their role must not do and is refused (403 inside their team, 404
//! outside it) with nothing changed, and does what their role allows.
//!
//! root: owner (the admin token); ada: admin; team payments: mara
//! maintainer, milo member, vera viewer; team search: sam member.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::time::Duration;

use kiln_testkit::postgres::PostgresServer;
use kiln_testkit::{fixtures, Script, ScriptedServer, Turn};
use reqwest::Method;
use serde_json::{json, Value};
use serve_support::{Installation, KilnServer, ADMIN_TOKEN};

const LONG: Duration = Duration::from_secs(120);
const ROOT: &str = ADMIN_TOKEN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_is_refused_what_it_may_not_do_and_allowed_the_rest_on_sqlite() {
    role_matrix(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_is_refused_what_it_may_not_do_and_allowed_the_rest_on_postgresql() {
    let postgres = PostgresServer::from_env_or_start().unwrap_or_else(|e| panic!("{e}"));
    let database_url = postgres
        .fresh_database()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    role_matrix(&["--database-url", database_url.as_str()]).await;
}

/// Everything an admin can see, to compare before and after refusals.
async fn everything(server: &KilnServer) -> Value {
    let (_, users) = server.get("/api/users", ROOT).await;
    let (_, teams) = server.get("/api/teams", ROOT).await;
    let (_, environments) = server.get("/api/environments", ROOT).await;
    let (_, tokens) = server.get("/api/tokens", ROOT).await;
    let (_, page) = server.get("/api/tasks?limit=100", ROOT).await;
    let mut tasks = Vec::new();
    for task in page["tasks"].as_array().unwrap() {
        let id = task["id"].as_str().unwrap();
        tasks.push(server.get(&format!("/api/tasks/{id}"), ROOT).await.1);
    }
    json!({
        "users": users, "teams": teams, "environments": environments,
        "tokens": tokens, "tasks": tasks,
    })
}

struct Call {
    who: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
    status: u16,
}

fn call(who: &'static str, method: Method, path: impl Into<String>, status: u16) -> Call {
    Call {
        who,
        method,
        path: path.into(),
        body: None,
        status,
    }
}

fn with(mut c: Call, body: Value) -> Call {
    c.body = Some(body);
    c
}

async fn send(server: &KilnServer, secret: &str, c: &Call) -> (u16, Value) {
    server
        .request(c.method.clone(), &c.path, Some(secret), c.body.clone())
        .await
}

async fn role_matrix(extra: &[&str]) {
    let repo = fixtures::repo("calc-py");
    let done = |text: &str| vec![Turn::message(text)];
    let model = ScriptedServer::start(
        Script::new(Vec::new())
            .with_route(
                "[k]",
                vec![Turn::message("K done."), Turn::message("K again.")],
            )
            .with_route("[m]", done("M done."))
            .with_route("[s]", done("S done.")),
    )
    .await;
    let install = Installation::new();
    let allowed = repo.path().display().to_string();
    let mut args = vec!["--allow-repo", allowed.as_str()];
    args.extend_from_slice(extra);
    let server = KilnServer::start_with(&install, &model, 2, &args).await;
    let repo_path = repo.path().display().to_string();

    // The admin token's user is the owner.
    let (status, me) = server.get("/api/me", ROOT).await;
    assert_eq!((status, me["role"].as_str()), (200, Some("owner")), "{me}");

    // People and teams, through the API and the CLI.
    for (name, role) in [("ada", "admin"), ("mara", "user"), ("milo", "user")] {
        let (status, user) = server
            .post("/api/users", ROOT, json!({"name": name, "role": role}))
            .await;
        assert_eq!(status, 201, "{user}");
        assert_eq!(user["teams"], json!([]), "no personal team: {user}");
    }
    let out = server
        .cli(
            ROOT,
            &["user", "add", "vera", "--email", "vera@example.com"],
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    let out = server.cli(ROOT, &["user", "add", "sam"]).await;
    assert!(out.status.success(), "{out:?}");
    let (status, team) = server
        .post("/api/teams", ROOT, json!({"name": "payments"}))
        .await;
    assert_eq!(status, 201, "{team}");
    let out = server.cli(ROOT, &["team", "add", "search"]).await;
    assert!(out.status.success(), "{out:?}");
    for (team, user, role) in [
        ("payments", "mara", "maintainer"),
        ("payments", "milo", "member"),
        ("payments", "vera", "viewer"),
    ] {
        let (status, body) = server
            .request(
                Method::PUT,
                &format!("/api/teams/{team}/members/{user}"),
                Some(ROOT),
                Some(json!({"role": role})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let out = server
        .cli(ROOT, &["team", "set-member", "search", "sam", "member"])
        .await;
    assert!(out.status.success(), "{out:?}");

    // Tokens: root mints one per person; sam's through the CLI.
    let mut secrets = std::collections::HashMap::new();
    secrets.insert("root", ROOT.to_string());
    for name in ["ada", "mara", "milo", "vera"] {
        let (status, token) = server
            .post(
                "/api/tokens",
                ROOT,
                json!({"name": format!("{name}-laptop"), "user": name}),
            )
            .await;
        assert_eq!(status, 201, "{token}");
        secrets.insert(name, token["secret"].as_str().unwrap().to_string());
    }
    let out = server
        .cli(ROOT, &["token", "create", "sam-laptop", "--user", "sam"])
        .await;
    assert!(out.status.success(), "{out:?}");
    let sam_secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    secrets.insert("sam", sam_secret);
    let secret = |who: &str| secrets[who].clone();

    let out = server.cli(&secret("sam"), &["whoami", "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let sam: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sam["name"], "sam");
    assert_eq!(sam["role"], "user");
    assert_eq!(sam["teams"][0]["team_name"], "search");
    assert_eq!(sam["teams"][0]["role"], "member");

    // What each role may create: environments (maintainer), tasks (member,
    // maintainer).
    let (status, env) = server
        .post(
            "/api/environments",
            &secret("mara"),
            json!({"name": "calc", "team": "payments", "repo": repo_path}),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    let env_id = env["id"].as_str().unwrap().to_string();
    let (status, body) = server
        .post(
            "/api/environments",
            &secret("sam"),
            json!({"name": "calc", "team": "search", "repo": repo_path}),
        )
        .await;
    assert_eq!(
        status, 403,
        "a member of search makes no environment: {body}"
    );
    let (status, env) = server
        .post(
            "/api/environments",
            ROOT,
            json!({"name": "calc", "team": "search", "repo": repo_path}),
        )
        .await;
    assert_eq!(status, 201, "an admin makes one in any team: {env}");
    let task_k = server
        .task(
            &secret("mara"),
            json!({"environment": "payments/calc", "prompt": "[k] mara's task"}),
        )
        .await;
    let k = task_k["id"].as_str().unwrap().to_string();
    let task_m = server
        .task(
            &secret("milo"),
            json!({"environment": "calc", "prompt": "[m] milo's task"}),
        )
        .await;
    let m = task_m["id"].as_str().unwrap().to_string();
    let task_s = server
        .task(
            &secret("sam"),
            json!({"environment": "calc", "prompt": "[s] sam's task"}),
        )
        .await;
    let s = task_s["id"].as_str().unwrap().to_string();
    assert_eq!(task_m["team_id"], task_k["team_id"]);
    assert_ne!(task_s["team_id"], task_k["team_id"]);
    for id in [&k, &m, &s] {
        let task = server.wait_finished(ROOT, id, LONG).await;
        assert_eq!(task["status"], "succeeded", "{task:#}");
    }

    // A maintainer reads a teammate's private task; the team's list shows it.
    let (status, body) = server
        .get(&format!("/api/tasks/{m}"), &secret("mara"))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, page) = server.get("/api/tasks?scope=team", &secret("mara")).await;
    let ids: Vec<&str> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{page}");
    assert!(
        ids.contains(&k.as_str()) && ids.contains(&m.as_str()),
        "{page}"
    );
    // Everyone else sees what is theirs only.
    for (who, expected) in [
        ("milo", vec![m.as_str()]),
        ("vera", vec![]),
        ("sam", vec![s.as_str()]),
    ] {
        let (_, page) = server.get("/api/tasks", &secret(who)).await;
        let ids: Vec<&str> = page["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, expected, "{who} lists {page}");
    }
    let (_, listed) = server.get("/api/users", &secret("milo")).await;
    assert_eq!(listed["users"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["users"][0]["name"], "milo");

    let mara_tokens = server.get("/api/tokens", &secret("mara")).await.1;
    let mara_token = mara_tokens["tokens"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        mara_tokens["tokens"].as_array().unwrap().len(),
        1,
        "{mara_tokens}"
    );
    let env_path = |rest: &str| format!("/api/environments/{env_id}{rest}");
    let new_env = |team: &str| json!({"name": "calc2", "team": team, "repo": repo_path});
    let new_task = json!({"environment": "payments/calc", "prompt": "[m] no"});

    // Phase 1: what each role must not do while K is private.
    let refusals = vec![
        with(
            call("milo", Method::POST, "/api/environments", 403),
            new_env("payments"),
        ),
        with(
            call("vera", Method::POST, "/api/environments", 403),
            new_env("payments"),
        ),
        with(
            call("sam", Method::POST, "/api/environments", 404),
            new_env("payments"),
        ),
        with(
            call("vera", Method::POST, "/api/tasks", 403),
            new_task.clone(),
        ),
        with(
            call("sam", Method::POST, "/api/tasks", 404),
            new_task.clone(),
        ),
        call("sam", Method::GET, env_path("/webhook/deliveries"), 404),
        call("milo", Method::GET, format!("/api/tasks/{k}"), 403),
        call("vera", Method::GET, format!("/api/tasks/{k}"), 403),
        call("vera", Method::GET, format!("/api/tasks/{m}"), 403),
        call("sam", Method::GET, format!("/api/tasks/{k}"), 404),
        call("sam", Method::GET, format!("/api/tasks/{m}"), 404),
        call(
            "milo",
            Method::GET,
            format!("/api/tasks/{k}/attempts/1/diff"),
            403,
        ),
        with(
            call(
                "milo",
                Method::POST,
                format!("/api/tasks/{k}/messages"),
                403,
            ),
            json!({"text": "hi"}),
        ),
        with(
            call("milo", Method::POST, format!("/api/tasks/{k}/cancel"), 403),
            json!({}),
        ),
        call("milo", Method::POST, format!("/api/tasks/{k}/share"), 403),
        call("vera", Method::POST, format!("/api/tasks/{m}/share"), 403),
        call("sam", Method::POST, format!("/api/tasks/{m}/share"), 404),
        with(
            call("sam", Method::POST, format!("/api/tasks/{m}/messages"), 404),
            json!({"text": "hi"}),
        ),
        with(
            call("sam", Method::POST, format!("/api/tasks/{m}/pr"), 404),
            json!({}),
        ),
        // People and teams are for admins.
        with(
            call("milo", Method::POST, "/api/users", 403),
            json!({"name": "eve"}),
        ),
        with(
            call("mara", Method::POST, "/api/teams", 403),
            json!({"name": "ops"}),
        ),
        with(
            call("mara", Method::PUT, "/api/teams/payments/members/vera", 403),
            json!({"role": "maintainer"}),
        ),
        call(
            "vera",
            Method::DELETE,
            "/api/teams/payments/members/milo",
            403,
        ),
        with(
            call("milo", Method::PATCH, "/api/users/milo", 403),
            json!({"role": "admin"}),
        ),
        with(
            call("mara", Method::PATCH, "/api/users/vera", 403),
            json!({"disabled": true}),
        ),
        call("milo", Method::GET, "/api/users/mara", 403),
        call("sam", Method::GET, "/api/teams/payments", 404),
        // Only an owner makes or unmakes owners and admins.
        with(
            call("ada", Method::PATCH, "/api/users/mara", 403),
            json!({"role": "owner"}),
        ),
        with(
            call("ada", Method::PATCH, "/api/users/mara", 403),
            json!({"role": "admin"}),
        ),
        with(
            call("ada", Method::POST, "/api/users", 403),
            json!({"name": "boss", "role": "owner"}),
        ),
        with(
            call("ada", Method::POST, "/api/tokens", 403),
            json!({"name": "boss", "admin": true}),
        ),
        // Tokens: only one's own.
        call(
            "milo",
            Method::DELETE,
            format!("/api/tokens/{mara_token}"),
            404,
        ),
        with(
            call("milo", Method::POST, "/api/tokens", 403),
            json!({"name": "x", "user": "mara"}),
        ),
        with(
            call("milo", Method::POST, "/api/tokens", 403),
            json!({"name": "x", "worker": true}),
        ),
        call("milo", Method::GET, "/api/tokens?user=mara", 403),
    ];
    check_refusals(&server, &secret, &refusals).await;
    // The last owner can be neither demoted nor disabled.
    let root_id = me["id"].as_str().unwrap().to_string();
    let before = everything(&server).await;
    for body in [json!({"role": "admin"}), json!({"disabled": true})] {
        let (status, answer) = server
            .request(
                Method::PATCH,
                &format!("/api/users/{root_id}"),
                Some(ROOT),
                Some(body),
            )
            .await;
        assert_eq!(status, 409, "{answer}");
    }
    assert_eq!(everything(&server).await, before);

    // Sharing: mara (its author) shares K through the CLI.
    let out = server.cli(&secret("mara"), &["task", "share", &k]).await;
    assert!(out.status.success(), "{out:?}");
    for who in ["milo", "vera"] {
        let (status, body) = server.get(&format!("/api/tasks/{k}"), &secret(who)).await;
        assert_eq!(status, 200, "{who}: {body}");
        assert_eq!(body["shared"], true);
    }
    let out = server
        .cli(
            &secret("vera"),
            &["task", "list", "--scope", "shared", "--json"],
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["tasks"][0]["id"], k.as_str());

    // Phase 2: a viewer of a shared task reads it but does not act on it;
    // outside the team it still does not exist.
    let refusals = vec![
        with(
            call(
                "vera",
                Method::POST,
                format!("/api/tasks/{k}/messages"),
                403,
            ),
            json!({"text": "hi"}),
        ),
        with(
            call("vera", Method::POST, format!("/api/tasks/{k}/cancel"), 403),
            json!({}),
        ),
        call(
            "vera",
            Method::POST,
            format!("/api/tasks/{k}/attempts/1/prefer"),
            403,
        ),
        with(
            call("vera", Method::POST, format!("/api/tasks/{k}/pr"), 403),
            json!({}),
        ),
        call("vera", Method::DELETE, format!("/api/tasks/{k}/share"), 403),
        call("milo", Method::DELETE, format!("/api/tasks/{k}/share"), 403),
        call("sam", Method::GET, format!("/api/tasks/{k}"), 404),
    ];
    check_refusals(&server, &secret, &refusals).await;

    // A member acts on the shared task: follows it up, prefers, cancels;
    // the pull request route lets them through to the forge check.
    let (status, body) = server
        .post(
            &format!("/api/tasks/{k}/messages"),
            &secret("milo"),
            json!({"text": "once more"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let task = server
        .wait_task(ROOT, &k, LONG, |t| {
            t["attempts"][0]["final_message"] == "K again." && t["status"] == "succeeded"
        })
        .await;
    assert_eq!(task["shared"], true);
    let (status, body) = server
        .post(
            &format!("/api/tasks/{k}/attempts/1/prefer"),
            &secret("milo"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .post(&format!("/api/tasks/{k}/pr"), &secret("milo"), json!({}))
        .await;
    assert_eq!(
        status, 400,
        "past the access check, the environment has no forge: {body}"
    );
    let (status, body) = server
        .post(
            &format!("/api/tasks/{k}/cancel"),
            &secret("milo"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    // A maintainer makes it private again.
    let (status, body) = server
        .request(
            Method::DELETE,
            &format!("/api/tasks/{k}/share"),
            Some(&secret("mara")),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server
        .get(&format!("/api/tasks/{k}"), &secret("vera"))
        .await;
    assert_eq!(status, 403);

    // Admin actions that are allowed: an admin adds a user; the owner
    // makes an admin.
    let (status, body) = server
        .post("/api/users", &secret("ada"), json!({"name": "guest"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let out = server
        .cli(ROOT, &["user", "set-role", "guest", "admin"])
        .await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("admin"),
        "{out:?}"
    );
    let out = server
        .cli(ROOT, &["team", "remove-member", "payments", "vera"])
        .await;
    assert!(out.status.success(), "{out:?}");
    let (_, vera) = server.get("/api/me", &secret("vera")).await;
    assert_eq!(vera["teams"], json!([]), "{vera}");

    // Tokens: a user makes, lists and revokes their own.
    let (status, own) = server
        .post("/api/tokens", &secret("milo"), json!({"name": "milo-ci"}))
        .await;
    assert_eq!(status, 201, "{own}");
    let (_, milo) = server.get("/api/me", &secret("milo")).await;
    assert_eq!(own["user_id"], milo["id"]);
    let (_, listed) = server.get("/api/tokens", &secret("milo")).await;
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["milo-laptop", "milo-ci"], "{listed}");
    let own_secret = own["secret"].as_str().unwrap();
    let (status, _) = server.get("/api/me", own_secret).await;
    assert_eq!(status, 200);
    let (status, body) = server
        .request(
            Method::DELETE,
            &format!("/api/tokens/{}", own["id"].as_str().unwrap()),
            Some(&secret("milo")),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.get("/api/me", own_secret).await;
    assert_eq!(status, 401);

    // Disabling a user stops their tokens; enabling brings them back.
    let out = server
        .cli(&secret("ada"), &["user", "disable", "sam"])
        .await;
    assert!(out.status.success(), "{out:?}");
    let (status, _) = server.get("/api/me", &secret("sam")).await;
    assert_eq!(status, 401);
    let out = server.cli(&secret("ada"), &["user", "enable", "sam"]).await;
    assert!(out.status.success(), "{out:?}");
    let (status, _) = server.get("/api/me", &secret("sam")).await;
    assert_eq!(status, 200);
}

async fn check_refusals(server: &KilnServer, secret: &impl Fn(&str) -> String, calls: &[Call]) {
    let before = everything(server).await;
    for c in calls {
        let (status, body) = send(server, &secret(c.who), c).await;
        assert_eq!(
            status, c.status,
            "{} {} {} answered {body}",
            c.who, c.method, c.path
        );
        if status == 403 {
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "a refusal says why: {body}");
        }
    }
    assert_eq!(
        everything(server).await,
        before,
        "a refused request changed something"
    );
}

/// A data directory an older kiln (schema version 4, before teams) left:
/// the migration files 0001-0004 applied by sqlx's own migrator, and rows
/// as that kiln wrote them. `kiln serve` opens it: every token works as it
/// did, the admin token's user is the owner, and each user sees exactly
/// their old environments and tasks and runs new ones on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_serve_opens_a_database_from_before_teams_and_everyone_sees_what_they_saw() {
    use sha2::{Digest, Sha256};
    use sqlx::Connection;

    let repo = fixtures::repo("calc-py");
    let install = Installation::new();
    let migrations = tempfile::tempdir().unwrap();
    for name in [
        "0001_initial.sql",
        "0002_repo_credential.sql",
        "0003_workers.sql",
        "0004_evidence_delivery.sql",
    ] {
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../kiln-store/migrations")
            .join(name);
        std::fs::copy(source, migrations.path().join(name)).unwrap();
    }
    let hash = |secret: &str| -> String {
        Sha256::digest(secret.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let repo_path = repo.path().display().to_string();
    let day = 1_800_000_000_000_i64;
    let rows = format!(
        "INSERT INTO tokens (id, name, secret_sha256, admin, created_at)
           VALUES ('tok_01admin', 'admin', '{admin}', TRUE, {day});
         INSERT INTO tokens (id, name, secret_sha256, admin, created_at)
           VALUES ('tok_02alice', 'alice', '{alice}', FALSE, {day});
         INSERT INTO tokens (id, name, secret_sha256, admin, created_at)
           VALUES ('tok_03bob', 'bob', '{bob}', FALSE, {day});
         INSERT INTO environments (id, owner_token_id, name, repo, env_json, secrets_json,
             created_at)
           VALUES ('env_01alice', 'tok_02alice', 'calc', '{repo_path}', '{{}}', '{{}}', {day});
         INSERT INTO environments (id, owner_token_id, name, repo, env_json, secrets_json,
             created_at)
           VALUES ('env_02bob', 'tok_03bob', 'calc', '{repo_path}', '{{}}', '{{}}', {day});
         INSERT INTO tasks (id, owner_token_id, environment_id, prompt, mode, attempt_count,
             status, created_at, updated_at)
           VALUES ('t_0001alice', 'tok_02alice', 'env_01alice', 'old', 'code', 1, 'succeeded',
             {day}, {day});
         INSERT INTO attempts (task_id, n, status) VALUES ('t_0001alice', 1, 'succeeded');
         INSERT INTO tasks (id, owner_token_id, environment_id, prompt, mode, attempt_count,
             status, created_at, updated_at)
           VALUES ('t_0002bob', 'tok_03bob', 'env_02bob', 'old', 'code', 1, 'succeeded',
             {day}, {day});
         INSERT INTO attempts (task_id, n, status) VALUES ('t_0002bob', 1, 'succeeded');",
        admin = hash(ROOT),
        alice = hash("old-alice-secret"),
        bob = hash("old-bob-secret"),
    );
    let url = format!("sqlite://{}", install.data_dir().join("kiln.db").display());
    let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url)
        .unwrap()
        .create_if_missing(true)
        .foreign_keys(true);
    let mut db = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(migrations.path())
        .await
        .unwrap()
        .run(&mut db)
        .await
        .unwrap();
    sqlx::raw_sql(&rows).execute(&mut db).await.unwrap();
    db.close().await.unwrap();

    let model = ScriptedServer::start(Script::new(vec![Turn::message("New done.")])).await;
    let server = KilnServer::start_with(&install, &model, 1, &["--allow-repo", &repo_path]).await;
    let (status, root) = server.get("/api/me", ROOT).await;
    assert_eq!(
        (status, root["role"].as_str()),
        (200, Some("owner")),
        "{root}"
    );
    for (secret, name, own_env, own_task, other_task) in [
        (
            "old-alice-secret",
            "alice",
            "env_01alice",
            "t_0001alice",
            "t_0002bob",
        ),
        (
            "old-bob-secret",
            "bob",
            "env_02bob",
            "t_0002bob",
            "t_0001alice",
        ),
    ] {
        let (status, me) = server.get("/api/me", secret).await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(me["name"], name);
        assert_eq!(me["role"], "user");
        assert_eq!(me["teams"][0]["team_name"], name);
        assert_eq!(me["teams"][0]["role"], "maintainer");
        let (_, envs) = server.get("/api/environments", secret).await;
        let ids: Vec<&str> = envs["environments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [own_env], "{envs}");
        let (_, page) = server.get("/api/tasks", secret).await;
        let ids: Vec<&str> = page["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [own_task], "{page}");
        let (status, _) = server
            .get(&format!("/api/tasks/{other_task}"), secret)
            .await;
        assert_eq!(status, 404);
    }
    // The old name still names alice's environment, and tasks run on it.
    let task = server
        .task(
            "old-alice-secret",
            json!({"environment": "calc", "prompt": "new work"}),
        )
        .await;
    assert_eq!(task["environment_id"], "env_01alice");
    let id = task["id"].as_str().unwrap();
    let task = server.wait_finished("old-alice-secret", id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let (_, page) = server.get("/api/tasks", ROOT).await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 3, "{page}");
}
