//! Both wire APIs against the scripted server over real HTTP: streamed text,
//! tool calls, usage, and what goes out on the wire.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use kiln_model::{ModelEvent, WireApi};
use kiln_protocol::{Item, Usage};
use kiln_testkit::{Script, ScriptedServer, ScriptedToolCall, Turn};
use serde_json::json;
use support::{client, items_of, provider, request, run_turn, text_of};

const BOTH: [WireApi; 2] = [WireApi::Responses, WireApi::Chat];

#[tokio::test]
async fn message_streams_as_deltas_then_one_item_then_usage() {
    for wire in BOTH {
        let usage = Usage {
            input_tokens: 1200,
            cached_input_tokens: 1024,
            output_tokens: 35,
        };
        let server = ScriptedServer::start(Script::new(vec![Turn::message(
            "The tests pass now; median was off by one.",
        )
        .with_usage(usage)]))
        .await;
        let (events, error) = run_turn(client(&server, wire).as_ref(), &request()).await;
        assert!(error.is_none(), "{wire}: {error:?}");
        let deltas = events
            .iter()
            .filter(|e| matches!(e, ModelEvent::TextDelta(_)))
            .count();
        assert!(deltas > 1, "{wire}: text arrives in several deltas");
        assert_eq!(
            text_of(&events),
            "The tests pass now; median was off by one."
        );
        assert_eq!(
            items_of(&events),
            vec![Item::assistant(
                "The tests pass now; median was off by one."
            )]
        );
        assert_eq!(
            events.last(),
            Some(&ModelEvent::Completed { usage }),
            "{wire}"
        );
    }
}

#[tokio::test]
async fn tool_calls_arrive_whole_with_ids_and_arguments() {
    for wire in BOTH {
        let server = ScriptedServer::start(Script::new(vec![
            Turn::shell("python3 -m unittest -q"),
            Turn::tool_calls(vec![
                ScriptedToolCall::new("shell", json!({"command": ["ls"]})).with_call_id("call_ls"),
                ScriptedToolCall::new(
                    "apply_patch",
                    json!({"input": "*** Begin Patch\n*** End Patch\n"}),
                ),
            ]),
            Turn::message_then_tool_call(
                "Let me look.",
                "shell",
                json!({"command": ["cat", "calc.py"]}),
            ),
        ]))
        .await;
        let client = client(&server, wire);

        let (events, error) = run_turn(client.as_ref(), &request()).await;
        assert!(error.is_none(), "{wire}: {error:?}");
        assert_eq!(
            items_of(&events),
            vec![Item::FunctionCall {
                call_id: "call_1_0".into(),
                name: "shell".into(),
                arguments: r#"{"command":["bash","-lc","python3 -m unittest -q"]}"#.into(),
            }],
            "{wire}"
        );

        let (events, _) = run_turn(client.as_ref(), &request()).await;
        let items = items_of(&events);
        assert_eq!(items.len(), 2, "{wire}: parallel calls");
        assert!(
            matches!(&items[0], Item::FunctionCall { call_id, name, .. } if call_id == "call_ls" && name == "shell")
        );
        assert!(
            matches!(&items[1], Item::FunctionCall { name, arguments, .. } if name == "apply_patch" && arguments.contains("*** Begin Patch\\n"))
        );

        let (events, _) = run_turn(client.as_ref(), &request()).await;
        let items = items_of(&events);
        assert_eq!(
            items[0],
            Item::assistant("Let me look."),
            "{wire}: the message comes before the call"
        );
        assert!(matches!(&items[1], Item::FunctionCall { name, .. } if name == "shell"));
        assert_eq!(server.turns_served(), 3);
    }
}

#[tokio::test]
async fn responses_request_carries_the_conversation_and_tools() {
    let server = ScriptedServer::start(Script::new(vec![Turn::message("ok")])).await;
    let mut turn = request();
    turn.input.push(Item::FunctionCall {
        call_id: "c1".into(),
        name: "shell".into(),
        arguments: "{}".into(),
    });
    turn.input.push(Item::FunctionCallOutput {
        call_id: "c1".into(),
        output: "exit 0".into(),
    });
    run_turn(client(&server, WireApi::Responses).as_ref(), &turn).await;
    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/v1/responses");
    assert_eq!(sent.query, None);
    assert_eq!(sent.header("accept"), Some("text/event-stream"));
    assert_eq!(
        sent.header("authorization"),
        None,
        "a provider without env_key sends no key"
    );
    let body = &sent.body;
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["instructions"], "You are kiln.");
    assert_eq!(body["stream"], true);
    assert_eq!(body["store"], false);
    assert_eq!(
        body["input"][0]["content"][0]["text"],
        "make the failing test pass"
    );
    assert_eq!(
        body["input"][2],
        json!({"type": "function_call_output", "call_id": "c1", "output": "exit 0"})
    );
    assert_eq!(body["tools"][0]["name"], "shell");
    assert_eq!(body["tools"][0]["strict"], false);
}

#[tokio::test]
async fn chat_request_carries_system_tools_and_usage_option() {
    let server = ScriptedServer::start(Script::new(vec![Turn::message("ok")])).await;
    run_turn(client(&server, WireApi::Chat).as_ref(), &request()).await;
    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.body["messages"][0],
        json!({"role": "system", "content": "You are kiln."})
    );
    assert_eq!(
        sent.body["messages"][1],
        json!({"role": "user", "content": "make the failing test pass"})
    );
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
    assert_eq!(sent.body["tools"][0]["function"]["name"], "shell");
}

#[tokio::test]
async fn key_extra_headers_and_query_params_are_sent() {
    let server = ScriptedServer::start(Script::new(vec![Turn::message("ok")])).await;
    let mut config = provider(&server, WireApi::Responses);
    config.env_key = Some("KILN_TEST_UNUSED_KEY_VARIABLE".into());
    config.api_key = Some("sk-test-123".into());
    config.http_headers.insert("x-team".into(), "kiln".into());
    config
        .query_params
        .insert("api-version".into(), "2025-04-01".into());
    let client = kiln_model::connect(&config).unwrap();
    let (_, error) = run_turn(client.as_ref(), &request()).await;
    assert!(error.is_none(), "{error:?}");
    let sent = &server.requests()[0];
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(sent.header("x-team"), Some("kiln"));
    assert_eq!(sent.query.as_deref(), Some("api-version=2025-04-01"));
    assert!(sent
        .header("user-agent")
        .is_some_and(|agent| agent.starts_with("kiln/")));
}

#[tokio::test]
async fn sse_split_into_tiny_network_writes_decodes_the_same() {
    for wire in BOTH {
        let server = ScriptedServer::start(Script::new(vec![Turn::fragmented(
            Turn::message_then_tool_call(
                "Ünïcödé ✓ text",
                "shell",
                json!({"command": ["echo", "ß"]}),
            ),
            5,
        )]))
        .await;
        let (events, error) = run_turn(client(&server, wire).as_ref(), &request()).await;
        assert!(error.is_none(), "{wire}: {error:?}");
        assert_eq!(text_of(&events), "Ünïcödé ✓ text");
        assert!(
            matches!(&items_of(&events)[1], Item::FunctionCall { arguments, .. } if arguments == r#"{"command":["echo","ß"]}"#)
        );
    }
}

#[tokio::test]
async fn slow_stream_within_the_idle_timeout_completes() {
    let server = ScriptedServer::start(Script::new(vec![Turn::slow(
        Turn::message("patience"),
        std::time::Duration::from_millis(20),
    )]))
    .await;
    let (events, error) = run_turn(client(&server, WireApi::Responses).as_ref(), &request()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text_of(&events), "patience");
}

/// A server that ignores `stream: true` and answers one JSON document.
async fn json_answer(
    body: serde_json::Value,
) -> (Vec<ModelEvent>, Option<kiln_model::ModelError>, WireApi) {
    let wire = if body["object"] == "response" {
        WireApi::Responses
    } else {
        WireApi::Chat
    };
    let server = ScriptedServer::start(Script::new(vec![Turn::HttpError {
        status: 200,
        body: body.to_string(),
        retry_after: None,
        retry_after_ms: None,
    }]))
    .await;
    let (events, error) = run_turn(client(&server, wire).as_ref(), &request()).await;
    (events, error, wire)
}

#[tokio::test]
async fn non_streamed_json_answers_are_understood() {
    let (events, error, _) = json_answer(json!({
        "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Checking.",
            "tool_calls": [{"id": "call_j", "type": "function", "function": {"name": "shell", "arguments": "{\"command\":[\"ls\"]}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4}
    }))
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        items_of(&events),
        vec![
            Item::assistant("Checking."),
            Item::FunctionCall {
                call_id: "call_j".into(),
                name: "shell".into(),
                arguments: "{\"command\":[\"ls\"]}".into()
            }
        ]
    );
    assert_eq!(
        events.last(),
        Some(&ModelEvent::Completed {
            usage: Usage {
                input_tokens: 10,
                cached_input_tokens: 0,
                output_tokens: 4
            }
        })
    );

    let (events, error, wire) = json_answer(json!({
        "object": "response", "status": "completed",
        "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Whole."}]}],
        "usage": {"input_tokens": 5, "output_tokens": 1}
    }))
    .await;
    assert_eq!(wire, WireApi::Responses);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(items_of(&events), vec![Item::assistant("Whole.")]);
}
