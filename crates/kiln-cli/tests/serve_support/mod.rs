//! A `kiln serve` process for end-to-end tests: the built binary on a free
//! port, its own data dir and home, the scripted model server, and helpers
//! that talk to it over real HTTP and wait for conditions with deadlines.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use kiln_protocol::api::{TaskStatus, TaskStreamItem};
use kiln_protocol::sse::{SseFrame, SseParser};
use kiln_testkit::ScriptedServer;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const ADMIN_TOKEN: &str = "kiln-test-admin-token-0123456789";

/// A data directory and home that outlive server restarts.
pub struct Installation {
    pub data: TempDir,
    pub home: TempDir,
}

impl Installation {
    pub fn new() -> Self {
        Installation {
            data: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }
}

pub struct KilnServer {
    child: Child,
    pub url: String,
    pub http: reqwest::Client,
}

impl KilnServer {
    /// Starts `kiln serve` and waits (30 s at most) until it listens.
    pub async fn start(install: &Installation, model: &ScriptedServer, max_parallel: u32) -> Self {
        Self::start_with(install, model, max_parallel, &[]).await
    }

    /// [`KilnServer::start`] with extra `kiln serve` arguments.
    pub async fn start_with(
        install: &Installation,
        model: &ScriptedServer,
        max_parallel: u32,
        extra: &[&str],
    ) -> Self {
        Self::start_with_env(install, model, max_parallel, extra, &[]).await
    }

    /// [`KilnServer::start_with`] with extra environment variables; an
    /// `--addr` among `extra` replaces the free port.
    pub async fn start_with_env(
        install: &Installation,
        model: &ScriptedServer,
        max_parallel: u32,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let addr = if extra.contains(&"--addr") {
            &[][..]
        } else {
            &["--addr", "127.0.0.1:0"][..]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("serve")
            .args(addr)
            .arg("--max-parallel")
            .arg(max_parallel.to_string())
            .args(extra)
            .arg("--data-dir")
            .arg(install.data.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", install.home.path())
            .env("KILN_HOME", install.home.path())
            .env("OPENAI_BASE_URL", model.base_url())
            .env("OPENAI_API_KEY", "sk-test-key")
            .env("KILN_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start kiln serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    return rest.split_whitespace().next().unwrap().to_string();
                }
            }
            panic!("kiln serve exited before listening");
        })
        .await
        .expect("kiln serve listens within 30 s");
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        KilnServer {
            child,
            url,
            http: reqwest::Client::new(),
        }
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    pub async fn kill9(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then the exit status (30 s at most).
    pub async fn terminate(self) -> std::process::ExitStatus {
        self.send_sigterm();
        self.wait_exit().await
    }

    /// SIGTERM, without waiting: the server drains and exits.
    pub fn send_sigterm(&self) {
        let pid = self.child.id().expect("a running server") as i32;
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    /// The exit status, once the server exits (30 s at most).
    pub async fn wait_exit(mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("kiln serve exits within 30 s of SIGTERM")
            .unwrap()
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// `kiln ARGS` as a client of this server with `token`: nothing of the
    /// test's environment but `PATH`, no colour.
    pub async fn cli(&self, token: &str, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KILN_SERVER", &self.url)
            .env("KILN_TOKEN", token)
            .env("NO_COLOR", "1")
            .output()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    /// Creates environment `name` for the repository at `repo`.
    pub async fn environment(&self, token: &str, name: &str, repo: &Path) -> Value {
        let (status, env) = self
            .post(
                "/api/environments",
                token,
                json!({ "name": name, "repo": repo.display().to_string() }),
            )
            .await;
        assert_eq!(status, 201, "{env}");
        env
    }

    pub async fn task(&self, token: &str, body: Value) -> Value {
        let (status, task) = self.post("/api/tasks", token, body).await;
        assert_eq!(status, 201, "{task}");
        task
    }

    /// Polls the task until `done` holds, failing after `timeout`.
    pub async fn wait_task(
        &self,
        token: &str,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, task) = self.get(&format!("/api/tasks/{id}"), token).await;
            assert_eq!(status, 200, "{task}");
            if done(&task) {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} did not reach the expected state in {timeout:?}: {task:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_finished(&self, token: &str, id: &str, timeout: Duration) -> Value {
        self.wait_task(token, id, timeout, |t| {
            matches!(
                t["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled" | "checks_failed")
            )
        })
        .await
    }

    /// A new non-admin token named `name`, made with the admin token.
    pub async fn new_user(&self, name: &str) -> String {
        let (status, token) = self
            .post("/api/tokens", ADMIN_TOKEN, json!({ "name": name }))
            .await;
        assert_eq!(status, 201, "{token}");
        token["secret"].as_str().unwrap().to_string()
    }

    /// Revokes the token named `name` with the admin token.
    pub async fn revoke(&self, name: &str) {
        let (_, tokens) = self.get("/api/tokens", ADMIN_TOKEN).await;
        let id = tokens["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name && t["revoked_at"].is_null())
            .unwrap_or_else(|| panic!("no live token {name}: {tokens}"))["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, body) = self
            .request(
                reqwest::Method::DELETE,
                &format!("/api/tokens/{id}"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Asks for the SSE stream of a task and returns the answer as it is
    /// (an open stream, or a refusal).
    pub async fn events_response(&self, token: &str, id: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/api/tasks/{id}/events", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Opens the SSE stream of a task.
    pub async fn events(&self, token: &str, id: &str, last_event_id: Option<i64>) -> SseReader {
        let mut request = self
            .http
            .get(format!("{}/api/tasks/{id}/events", self.url))
            .bearer_auth(token);
        if let Some(last) = last_event_id {
            request = request.header("Last-Event-ID", last.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        SseReader {
            response,
            parser: SseParser::new(),
            ready: VecDeque::new(),
            statuses: Vec::new(),
        }
    }
}

/// One stored event as the server streamed it.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: i64,
    pub kind: String,
    pub data: Value,
}

/// A task's event stream, read with kiln's own SSE parser.
pub struct SseReader {
    response: reqwest::Response,
    parser: SseParser,
    /// Decoded frames with their `event:` and `data:` as sent.
    ready: VecDeque<(TaskStreamItem, SseFrame)>,
    /// The `task.status` frames [`SseReader::next`] passed, in order.
    pub statuses: Vec<TaskStatus>,
}

impl SseReader {
    /// The next frame, stored event or task status, or `None` when the
    /// stream ended.
    pub async fn next_item(&mut self, timeout: Duration) -> Option<TaskStreamItem> {
        Some(self.next_frame(timeout).await?.0)
    }

    async fn next_frame(&mut self, timeout: Duration) -> Option<(TaskStreamItem, SseFrame)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(decoded) = self.ready.pop_front() {
                return Some(decoded);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(remaining, self.response.chunk())
                .await
                .expect("an SSE frame within the deadline")
                .unwrap()?;
            for frame in self.parser.feed(&chunk).unwrap() {
                let item =
                    TaskStreamItem::from_frame(&frame).unwrap_or_else(|e| panic!("{e}: {frame:?}"));
                self.ready.push_back((item, frame));
            }
        }
    }

    /// The next stored event (task statuses on the way are kept in
    /// `statuses`), or `None` when the stream ended.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        loop {
            match self.next_frame(timeout).await? {
                (TaskStreamItem::Status(status), _) => self.statuses.push(status.status),
                (TaskStreamItem::Event { id, .. }, frame) => {
                    return Some(SseEvent {
                        id,
                        kind: frame.event,
                        data: serde_json::from_str(&frame.data).unwrap(),
                    })
                }
            }
        }
    }

    /// Whether the server ends the stream within `timeout` (events that
    /// arrive meanwhile are skipped); `false` if it is still open then.
    pub async fn ended_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.response.chunk()).await {
                Err(_) => return false,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None) | Err(_)) => return true,
            }
        }
    }

    /// Reads until an event of `kind` arrives.
    pub async fn until(&mut self, kind: &str, timeout: Duration) -> SseEvent {
        loop {
            let event = self
                .next(timeout)
                .await
                .unwrap_or_else(|| panic!("the stream ended before a {kind} event"));
            if event.kind == kind {
                return event;
            }
        }
    }

    /// Every remaining event until the stream ends.
    pub async fn all(mut self, timeout: Duration) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next(timeout).await {
            events.push(event);
        }
        events
    }
}

/// The single mirror under the data directory (`mirrors/<owner>/<repo>`).
pub fn mirror_dir(data: &Path) -> PathBuf {
    let mut dirs = mirror_dirs(data);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.remove(0)
}

/// Every mirror under the data directory, one per owner and repository.
pub fn mirror_dirs(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data.join("mirrors"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .flat_map(|owner| std::fs::read_dir(owner).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.join(".git").exists())
        .collect()
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// base64 of `bytes` (standard alphabet, padded), written out here so the
/// test does not share kiln's encoder.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A `kiln worker` process with its own data directory and home.
pub struct KilnWorker {
    pub name: String,
    pub child: Child,
    pub data: TempDir,
    pub home: TempDir,
}

impl KilnWorker {
    pub fn start(server: &KilnServer, token: &str, name: &str, max_parallel: u32) -> Self {
        Self::start_with(server, token, name, max_parallel, &[])
    }

    pub fn start_with(
        server: &KilnServer,
        token: &str,
        name: &str,
        max_parallel: u32,
        extra: &[&str],
    ) -> Self {
        let data = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["worker", "--server", &server.url, "--name", name])
            .args(["--max-parallel", &max_parallel.to_string()])
            .args(extra)
            .arg("--data-dir")
            .arg(data.path())
            // Only what a worker machine has: no model key, no model URL.
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("KILN_HOME", home.path())
            .env("KILN_TOKEN", token)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start kiln worker");
        KilnWorker {
            name: name.to_string(),
            child,
            data,
            home,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("a running worker")
    }

    /// Whether `cwd` (an `attempt.started` event's) is a checkout of this worker.
    pub fn ran_in(&self, cwd: &str) -> bool {
        let data = self.data.path().canonicalize().unwrap();
        Path::new(cwd).starts_with(&data) || Path::new(cwd).starts_with(self.data.path())
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, signal) }, 0);
    }

    /// SIGKILL: no shutdown code runs, as when a machine dies.
    pub async fn kill9(&mut self) {
        self.child.kill().await.unwrap();
    }
}

/// A worker token made by the admin.
pub async fn worker_token(server: &KilnServer, name: &str) -> String {
    let (status, token) = server
        .post(
            "/api/tokens",
            ADMIN_TOKEN,
            json!({"name": name, "worker": true}),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    token["secret"].as_str().unwrap().to_string()
}
