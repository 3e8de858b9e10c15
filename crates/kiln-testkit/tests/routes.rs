//! Routed scripts: each marker gets its own conversation with its own cursor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kiln_testkit::{Route, Script, ScriptedServer, Turn};
use serde_json::{json, Value};

/// Posts a Responses request whose only user message is `prompt` and returns
/// the streamed assistant text, or the error message on a non-200 answer.
async fn ask_responses(server: &ScriptedServer, prompt: &str) -> Result<String, String> {
    let body = json!({
        "model": "m",
        "stream": true,
        "input": [{"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": prompt}]}],
    });
    answer_text(
        server,
        "responses",
        body,
        "response.output_text.delta",
        |e| e["delta"].as_str().map(str::to_string),
    )
    .await
}

/// The same over Chat Completions, with the marker in a later user message.
async fn ask_chat(server: &ScriptedServer, messages: Value) -> Result<String, String> {
    let body = json!({"model": "m", "stream": true, "messages": messages});
    answer_text(server, "chat/completions", body, "", |e| {
        e["choices"][0]["delta"]["content"]
            .as_str()
            .map(str::to_string)
    })
    .await
}

async fn answer_text(
    server: &ScriptedServer,
    endpoint: &str,
    body: Value,
    event_type: &str,
    delta: impl Fn(&Value) -> Option<String>,
) -> Result<String, String> {
    let response = reqwest::Client::new()
        .post(format!("{}/{endpoint}", server.base_url()))
        .json(&body)
        .send()
        .await
        .expect("server reachable");
    let ok = response.status() == 200;
    let text = response.text().await.unwrap();
    if !ok {
        let error: Value = serde_json::from_str(&text).unwrap();
        return Err(error["error"]["message"].as_str().unwrap().to_string());
    }
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter(|event| event_type.is_empty() || event["type"] == event_type)
        .filter_map(|event| delta(&event))
        .collect())
}

#[tokio::test]
async fn two_interleaved_conversations_each_get_their_own_turns_in_order() {
    let script = Script::new(vec![Turn::message("default one")])
        .with_route(
            "[task-1]",
            vec![
                Turn::message("task 1 first"),
                Turn::message("task 1 second"),
            ],
        )
        .with_route(
            "[task-10]",
            vec![
                Turn::message("task 10 first"),
                Turn::message("task 10 second"),
            ],
        );
    let server = ScriptedServer::start(script).await;
    assert_eq!(server.turns_remaining(), 5);

    // Interleaved: 10, 1, 1, 10; "[task-1]" must not catch "[task-10]".
    let ten_prompt = "Do the thing. [task-10]";
    let one_prompt = "[task-1] Do the other thing.";
    assert_eq!(
        ask_responses(&server, ten_prompt).await.unwrap(),
        "task 10 first"
    );
    assert_eq!(
        ask_responses(&server, one_prompt).await.unwrap(),
        "task 1 first"
    );
    assert_eq!(
        ask_responses(&server, one_prompt).await.unwrap(),
        "task 1 second"
    );
    // The marker is found in any user message, on the chat endpoint too.
    let chat = json!([
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "context first"},
        {"role": "user", "content": [{"type": "text", "text": ten_prompt}]},
    ]);
    assert_eq!(ask_chat(&server, chat).await.unwrap(), "task 10 second");

    // No marker: the default turns.
    assert_eq!(
        ask_responses(&server, "no marker here").await.unwrap(),
        "default one"
    );
    assert_eq!(server.turns_served(), 5);
    assert_eq!(server.turns_remaining(), 0);
    assert_eq!(server.requests().len(), 5);
}

#[tokio::test]
async fn an_exhausted_route_answers_an_error_naming_it_and_does_not_take_default_turns() {
    let script = Script::new(vec![Turn::message("default one")])
        .with_route("[task-a]", vec![Turn::message("a only")]);
    let server = ScriptedServer::start(script).await;
    assert_eq!(ask_responses(&server, "[task-a]").await.unwrap(), "a only");
    let error = ask_responses(&server, "[task-a] again").await.unwrap_err();
    assert!(
        error.contains("route \"[task-a]\" exhausted after 1 turns"),
        "{error}"
    );
    assert_eq!(server.turns_remaining(), 1, "the default turn is untouched");
    assert_eq!(
        ask_responses(&server, "plain").await.unwrap(),
        "default one"
    );
    let error = ask_responses(&server, "plain").await.unwrap_err();
    assert!(error.contains("script exhausted after 1 turns"), "{error}");
}

#[test]
fn routes_are_data_and_optional_in_json() {
    let script = Script::from_json(
        r#"{"turns": [], "routes": [{"marker": "[task-07]",
            "turns": [{"kind": "reply", "text": "hi"}]}]}"#,
    )
    .unwrap();
    assert_eq!(
        script.routes,
        vec![Route {
            marker: "[task-07]".into(),
            turns: vec![Turn::message("hi")],
        }]
    );
    let round_trip = Script::from_json(&serde_json::to_string(&script).unwrap()).unwrap();
    assert_eq!(round_trip, script);
    // Scripts written before routes existed still load, and serialise without them.
    let plain = Script::from_json(r#"{"turns": [{"kind": "reply", "text": "x"}]}"#).unwrap();
    assert!(plain.routes.is_empty());
    assert!(!serde_json::to_string(&plain).unwrap().contains("routes"));
}
