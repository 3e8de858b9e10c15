use kiln_protocol::{Item, Usage};
use serde_json::{json, Value};

use super::*;
use crate::ToolSpec;

/// Feeds chunks (then `[DONE]` when `done`) and returns the events or the error.
fn decode(chunks: &[Value], done: bool) -> Result<Vec<ModelEvent>, ModelError> {
    let mut decoder = ChatDecoder::new("test".into());
    let mut out = Vec::new();
    for chunk in chunks {
        let finished = decoder.on_event(
            &SseEvent {
                event: None,
                data: chunk.to_string(),
            },
            &mut out,
        )?;
        assert!(!finished);
    }
    if done {
        assert!(decoder.on_event(
            &SseEvent {
                event: None,
                data: "[DONE]".into()
            },
            &mut out
        )?);
    } else {
        decoder.on_end(&mut out)?;
    }
    Ok(out)
}

fn delta(delta: Value) -> Value {
    json!({"choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
}

fn finish(reason: &str) -> Value {
    json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
}

fn calls(events: &[ModelEvent]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter_map(|event| match event {
            ModelEvent::ItemDone(Item::FunctionCall {
                call_id,
                name,
                arguments,
            }) => Some((call_id.clone(), name.clone(), arguments.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn messages_fold_calls_into_the_assistant_turn() {
    let items = vec![
        Item::user("fix"),
        Item::assistant("Running the tests."),
        Item::FunctionCall {
            call_id: "a".into(),
            name: "shell".into(),
            arguments: "{}".into(),
        },
        Item::FunctionCall {
            call_id: "b".into(),
            name: "shell".into(),
            arguments: "{\"x\":1}".into(),
        },
        Item::FunctionCallOutput {
            call_id: "a".into(),
            output: "ok".into(),
        },
        Item::FunctionCallOutput {
            call_id: "b".into(),
            output: "ok too".into(),
        },
        Item::FunctionCall {
            call_id: "c".into(),
            name: "apply_patch".into(),
            arguments: "{}".into(),
        },
    ];
    let messages = messages("system text", &items);
    assert_eq!(messages.len(), 6);
    assert_eq!(
        messages[0],
        json!({"role": "system", "content": "system text"})
    );
    assert_eq!(messages[1], json!({"role": "user", "content": "fix"}));
    assert_eq!(messages[2]["content"], "Running the tests.");
    assert_eq!(messages[2]["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(
        messages[2]["tool_calls"][1],
        json!({"id": "b", "type": "function", "function": {"name": "shell", "arguments": "{\"x\":1}"}})
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "tool_call_id": "a", "content": "ok"})
    );
    assert_eq!(
        messages[5],
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "apply_patch", "arguments": "{}"}}
        ]})
    );
}

#[test]
fn body_asks_for_usage_and_offers_tools() {
    let request = ModelRequest {
        model: "llama".into(),
        tools: vec![ToolSpec {
            name: "shell".into(),
            description: "run".into(),
            parameters: json!({"type": "object"}),
        }],
        ..ModelRequest::default()
    };
    let body = request_body(&request);
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["tools"][0]["function"]["name"], "shell");
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tool_choice"], "auto");
    assert!(
        body["messages"].as_array().unwrap().is_empty(),
        "no system message without instructions"
    );
    let bare = request_body(&ModelRequest::default());
    assert!(
        bare.get("tools").is_none()
            && bare.get("tool_choice").is_none()
            && bare.get("parallel_tool_calls").is_none()
    );
}

#[test]
fn text_deltas_then_message_then_usage() {
    let events = decode(
        &[
            delta(json!({"role": "assistant", "content": ""})),
            delta(json!({"content": "All "})),
            delta(json!({"content": null})),
            delta(json!({"content": "green."})),
            finish("stop"),
            json!({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 32}}}),
        ],
        true,
    )
    .unwrap();
    assert_eq!(
        events,
        vec![
            ModelEvent::TextDelta("All ".into()),
            ModelEvent::TextDelta("green.".into()),
            ModelEvent::ItemDone(Item::assistant("All green.")),
            ModelEvent::Completed {
                usage: Usage {
                    input_tokens: 40,
                    cached_input_tokens: 32,
                    output_tokens: 3
                }
            },
        ]
    );
}

#[test]
fn parallel_calls_assemble_by_index_even_interleaved() {
    let events = decode(
        &[
            delta(json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "sh", "arguments": ""}}]})),
            delta(json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "apply_patch", "arguments": "{\"in"}}]})),
            delta(json!({"tool_calls": [{"index": 0, "function": {"name": "ell", "arguments": "{\"command\":"}}]})),
            delta(json!({"tool_calls": [{"index": 1, "function": {"arguments": "put\": \"x\"}"}}]})),
            delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": " [\"ls\"]}"}}]})),
            finish("tool_calls"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(
        calls(&events),
        vec![
            (
                "call_a".into(),
                "shell".into(),
                "{\"command\": [\"ls\"]}".into()
            ),
            (
                "call_b".into(),
                "apply_patch".into(),
                "{\"input\": \"x\"}".into()
            ),
        ]
    );
    assert_eq!(
        events.last(),
        Some(&ModelEvent::Completed {
            usage: Usage::default()
        })
    );
}

#[test]
fn calls_without_index_are_told_apart_by_id_and_repeated_ids_are_harmless() {
    let events = decode(
        &[
            delta(json!({"tool_calls": [{"id": "x1", "function": {"name": "shell", "arguments": "{\"a\":"}}]})),
            delta(json!({"tool_calls": [{"id": "x1", "function": {"name": "shell", "arguments": "1}"}}]})),
            delta(json!({"tool_calls": [{"id": "x2", "function": {"name": "update_plan", "arguments": "{}"}}]})),
            delta(json!({"tool_calls": [{"function": {"arguments": " "}}]})),
            finish("tool_calls"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(
        calls(&events),
        vec![
            ("x1".into(), "shell".into(), "{\"a\":1}".into()),
            ("x2".into(), "update_plan".into(), "{} ".into())
        ]
    );
}

#[test]
fn same_index_with_a_new_id_starts_a_new_call() {
    let events = decode(
        &[
            delta(json!({"tool_calls": [{"index": 0, "id": "p", "function": {"name": "shell", "arguments": "{}"}}]})),
            delta(json!({"tool_calls": [{"index": 0, "id": "q", "function": {"name": "shell", "arguments": "{\"b\":2}"}}]})),
            finish("tool_calls"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(
        calls(&events)
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>(),
        vec!["p", "q"]
    );
}

#[test]
fn missing_ids_get_distinct_synthetic_ones_and_empty_arguments_become_an_object() {
    let events = decode(
        &[
            delta(json!({"tool_calls": [{"index": 0, "function": {"name": "list_files"}}]})),
            delta(json!({"tool_calls": [{"index": 1, "id": "", "function": {"name": "shell", "arguments": "\n{ \"command\" :\t[\"pwd\"] }\n"}}]})),
            finish("tool_calls"),
        ],
        true,
    )
    .unwrap();
    let calls = calls(&events);
    assert_eq!(calls.len(), 2);
    assert!(calls[0].0.starts_with("call_kiln_") && calls[1].0.starts_with("call_kiln_"));
    assert_ne!(calls[0].0, calls[1].0);
    assert_eq!(calls[0].2, "{}");
    assert_eq!(
        calls[1].2, "\n{ \"command\" :\t[\"pwd\"] }\n",
        "odd whitespace passes through"
    );
}

#[test]
fn legacy_function_call_is_used_alone_and_ignored_beside_tool_calls() {
    let alone = decode(
        &[
            delta(json!({"function_call": {"name": "shell", "arguments": "{\"command\""}})),
            delta(json!({"function_call": {"arguments": ": [\"ls\"]}"}})),
            finish("function_call"),
        ],
        true,
    )
    .unwrap();
    let alone = calls(&alone);
    assert_eq!(alone.len(), 1);
    assert_eq!(
        (alone[0].1.as_str(), alone[0].2.as_str()),
        ("shell", "{\"command\": [\"ls\"]}")
    );

    let mirrored = decode(
        &[
            delta(json!({
                "tool_calls": [{"index": 0, "id": "t1", "function": {"name": "shell", "arguments": "{}"}}],
                "function_call": {"name": "shell", "arguments": "{}"}
            })),
            finish("tool_calls"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(
        calls(&mirrored),
        vec![("t1".into(), "shell".into(), "{}".into())]
    );
}

#[test]
fn arguments_sent_as_an_object_are_serialised() {
    let events = decode(
        &[delta(json!({"tool_calls": [{"index": 0, "id": "o", "function": {"name": "shell", "arguments": {"command": ["ls"]}}}]})), finish("tool_calls")],
        true,
    )
    .unwrap();
    assert_eq!(calls(&events)[0].2, r#"{"command":["ls"]}"#);
}

#[test]
fn end_after_finish_reason_without_done_completes() {
    let events = decode(&[delta(json!({"content": "hi"})), finish("stop")], false).unwrap();
    assert_eq!(
        events.last(),
        Some(&ModelEvent::Completed {
            usage: Usage::default()
        })
    );
}

#[test]
fn end_without_finish_reason_is_a_retryable_disconnect() {
    let error = decode(&[delta(json!({"content": "hi"}))], false).unwrap_err();
    assert!(error.is_retryable());
    assert!(error
        .to_string()
        .contains("stream disconnected before completion"));
}

#[test]
fn usage_on_the_last_choice_chunk_is_read() {
    let events = decode(
        &[json!({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 7, "completion_tokens": 1}})],
        true,
    )
    .unwrap();
    assert_eq!(
        events.last(),
        Some(&ModelEvent::Completed {
            usage: Usage {
                input_tokens: 7,
                cached_input_tokens: 0,
                output_tokens: 1
            }
        })
    );
}

#[test]
fn error_chunk_surfaces_the_message() {
    let error = decode(
        &[json!({"error": {"message": "model overloaded", "code": "server_is_overloaded"}})],
        true,
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "model provider 'test' reported an error: model overloaded"
    );
    assert!(error.is_retryable());
    let ollama = decode(&[json!({"error": "llama runner crashed"})], true).unwrap_err();
    assert!(ollama.to_string().ends_with("llama runner crashed"));
}

#[test]
fn whitespace_only_text_is_not_a_message() {
    let events = decode(&[delta(json!({"content": "\n"})), delta(json!({"tool_calls": [{"index": 0, "id": "w", "function": {"name": "shell", "arguments": "{}"}}]})), finish("tool_calls")], true).unwrap();
    assert!(!events
        .iter()
        .any(|event| matches!(event, ModelEvent::ItemDone(Item::Message { .. }))));
}

#[test]
fn content_sent_as_typed_parts_is_read() {
    let events = decode(&[delta(json!({"content": [{"type": "text", "text": "part one, "}, {"type": "text", "text": "two"}]})), finish("stop")], true).unwrap();
    assert_eq!(
        events[1],
        ModelEvent::ItemDone(Item::assistant("part one, two"))
    );
}

#[test]
fn index_appearing_after_an_index_less_first_fragment_continues_the_call() {
    let events = decode(
        &[
            delta(json!({"tool_calls": [{"id": "late", "function": {"name": "shell", "arguments": "{\"a\""}}]})),
            delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]})),
            finish("tool_calls"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(
        calls(&events),
        vec![("late".into(), "shell".into(), "{\"a\": 1}".into())]
    );
}

#[test]
fn complete_calls_without_index_or_id_stay_separate() {
    let events = decode(
        &[
            delta(json!({"tool_calls": [
                {"function": {"name": "shell", "arguments": "{\"command\":[\"ls\"]}"}},
                {"function": {"name": "shell", "arguments": "{\"command\":[\"pwd\"]}"}}
            ]})),
            delta(json!({"tool_calls": [{"function": {"name": "update_plan", "arguments": {"plan": []}}}]})),
            delta(json!({"tool_calls": [{"function": {"name": "update_plan", "arguments": ""}}]})),
            finish("stop"),
        ],
        true,
    )
    .unwrap();
    let calls = calls(&events);
    let shapes: Vec<(&str, &str)> = calls.iter().map(|c| (c.1.as_str(), c.2.as_str())).collect();
    assert_eq!(
        shapes,
        vec![
            ("shell", "{\"command\":[\"ls\"]}"),
            ("shell", "{\"command\":[\"pwd\"]}"),
            ("update_plan", "{\"plan\":[]}"),
        ]
    );
}

#[test]
fn repeated_name_on_every_fragment_does_not_split_a_call() {
    let events = decode(
        &[
            delta(json!({"tool_calls": [{"function": {"name": "shell", "arguments": "{\"command\":"}}]})),
            delta(json!({"tool_calls": [{"function": {"name": "shell", "arguments": " [\"ls\"]}"}}]})),
            finish("tool_calls"),
        ],
        true,
    )
    .unwrap();
    let calls = calls(&events);
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].1.as_str(), calls[0].2.as_str()),
        ("shell", "{\"command\": [\"ls\"]}")
    );
}

#[test]
fn arguments_repeated_by_a_final_flush_are_repaired() {
    let whole = r#"{"city": "Seattle", "unit": "celsius"}"#;
    assert_eq!(undo_final_flush(format!("{whole}{whole}")), whole);
    assert_eq!(undo_final_flush(format!("{{{whole}")), whole);
    assert_eq!(undo_final_flush(format!(r#"{{"city": "Sea{whole}"#)), whole);
}

#[test]
fn malformed_arguments_that_are_not_a_flush_pass_through() {
    for text in [
        r#"{"input": {"x": 1}"#,
        r#"{"command": ["ls"]"#,
        "not json {\"a\": 1}",
        "{\"a\": 1} trailing",
    ] {
        assert_eq!(undo_final_flush(text.to_string()), text, "{text}");
    }
    let valid = "\n{ \"a\" :\t1 }\n";
    assert_eq!(undo_final_flush(valid.to_string()), valid);
}

#[test]
fn flushed_duplicate_over_the_wire_shape_is_repaired() {
    let events = decode(
        &[
            delta(json!({"tool_calls": [{"index": 0, "id": "f", "function": {"name": "shell", "arguments": "{\"command\": "}}]})),
            delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"command\": [\"ls\"]}"}}]})),
            finish("tool_calls"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(calls(&events)[0].2, "{\"command\": [\"ls\"]}");
}
