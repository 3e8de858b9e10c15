//! Chat Completions streams in the shapes real servers send, over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use kiln_model::{ModelEvent, WireApi};
use kiln_protocol::{Item, Usage};
use kiln_testkit::{Script, ScriptedServer, Turn};
use serde_json::{json, Value};
use support::{client, items_of, request, run_turn, text_of};

fn delta(delta: Value) -> Value {
    json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
}

fn finish(reason: &str) -> Value {
    json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
}

async fn decode(turn: Turn) -> (Vec<ModelEvent>, Option<kiln_model::ModelError>) {
    let server = ScriptedServer::start(Script::new(vec![turn])).await;
    run_turn(client(&server, WireApi::Chat).as_ref(), &request()).await
}

#[tokio::test]
async fn name_and_arguments_spread_over_many_chunks_with_extra_fields() {
    let (events, error) = decode(Turn::raw_events(vec![
        delta(json!({"role": "assistant", "content": null, "reasoning_content": "thinking…"})),
        delta(json!({"tool_calls": [{"index": 0, "id": "call_x", "type": "function", "function": {"name": "she"}}]})),
        delta(json!({"tool_calls": [{"index": 0, "function": {"name": "ll", "arguments": "{\"comm"}}]})),
        delta(json!({})),
        delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "and\": [\"bash\", \"-lc\", "}}]})),
        delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"pytest\"]}"}}]})),
        finish("tool_calls"),
        json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 900, "completion_tokens": 20, "total_tokens": 920}}),
    ]))
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        items_of(&events),
        vec![Item::FunctionCall {
            call_id: "call_x".into(),
            name: "shell".into(),
            arguments: r#"{"command": ["bash", "-lc", "pytest"]}"#.into(),
        }]
    );
    assert_eq!(
        events.last(),
        Some(&ModelEvent::Completed {
            usage: Usage {
                input_tokens: 900,
                cached_input_tokens: 0,
                output_tokens: 20
            }
        })
    );
}

#[tokio::test]
async fn server_without_index_or_ids_gets_synthetic_ids() {
    let (events, error) = decode(Turn::raw_events(vec![
        delta(json!({"tool_calls": [{"function": {"name": "shell", "arguments": "{\"command\":[\"ls\"]}"}}]})),
        finish("tool_calls"),
    ]))
    .await;
    assert!(error.is_none(), "{error:?}");
    let items = items_of(&events);
    assert!(
        matches!(&items[0], Item::FunctionCall { call_id, name, .. } if call_id.starts_with("call_kiln_") && name == "shell")
    );
    assert_eq!(
        events.last(),
        Some(&ModelEvent::Completed {
            usage: Usage::default()
        }),
        "no usage chunk: zero usage"
    );
}

#[tokio::test]
async fn legacy_function_call_delta_becomes_a_tool_call() {
    let (events, error) = decode(Turn::raw_events(vec![
        delta(json!({"function_call": {"name": "update_plan", "arguments": ""}})),
        delta(json!({"function_call": {"arguments": "{\"plan\": []}"}})),
        finish("function_call"),
    ]))
    .await;
    assert!(error.is_none(), "{error:?}");
    assert!(
        matches!(&items_of(&events)[0], Item::FunctionCall { name, arguments, .. } if name == "update_plan" && arguments == "{\"plan\": []}")
    );
}

#[tokio::test]
async fn server_that_closes_after_finish_without_done_completes() {
    let (events, error) = decode(Turn::RawEvents {
        events: vec![delta(json!({"content": "hi"})), finish("stop")],
        done: false,
    })
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text_of(&events), "hi");
    assert!(matches!(events.last(), Some(ModelEvent::Completed { .. })));
}

#[tokio::test]
async fn error_chunk_mid_stream_ends_the_turn_with_its_message() {
    let (events, error) = decode(Turn::raw_events(vec![
        delta(json!({"content": "par"})),
        json!({"error": {"message": "CUDA out of memory", "type": "internal_error"}}),
    ]))
    .await;
    assert_eq!(text_of(&events), "par");
    let error = error.expect("an error");
    assert!(error.to_string().contains("CUDA out of memory"), "{error}");
}
