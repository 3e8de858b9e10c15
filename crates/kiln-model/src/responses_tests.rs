use kiln_protocol::{Item, Usage};
use serde_json::json;

use super::*;
use crate::{ReasoningEffort, ToolSpec};

fn decode(events: &[serde_json::Value]) -> (Vec<ModelEvent>, Result<bool, ModelError>) {
    let mut decoder = ResponsesDecoder::new("test".into());
    let mut out = Vec::new();
    let mut last = Ok(false);
    for event in events {
        let sse = SseEvent {
            event: None,
            data: event.to_string(),
        };
        last = decoder.on_event(&sse, &mut out);
        if !matches!(last, Ok(false)) {
            break;
        }
    }
    (out, last)
}

#[test]
fn body_maps_every_item_kind_and_tool() {
    let request = ModelRequest {
        model: "gpt-5".into(),
        instructions: "be brief".into(),
        input: vec![
            Item::user("fix it"),
            Item::assistant("looking"),
            Item::FunctionCall {
                call_id: "c1".into(),
                name: "shell".into(),
                arguments: "{}".into(),
            },
            Item::FunctionCallOutput {
                call_id: "c1".into(),
                output: "ok".into(),
            },
        ],
        tools: vec![ToolSpec {
            name: "shell".into(),
            description: "run".into(),
            parameters: json!({"type": "object"}),
        }],
        parallel_tool_calls: false,
        reasoning_effort: Some(ReasoningEffort::High),
        prompt_cache_key: Some("attempt-1".into()),
    };
    let body = request_body(&request);
    assert_eq!(body["stream"], true);
    assert_eq!(body["store"], false);
    assert_eq!(body["instructions"], "be brief");
    assert_eq!(body["parallel_tool_calls"], false);
    assert_eq!(body["tool_choice"], "auto");
    assert_eq!(body["reasoning"], json!({"effort": "high"}));
    assert_eq!(body["prompt_cache_key"], "attempt-1");
    assert_eq!(
        body["tools"][0],
        json!({"type": "function", "name": "shell", "description": "run", "parameters": {"type": "object"}, "strict": false})
    );
    assert_eq!(
        body["input"][0],
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix it"}]})
    );
    assert_eq!(body["input"][1]["content"][0]["type"], "output_text");
    assert_eq!(
        body["input"][2],
        json!({"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{}"})
    );
    assert_eq!(
        body["input"][3],
        json!({"type": "function_call_output", "call_id": "c1", "output": "ok"})
    );
}

#[test]
fn body_leaves_out_unset_options() {
    let body = request_body(&ModelRequest::default());
    assert!(body.get("reasoning").is_none());
    assert!(body.get("prompt_cache_key").is_none());
    assert!(body.get("tools").is_none() && body.get("tool_choice").is_none());
    assert!(body.get("parallel_tool_calls").is_none());
}

#[test]
fn deltas_items_and_usage_are_decoded() {
    let (out, last) = decode(&[
        json!({"type": "response.created", "response": {"id": "r1"}}),
        json!({"type": "response.output_text.delta", "delta": "Hel"}),
        json!({"type": "response.output_text.delta", "delta": ""}),
        json!({"type": "response.output_text.delta", "delta": "lo"}),
        json!({"type": "response.output_item.done", "item": {"type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": "Hel"}, {"type": "output_text", "text": "lo"}]}}),
        json!({"type": "response.output_item.done", "item": {"type": "reasoning", "summary": []}}),
        json!({"type": "response.output_item.done", "item": {"type": "function_call", "id": "fc_1",
            "call_id": "call_9", "name": "shell", "arguments": "{\"command\": [\"ls\"]}"}}),
        json!({"type": "response.some_future_event", "x": 1}),
        json!({"type": "response.completed", "response": {"usage": {"input_tokens": 120,
            "input_tokens_details": {"cached_tokens": 100}, "output_tokens": 9}}}),
    ]);
    assert!(matches!(last, Ok(true)));
    assert_eq!(
        out,
        vec![
            ModelEvent::TextDelta("Hel".into()),
            ModelEvent::TextDelta("lo".into()),
            ModelEvent::ItemDone(Item::assistant("Hello")),
            ModelEvent::ItemDone(Item::FunctionCall {
                call_id: "call_9".into(),
                name: "shell".into(),
                arguments: "{\"command\": [\"ls\"]}".into()
            }),
            ModelEvent::Completed {
                usage: Usage {
                    input_tokens: 120,
                    cached_input_tokens: 100,
                    output_tokens: 9
                }
            },
        ]
    );
}

#[test]
fn completed_output_is_used_when_no_item_events_came() {
    let (out, _) = decode(&[
        json!({"type": "response.completed", "response": {"output": [
            {"type": "message", "content": [{"type": "output_text", "text": "only here"}]}
        ]}}),
    ]);
    assert_eq!(out[0], ModelEvent::ItemDone(Item::assistant("only here")));
    assert_eq!(
        out[1],
        ModelEvent::Completed {
            usage: Usage::default()
        }
    );
}

#[test]
fn failed_response_surfaces_the_server_message() {
    let (_, last) = decode(&[
        json!({"type": "response.failed", "response": {"error": {"code": "server_error", "message": "The model crashed"}}}),
    ]);
    let error = last.unwrap_err();
    assert_eq!(
        error.to_string(),
        "model provider 'test' reported an error: The model crashed"
    );
    assert!(error.is_retryable());

    let (_, last) = decode(&[
        json!({"type": "error", "code": "context_length_exceeded", "message": "Your input exceeds the context window"}),
    ]);
    let error = last.unwrap_err();
    assert!(!error.is_retryable());
    assert!(error.is_context_window_exceeded());
}

#[test]
fn incomplete_response_names_the_reason() {
    let (_, last) = decode(&[
        json!({"type": "response.incomplete", "response": {"incomplete_details": {"reason": "max_output_tokens"}}}),
    ]);
    assert!(last.unwrap_err().to_string().contains("max_output_tokens"));
}

#[test]
fn non_json_data_is_a_malformed_stream_error() {
    let mut decoder = ResponsesDecoder::new("test".into());
    let error = decoder
        .on_event(
            &SseEvent {
                event: None,
                data: "<html>502</html>".into(),
            },
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(matches!(error, ModelError::InvalidStream { .. }));
    assert!(error.to_string().contains("<html>502</html>"));
}

#[test]
fn end_without_completed_is_a_retryable_disconnect() {
    let mut decoder = ResponsesDecoder::new("test".into());
    let error = decoder.on_end(&mut Vec::new()).unwrap_err();
    assert!(error.is_retryable());
    assert!(error
        .to_string()
        .contains("stream disconnected before completion"));
}

#[test]
fn items_only_in_the_final_output_are_not_lost_nor_doubled() {
    let call =
        json!({"type": "function_call", "call_id": "c2", "name": "shell", "arguments": "{}"});
    let message = json!({"type": "message", "content": [{"type": "output_text", "text": "hi"}]});
    let (out, _) = decode(&[
        json!({"type": "response.output_item.done", "item": message}),
        json!({"type": "response.completed", "response": {"output": [message, call]}}),
    ]);
    assert_eq!(
        out,
        vec![
            ModelEvent::ItemDone(Item::assistant("hi")),
            ModelEvent::ItemDone(Item::FunctionCall {
                call_id: "c2".into(),
                name: "shell".into(),
                arguments: "{}".into()
            }),
            ModelEvent::Completed {
                usage: Usage::default()
            },
        ]
    );
}
