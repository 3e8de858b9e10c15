//! The server side of `kiln worker` (docs/workers.md), through a real
//! `kiln serve --no-local-workers` on SQLite: worker tokens, claims with
//! lease tokens, the calls fenced by them, git over smart HTTP with the
//! lease token, the model pass-through, and `GET /api/workers`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::path::Path;
use std::process::Command as StdCommand;
use std::time::Duration;

use kiln_testkit::{fixtures, Script, ScriptedServer, Turn};
use reqwest::Method;
use serde_json::{json, Value};
use serve_support::{git, mirror_dir, Installation, KilnServer, ADMIN_TOKEN};

const LONG: Duration = Duration::from_secs(60);
const SECRET: &str = "s3cr3t-value-for-setup";

struct Setup {
    server: KilnServer,
    model: ScriptedServer,
    install: Installation,
    repo: tempfile::TempDir,
}

/// `kiln serve --no-local-workers` with an environment `calc` whose setup
/// needs a secret.
async fn server(turns: Vec<Turn>, extra: &[&str]) -> Setup {
    let repo = fixtures::repo("calc-py");
    let model = ScriptedServer::start(Script::new(turns)).await;
    let install = Installation::new();
    let mut args = vec!["--no-local-workers"];
    args.extend_from_slice(extra);
    let server = KilnServer::start_with(&install, &model, 1, &args).await;
    let (status, env) = server
        .post(
            "/api/environments",
            ADMIN_TOKEN,
            json!({
                "name": "calc",
                "repo": repo.path().display().to_string(),
                "setup_script": "echo setup-sees-${#API_SECRET}",
                "env": {"GREETING": "hi"},
                "secrets": {"API_SECRET": SECRET},
            }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    Setup {
        server,
        model,
        install,
        repo,
    }
}

/// A worker token made with `kiln token create --worker` (the real binary).
fn worker_token(server: &KilnServer, name: &str) -> String {
    let output = StdCommand::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["token", "create", "--worker", name])
        .env("KILN_SERVER", &server.url)
        .env("KILN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

async fn claim(server: &KilnServer, token: &str, name: &str, wait_secs: u32) -> (u16, Value) {
    server
        .post(
            "/api/worker/claim",
            token,
            json!({"worker": {"name": name, "version": "0.test"}, "wait_secs": wait_secs}),
        )
        .await
}

fn attempt_path(claim: &Value, tail: &str) -> String {
    format!(
        "/api/worker/attempts/{}/{}/{tail}",
        claim["attempt"]["task_id"].as_str().unwrap(),
        claim["attempt"]["n"]
    )
}

fn warning(seq: u64, message: &str) -> Value {
    json!({"seq": seq, "ts": "2030-01-01T00:00:00Z", "type": "warning", "message": message})
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// git with the lease token in a header from `-c`, never in the URL.
fn git_with_lease(dir: &Path, lease: &str, args: &[&str]) -> std::process::Output {
    StdCommand::new("git")
        .current_dir(dir)
        .arg("-c")
        .arg(format!("http.extraHeader=Authorization: Bearer {lease}"))
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_tokens_are_an_admins_to_make_and_serve_only_the_worker_api() {
    let Setup {
        server,
        model: _model,
        install: _install,
        repo: _repo,
    } = server(vec![], &[]).await;
    let user = server.new_user("alice").await;
    let (status, body) = server
        .post(
            "/api/tokens",
            &user,
            json!({"name": "sneaky", "worker": true}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = server
        .post(
            "/api/tokens",
            ADMIN_TOKEN,
            json!({"name": "both", "worker": true, "admin": true}),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    let worker = worker_token(&server, "box");
    let (_, tokens) = server.get("/api/tokens", ADMIN_TOKEN).await;
    let listed = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "box")
        .unwrap()
        .clone();
    assert_eq!(
        (listed["worker"].clone(), listed["admin"].clone()),
        (json!(true), json!(false))
    );

    // A stolen worker token reads and changes nothing of the users'.
    for (method, path, body) in [
        (Method::GET, "/api/tasks", None),
        (
            Method::POST,
            "/api/tasks",
            Some(json!({"environment": "calc", "prompt": "x"})),
        ),
        (Method::GET, "/api/environments", None),
        (
            Method::POST,
            "/api/environments",
            Some(json!({"name": "e", "repo": "https://example.com/r.git"})),
        ),
        (Method::GET, "/api/tokens", None),
        (
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "more", "admin": true})),
        ),
        (Method::GET, "/api/workers", None),
        (Method::GET, "/api/tasks/t_unknown/events", None),
    ] {
        let (status, answer) = server
            .request(method.clone(), path, Some(&worker), body)
            .await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("kiln worker"),
            "{answer}"
        );
    }
    // And neither a user nor an admin token claims attempts.
    for token in [user.as_str(), ADMIN_TOKEN] {
        let (status, answer) = claim(&server, token, "box", 0).await;
        assert_eq!(status, 403, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--worker"),
            "{answer}"
        );
    }
    // A revoked worker token claims nothing either.
    server.revoke("box").await;
    let (status, answer) = claim(&server, &worker, "box", 0).await;
    assert_eq!(status, 401, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_long_polls_and_hands_out_what_the_worker_needs() {
    let Setup {
        server,
        model,
        install: _install,
        repo,
    } = server(vec![], &[]).await;
    let worker = worker_token(&server, "box");

    let (status, body) = claim(&server, &worker, "box-1", 0).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = claim(&server, &worker, "bad name", 0).await;
    assert_eq!(status, 422, "{body}");

    // A claim waiting when the task arrives is woken by it.
    let waiting = {
        let url = server.url.clone();
        let worker = worker.clone();
        tokio::spawn(async move {
            let answer = reqwest::Client::new()
                .post(format!("{url}/api/worker/claim"))
                .bearer_auth(worker)
                .json(&json!({"worker": {"name": "box-1", "version": "0.test"}, "wait_secs": 30}))
                .send()
                .await
                .unwrap();
            (
                answer.status().as_u16(),
                answer.json::<Value>().await.unwrap(),
            )
        })
    };
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "fix the tests"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let (status, claimed) = tokio::time::timeout(LONG, waiting).await.unwrap().unwrap();
    assert_eq!(status, 200, "{claimed}");

    assert_eq!(claimed["attempt"], json!({"task_id": id, "n": 1}));
    assert_eq!(claimed["lease_token"].as_str().unwrap().len(), 43);
    assert_eq!(claimed["try_number"], 1);
    assert_eq!(claimed["next_seq"], 1);
    assert_eq!(claimed["resume"], false);
    assert_eq!(claimed["prompt"], "fix the tests");
    assert_eq!(claimed["wire_api"], "responses");
    let head = git(repo.path(), &["rev-parse", "HEAD"]);
    assert_eq!(claimed["repository"]["base_commit"], head.as_str());
    assert_eq!(
        claimed["repository"]["branch"],
        format!("kiln/{id}/1").as_str()
    );
    assert_eq!(
        claimed["repository"]["git_path"],
        format!("/api/worker/attempts/{id}/1/git").as_str()
    );
    assert!(!claimed["repository"]["mirror_key"]
        .as_str()
        .unwrap()
        .contains('/'));
    assert_eq!(claimed["sandbox"]["env"], json!({"GREETING": "hi"}));
    // The setup's secrets travel with the attempt that runs the setup.
    assert_eq!(claimed["setup"]["secrets"], json!({"API_SECRET": SECRET}));
    // The model key never does.
    assert!(!claimed.to_string().contains("sk-test-key"), "{claimed}");

    let (_, shown) = server.get(&format!("/api/tasks/{id}"), ADMIN_TOKEN).await;
    assert_eq!(shown["status"], "running", "{shown}");
    let worker_id = shown["attempts"][0]["worker_id"].as_str().unwrap();
    assert!(
        worker_id.starts_with("remote:tok_") && worker_id.ends_with(":box-1"),
        "{worker_id}"
    );
    // Nothing ran here: the server has no local workers.
    assert_eq!(model.turns_served(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_waits_for_a_remote_worker_when_the_server_runs_none() {
    let Setup {
        server,
        model,
        install: _install,
        repo: _repo,
    } = server(vec![Turn::message("done")], &[]).await;
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "look"}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    // Making a worker token runs the `kiln` binary and a request: an
    // in-process pool would have claimed the task and asked the model long
    // before (serve_attempts.rs shows how soon). Here it waits for a worker.
    let worker = worker_token(&server, "box");
    let (_, shown) = server.get(&format!("/api/tasks/{id}"), ADMIN_TOKEN).await;
    assert_eq!(shown["status"], "queued", "{shown}");
    assert_eq!(model.turns_served(), 0);
    let (status, claimed) = claim(&server, &worker, "box", 0).await;
    assert_eq!(status, 200, "{claimed}");
    assert_eq!(claimed["attempt"]["task_id"], id);
    assert_eq!(model.turns_served(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_events_and_finish_go_through_the_lease_and_are_redacted() {
    let Setup {
        server,
        model: _model,
        install: _install,
        repo: _repo,
    } = server(vec![], &[]).await;
    let worker = worker_token(&server, "box");
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "fix", "attempts": 2}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let (_, a) = claim(&server, &worker, "box-1", 0).await;
    let (_, b) = claim(&server, &worker, "box-1", 0).await;
    let lease_a = a["lease_token"].as_str().unwrap().to_string();
    let lease_b = b["lease_token"].as_str().unwrap().to_string();
    assert_eq!(
        (a["attempt"]["n"].clone(), b["attempt"]["n"].clone()),
        (json!(1), json!(2))
    );

    // A's lease token on B's attempt: B does not exist for it.
    let (status, body) = server
        .post(&attempt_path(&b, "heartbeat"), &lease_a, json!({}))
        .await;
    assert_eq!(status, 404, "{body}");
    // The worker token is no lease token.
    let (status, body) = server
        .post(&attempt_path(&a, "heartbeat"), &worker, json!({}))
        .await;
    assert_eq!(status, 401, "{body}");

    // A user's message reaches the worker with its next heartbeat, once.
    let (status, body) = server
        .post(
            &format!("/api/tasks/{id}/messages"),
            ADMIN_TOKEN,
            json!({"text": "mind the edge cases", "attempt": 1}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, beat) = server
        .post(&attempt_path(&a, "heartbeat"), &lease_a, json!({}))
        .await;
    assert_eq!(status, 200, "{beat}");
    assert_eq!(beat["messages"], json!(["mind the edge cases"]));
    assert_eq!(beat["cancel_requested"], false);
    assert_eq!(beat["lease_secs"], 60);
    let (_, beat) = server
        .post(&attempt_path(&a, "heartbeat"), &lease_a, json!({}))
        .await;
    assert_eq!(beat["messages"], json!([]));

    // Events continue the log; the secret a worker let through is redacted.
    let leaked = format!("setup printed {SECRET}");
    let (status, reply) = server
        .post(
            &attempt_path(&a, "events"),
            &lease_a,
            json!({"events": [warning(1, "one"), warning(2, &leaked)]}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["next_seq"], 3);
    let (status, reply) = server
        .post(
            &attempt_path(&a, "events"),
            &lease_a,
            json!({"events": [warning(5, "gap")]}),
        )
        .await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(code(&reply), "conflict");
    // A retry of a batch whose answer was lost is accepted once.
    let (status, reply) = server
        .post(
            &attempt_path(&a, "events"),
            &lease_a,
            json!({"events": [warning(2, &leaked), warning(3, "three")]}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["next_seq"], 4);

    // The workers list shows who runs what.
    let (status, workers) = server.get("/api/workers", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{workers}");
    assert_eq!(workers.as_array().unwrap().len(), 1, "{workers}");
    assert_eq!(workers[0]["name"], "box-1");
    assert_eq!(workers[0]["version"], "0.test");
    assert_eq!(
        workers[0]["running"],
        json!([{"task_id": id, "n": 1}, {"task_id": id, "n": 2}])
    );
    let listed = StdCommand::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["worker", "list"])
        .env("KILN_SERVER", &server.url)
        .env("KILN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        printed.contains("box-1") && printed.contains(&format!("{id}/1")),
        "{printed}"
    );

    // The report's diff is redacted too; the lease ends with the finish.
    let diff = format!("diff --git a/x b/x\n+token = \"{SECRET}\"\n");
    let report = json!({
        "status": "succeeded",
        "final_message": "fixed",
        "usage": {"input_tokens": 10, "cached_input_tokens": 0, "output_tokens": 5},
        "diff": diff,
        "diff_stat": {"files_changed": 1, "insertions": 1, "deletions": 0},
        "branch": format!("kiln/{id}/1"),
    });
    let (status, body) = server
        .post(
            &attempt_path(&a, "finish"),
            &lease_a,
            json!({"report": report}),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = server
        .post(&attempt_path(&a, "heartbeat"), &lease_a, json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(code(&body), "lease_lost");
    let (status, body) = server
        .post(
            &attempt_path(&a, "finish"),
            &lease_a,
            json!({"report": report}),
        )
        .await;
    assert_eq!(status, 409, "{body}");

    let (_, stored_diff) = server
        .get(&format!("/api/tasks/{id}/attempts/1/diff"), ADMIN_TOKEN)
        .await;
    let stored_diff = stored_diff.as_str().unwrap().to_string();
    assert!(stored_diff.contains("+token = "), "{stored_diff}");
    assert!(!stored_diff.contains(SECRET), "{stored_diff}");
    let (_, shown) = server.get(&format!("/api/tasks/{id}"), ADMIN_TOKEN).await;
    assert_eq!(shown["attempts"][0]["status"], "succeeded", "{shown}");

    // B finishes too, so the task's stream ends; then read the whole log.
    let (status, _) = server
        .post(
            &attempt_path(&b, "finish"),
            &lease_b,
            json!({"report": {"status": "failed", "reason": "gave up"}}),
        )
        .await;
    assert_eq!(status, 204);
    let events = server.events(ADMIN_TOKEN, &id, None).await.all(LONG).await;
    let messages: Vec<String> = events
        .iter()
        .filter(|e| e.kind == "warning")
        .map(|e| e.data["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert_eq!(messages[0], "one");
    assert!(
        messages[1].starts_with("setup printed ") && !messages[1].contains(SECRET),
        "{messages:?}"
    );
    assert_eq!(messages[2], "three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_and_the_model_are_served_to_the_lease_holder() {
    let Setup {
        server,
        model,
        install,
        repo: _repo,
    } = server(vec![Turn::message("hello from the model")], &[]).await;
    let worker = worker_token(&server, "box");
    let task = server
        .task(ADMIN_TOKEN, json!({"environment": "calc", "prompt": "fix"}))
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let (_, claimed) = claim(&server, &worker, "box-1", 0).await;
    let lease = claimed["lease_token"].as_str().unwrap().to_string();
    let branch = claimed["repository"]["branch"]
        .as_str()
        .unwrap()
        .to_string();
    let base = claimed["repository"]["base_commit"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!(
        "{}{}",
        server.url,
        claimed["repository"]["git_path"].as_str().unwrap()
    );

    // A real git clone with the lease token in a header.
    let work = tempfile::tempdir().unwrap();
    let cloned = git_with_lease(work.path(), &lease, &["clone", "--quiet", &url, "repo"]);
    assert!(
        cloned.status.success(),
        "{}",
        String::from_utf8_lossy(&cloned.stderr)
    );
    let checkout = work.path().join("repo");
    let refs = git(&checkout, &["branch", "-r"]);
    assert!(refs.contains(&format!("origin/{branch}")), "{refs}");
    assert_eq!(
        git(&checkout, &["rev-parse", &format!("origin/{branch}")]),
        base
    );

    // The worker's commit goes back on the attempt's branch only.
    git(
        &checkout,
        &["checkout", "-q", "-B", "work", &format!("origin/{branch}")],
    );
    std::fs::write(checkout.join("NOTES.md"), "worked remotely\n").unwrap();
    git(&checkout, &["add", "NOTES.md"]);
    git(
        &checkout,
        &[
            "-c",
            "user.name=w",
            "-c",
            "user.email=w@example.com",
            "commit",
            "-qm",
            "remote work",
        ],
    );
    let pushed = git_with_lease(
        &checkout,
        &lease,
        &[
            "push",
            "--quiet",
            "origin",
            &format!("HEAD:refs/heads/{branch}"),
        ],
    );
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let head = git(&checkout, &["rev-parse", "HEAD"]);
    let mirror = mirror_dir(install.data_dir());
    assert_eq!(
        git(&mirror, &["rev-parse", &format!("refs/heads/{branch}")]),
        head
    );
    // A finish must name the commit that is on the branch.
    let bogus = json!({"report": {"status": "succeeded", "branch": "main", "commit_sha": base}});
    let (status, body) = server
        .post(&attempt_path(&claimed, "finish"), &lease, bogus)
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("push the branch"),
        "{body}"
    );
    let refused = git_with_lease(
        &checkout,
        &lease,
        &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
    );
    assert!(!refused.status.success());

    // Neither the worker token nor a made-up one opens the repository.
    for token in [worker.as_str(), "made-up-lease-token"] {
        let denied = git_with_lease(work.path(), token, &["ls-remote", &url]);
        assert!(!denied.status.success());
    }

    // The model: the attempt's model only, with the server's key.
    let model_name = claimed["model"].as_str().unwrap().to_string();
    let answer = server
        .http
        .post(format!(
            "{}{}",
            server.url,
            attempt_path(&claimed, "model/responses")
        ))
        .bearer_auth(&lease)
        .json(&json!({"model": model_name, "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let streamed = answer.text().await.unwrap();
    assert!(streamed.contains("hello from the model"), "{streamed}");
    let seen = model.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("authorization"), Some("Bearer sk-test-key"));
    assert!(!format!("{:?}", seen[0]).contains(&lease));
    let (status, body) = server
        .post(
            &attempt_path(&claimed, "model/responses"),
            &lease,
            json!({"model": "someone-elses-model", "input": "hi"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server
        .post(
            &attempt_path(&claimed, "model/responses"),
            &worker,
            json!({"model": model_name, "input": "hi"}),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let good = json!({"report": {"status": "succeeded", "branch": "main", "commit_sha": head}});
    let (status, body) = server
        .post(&attempt_path(&claimed, "finish"), &lease, good)
        .await;
    assert_eq!(status, 204, "{body}");
    let (_, shown) = server.get(&format!("/api/tasks/{id}"), ADMIN_TOKEN).await;
    assert_eq!(shown["attempts"][0]["branch"], branch.as_str(), "{shown}");
    assert_eq!(shown["attempts"][0]["commit_sha"], head.as_str(), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_attempt_was_taken_back_writes_nothing_more() {
    let Setup {
        server,
        model: _model,
        install: _install,
        repo: _repo,
    } = server(vec![], &["--lease-secs", "2"]).await;
    let worker = worker_token(&server, "box");
    let task = server
        .task(ADMIN_TOKEN, json!({"environment": "calc", "prompt": "fix"}))
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let (_, first) = claim(&server, &worker, "box-1", 0).await;
    let old = first["lease_token"].as_str().unwrap().to_string();
    let (status, _) = server
        .post(
            &attempt_path(&first, "events"),
            &old,
            json!({"events": [warning(1, "first run")]}),
        )
        .await;
    assert_eq!(status, 200);

    // No heartbeats: the sweep takes the attempt back, another claim gets it.
    server
        .wait_task(ADMIN_TOKEN, &id, LONG, |t| {
            t["attempts"][0]["status"] == "interrupted"
        })
        .await;
    let (status, second) = claim(&server, &worker, "box-2", 0).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["attempt"], first["attempt"]);
    assert_eq!(second["try_number"], 2);
    assert_eq!(
        second["next_seq"], 3,
        "the first run's event and the recovery notice stay"
    );
    let new = second["lease_token"].as_str().unwrap().to_string();
    assert_ne!(new, old);

    let (status, body) = server
        .post(&attempt_path(&first, "heartbeat"), &old, json!({}))
        .await;
    assert_eq!((status, code(&body)), (409, "lease_lost"), "{body}");
    let (status, body) = server
        .post(
            &attempt_path(&first, "events"),
            &old,
            json!({"events": [warning(3, "late")]}),
        )
        .await;
    assert_eq!((status, code(&body)), (409, "lease_lost"), "{body}");
    let (status, body) = server
        .post(
            &attempt_path(&first, "finish"),
            &old,
            json!({"report": {"status": "succeeded"}}),
        )
        .await;
    assert_eq!((status, code(&body)), (409, "lease_lost"), "{body}");
    let answer = server
        .http
        .get(format!(
            "{}{}?service=git-upload-pack",
            server.url,
            attempt_path(&first, "git/info/refs")
        ))
        .bearer_auth(&old)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 409);
    let answer = server
        .http
        .post(format!(
            "{}{}",
            server.url,
            attempt_path(&first, "model/responses")
        ))
        .bearer_auth(&old)
        .json(&json!({"model": first["model"], "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 409);

    // The new holder carries on.
    let (status, body) = server
        .post(
            &attempt_path(&second, "events"),
            &new,
            json!({"events": [warning(3, "second run")]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server
        .post(
            &attempt_path(&second, "finish"),
            &new,
            json!({"report": {"status": "succeeded"}}),
        )
        .await;
    assert_eq!(status, 204);
    let events = server.events(ADMIN_TOKEN, &id, None).await.all(LONG).await;
    let text = events
        .iter()
        .map(|e| e.data.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("first run") && text.contains("second run"),
        "{text}"
    );
    assert!(!text.contains("late"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_is_served_the_branch_and_the_first_base() {
    let Setup {
        server,
        model: _model,
        install: _install,
        repo,
    } = server(vec![], &[]).await;
    let worker = worker_token(&server, "box");
    let task = server
        .task(ADMIN_TOKEN, json!({"environment": "calc", "prompt": "fix"}))
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    let (_, first) = claim(&server, &worker, "box-1", 0).await;
    let base = first["repository"]["base_commit"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = server
        .post(
            &attempt_path(&first, "events"),
            first["lease_token"].as_str().unwrap(),
            json!({"events": [
                {"seq": 1, "ts": "2030-01-01T00:00:00Z", "type": "message", "role": "user", "text": "fix"},
                {"seq": 2, "ts": "2030-01-01T00:00:01Z", "type": "message", "role": "assistant", "text": "fixed it"},
            ]}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .post(
            &attempt_path(&first, "finish"),
            first["lease_token"].as_str().unwrap(),
            json!({"report": {"status": "succeeded"}}),
        )
        .await;
    assert_eq!(status, 204);
    // Upstream moves on; the follow-up still measures against the first base.
    std::fs::write(repo.path().join("UPSTREAM.md"), "later\n").unwrap();
    git(repo.path(), &["add", "UPSTREAM.md"]);
    git(
        repo.path(),
        &[
            "-c",
            "user.name=u",
            "-c",
            "user.email=u@example.com",
            "commit",
            "-qm",
            "upstream",
        ],
    );

    let (status, body) = server
        .post(
            &format!("/api/tasks/{id}/messages"),
            ADMIN_TOKEN,
            json!({"text": "also add docs"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, follow_up) = claim(&server, &worker, "box-2", 0).await;
    assert_eq!(status, 200, "{follow_up}");
    assert_eq!(follow_up["resume"], true);
    assert_eq!(follow_up["prompt"], "also add docs");
    assert_eq!(follow_up["repository"]["base_commit"], base.as_str());
    assert!(
        follow_up.get("setup").is_none(),
        "a follow-up gets no setup secrets: {follow_up}"
    );
    let history = follow_up["history"].as_array().unwrap();
    assert!(
        history.iter().any(|e| e["text"] == "fixed it"),
        "{history:?}"
    );
}
