//! Shared helpers for the integration tests: a provider pointed at a scripted
//! server, and a way to drain a turn.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kiln_model::{
    connect, ModelClient, ModelError, ModelEvent, ModelRequest, ProviderConfig, RetryPolicy,
    ToolSpec, WireApi,
};
use kiln_protocol::Item;
use kiln_testkit::ScriptedServer;

/// A provider for `server` that retries at once, so tests do not wait on backoff.
pub fn provider(server: &ScriptedServer, wire_api: WireApi) -> ProviderConfig {
    let mut config = ProviderConfig::new("scripted", server.base_url(), None, wire_api);
    config.retry = RetryPolicy::immediate();
    config.stream_idle_timeout = Duration::from_secs(10);
    config
}

pub fn client(server: &ScriptedServer, wire_api: WireApi) -> Arc<dyn ModelClient> {
    connect(&provider(server, wire_api)).expect("valid provider")
}

pub fn request() -> ModelRequest {
    ModelRequest {
        model: "test-model".into(),
        instructions: "You are kiln.".into(),
        input: vec![Item::user("make the failing test pass")],
        tools: vec![ToolSpec {
            name: "shell".into(),
            description: "Runs a command.".into(),
            parameters: serde_json::json!({"type": "object", "properties": {"command": {"type": "array"}}}),
        }],
        ..ModelRequest::default()
    }
}

/// Runs one turn to its end: every event, and the error that ended it, if any.
pub async fn run_turn(
    client: &dyn ModelClient,
    request: &ModelRequest,
) -> (Vec<ModelEvent>, Option<ModelError>) {
    let mut stream = match client.stream(request).await {
        Ok(stream) => stream,
        Err(error) => return (Vec::new(), Some(error)),
    };
    let mut events = Vec::new();
    // Bounded: a client bug that hangs fails the test instead of stalling the suite.
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => events.push(event),
                Err(error) => return Some(error),
            }
        }
        None
    })
    .await;
    match drained {
        Ok(error) => (events, error),
        Err(_) => panic!("the turn did not end within 30s; events so far: {events:?}"),
    }
}

pub fn text_of(events: &[ModelEvent]) -> String {
    events
        .iter()
        .filter_map(|event| match event {
            ModelEvent::TextDelta(delta) => Some(delta.as_str()),
            _ => None,
        })
        .collect()
}

pub fn items_of(events: &[ModelEvent]) -> Vec<Item> {
    events
        .iter()
        .filter_map(|event| match event {
            ModelEvent::ItemDone(item) => Some(item.clone()),
            _ => None,
        })
        .collect()
}
