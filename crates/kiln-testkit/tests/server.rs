//! The scripted server over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kiln_testkit::{Script, ScriptedServer, Turn, WireApi};
use serde_json::{json, Value};

async fn post(url: String, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .bearer_auth("sk-test")
        .json(&body)
        .send()
        .await
        .expect("server reachable")
}

fn data_lines(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect()
}

#[tokio::test]
async fn responses_endpoint_streams_a_tool_call_then_a_message() {
    let server = ScriptedServer::start(Script::new(vec![
        Turn::tool_call("shell", json!({"command": ["ls"]})),
        Turn::message("done"),
    ]))
    .await;
    assert!(server.base_url().ends_with("/v1"));
    let first = post(
        format!("{}/responses", server.base_url()),
        json!({"model": "m1"}),
    )
    .await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-type"], "text/event-stream");
    let body = first.text().await.unwrap();
    let events: Vec<Value> = data_lines(&body)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let call = events
        .iter()
        .find(|e| e["type"] == "response.output_item.done")
        .expect("a finished item");
    assert_eq!(call["item"]["name"], "shell");
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    assert_eq!(events.last().unwrap()["response"]["model"], "m1");

    let second = post(
        format!("{}/responses", server.base_url()),
        json!({"model": "m1"}),
    )
    .await;
    let body = second.text().await.unwrap();
    let text: String = data_lines(&body)
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "done");
    assert_eq!(server.turns_served(), 2);
    assert_eq!(server.turns_remaining(), 0);
}

#[tokio::test]
async fn chat_endpoint_answers_with_and_without_v1_prefix() {
    let server = ScriptedServer::start(Script::new(vec![
        Turn::message("one"),
        Turn::message("two"),
    ]))
    .await;
    let with_prefix = post(format!("{}/chat/completions", server.base_url()), json!({}))
        .await
        .text()
        .await
        .unwrap();
    assert!(with_prefix.ends_with("data: [DONE]\n\n"));
    assert!(with_prefix.contains("chat.completion.chunk"));
    let bare = format!("http://{}/chat/completions", server.addr());
    let without_prefix = post(bare, json!({})).await.text().await.unwrap();
    let text: String = data_lines(&without_prefix)
        .iter()
        .filter(|d| **d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "two");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].path, "/chat/completions");
    assert_eq!(requests[1].wire_api(), Some(WireApi::Chat));
}

#[tokio::test]
async fn requests_are_recorded_with_headers_and_body() {
    let server = ScriptedServer::start(Script::new(vec![Turn::message("ok")])).await;
    post(
        format!("{}/responses?api-version=1", server.base_url()),
        json!({"model": "gpt", "input": [{"type": "message"}]}),
    )
    .await
    .text()
    .await
    .unwrap();
    let request = &server.requests()[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/responses");
    assert_eq!(request.query.as_deref(), Some("api-version=1"));
    assert_eq!(request.header("Authorization"), Some("Bearer sk-test"));
    assert_eq!(request.body["input"][0]["type"], "message");
}

#[tokio::test]
async fn exhausted_script_answers_500_naming_the_count() {
    let server = ScriptedServer::start(Script::new(vec![Turn::message("only")])).await;
    post(format!("{}/responses", server.base_url()), json!({}))
        .await
        .text()
        .await
        .unwrap();
    let extra = post(format!("{}/responses", server.base_url()), json!({})).await;
    assert_eq!(extra.status(), 500);
    let body: Value = extra.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "kiln-testkit: script exhausted after 1 turns"
    );
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn http_error_turn_sends_status_body_and_retry_headers() {
    let server = ScriptedServer::start(Script::new(vec![Turn::http_error_with_retry_after(
        429,
        r#"{"error":{"message":"slow down"}}"#,
        Duration::from_millis(250),
    )]))
    .await;
    let answer = post(format!("{}/chat/completions", server.base_url()), json!({})).await;
    assert_eq!(answer.status(), 429);
    assert_eq!(answer.headers()["retry-after"], "1");
    assert_eq!(answer.headers()["retry-after-ms"], "250");
    assert_eq!(
        answer.text().await.unwrap(),
        r#"{"error":{"message":"slow down"}}"#
    );
}

#[tokio::test]
async fn cut_turn_ends_the_body_before_completion() {
    let server = ScriptedServer::start(Script::new(vec![Turn::cut_after(
        3,
        Turn::message("a long answer"),
    )]))
    .await;
    let body = post(format!("{}/responses", server.base_url()), json!({}))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(data_lines(&body).len(), 3);
    assert!(!body.contains("response.completed"));
}

#[tokio::test]
async fn fragmented_turn_delivers_the_same_bytes() {
    let server = ScriptedServer::start(Script::new(vec![
        Turn::message("same text"),
        Turn::fragmented(Turn::message("same text"), 7),
    ]))
    .await;
    let whole = post(format!("{}/chat/completions", server.base_url()), json!({}))
        .await
        .text()
        .await
        .unwrap();
    let pieces = post(format!("{}/chat/completions", server.base_url()), json!({}))
        .await
        .text()
        .await
        .unwrap();
    // Only the turn number differs (it is in the chunk id).
    assert_eq!(
        whole.replace("chatcmpl-kiln-1", "X"),
        pieces.replace("chatcmpl-kiln-2", "X")
    );
}

#[tokio::test]
async fn unknown_route_is_a_recorded_404() {
    let server = ScriptedServer::start(Script::new(vec![])).await;
    let answer = reqwest::get(format!("{}/embeddings", server.base_url()))
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    assert_eq!(server.requests()[0].path, "/v1/embeddings");
    assert_eq!(server.turns_served(), 0);
}

#[tokio::test]
async fn models_lists_the_scripted_model_and_records_the_request() {
    let server = ScriptedServer::start(Script::new(vec![Turn::message("kept")])).await;
    let answer = reqwest::Client::new()
        .get(format!("{}/models", server.base_url()))
        .bearer_auth("sk-listed")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["data"][0]["id"], "kiln-testkit");
    let request = &server.requests()[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("GET", "/v1/models")
    );
    assert_eq!(request.header("authorization"), Some("Bearer sk-listed"));
    assert_eq!(server.turns_remaining(), 1, "listing models serves no turn");
}

#[tokio::test]
async fn delayed_turn_holds_back_even_the_headers() {
    let server = ScriptedServer::start(Script::new(vec![Turn::delayed(
        Turn::message("late"),
        Duration::from_millis(200),
    )]))
    .await;
    let started = std::time::Instant::now();
    let answer = post(format!("{}/responses", server.base_url()), json!({})).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn wait_for_requests_returns_once_they_arrived_and_reports_a_shortfall() {
    let server =
        ScriptedServer::start(Script::new(vec![Turn::message("a"), Turn::message("b")])).await;
    let url = format!("{}/responses", server.base_url());
    let client = tokio::spawn(async move {
        for _ in 0..2 {
            post(url.clone(), json!({})).await.text().await.unwrap();
        }
    });
    server
        .wait_for_requests(2, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 2);
    client.await.unwrap();
    let shortfall = server
        .wait_for_requests(3, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(
        shortfall.contains("2 of 3 expected requests"),
        "{shortfall}"
    );
}

#[tokio::test]
async fn a_held_turn_answers_only_once_its_gate_is_released() {
    let server = ScriptedServer::start(Script::new(vec![
        Turn::held(Turn::message("after the release"), "go"),
        Turn::message("not held"),
    ]))
    .await;
    let url = format!("{}/responses", server.base_url());
    let (answered_tx, mut answered_rx) = tokio::sync::mpsc::unbounded_channel();
    let held = tokio::spawn({
        let url = url.clone();
        let answered_tx = answered_tx.clone();
        async move {
            let text = post(url, json!({})).await.text().await.unwrap();
            answered_tx.send("held").unwrap();
            text
        }
    });
    server
        .wait_for_requests(1, Duration::from_secs(10))
        .await
        .unwrap();
    // A later request is answered while the held one still waits.
    let free = post(url, json!({})).await.text().await.unwrap();
    assert!(free.contains("not held"), "{free}");
    assert!(
        answered_rx.try_recv().is_err(),
        "the held turn answered before its release"
    );
    server.release("go");
    let text = held.await.unwrap();
    assert!(text.contains("after the release"), "{text}");
    assert_eq!(answered_rx.recv().await, Some("held"));
}
