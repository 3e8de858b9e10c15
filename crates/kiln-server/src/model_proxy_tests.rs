//! kiln-model's own client, pointed at an axum router that mounts
//! [`forward`] as the worker routes do, against kiln-testkit's scripted
//! provider, all over real HTTP.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use kiln_model::{ModelEvent, ModelRequest, RetryPolicy};
use kiln_protocol::Item;
use kiln_testkit::{Script, ScriptedServer, ScriptedToolCall, Turn};
use serde_json::json;

use super::*;

const MODEL: &str = "attempt-model";
const SERVER_KEY: &str = "sk-server-only-4f9a1c";
const LEASE: &str = "lease-token-of-the-worker-77d2";

/// The server's provider: the scripted server, the server's key, one extra header.
fn server_provider(upstream_url: String, wire: WireApi) -> ProviderConfig {
    let mut provider = ProviderConfig::new("scripted", upstream_url, None, wire);
    provider.api_key = Some(SERVER_KEY.to_string());
    provider
        .http_headers
        .insert("x-org".to_string(), "team-kiln".to_string());
    provider.stream_idle_timeout = Duration::from_secs(10);
    provider
}

/// Serves `forward` for `provider` at `/model/...`; returns the base URL a
/// worker's client uses.
async fn pass_through(provider: ProviderConfig) -> String {
    let provider = Arc::new(provider);
    let http = reqwest::Client::new();
    let route = |route: ModelRoute| {
        let provider = provider.clone();
        let http = http.clone();
        post(move |body: Bytes| async move { forward(&http, &provider, route, MODEL, body).await })
    };
    let app = Router::new()
        .route("/model/responses", route(ModelRoute::Responses))
        .route(
            "/model/chat/completions",
            route(ModelRoute::ChatCompletions),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/model", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// kiln-model's client as a worker configures it: the server's model base
/// URL and the lease token as its key.
fn worker_client(proxy_url: &str, wire: WireApi) -> Arc<dyn kiln_model::ModelClient> {
    let mut config = ProviderConfig::new("kiln-server", proxy_url, None, wire);
    config.api_key = Some(LEASE.to_string());
    config.retry = RetryPolicy::immediate();
    config.request_max_retries = 0;
    kiln_model::connect(&config).unwrap()
}

fn request() -> ModelRequest {
    ModelRequest {
        model: MODEL.into(),
        instructions: "You are kiln.".into(),
        input: vec![Item::user("fix the off-by-one")],
        ..ModelRequest::default()
    }
}

async fn run_turn(client: &dyn kiln_model::ModelClient) -> Vec<ModelEvent> {
    let mut stream = client.stream(&request()).await.unwrap();
    let mut events = Vec::new();
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = stream.next().await {
            events.push(event.unwrap());
        }
    })
    .await;
    assert!(drained.is_ok(), "the turn did not end: {events:?}");
    events
}

#[tokio::test]
async fn streamed_answers_of_both_wire_apis_arrive_intact_through_the_server() {
    for wire in [WireApi::Responses, WireApi::Chat] {
        let upstream = ScriptedServer::start(Script::new(vec![
            Turn::message("The median is fixed; tests pass."),
            Turn::tool_calls(vec![ScriptedToolCall::new(
                "shell",
                json!({"command": ["cargo", "test"]}),
            )
            .with_call_id("call_1")]),
        ]))
        .await;
        let proxy = pass_through(server_provider(upstream.base_url(), wire)).await;
        let client = worker_client(&proxy, wire);

        let first = run_turn(client.as_ref()).await;
        let deltas: String = first
            .iter()
            .filter_map(|event| match event {
                ModelEvent::TextDelta(delta) => Some(delta.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deltas, "The median is fixed; tests pass.", "{wire}");
        assert!(
            first
                .iter()
                .filter(|e| matches!(e, ModelEvent::TextDelta(_)))
                .count()
                > 1,
            "{wire}: the text came as one piece, not streamed"
        );
        assert!(
            matches!(first.last(), Some(ModelEvent::Completed { .. })),
            "{wire}"
        );
        let second = run_turn(client.as_ref()).await;
        assert!(
            second.iter().any(|event| matches!(
                event,
                ModelEvent::ItemDone(Item::FunctionCall { call_id, .. }) if call_id == "call_1"
            )),
            "{wire}: {second:?}"
        );

        let seen = upstream.requests();
        assert_eq!(seen.len(), 2, "{wire}");
        for request in seen {
            assert_eq!(
                request.header("authorization"),
                Some(format!("Bearer {SERVER_KEY}").as_str()),
                "{wire}"
            );
            assert_eq!(request.header("x-org"), Some("team-kiln"), "{wire}");
            assert!(
                request
                    .headers
                    .iter()
                    .all(|(_, value)| !value.contains(LEASE)),
                "{wire}: the worker's credential reached the provider: {:?}",
                request.headers
            );
            assert_eq!(request.body["model"], MODEL, "{wire}");
        }
    }
}

#[tokio::test]
async fn the_answer_keeps_its_status_content_type_and_retry_hints() {
    let upstream = ScriptedServer::start(Script::new(vec![
        Turn::message("ok"),
        Turn::http_error_with_retry_after(
            429,
            json!({"error": {"message": "slow down"}}).to_string(),
            Duration::from_millis(1500),
        ),
    ]))
    .await;
    let proxy = pass_through(server_provider(upstream.base_url(), WireApi::Responses)).await;
    let http = reqwest::Client::new();
    let body = json!({"model": MODEL, "input": "hi", "stream": true}).to_string();
    let streamed = http
        .post(format!("{proxy}/responses"))
        .bearer_auth(LEASE)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    assert_eq!(
        streamed.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let text = streamed.text().await.unwrap();
    assert!(text.contains("response.completed"), "{text}");

    let limited = http
        .post(format!("{proxy}/responses"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after-ms"], "1500");
    assert_eq!(limited.headers()["retry-after"], "2");
    assert!(limited.text().await.unwrap().contains("slow down"));
}

#[tokio::test]
async fn a_request_for_another_model_or_api_never_reaches_the_provider() {
    let upstream = ScriptedServer::start(Script::new(vec![Turn::message("never")])).await;
    let proxy = pass_through(server_provider(upstream.base_url(), WireApi::Responses)).await;
    let http = reqwest::Client::new();
    for (path, body, says) in [
        (
            "responses",
            json!({"model": "gpt-expensive", "input": "hi"}).to_string(),
            "gpt-expensive",
        ),
        ("responses", json!({"input": "hi"}).to_string(), "names no"),
        ("responses", json!({"model": 7}).to_string(), "names no"),
        ("responses", "not json".to_string(), "not a JSON object"),
        (
            "chat/completions",
            json!({"model": MODEL, "messages": []}).to_string(),
            "model/responses",
        ),
    ] {
        let answer = http
            .post(format!("{proxy}/{path}"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{body}");
        let text = answer.text().await.unwrap();
        assert!(text.contains(says), "{body}: {text}");
    }
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn an_unreachable_provider_is_a_502_that_names_it_and_not_its_key() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let proxy = pass_through(server_provider(
        format!("http://127.0.0.1:{port}/v1"),
        WireApi::Responses,
    ))
    .await;
    let answer = reqwest::Client::new()
        .post(format!("{proxy}/responses"))
        .body(json!({"model": MODEL, "input": "hi"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 502);
    let text = answer.text().await.unwrap();
    assert!(text.contains("scripted"), "{text}");
    assert!(text.contains("bad_gateway"), "{text}");
    assert!(!text.contains(SERVER_KEY), "{text}");
}

#[tokio::test]
async fn a_provider_error_that_quotes_the_key_reaches_the_worker_redacted() {
    let upstream = ScriptedServer::start(Script::new(vec![Turn::http_error_message(
        401,
        &format!("Incorrect API key provided: {SERVER_KEY}"),
    )]))
    .await;
    let proxy = pass_through(server_provider(upstream.base_url(), WireApi::Responses)).await;
    let answer = reqwest::Client::new()
        .post(format!("{proxy}/responses"))
        .body(json!({"model": MODEL, "input": "hi"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    let text = answer.text().await.unwrap();
    assert!(
        text.contains("Incorrect API key provided: [redacted]"),
        "{text}"
    );
    assert!(!text.contains(SERVER_KEY), "{text}");
}

#[tokio::test]
async fn the_first_events_reach_the_worker_while_the_provider_is_still_answering() {
    // The provider sends two events, then nothing for far longer than the
    // test waits: only a pass-through that streams shows the first ones.
    let upstream = ScriptedServer::start(Script::new(vec![Turn::stall_after(
        2,
        Turn::message("partial answer that keeps coming"),
        Duration::from_secs(600),
    )]))
    .await;
    let proxy = pass_through(server_provider(upstream.base_url(), WireApi::Responses)).await;
    let answer = reqwest::Client::new()
        .post(format!("{proxy}/responses"))
        .body(json!({"model": MODEL, "input": "hi", "stream": true}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let mut body = answer.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(60), body.next())
        .await
        .expect("nothing arrived while the provider was still answering")
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("event:"),
        "{first:?}"
    );
}
