//! The `kiln serve` HTTP API's contract: authentication and ownership,
//! errors that name the problem, and resumable SSE event streams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::time::Duration;

use kiln_testkit::{fixtures, Script, ScriptedServer, Turn};
use reqwest::Method;
use serde_json::{json, Value};
use serve_support::{Installation, KilnServer, ADMIN_TOKEN};

const LONG: Duration = Duration::from_secs(60);

async fn server_with(
    turns: Vec<Turn>,
) -> (KilnServer, ScriptedServer, Installation, tempfile::TempDir) {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(turns)).await;
    let install = Installation::new();
    // Non-admins use the fixture repository too: allow its directory.
    let allowed = repo.path().display().to_string();
    let server = KilnServer::start_with(&install, &model, 2, &["--allow-repo", &allowed]).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    (server, model, install, repo)
}

fn error_message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_and_foreign_tokens_are_refused_and_tasks_stay_private() {
    let (server, _model, _install, repo) = server_with(vec![Turn::message("done")]).await;

    let (status, body) = server.request(Method::GET, "/api/tasks", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, body) = server
        .get("/api/tasks", "not-a-real-token-at-all-0000000")
        .await;
    assert_eq!(status, 401, "{body}");

    let alice = server.new_user("alice").await;
    let bob = server.new_user("bob").await;
    server.environment(&alice, "mine", repo.path()).await;
    let task = server
        .task(
            &alice,
            json!({"environment": "mine", "prompt": "look around"}),
        )
        .await;
    let id = task["id"].as_str().unwrap();

    let (status, body) = server.get(&format!("/api/tasks/{id}"), &bob).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = server
        .post(&format!("/api/tasks/{id}/cancel"), &bob, json!({}))
        .await;
    assert_eq!(status, 404);
    let (status, listed) = server.get("/api/tasks", &bob).await;
    assert_eq!(status, 200);
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 0, "{listed}");
    // Bob cannot use Alice's environment by name either.
    let (status, body) = server
        .post(
            "/api/tasks",
            &bob,
            json!({"environment": "mine", "prompt": "x"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    // Non-admins mint tokens only for themselves: not for another user,
    // not for a new admin.
    let (status, _) = server
        .post("/api/tokens", &bob, json!({"name": "eve", "user": "alice"}))
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .post("/api/tokens", &bob, json!({"name": "eve", "admin": true}))
        .await;
    assert_eq!(status, 403);

    let (status, body) = server.get(&format!("/api/tasks/{id}"), &alice).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.get(&format!("/api/tasks/{id}"), ADMIN_TOKEN).await;
    assert_eq!(status, 200, "the admin sees every task");
    server.wait_finished(&alice, id, LONG).await;

    // A revoked token stops working.
    let (_, tokens) = server.get("/api/tokens", ADMIN_TOKEN).await;
    let bob_id = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "bob")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = server
        .request(
            Method::DELETE,
            &format!("/api/tokens/{bob_id}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server.get("/api/tasks", &bob).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_invalid_and_oversized_requests_get_4xx_naming_the_problem() {
    let (server, _model, _install, _repo) = server_with(vec![]).await;
    let url = format!("{}/api/tasks", server.url);

    let response = server
        .http
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{\"environment\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");

    let (status, body) = server
        .post("/api/tasks", ADMIN_TOKEN, json!({"environment": "calc"}))
        .await;
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(error_message(&body).contains("prompt"), "{body}");

    let (status, body) = server
        .post(
            "/api/tasks",
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "x", "attempts": 9}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body).contains("attempts"), "{body}");

    let (status, body) = server
        .post(
            "/api/tasks",
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "x", "attempts": "two"}),
        )
        .await;
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(error_message(&body).contains("attempts"), "{body}");

    let (status, body) = server
        .post(
            "/api/tasks",
            ADMIN_TOKEN,
            json!({"environment": "nope", "prompt": "x"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(error_message(&body).contains("nope"), "{body}");

    let (status, body) = server.get("/api/tasks?status=bogus", ADMIN_TOKEN).await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body).contains("status"), "{body}");

    let (status, body) = server
        .post("/api/environments", ADMIN_TOKEN, json!({"name": "e"}))
        .await;
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(error_message(&body).contains("repo"), "{body}");
    for (repo, hint) in [
        ("relative/path", "absolute path"),
        ("/nonexistent/repo", "not a git repository"),
    ] {
        let (status, body) = server
            .post(
                "/api/environments",
                ADMIN_TOKEN,
                json!({"name": "e", "repo": repo}),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        let message = error_message(&body);
        assert!(
            message.contains("invalid repo") && message.contains(hint),
            "{body}"
        );
    }
    let (status, body) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({"name": "u", "repo": "git@example.com:org/app.git"}),
        )
        .await;
    assert_eq!(status, 201, "a git URL is accepted as given: {body}");

    // Raw HTTP: the server may answer 413 before reading the whole body,
    // so the body write may fail; the answer is what counts.
    let huge = format!(
        r#"{{"environment":"calc","prompt":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let answer = raw_post(&server.url, "/api/tasks", &huge).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    let (status, body) = server
        .get("/api/tasks/t_nothere/attempts/1/diff", ADMIN_TOKEN)
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server
        .get("/api/tasks/t_x/attempts/first/diff", ADMIN_TOKEN)
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_a_repository_url_is_in_no_api_answer_error_or_database_file() {
    const TOKEN: &str = "ghp_url-token-7Qx9pL2m";
    let model = ScriptedServer::start(Script::new(vec![Turn::message("done")])).await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    let user = server.new_user("mallory").await;

    let repo = format!("https://ci-bot:{TOKEN}@git.example.com/team/app.git");
    let (status, created) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({"name": "private", "repo": repo}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert!(!created.to_string().contains(TOKEN), "{created}");
    assert_eq!(created["repo"], "https://git.example.com/team/app.git");
    assert_eq!(created["repo_has_credential"], true, "{created}");
    let (status, listed) = server.get("/api/environments", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{listed}");
    assert!(!listed.to_string().contains(TOKEN), "{listed}");

    // A location refused to a non-admin is named without its credential.
    let (status, refused) = server
        .post(
            "/api/environments",
            &user,
            json!({"name": "local", "repo": format!("https://ci-bot:{TOKEN}@127.0.0.1:9/app.git")}),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    assert!(!refused.to_string().contains(TOKEN), "{refused}");
    // So is one that would send it over plain http.
    let (status, refused) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({"name": "clear", "repo": format!("http://ci-bot:{TOKEN}@git.example.com/app.git")}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(!refused.to_string().contains(TOKEN), "{refused}");

    // Nor is it anywhere on the server's disk in plaintext (the database
    // and its write-ahead log included).
    for entry in std::fs::read_dir(install.data_dir()).unwrap().flatten() {
        if let Ok(bytes) = std::fs::read(entry.path()) {
            assert!(
                !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
                "the token is in {} in plaintext",
                entry.path().display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_resumed_with_last_event_id_gets_exactly_the_missed_events() {
    let (server, _model, _install, _repo) = server_with(vec![
        Turn::shell("echo one; echo two"),
        Turn::message("Printed two lines."),
    ])
    .await;
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "print two lines"}),
        )
        .await;
    let id = task["id"].as_str().unwrap();

    // Read live up to the command's start, then drop the connection.
    let mut live = server.events(ADMIN_TOKEN, id, None).await;
    let mut seen = Vec::new();
    loop {
        let event = live.next(LONG).await.expect("events until exec.begin");
        let kind = event.kind.clone();
        seen.push(event);
        if kind == "exec.begin" {
            break;
        }
    }
    drop(live);
    let last = seen.last().unwrap().id;

    let resumed = server
        .events(ADMIN_TOKEN, id, Some(last))
        .await
        .all(LONG)
        .await;
    let everything = server.events(ADMIN_TOKEN, id, None).await.all(LONG).await;

    let mut stitched = seen.clone();
    stitched.extend(resumed.clone());
    assert_eq!(stitched, everything, "resume must neither skip nor repeat");
    assert!(resumed.iter().all(|e| e.id > last));
    let ids: Vec<i64> = everything.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(everything.first().unwrap().kind, "attempt.started");
    // The finish, then the ranking the store appended with it.
    let n = everything.len();
    assert_eq!(everything[n - 2].kind, "attempt.finished");
    assert_eq!(everything[n - 1].kind, "task.ranked");
    assert!(everything
        .iter()
        .any(|e| e.kind == "exec.output"
            && e.data["text"].as_str().unwrap_or_default().contains("two")));
    assert_eq!(
        everything[n - 2].data["final_message"],
        "Printed two lines."
    );
}

async fn raw_post(url: &str, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(body.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(LONG, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Starts `kiln serve` without KILN_ADMIN_TOKEN; returns the child, its
/// URL and the stdout lines printed before it listened.
async fn start_plain(data: &std::path::Path) -> (tokio::process::Child, String, Vec<String>) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KILN_HOME", data)
        .env("OPENAI_API_KEY", "unused")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut before = Vec::new();
    let url = tokio::time::timeout(LONG, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return rest.split_whitespace().next().unwrap().to_string();
            }
            before.push(line);
        }
        panic!("kiln serve exited before listening");
    })
    .await
    .unwrap();
    (child, url, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_prints_an_admin_token_once_and_it_works() {
    let data = tempfile::tempdir().unwrap();
    let (mut first, url, printed) = start_plain(data.path()).await;
    let line = printed
        .iter()
        .find(|l| l.starts_with("admin token"))
        .unwrap_or_else(|| panic!("no admin token printed: {printed:?}"));
    let secret = line.rsplit(' ').next().unwrap().to_string();
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{url}/api/tokens"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    first.kill().await.unwrap();

    let (_second, url, printed) = start_plain(data.path()).await;
    assert!(
        printed.iter().all(|l| !l.contains("admin token")),
        "{printed:?}"
    );
    let response = http
        .get(format!("{url}/api/tokens"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the token outlives the restart");
    let needle = secret.as_bytes();
    for file in ["kiln.db", "kiln.db-wal"] {
        let stored = std::fs::read(data.path().join(file)).unwrap_or_default();
        assert!(
            !stored.windows(needle.len()).any(|w| w == needle),
            "the secret itself is never stored ({file})"
        );
    }
}
