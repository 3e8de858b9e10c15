//! Outgoing webhooks end to end: `kiln serve` POSTs attempt and task
//! completions to a receiver that checks the signature with its own HMAC
//! (Python's `hmac`, not kiln's code), retries on errors, and records each
//! delivery's fate where the environment's owner (only) can list it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use kiln_testkit::{fixtures, scenarios, Script, ScriptedServer, Turn};
use serde_json::{json, Value};
use serve_support::{Installation, KilnServer, ADMIN_TOKEN};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const LONG: Duration = Duration::from_secs(120);
const SECRET: &str = "whsec-test-5f1d0c6a9b8e7d6c";

/// A webhook receiver in Python: answers each delivery's tries with the
/// given codes in turn (the last one repeating), and prints one JSON line
/// per request with what it saw and whether the signature verified.
const RECEIVER: &str = r#"
import hashlib, hmac, http.server, json, sys, threading
lock = threading.Lock()
secret = sys.argv[1].encode()
codes = [int(c) for c in sys.argv[2].split(",")]
tries = {}
class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        given = self.headers.get("X-Kiln-Signature", "")
        delivery = self.headers.get("X-Kiln-Delivery")
        with lock:
            n = tries.get(delivery, 0)
            tries[delivery] = n + 1
        code = codes[min(n, len(codes) - 1)]
        line = json.dumps({
            "path": self.path,
            "event": self.headers.get("X-Kiln-Event"),
            "delivery": delivery,
            "content_type": self.headers.get("Content-Type"),
            "user_agent": self.headers.get("User-Agent"),
            "signature_ok": hmac.compare_digest(expected, given),
            "body": body.decode(),
            "answered": code,
        })
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

struct Receiver {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    url: String,
}

impl Receiver {
    async fn start(codes: &str) -> Receiver {
        let mut child = Command::new("python3")
            .args(["-c", RECEIVER, SECRET, codes])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the webhook receiver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(LONG, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the receiver prints its port");
        Receiver {
            _child: child,
            lines,
            url: format!("http://127.0.0.1:{port}/hooks/kiln"),
        }
    }

    /// The next request the receiver saw.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(LONG, self.lines.next_line())
            .await
            .expect("a webhook request within the deadline")
            .unwrap()
            .unwrap();
        serde_json::from_str(&line).unwrap()
    }
}

/// Creates environment `name` on a fresh copy of calc-py (returned: it must
/// outlive the attempts that clone it) with a webhook to `url`.
async fn hooked_environment(
    server: &KilnServer,
    token: &str,
    name: &str,
    url: &str,
) -> (u16, Value, tempfile::TempDir) {
    let repo = fixtures::repo("calc-py");
    let body = json!({
        "name": name,
        "repo": repo.path().display().to_string(),
        "secrets": {"DEPLOY_KEY": "deploy-key-value-123"},
        "webhook": {"url": url, "secret": SECRET},
    });
    let (status, env) = server.post("/api/environments", token, body).await;
    (status, env, repo)
}

/// Polls the deliveries until `done` holds for them, failing after `timeout`.
async fn wait_deliveries(
    server: &KilnServer,
    env: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + LONG;
    loop {
        let (status, body) = server
            .get(
                &format!("/api/environments/{env}/webhook/deliveries"),
                ADMIN_TOKEN,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let deliveries = body["deliveries"].as_array().unwrap().clone();
        if done(&deliveries) {
            return deliveries;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries never settled: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn settled(deliveries: &[Value], count: usize) -> bool {
    deliveries.len() == count && deliveries.iter().all(|d| d["status"] != "pending")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_are_signed_retried_until_answered_and_listed_for_the_owner_only() {
    let model = ScriptedServer::start(Script::new(
        scenarios::fix_calc_py()
            .turns
            .into_iter()
            .chain([Turn::message("Nothing to change.")])
            .collect(),
    ))
    .await;
    let install = Installation::new();
    let server = KilnServer::start_with(
        &install,
        &model,
        1,
        &["--webhook-retry-delays", "0.05,0.05,0.05"],
    )
    .await;
    let mut flaky = Receiver::start("500,500,200").await;
    let (status, env, _calc) = hooked_environment(&server, ADMIN_TOKEN, "calc", &flaky.url).await;
    assert_eq!(status, 201, "{env}");
    assert_eq!(env["webhook_url"], flaky.url.as_str());
    assert!(!env.to_string().contains(SECRET), "{env}");
    let env_id = env["id"].as_str().unwrap().to_string();

    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "calc", "prompt": "fix median"}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    server.wait_finished(ADMIN_TOKEN, &id, LONG).await;

    let deliveries = wait_deliveries(&server, &env_id, |d| settled(d, 2)).await;
    // Newest first: the task's completion came after its attempt's.
    let events: Vec<&str> = deliveries
        .iter()
        .map(|d| d["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["task.finished", "attempt.finished"]);
    for delivery in &deliveries {
        assert_eq!(delivery["status"], "delivered", "{delivery:#}");
        assert_eq!(delivery["tries"], 3, "{delivery:#}");
        assert_eq!(delivery["response_code"], 200);
        assert_eq!(delivery["url"], flaky.url.as_str());
        assert_eq!(delivery["task_id"], id.as_str());
        assert!(delivery.get("error").is_none(), "{delivery:#}");
    }

    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(flaky.next().await);
    }
    for request in &seen {
        assert_eq!(request["signature_ok"], true, "{request:#}");
        assert_eq!(request["path"], "/hooks/kiln");
        assert_eq!(request["content_type"], "application/json");
        assert!(request["user_agent"]
            .as_str()
            .unwrap()
            .starts_with("kiln-webhooks/"));
        let body = request["body"].as_str().unwrap();
        assert!(
            !body.contains(SECRET) && !body.contains("deploy-key-value"),
            "{body}"
        );
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["event"], request["event"]);
        assert_eq!(
            body["delivery_id"].to_string(),
            request["delivery"].as_str().unwrap()
        );
        assert_eq!(body["task_id"], id.as_str());
        assert_eq!(body["environment_id"], env_id.as_str());
    }
    let attempt = seen
        .iter()
        .find(|r| r["event"] == "attempt.finished")
        .unwrap();
    let body: Value = serde_json::from_str(attempt["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["data"]["attempt"]["status"], "succeeded");
    assert_eq!(body["data"]["attempt"]["diff_stat"]["insertions"], 1);
    assert_eq!(body["data"]["ranking"][0]["attempt"], 1);
    let codes: Vec<u64> = seen
        .iter()
        .filter(|r| r["event"] == "task.finished")
        .map(|r| r["answered"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 200]);

    // Another user does not see the environment's deliveries at all.
    let other = server.new_user("other").await;
    let (status, body) = server
        .get(
            &format!("/api/environments/{env_id}/webhook/deliveries"),
            &other,
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // A receiver that keeps failing: the delivery is given up after the
    // last retry, with the answer recorded.
    let mut broken = Receiver::start("503").await;
    let (status, env, _broken_repo) =
        hooked_environment(&server, ADMIN_TOKEN, "broken", &broken.url).await;
    assert_eq!(status, 201, "{env}");
    let broken_id = env["id"].as_str().unwrap().to_string();
    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": "broken", "prompt": "anything to do?", "mode": "ask"}),
        )
        .await;
    server
        .wait_finished(ADMIN_TOKEN, task["id"].as_str().unwrap(), LONG)
        .await;
    let deliveries = wait_deliveries(&server, &broken_id, |d| settled(d, 2)).await;
    for delivery in &deliveries {
        assert_eq!(delivery["status"], "failed", "{delivery:#}");
        assert_eq!(delivery["tries"], 4, "{delivery:#}");
        assert_eq!(delivery["response_code"], 503);
        assert_eq!(delivery["error"], "the receiver answered HTTP 503");
    }
    for _ in 0..8 {
        assert_eq!(broken.next().await["signature_ok"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_may_point_a_webhook_at_a_loopback_address_and_none_may_put_a_password_in_it()
{
    let model = ScriptedServer::start(Script::new(Vec::new())).await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    let user = server.new_user("someone").await;
    let body = json!({
        "name": "inside",
        // A public address, so that only the webhook's is in question.
        "repo": "https://93.184.215.14/app.git",
        "webhook": {"url": "http://127.0.0.1:9/internal", "secret": SECRET},
    });
    let (status, answer) = server.post("/api/environments", &user, body.clone()).await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer.to_string().contains("only admins may send webhooks"),
        "{answer}"
    );
    let (status, answer) = server.post("/api/environments", ADMIN_TOKEN, body).await;
    assert_eq!(status, 201, "{answer}");

    // A credential in the URL would be shown wherever the URL is: refused.
    let body = json!({
        "name": "with-password",
        "repo": "https://93.184.215.14/app.git",
        "webhook": {"url": "https://kiln:hunter2-password@93.184.215.14/hook", "secret": SECRET},
    });
    let (status, answer) = server.post("/api/environments", ADMIN_TOKEN, body).await;
    assert_eq!(status, 422, "{answer}");
    assert!(!answer.to_string().contains("hunter2"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_who_lost_admin_rights_gets_no_more_deliveries_to_a_loopback_address() {
    let model = ScriptedServer::start(Script::new(vec![Turn::message("Nothing to change.")])).await;
    let install = Installation::new();
    let server = KilnServer::start(&install, &model, 1).await;
    let receiver = Receiver::start("200").await;
    let (status, ops) = server
        .post(
            "/api/tokens",
            ADMIN_TOKEN,
            json!({"name": "ops", "admin": true}),
        )
        .await;
    assert_eq!(status, 201, "{ops}");
    let ops_token = ops["secret"].as_str().unwrap().to_string();
    let (status, env, _repo) = hooked_environment(&server, &ops_token, "calc", &receiver.url).await;
    assert_eq!(status, 201, "{env}");
    let env_id = env["id"].as_str().unwrap().to_string();
    server.revoke("ops").await;

    let task = server
        .task(
            ADMIN_TOKEN,
            json!({"environment": env_id, "prompt": "anything to do?", "mode": "ask"}),
        )
        .await;
    server
        .wait_finished(ADMIN_TOKEN, task["id"].as_str().unwrap(), LONG)
        .await;
    let deliveries = wait_deliveries(&server, &env_id, |d| settled(d, 2)).await;
    for delivery in &deliveries {
        assert_eq!(delivery["status"], "failed", "{delivery:#}");
        assert_eq!(delivery["tries"], 1, "{delivery:#}");
        // No answer recorded: nothing was sent (the receiver answers 200).
        assert!(delivery.get("response_code").is_none(), "{delivery:#}");
        let error = delivery["error"].as_str().unwrap();
        assert!(
            error.contains("only an admin's environment may send"),
            "{error}"
        );
    }
}
