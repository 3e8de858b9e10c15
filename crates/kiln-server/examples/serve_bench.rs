//! Throughput and latency of `kiln serve`'s attempt path, in process, with
//! the testkit model answering instantly and the real sandbox:
//!
//! ```text
//! cargo run --release -p kiln-server --example serve_bench -- [TASKS] [PARALLEL] [SLEEP_SECS]
//! ```
//!
//! Each task has one attempt whose model asks for one command
//! (`sleep SLEEP_SECS`, default 0) and then answers. Reports attempts per
//! minute, the process's peak memory (VmHWM: the server, the model server
//! and this client together), and the time from `POST /api/tasks` to the
//! attempt's `attempt.started` and to its first `exec.begin` (median, p99).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kiln_server::{Server, ServerConfig};
use kiln_store::{Store, StoreOptions};
use kiln_testkit::{fixtures, Script, ScriptedServer, Turn};
use serde_json::{json, Value};

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let tasks = args.first().copied().unwrap_or(50) as usize;
    let parallel = args.get(1).copied().unwrap_or(50) as usize;
    let sleep = args.get(2).copied().unwrap_or(0);

    let repo = fixtures::repo("calc-py");
    // Commands first, answers after: every attempt's first request is
    // answered before any attempt's second one when they all start at once.
    let mut turns: Vec<Turn> = (0..tasks)
        .map(|_| Turn::shell(format!("sleep {sleep}")))
        .collect();
    turns.extend((0..tasks).map(|_| Turn::message("done")));
    let model = ScriptedServer::start(Script::new(turns)).await;

    let data = tempfile::tempdir().unwrap();
    let store = Store::open(StoreOptions::sqlite_in_dir(data.path()).max_connections(16))
        .await
        .unwrap();
    let admin = "bench-admin-token-0123456789abcdef";
    store.ensure_admin_token(Some(admin)).await.unwrap();
    let mut provider = kiln_model::ProviderConfig::openai();
    provider.base_url = model.base_url();
    provider.api_key = Some("sk-bench".into());
    let agent = kiln_agent::AgentConfig::new("bench", kiln_protocol::Mode::Code, data.path());
    let sandbox = kiln_sandbox::SandboxPolicy::for_workspace(data.path());
    let mut config = ServerConfig::new(data.path(), provider, agent, sandbox);
    config.max_parallel = parallel;
    let server = Server::new(store.clone(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(server.serve(listener, shutdown.clone()));
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{url}/api/environments"))
        .bearer_auth(admin)
        .json(&json!({"name": "calc", "repo": repo.path().display().to_string()}))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success());

    let started = Instant::now();
    let mut posted: Vec<(String, DateTime<Utc>)> = Vec::new();
    for i in 0..tasks {
        let at = Utc::now();
        let task: Value = http
            .post(format!("{url}/api/tasks"))
            .bearer_auth(admin)
            .json(&json!({"environment": "calc", "prompt": format!("bench {i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        posted.push((task["id"].as_str().unwrap().to_string(), at));
    }
    let mut peak_in_flight = 0;
    loop {
        let page: Value = http
            .get(format!("{url}/api/tasks?limit=200"))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let all = page["tasks"].as_array().unwrap();
        let running = all.iter().filter(|t| t["status"] == "running").count();
        peak_in_flight = peak_in_flight.max(running);
        let finished = all
            .iter()
            .filter(|t| {
                matches!(
                    t["status"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                )
            })
            .count();
        if finished == tasks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();

    let mut to_start = Vec::new();
    let mut to_command = Vec::new();
    let mut failed = 0;
    for (id, at) in &posted {
        let events = store.events(id, None, 0, 10_000).await.unwrap();
        let first = |kind: &str| {
            events
                .iter()
                .find(|e| e.kind == kind)
                .and_then(|e| e.event().ok())
                .map(|e| (e.ts - *at).to_std().unwrap_or_default())
        };
        if let Some(d) = first("attempt.started") {
            to_start.push(d);
        }
        if let Some(d) = first("exec.begin") {
            to_command.push(d);
        }
        if events
            .iter()
            .any(|e| e.json.contains("\"status\":\"failed\""))
        {
            failed += 1;
        }
    }
    println!("tasks {tasks}, workers {parallel}, command `sleep {sleep}`; {failed} failed");
    println!(
        "wall {:.2}s, {:.0} attempts/minute, peak running {peak_in_flight}",
        elapsed.as_secs_f64(),
        tasks as f64 / elapsed.as_secs_f64() * 60.0
    );
    println!("peak memory (whole process) {}", peak_memory());
    report("POST -> attempt.started", &mut to_start);
    report("POST -> first exec.begin", &mut to_command);
    shutdown.cancel();
    let _ = running.await;
}

fn report(what: &str, samples: &mut [Duration]) {
    if samples.is_empty() {
        println!("{what}: no samples");
        return;
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: median {:.0} ms, p99 {:.0} ms ({} samples)",
        at(0.5).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0,
        samples.len()
    );
}

fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(str::to_string)
        })
        .map(|l| l.replace("VmHWM:", "").trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
