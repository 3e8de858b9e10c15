//! `kiln task logs -f` against a stand-in server that sends a given event
//! stream over real HTTP: the exit status says how the task ended, and a
//! hostile stream or task id cannot make the client misbehave.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;
use std::sync::{Arc, Mutex};

use kiln_protocol::api::{AttemptEvent, TaskStatus, TaskStatusFrame};
use kiln_protocol::{AttemptStatus, Event, EventKind, Usage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the stand-in server sends after the response head.
#[derive(Clone)]
enum Body {
    Text(String),
    /// `data: ` and then `a` forever, never a line end.
    EndlessLine,
}

/// Serves `body` as `text/event-stream` to every request, recording each
/// request line.
async fn stand_in(body: Body) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let body = body.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                seen.lock()
                    .unwrap()
                    .push(head.lines().next().unwrap_or_default().to_string());
                let mut reply = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n".to_vec();
                match body {
                    Body::Text(text) => {
                        reply.extend_from_slice(text.as_bytes());
                        let _ = socket.write_all(&reply).await;
                    }
                    Body::EndlessLine => {
                        reply.extend_from_slice(b"data: ");
                        let _ = socket.write_all(&reply).await;
                        let chunk = vec![b'a'; 64 * 1024];
                        // Until the client hangs up.
                        while socket.write_all(&chunk).await.is_ok() {}
                    }
                }
            });
        }
    });
    (url, requests)
}

fn event_frame(id: i64, kind: EventKind) -> String {
    let event = AttemptEvent {
        attempt: 1,
        event: Event::new(id as u64, kind),
    };
    format!(
        "id: {id}\r\nevent: attempt.finished\r\ndata: {}\r\n\r\n",
        serde_json::to_string(&event).unwrap()
    )
}

fn status_frame(status: TaskStatus) -> String {
    let frame = TaskStatusFrame::new("t_1", status);
    // Split over two data lines, as a server may.
    let json = serde_json::to_string_pretty(&frame).unwrap();
    let data: String = json.lines().map(|l| format!("data: {l}\n")).collect();
    format!(": keep-alive\n\nevent: task.status\n{data}\n")
}

fn finished(status: AttemptStatus, message: &str) -> String {
    event_frame(
        2,
        EventKind::AttemptFinished {
            status,
            reason: None,
            final_message: Some(message.into()),
            usage: Usage::default(),
            cost_usd: None,
        },
    )
}

async fn logs(url: &str, id: &str, json: bool) -> Output {
    let mut args = vec!["task", "logs", "-f", id];
    if json {
        args.push("--json");
    }
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KILN_SERVER", url)
        .env("KILN_TOKEN", "kiln-test-token-0123456789abcdef")
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn following_a_task_exits_0_when_it_succeeded_1_when_it_failed_and_130_when_cancelled() {
    let cases = [
        (TaskStatus::Succeeded, AttemptStatus::Succeeded, Some(0)),
        (TaskStatus::Failed, AttemptStatus::Failed, Some(1)),
        (TaskStatus::Cancelled, AttemptStatus::Cancelled, Some(130)),
    ];
    for (task_status, attempt_status, code) in cases {
        let stream = [
            status_frame(TaskStatus::Running),
            finished(attempt_status, "all done"),
            status_frame(task_status),
        ]
        .concat();
        let (url, _) = stand_in(Body::Text(stream)).await;
        let output = logs(&url, "t_1", false).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), code, "{task_status}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "all done");
        assert!(
            stderr.contains(&format!("task t_1 {task_status}")),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn json_output_prints_every_frame_as_the_server_sent_it() {
    let stream = [
        status_frame(TaskStatus::Running),
        finished(AttemptStatus::Succeeded, "ok"),
        status_frame(TaskStatus::Succeeded),
    ]
    .concat();
    let (url, _) = stand_in(Body::Text(stream)).await;
    let output = logs(&url, "t_1", true).await;
    assert_eq!(output.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["task.status", "attempt.finished", "task.status"]);
    assert_eq!(lines[2]["status"], "succeeded");
}

#[tokio::test]
async fn a_stream_that_ends_before_the_task_finished_is_an_error_that_says_so() {
    let stream = [
        status_frame(TaskStatus::Running),
        finished(AttemptStatus::Succeeded, "ok"),
    ]
    .concat();
    let (url, _) = stand_in(Body::Text(stream)).await;
    let output = logs(&url, "t_1", false).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("before the task finished"), "{stderr}");
    assert!(stderr.contains("kiln task logs -f t_1"), "{stderr}");
}

#[tokio::test]
async fn a_line_that_never_ends_is_refused_instead_of_filling_memory() {
    let (url, _) = stand_in(Body::EndlessLine).await;
    let output = logs(&url, "t_1", false).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("larger than"), "{stderr}");
}

#[tokio::test]
async fn a_frame_that_is_not_a_kiln_event_is_an_error_naming_it() {
    let stream = "id: 1\nevent: exec.begin\ndata: {\"not\":\"an event\"}\n\n".to_string();
    let (url, _) = stand_in(Body::Text(stream)).await;
    let output = logs(&url, "t_1", false).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("\"exec.begin\" frame"), "{stderr}");
}

#[tokio::test]
async fn a_task_id_is_one_path_segment_and_cannot_reach_another_route() {
    let stream = status_frame(TaskStatus::Succeeded);
    let (url, requests) = stand_in(Body::Text(stream)).await;
    let output = logs(&url, "../../tokens?x=", false).await;
    assert_eq!(output.status.code(), Some(0));
    let requests = requests.lock().unwrap().clone();
    assert_eq!(
        requests,
        ["GET /api/tasks/..%2F..%2Ftokens%3Fx=/events?follow=true HTTP/1.1"]
    );
    for dots in ["..", ".", ""] {
        let refused = logs(&url, dots, false).await;
        assert_eq!(refused.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("is not an id"), "{stderr}");
    }
    assert_eq!(requests.len(), 1, "nothing more was requested");
}
