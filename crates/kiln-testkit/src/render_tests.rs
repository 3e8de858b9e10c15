use serde_json::Value;

use super::*;
use crate::Script;

fn ctx() -> ReplyContext {
    ReplyContext {
        turn_number: 3,
        model: "gpt-test".into(),
        created_at: 1_700_000_000,
        request_bytes: 400,
    }
}

fn frames(turn: &Turn, wire: WireApi) -> Vec<String> {
    match render(turn, wire, &ctx()) {
        Answer::Stream(plan) => plan.frames,
        Answer::Http { status, .. } => panic!("expected a stream, got HTTP {status}"),
    }
}

fn data_of(frame: &str) -> Value {
    let line = frame
        .lines()
        .find_map(|line| line.strip_prefix("data: "))
        .expect("every frame has a data line");
    serde_json::from_str(line).expect("data is JSON")
}

#[test]
fn split_keeps_text_and_char_boundaries() {
    let text = "héllo wörld ✓ done";
    let parts = split_in_pieces(text, 4);
    assert!(parts.len() > 1 && parts.len() <= 5, "{parts:?}");
    assert!(parts.iter().all(|part| !part.is_empty()));
    assert_eq!(parts.concat(), text);
    assert!(split_in_pieces("", 3).is_empty());
}

#[test]
fn responses_reply_has_the_event_sequence_codex_expects() {
    let turn = Turn::message_then_tool_call(
        "Running tests.",
        "shell",
        serde_json::json!({"command": ["ls"]}),
    );
    let events: Vec<Value> = frames(&turn, WireApi::Responses)
        .iter()
        .map(|f| data_of(f))
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"response.created"));
    assert_eq!(types.last(), Some(&"response.completed"));
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "response.output_item.added")
            .count(),
        2
    );
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "response.output_item.done")
            .count(),
        2
    );
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Running tests.");
    let call = events
        .iter()
        .find(|e| e["type"] == "response.output_item.done" && e["item"]["type"] == "function_call")
        .unwrap();
    assert_eq!(call["item"]["call_id"], "call_3_0");
    assert_eq!(call["item"]["arguments"], r#"{"command":["ls"]}"#);
    let completed = events.last().unwrap();
    assert_eq!(completed["response"]["id"], "resp_kiln_3");
    assert_eq!(completed["response"]["usage"]["input_tokens"], 100);
    let sequence: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>());
}

#[test]
fn responses_frames_name_their_event_type() {
    let frame = &frames(&Turn::message("hi"), WireApi::Responses)[0];
    assert!(
        frame.starts_with("event: response.created\ndata: {"),
        "{frame}"
    );
    assert!(frame.ends_with("\n\n"));
}

#[test]
fn chat_reply_fragments_reassemble_into_the_scripted_calls() {
    let turn = Turn::tool_calls(vec![
        ScriptedToolCall::new(
            "shell",
            serde_json::json!({"command": ["bash", "-lc", "make test"]}),
        ),
        ScriptedToolCall::raw("apply_patch", "{\"input\": \"*** Begin Patch\"}")
            .with_call_id("call_custom"),
    ])
    .with_usage(Usage {
        input_tokens: 50,
        cached_input_tokens: 10,
        output_tokens: 7,
    });
    let all = frames(&turn, WireApi::Chat);
    assert_eq!(all.last().map(String::as_str), Some("data: [DONE]\n\n"));
    let chunks: Vec<Value> = all[..all.len() - 1].iter().map(|f| data_of(f)).collect();
    let mut calls: Vec<(String, String, String)> = vec![Default::default(); 2];
    for chunk in &chunks {
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        for fragment in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let slot = &mut calls[fragment["index"].as_u64().unwrap() as usize];
            if let Some(id) = fragment["id"].as_str() {
                slot.0 = id.to_string();
            }
            slot.1 += fragment["function"]["name"].as_str().unwrap_or("");
            slot.2 += fragment["function"]["arguments"].as_str().unwrap_or("");
        }
    }
    assert_eq!(calls[0].0, "call_3_0");
    assert_eq!(calls[0].1, "shell");
    assert_eq!(calls[0].2, r#"{"command":["bash","-lc","make test"]}"#);
    assert_eq!(
        calls[1],
        (
            "call_custom".into(),
            "apply_patch".into(),
            "{\"input\": \"*** Begin Patch\"}".into()
        )
    );
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], serde_json::json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 50);
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"],
        10
    );
    let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert_eq!(finish, "tool_calls");
}

#[test]
fn wrappers_pace_the_inner_stream() {
    let turn = Turn::slow(
        Turn::cut_after(
            2,
            Turn::stall_after(1, Turn::message("x"), std::time::Duration::from_millis(5)),
        ),
        std::time::Duration::from_millis(7),
    );
    let Answer::Stream(plan) = render(&turn, WireApi::Responses, &ctx()) else {
        panic!("expected a stream");
    };
    assert_eq!(plan.cut_after, Some(2));
    assert_eq!(plan.stall, Some((1, std::time::Duration::from_millis(5))));
    assert_eq!(
        plan.delay_between_frames,
        std::time::Duration::from_millis(7)
    );
}

#[test]
fn wrappers_around_an_http_error_leave_it_alone() {
    let turn = Turn::slow(
        Turn::http_error(503, "{}"),
        std::time::Duration::from_millis(1),
    );
    assert!(matches!(
        render(&turn, WireApi::Chat, &ctx()),
        Answer::Http { status: 503, .. }
    ));
}

#[test]
fn retry_after_is_sent_in_seconds_and_milliseconds() {
    let turn = Turn::http_error_with_retry_after(429, "{}", std::time::Duration::from_millis(1500));
    let Answer::Http { headers, .. } = render(&turn, WireApi::Responses, &ctx()) else {
        panic!("expected an HTTP answer");
    };
    assert!(headers.contains(&("retry-after", "2".to_string())));
    assert!(headers.contains(&("retry-after-ms", "1500".to_string())));
}

#[test]
fn scripts_round_trip_through_json() {
    let script = Script::new(vec![
        Turn::shell("ls"),
        Turn::cut_after(3, Turn::message("partial")),
        Turn::http_error_message(500, "boom"),
    ]);
    let json = serde_json::to_string(&script).unwrap();
    assert!(json.contains(r#""kind":"cut_after""#), "{json}");
    assert_eq!(Script::from_json(&json).unwrap(), script);
    let handwritten = r#"{"turns": [{"kind": "reply", "text": "done"}, {"kind": "raw_events", "events": [{"type": "x"}]}]}"#;
    let parsed = Script::from_json(handwritten).unwrap();
    assert_eq!(parsed.turns[0], Turn::message("done"));
    assert_eq!(
        parsed.turns[1],
        Turn::raw_events(vec![serde_json::json!({"type": "x"})])
    );
}

#[test]
fn usage_reaches_a_reply_inside_wrappers() {
    let usage = Usage {
        input_tokens: 9,
        cached_input_tokens: 1,
        output_tokens: 2,
    };
    let turn = Turn::slow(
        Turn::fragmented(Turn::message("x"), 3),
        std::time::Duration::ZERO,
    )
    .with_usage(usage);
    let Turn::Slow { turn, .. } = turn else {
        panic!("still slow")
    };
    let Turn::Fragmented { turn, .. } = *turn else {
        panic!("still fragmented")
    };
    assert!(matches!(*turn, Turn::Reply { usage: Some(u), .. } if u == usage));
}
