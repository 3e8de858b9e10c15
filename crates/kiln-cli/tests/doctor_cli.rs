//! `kiln doctor` end to end: the built binary checks this machine, its own
//! configuration and a model endpoint over real HTTP (the scripted server,
//! a port nothing listens on, a server that rejects every key).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::Output;

use kiln_testkit::{Script, ScriptedServer};
use serde_json::Value;
use tempfile::TempDir;

const KEY: &str = "sk-doctor-secret-4242";

/// Runs `kiln doctor ARGS` with its own home, `OPENAI_BASE_URL` pointing at
/// `base_url` and the key above in `OPENAI_API_KEY`.
async fn doctor(home: &Path, base_url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("doctor")
        .args(args)
        .current_dir(home)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("KILN_HOME", home)
        .env("OPENAI_BASE_URL", base_url)
        .env("OPENAI_API_KEY", KEY)
        .output()
        .await
        .unwrap()
}

fn report(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|err| panic!("--json prints one JSON object ({err}):\n{stdout}"))
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == name)
        .unwrap_or_else(|| panic!("no `{name}` check in {report}"))
}

/// The exit status follows the checks: 0 exactly when none is a problem.
fn assert_exit_status_matches(output: &Output, report: &Value) {
    let problems = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|check| check["status"] == "problem")
        .count();
    assert_eq!(report["ok"], problems == 0, "{report}");
    let expected = if problems == 0 { 0 } else { 1 };
    assert_eq!(output.status.code(), Some(expected), "{report}");
}

fn assert_key_not_shown(output: &Output) {
    for stream in [&output.stdout, &output.stderr] {
        assert!(
            !String::from_utf8_lossy(stream).contains(KEY),
            "the API key was printed"
        );
    }
}

/// A port nothing listens on: bind, note it, close.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reachable_endpoint_that_accepts_the_key_is_ok() {
    let home = TempDir::new().unwrap();
    let server = ScriptedServer::start(Script::new(vec![])).await;
    let output = doctor(home.path(), &server.base_url(), &["--json"]).await;
    let report = report(&output);

    let model = check(&report, "model endpoint");
    assert_eq!(model["status"], "ok", "{report}");
    let detail = model["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("{}/models", server.base_url())),
        "names the URL: {detail}"
    );
    assert!(detail.contains("OPENAI_API_KEY was accepted"), "{detail}");
    let asked: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|request| request.path == "/v1/models")
        .collect();
    assert_eq!(asked.len(), 1, "one GET /v1/models");
    assert_eq!(asked[0].method, "GET");
    assert_eq!(
        asked[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(check(&report, "config")["status"], "ok", "{report}");
    for name in [
        "git",
        "bubblewrap",
        "user namespaces",
        "seccomp",
        "cgroups",
        "overlay",
    ] {
        let status = check(&report, name)["status"].as_str().unwrap();
        assert!(["ok", "warning", "problem"].contains(&status), "{report}");
    }
    assert_eq!(check(&report, "git")["status"], "ok", "git runs the tests");
    assert_exit_status_matches(&output, &report);
    assert_key_not_shown(&output);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_endpoint_is_a_problem_naming_the_url_and_the_fix() {
    let home = TempDir::new().unwrap();
    let base_url = format!("http://127.0.0.1:{}/v1", dead_port());
    let output = doctor(home.path(), &base_url, &[]).await;

    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|line| line.starts_with("problem  model endpoint:"))
        .unwrap_or_else(|| panic!("no model endpoint problem:\n{text}"));
    assert!(line.contains(&format!("{base_url}/models")), "{line}");
    assert!(
        text.contains("fix: start the model server or correct base_url"),
        "{text}"
    );
    assert!(text.contains("OPENAI_BASE_URL"), "{text}");
    assert_key_not_shown(&output);
}

/// Answers every connection with 401, as a provider does for a bad key.
fn rejecting_server() -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).unwrap();
            if read == 0 {
                break;
            }
            request.extend_from_slice(&buffer[..read]);
        }
        let body = r#"{"error":{"message":"Incorrect API key provided"}}"#;
        write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    });
    (base_url, handle)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_key_is_a_problem_that_names_its_variable_but_not_its_value() {
    let home = TempDir::new().unwrap();
    let (base_url, server) = rejecting_server();
    let output = doctor(home.path(), &base_url, &["--json"]).await;
    server.join().unwrap();
    let report = report(&output);

    let model = check(&report, "model endpoint");
    assert_eq!(model["status"], "problem", "{report}");
    let detail = model["detail"].as_str().unwrap();
    assert!(detail.contains("401"), "{detail}");
    assert!(
        detail.contains("the key in OPENAI_API_KEY was rejected"),
        "{detail}"
    );
    assert!(model["fix"].as_str().unwrap().contains("valid key"));
    assert_eq!(output.status.code(), Some(1));
    assert_key_not_shown(&output);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_config_file_is_named_with_its_fix() {
    let home = TempDir::new().unwrap();
    std::fs::write(home.path().join("config.toml"), "modle = \"gpt-5\"\n").unwrap();
    let server = ScriptedServer::start(Script::new(vec![])).await;
    let output = doctor(home.path(), &server.base_url(), &["--json"]).await;
    let report = report(&output);

    let config = check(&report, "config");
    assert_eq!(config["status"], "problem", "{report}");
    let detail = config["detail"].as_str().unwrap();
    let path = home.path().join("config.toml");
    assert!(detail.contains(&path.display().to_string()), "{detail}");
    assert!(detail.contains("modle"), "{detail}");
    assert!(
        detail.contains("`model`"),
        "suggests the known key: {detail}"
    );
    assert!(config["fix"].as_str().is_some(), "{report}");
    // Nothing is asked of a provider the configuration could not name.
    assert_eq!(check(&report, "model endpoint")["status"], "problem");
    assert!(server.requests().is_empty());
    assert_eq!(output.status.code(), Some(1));
}
