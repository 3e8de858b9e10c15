//! `kiln task pr` against a real `kiln serve`: the attempt's commit is
//! pushed into a real bare repository as `kiln/<task>`, the pull request
//! is opened on a stand-in forge (a local HTTP server that records every
//! request), a follow-up's commit updates the same pull request, and a
//! forge's refusal comes back as a clear error without the token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::collections::VecDeque;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use kiln_testkit::{fixtures, Script, ScriptedServer, Turn};
use serde_json::{json, Value};
use serve_support::{git, Installation, KilnServer, ADMIN_TOKEN};

const LONG: Duration = Duration::from_secs(60);
const FORGE_TOKEN: &str = "ghp-test-token-do-not-leak-0123456789";

const FIX: &str = "*** Begin Patch\n*** Update File: calc.py\n@@\n-    return (ordered[middle] + ordered[middle + 1]) / 2\n+    return (ordered[middle - 1] + ordered[middle]) / 2\n*** End Patch\n";
const NOTES: &str = "*** Begin Patch\n*** Add File: NOTES.md\n+median averages the two middle values\n*** End Patch\n";

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: HeaderMap,
    body: Value,
}

/// A forge standing in for GitHub: records each request and answers with
/// the next scripted reply.
struct StandInForge {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl StandInForge {
    async fn start(replies: Vec<(u16, Value)>) -> StandInForge {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        let recorder = seen.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let recorder = recorder.clone();
                let replies = replies.clone();
                async move {
                    recorder.lock().unwrap().push(Seen {
                        method: method.to_string(),
                        target: uri.path_and_query().unwrap().as_str().to_string(),
                        headers,
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    });
                    let (status, body) = replies
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or((599, json!({"message": "no reply scripted"})));
                    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        StandInForge { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn kiln(server: &KilnServer, args: &[&str]) -> Output {
    server.cli(ADMIN_TOKEN, args).await
}

/// A bare copy of the calc-py fixture, as a remote would hold it.
fn bare_remote(dir: &Path) -> std::path::PathBuf {
    let source = fixtures::repo("calc-py");
    let bare = dir.join("calc.git");
    git(
        dir,
        &[
            "clone",
            "--quiet",
            "--bare",
            source.path().to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    bare
}

fn remote_branch(bare: &Path, branch: &str) -> String {
    git(bare, &["rev-parse", &format!("refs/heads/{branch}")])
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_task_pr_pushes_the_branch_and_opens_one_pull_request_which_follow_ups_update() {
    let remotes = tempfile::tempdir().unwrap();
    let bare = bare_remote(remotes.path());
    let model = ScriptedServer::start(Script::new(vec![
        Turn::apply_patch(FIX),
        Turn::message("Fixed `median()` for even-length input."),
        Turn::apply_patch(NOTES),
        Turn::message("Added NOTES.md."),
    ]))
    .await;
    let page = "https://github.example/acme/calc/pull/5";
    let forge = StandInForge::start(vec![
        // The first `kiln task pr`: looking for an open PR from the branch
        // is refused: the error must be clear and hold no token.
        (
            401,
            json!({"message": format!("Bad credentials {FORGE_TOKEN}")}),
        ),
        // The second: none open yet, so one is created.
        (200, json!([])),
        (201, json!({"number": 5, "html_url": page})),
        // After a follow-up, and at the third `kiln task pr`: the same one
        // is updated.
        (200, json!({"number": 5, "html_url": page})),
        (200, json!({"number": 5, "html_url": page})),
    ])
    .await;
    let install = Installation::new();
    let server = KilnServer::start_with(
        &install,
        &model,
        1,
        &["--public-url", "https://kiln.example/"],
    )
    .await;
    let (status, env) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({
                "name": "calc",
                "repo": format!("file://{}", bare.display()),
                "secrets": {"FORGE_TOKEN": FORGE_TOKEN},
                "forge": {"kind": "github", "api_url": forge.url, "repo": "acme/calc",
                          "token_secret": "FORGE_TOKEN"},
            }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "Fix median for even-length lists\n\nThe tests fail."}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let first_commit = task["attempts"][0]["commit_sha"]
        .as_str()
        .unwrap()
        .to_string();
    let branch = format!("kiln/{id}");

    let refused = kiln(&server, &["task", "pr", &id]).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("github refused the token in secret FORGE_TOKEN"),
        "{stderr}"
    );
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    assert!(!stderr.contains(FORGE_TOKEN), "{stderr}");

    let opened = kiln(&server, &["task", "pr", &id]).await;
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&opened.stdout).trim(), page);
    assert_eq!(remote_branch(&bare, &branch), first_commit);

    let seen = forge.seen();
    let create = &seen[2];
    assert_eq!(
        (create.method.as_str(), create.target.as_str()),
        ("POST", "/repos/acme/calc/pulls")
    );
    assert_eq!(
        create.headers["authorization"],
        format!("Bearer {FORGE_TOKEN}").as_str()
    );
    assert_eq!(create.body["title"], "Fix median for even-length lists");
    assert_eq!(create.body["head"], branch.as_str());
    assert_eq!(create.body["base"], "main");
    assert_eq!(create.body["draft"], false);
    let body = create.body["body"].as_str().unwrap();
    for part in [
        "## Summary\n\nFixed `median()` for even-length input.",
        "- `calc.py`",
        "## Testing",
        &format!("https://kiln.example/api/tasks/{id}"),
        "Opened by kiln from attempt 1",
    ] {
        assert!(
            body.contains(part),
            "{part:?} missing from the body:\n{body}"
        );
    }
    let (_, detail) = server.get(&format!("/api/tasks/{id}"), ADMIN_TOKEN).await;
    assert_eq!(detail["pull_request"]["number"], 5, "{detail:#}");
    assert_eq!(detail["pull_request"]["url"], page);
    assert_eq!(detail["pull_request"]["branch"], branch.as_str());

    // A follow-up commits again: when it finishes, the same pull request
    // gets the new commit and a refreshed description.
    let (status, body) = server
        .post(
            &format!("/api/tasks/{id}/messages"),
            ADMIN_TOKEN,
            json!({"text": "also add a note", "attempt": 1}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let task = server
        .wait_task(ADMIN_TOKEN, &id, LONG, |t| {
            t["status"] == "succeeded"
                && t["attempts"][0]["commit_sha"].as_str() != Some(first_commit.as_str())
                && t["pull_request"]["updated_at"] != t["pull_request"]["created_at"]
        })
        .await;
    let second_commit = task["attempts"][0]["commit_sha"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(remote_branch(&bare, &branch), second_commit);
    let seen = forge.seen();
    assert_eq!(seen.len(), 4, "{seen:#?}");
    let update = &seen[3];
    assert_eq!(
        (update.method.as_str(), update.target.as_str()),
        ("PATCH", "/repos/acme/calc/pulls/5")
    );
    let body = update.body["body"].as_str().unwrap();
    assert!(body.contains("Added NOTES.md."), "{body}");
    assert!(body.contains("- `NOTES.md`"), "{body}");

    // `kiln task pr` again updates the same pull request: never a second.
    let updated = kiln(&server, &["task", "pr", &id]).await;
    assert!(
        updated.status.success(),
        "{}",
        String::from_utf8_lossy(&updated.stderr)
    );
    assert!(String::from_utf8_lossy(&updated.stderr).contains("updated"));
    let seen = forge.seen();
    assert_eq!(seen.len(), 5, "{seen:#?}");
    assert_eq!(seen.iter().filter(|s| s.method == "POST").count(), 1);
    assert_eq!(seen[4].method, "PATCH");

    // Every push is in the attempt's log as pr.opened; all but the first
    // are updates.
    let events = server.events(ADMIN_TOKEN, &id, None).await.all(LONG).await;
    let opened: Vec<bool> = events
        .iter()
        .filter(|e| e.kind == "pr.opened")
        .map(|e| e.data["updated"].as_bool().unwrap())
        .collect();
    assert_eq!(opened, vec![false, true, true]);

    // `kiln task show` says where the pull request is.
    let shown = kiln(&server, &["task", "show", &id]).await;
    let shown = String::from_utf8_lossy(&shown.stdout);
    let pr = server.get(&format!("/api/tasks/{id}"), ADMIN_TOKEN).await.1["pull_request"].clone();
    assert!(
        shown.contains(&format!(
            "pull request: {} (github #{}, attempt {}, branch kiln/{id})",
            pr["url"].as_str().unwrap(),
            pr["number"],
            pr["attempt"]
        )),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_without_a_forge_gets_a_clear_400() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![Turn::message("Nothing to do.")])).await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    server.environment(ADMIN_TOKEN, "calc", repo.path()).await;
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "look"}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    let (status, body) = server
        .post(&format!("/api/tasks/{id}/pr"), ADMIN_TOKEN, json!({}))
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("names no forge"), "{message}");
    assert!(message.contains("\"forge\""), "{message}");

    // Another user's task does not exist for them.
    let mallory = server.new_user("mallory").await;
    let (status, _) = server
        .post(&format!("/api/tasks/{id}/pr"), &mallory, json!({}))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_point_the_forge_api_at_an_internal_address() {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(vec![Turn::message("Nothing to do.")])).await;
    let internal = StandInForge::start(vec![(200, json!([]))]).await;
    let install = Installation::new();
    let allowed = repo.path().display().to_string();
    let server = KilnServer::start_with(&install, &model, 1, &["--allow-repo", &allowed]).await;
    let mallory = server.new_user("mallory").await;
    let (status, env) = server
        .post(
            "/api/environments",
            &mallory,
            json!({
                "name": "calc",
                "repo": allowed,
                "secrets": {"FORGE_TOKEN": "anything"},
                "forge": {"kind": "forgejo", "api_url": internal.url, "repo": "acme/calc",
                          "token_secret": "FORGE_TOKEN"},
            }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    let task = server
        .task(&mallory, json!({"environment": "calc", "prompt": "look"}))
        .await;
    let id = task["id"].as_str().unwrap();
    let (status, body) = server
        .post(&format!("/api/tasks/{id}/pr"), &mallory, json!({}))
        .await;
    assert_eq!(status, 403, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("forge.api_url"), "{message}");
    assert!(message.contains("loopback"), "{message}");
    assert!(
        internal.seen().is_empty(),
        "kiln called the internal address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_merge_request_on_gitlab_after_a_push_over_smart_http_with_the_urls_credential() {
    let root = tempfile::tempdir().unwrap();
    bare_remote(root.path());
    let password = "glpat-secret-in-the-url-0123456789";
    let expected = format!(
        "Basic {}",
        serve_support::base64(format!("oauth2:{password}").as_bytes())
    );
    let git_url =
        kiln_testkit::git_http::serve_with_basic_auth(root.path().to_path_buf(), expected);
    let model = ScriptedServer::start(Script::new(vec![
        Turn::apply_patch(FIX),
        Turn::message("Fixed `median()`."),
    ]))
    .await;
    let page = "https://gitlab.example/acme/calc/-/merge_requests/9";
    let forge = StandInForge::start(vec![
        (200, json!([])),
        (201, json!({"iid": 9, "id": 1234, "web_url": page})),
    ])
    .await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    let repo_url = git_url.replace("http://", &format!("http://oauth2:{password}@")) + "/calc.git";
    let (status, env) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({
                "name": "calc",
                "repo": repo_url,
                "secrets": {"GITLAB_TOKEN": "glpat-api-token-0123456789"},
                "forge": {"kind": "gitlab", "api_url": format!("{}/api/v4", forge.url),
                          "repo": "acme/calc", "token_secret": "GITLAB_TOKEN"},
            }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "Fix median"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let commit = task["attempts"][0]["commit_sha"].as_str().unwrap();

    let opened = kiln(&server, &["task", "pr", &id, "--draft", "--json"]).await;
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    let record: Value = serde_json::from_slice(&opened.stdout).unwrap();
    assert_eq!(record["forge"], "gitlab");
    assert_eq!(
        (record["number"].as_u64(), record["draft"].as_bool()),
        (Some(9), Some(true))
    );
    assert_eq!(
        remote_branch(&root.path().join("calc.git"), &format!("kiln/{id}")),
        commit
    );
    let seen = forge.seen();
    let create = &seen[1];
    assert_eq!(create.method, "POST");
    assert_eq!(create.target, "/api/v4/projects/acme%2Fcalc/merge_requests");
    assert_eq!(
        create.headers["private-token"],
        "glpat-api-token-0123456789"
    );
    assert_eq!(create.body["title"], "Draft: Fix median");
    assert_eq!(create.body["source_branch"], format!("kiln/{id}").as_str());
    assert_eq!(create.body["target_branch"], "main");
    let (_, detail) = server.get(&format!("/api/tasks/{id}"), ADMIN_TOKEN).await;
    assert!(!detail.to_string().contains(password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_refuses_the_branch_is_a_clear_409_and_no_pull_request() {
    let remotes = tempfile::tempdir().unwrap();
    let bare = bare_remote(remotes.path());
    // The remote's own rule, as a protected-branch setting would answer.
    let hook = bare.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'kiln/* branches are protected here' >&2\nexit 1\n",
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&hook).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&hook, permissions).unwrap();
    let model = ScriptedServer::start(Script::new(vec![
        Turn::apply_patch(FIX),
        Turn::message("Fixed."),
    ]))
    .await;
    let forge = StandInForge::start(Vec::new()).await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    let (status, env) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({
                "name": "calc",
                "repo": format!("file://{}", bare.display()),
                "secrets": {"FORGE_TOKEN": FORGE_TOKEN},
                "forge": {"kind": "forgejo", "api_url": forge.url, "repo": "acme/calc",
                          "token_secret": "FORGE_TOKEN"},
            }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "Fix median"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let task = server.wait_finished(ADMIN_TOKEN, &id, LONG).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");

    let (status, body) = server
        .post(&format!("/api/tasks/{id}/pr"), ADMIN_TOKEN, json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "push_rejected");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("kiln/* branches are protected here"),
        "{message}"
    );
    assert!(
        !message.contains(install.data_dir().to_str().unwrap()),
        "{message}"
    );
    assert!(
        forge.seen().is_empty(),
        "no pull request without the branch"
    );
    let (_, detail) = server.get(&format!("/api/tasks/{id}"), ADMIN_TOKEN).await;
    assert!(detail["pull_request"].is_null(), "{detail:#}");
}
