//! A provider that fails: transient failures retry the turn with a warning,
//! permanent ones end the attempt with the provider's message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use kiln_agent::history_from_events;
use kiln_protocol::{AttemptStatus, EventKind, Mode};
use kiln_testkit::Turn;

#[tokio::test]
async fn server_error_then_success_is_retried_and_the_attempt_succeeds() {
    let harness = Harness::new(
        Mode::Code,
        vec![
            Turn::shell("python3 -m unittest -q"),
            Turn::http_error_message(
                500,
                "The server had an error while processing your request.",
            ),
            Turn::message("Two median tests fail 【t1†L1】."),
        ],
    )
    .await;
    let outcome = harness.run("Are the tests green?").await;
    let events = harness.events();

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert_eq!(harness.requests().len(), 3);
    // The retried request is the same turn: same input as the failed one.
    let requests = harness.requests();
    assert_eq!(requests[1].body["input"], requests[2].body["input"]);
    assert_eq!(history_from_events(&events), outcome.history);
}

#[tokio::test]
async fn stream_cut_mid_way_retries_the_turn_without_keeping_partial_items() {
    let harness = Harness::new(
        Mode::Code,
        vec![
            // The connection drops after a few events of a message-then-call turn.
            Turn::cut_after(
                4,
                Turn::message_then_tool_call(
                    "Let me run the tests.",
                    "shell",
                    serde_json::json!({"command": ["bash", "-lc", "python3 -m unittest -q"]}),
                ),
            ),
            Turn::message_then_tool_call(
                "Let me run the tests.",
                "shell",
                serde_json::json!({"command": ["bash", "-lc", "python3 -m unittest -q"]}),
            ),
            Turn::message("The median tests fail 【t1†L1】."),
        ],
    )
    .await;
    let outcome = harness.run("Run the tests.").await;
    let events = harness.events();

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert!(warnings(&events).iter().any(|w| w.contains("retrying")));
    let assistant_messages = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Message { text, .. } if text == "Let me run the tests."))
        .count();
    assert_eq!(
        assistant_messages, 1,
        "the cut turn leaves no message behind"
    );
    let calls = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ToolCall { .. }))
        .count();
    assert_eq!(calls, 1, "the command ran once");
    assert_eq!(history_from_events(&events), outcome.history);
}

#[tokio::test]
async fn a_permanent_error_fails_the_attempt_with_the_providers_message() {
    let harness = Harness::new(
        Mode::Code,
        vec![Turn::http_error_message(
            401,
            "Incorrect API key provided: sk-test. You can find your API key at https://platform.openai.com/account/api-keys.",
        )],
    )
    .await;
    let outcome = harness.run("Anything.").await;
    let events = harness.events();

    assert_eq!(outcome.status, AttemptStatus::Failed);
    let reason = outcome.reason.unwrap();
    assert!(reason.contains("401"), "{reason}");
    assert!(reason.contains("Incorrect API key provided"), "{reason}");
    assert_eq!(harness.requests().len(), 1, "a 401 is not retried");
    assert!(events.iter().any(
        |e| matches!(&e.kind, EventKind::Error { message } if message.contains("Incorrect API key"))
    ));
}

#[tokio::test]
async fn a_request_that_never_streams_is_retried_only_by_the_client() {
    let failing = Turn::http_error_message(503, "overloaded");
    let mut harness = Harness::new(
        Mode::Code,
        vec![failing.clone(), failing.clone(), failing.clone(), failing],
    )
    .await;
    harness.provider.request_max_retries = 1;
    harness.provider.stream_max_retries = 2;
    let outcome = harness.run("Anything.").await;

    assert_eq!(outcome.status, AttemptStatus::Failed);
    let reason = outcome.reason.unwrap();
    assert!(reason.contains("503"), "{reason}");
    // One request and the client's one retry; the turn is not retried on top.
    assert_eq!(harness.requests().len(), 2);
}

#[tokio::test]
async fn broken_streams_are_retried_up_to_the_providers_stream_retries() {
    let broken = Turn::cut_after(2, Turn::message("This answer never completes."));
    let mut harness = Harness::new(
        Mode::Code,
        vec![broken.clone(), broken.clone(), broken.clone(), broken],
    )
    .await;
    harness.provider.stream_max_retries = 2;
    let outcome = harness.run("Anything.").await;
    let events = harness.events();

    assert_eq!(outcome.status, AttemptStatus::Failed);
    let reason = outcome.reason.unwrap();
    assert!(
        reason.starts_with("model request failed after 2 retries: "),
        "{reason}"
    );
    assert_eq!(harness.requests().len(), 3);
    let retry_warnings = warnings(&events)
        .into_iter()
        .filter(|w| w.contains("retrying"))
        .count();
    assert_eq!(retry_warnings, 2);
}

#[tokio::test]
async fn unreachable_provider_fails_with_a_reason_naming_it() {
    let mut harness = Harness::new(Mode::Code, Vec::new()).await;
    // A port nobody listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    harness.provider.base_url = format!("http://127.0.0.1:{port}/v1");
    harness.provider.request_max_retries = 0;
    harness.provider.stream_max_retries = 1;
    let outcome = harness.run("Anything.").await;

    assert_eq!(outcome.status, AttemptStatus::Failed);
    let reason = outcome.reason.unwrap();
    assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
}
