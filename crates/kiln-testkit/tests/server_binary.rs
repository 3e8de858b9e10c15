//! The standalone `kiln-testkit-server` binary: prints its URL first, serves
//! the script, and logs the requests it got when stopped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use kiln_testkit::{Script, Turn};

#[tokio::test]
async fn binary_serves_a_json_script_and_logs_requests() {
    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("script.json");
    let log_path = dir.path().join("requests.jsonl");
    let script = Script::new(vec![Turn::message("from the binary")]);
    std::fs::write(&script_path, serde_json::to_string(&script).unwrap()).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-testkit-server"))
        .arg(&script_path)
        .arg("--requests-log")
        .arg(&log_path)
        .arg("--exit-on-stdin-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let base_url = first_line.trim().to_string();
    assert!(
        base_url.starts_with("http://127.0.0.1:") && base_url.ends_with("/v1"),
        "{base_url}"
    );

    let body = reqwest::Client::new()
        .post(format!("{base_url}/chat/completions"))
        .json(&serde_json::json!({"model": "bench"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains(r#""content":"from""#) && body.ends_with("data: [DONE]\n\n"),
        "{body}"
    );

    let mut stdin = child.stdin.take().unwrap();
    stdin.flush().unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let request: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(request["path"], "/v1/chat/completions");
    assert_eq!(request["body"]["model"], "bench");
}

#[test]
fn binary_rejects_a_bad_script_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("broken.json");
    std::fs::write(&script_path, r#"{"turns": [{"kind": "teleport"}]}"#).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kiln-testkit-server"))
        .arg(&script_path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("broken.json is not a script") && stderr.contains("teleport"),
        "{stderr}"
    );
}
