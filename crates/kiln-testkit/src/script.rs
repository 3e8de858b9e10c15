//! The script a [`crate::ScriptedServer`] replays: one [`Turn`] per request, in order.
//!
//! Scripts are plain data (serde), so the same script drives Rust tests and the
//! standalone `kiln-testkit-server` binary (`{"turns": [{"kind": "reply", …}, …]}`,
//! optionally with `"routes": [{"marker": "[task-07]", "turns": […]}, …]`).

use std::time::Duration;

use kiln_protocol::Usage;
use serde::{Deserialize, Serialize};

/// The model turns a server replays, one per request.
///
/// `turns` is the default conversation. `routes` give concurrent clients their
/// own conversations: a request whose user messages contain a route's `marker`
/// takes the next turn of that route (the first matching route, in order), each
/// route keeping its own cursor; a request matching no route takes the next
/// default turn. So parallel agents, each prompted with its own marker such as
/// `[task-07]`, each get their multi-turn conversation in order however their
/// requests interleave.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Script {
    pub turns: Vec<Turn>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// A conversation of its own inside a [`Script`], chosen by a marker string
/// found in the text of the request's user messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Matched as a plain substring, so make markers that do not contain one
    /// another (`[task-1]` and `[task-10]` are fine thanks to the brackets).
    pub marker: String,
    pub turns: Vec<Turn>,
}

impl Script {
    /// A script with only the default conversation.
    pub fn new(turns: Vec<Turn>) -> Self {
        Script {
            turns,
            routes: Vec::new(),
        }
    }

    /// Adds a route: requests whose user messages contain `marker` get `turns`, in order.
    pub fn with_route(mut self, marker: impl Into<String>, turns: Vec<Turn>) -> Self {
        self.routes.push(Route {
            marker: marker.into(),
            turns,
        });
        self
    }

    /// Reads a script from JSON text, naming the problem when it does not parse.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// A tool call the scripted model makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptedToolCall {
    pub name: String,
    /// The arguments exactly as the model sends them (normally JSON text).
    pub arguments: String,
    /// The call id; `call_<turn>_<index>` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
}

impl ScriptedToolCall {
    /// A call whose arguments are `args` serialised as JSON.
    pub fn new(name: impl Into<String>, args: serde_json::Value) -> Self {
        ScriptedToolCall {
            name: name.into(),
            arguments: args.to_string(),
            call_id: None,
        }
    }

    /// A call whose arguments are sent verbatim, even when they are not valid JSON.
    pub fn raw(name: impl Into<String>, arguments: impl Into<String>) -> Self {
        ScriptedToolCall {
            name: name.into(),
            arguments: arguments.into(),
            call_id: None,
        }
    }

    pub fn with_call_id(mut self, call_id: impl Into<String>) -> Self {
        self.call_id = Some(call_id.into());
        self
    }
}

/// What the server does for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Turn {
    /// A successful streamed answer: optional assistant text (streamed as several
    /// deltas), then tool calls (arguments streamed in fragments).
    Reply {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ScriptedToolCall>,
        /// Reported usage; when absent the server estimates it from the sizes of
        /// the request and the answer (about four bytes per token).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    },
    /// A plain HTTP error answer with `body` (JSON text for realism) and optional headers.
    HttpError {
        status: u16,
        body: String,
        /// `retry-after` header value (seconds), when set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<String>,
        /// `retry-after-ms` header value, when set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<String>,
    },
    /// Streams the first `events` events of `turn`, then ends the response
    /// without the completion event (a dropped stream).
    CutAfter { events: usize, turn: Box<Turn> },
    /// Streams the first `after_events` events of `turn`, sends nothing for
    /// `duration_ms` while keeping the connection open, then streams the rest.
    Stall {
        after_events: usize,
        duration_ms: u64,
        turn: Box<Turn>,
    },
    /// Waits `delay_ms` before sending anything, headers included, then answers with `turn`.
    Delayed { delay_ms: u64, turn: Box<Turn> },
    /// Sends nothing until the test calls [`crate::ScriptedServer::release`]
    /// with `gate`, then answers with `turn`: holds an attempt running for
    /// exactly as long as the test needs it to.
    Held { gate: String, turn: Box<Turn> },
    /// Streams `turn` with a pause of `delay_ms` between events.
    Slow { delay_ms: u64, turn: Box<Turn> },
    /// Streams `turn` split into network writes of at most `chunk_bytes` bytes,
    /// so SSE lines arrive cut at arbitrary places.
    Fragmented { chunk_bytes: usize, turn: Box<Turn> },
    /// Answers 200 with an event-stream content type and `text` as the body, verbatim.
    Garbage { text: String },
    /// Sends each value as one SSE `data:` line as it is (Responses events also get an
    /// `event:` line from their `type`), followed by `data: [DONE]` on the chat endpoint
    /// when `done` is true. For odd shapes real servers send.
    RawEvents {
        events: Vec<serde_json::Value>,
        #[serde(default = "default_true")]
        done: bool,
    },
}

fn default_true() -> bool {
    true
}

impl Turn {
    /// The model answers with `text` and ends its turn.
    pub fn message(text: impl Into<String>) -> Self {
        Turn::Reply {
            text: Some(text.into()),
            tool_calls: Vec::new(),
            usage: None,
        }
    }

    /// The model calls one tool with `args` (serialised as JSON).
    pub fn tool_call(name: impl Into<String>, args: serde_json::Value) -> Self {
        Turn::tool_calls(vec![ScriptedToolCall::new(name, args)])
    }

    /// The model calls several tools in one turn (parallel tool calls).
    pub fn tool_calls(calls: Vec<ScriptedToolCall>) -> Self {
        Turn::Reply {
            text: None,
            tool_calls: calls,
            usage: None,
        }
    }

    /// The model says something, then calls one tool.
    pub fn message_then_tool_call(
        text: impl Into<String>,
        name: impl Into<String>,
        args: serde_json::Value,
    ) -> Self {
        Turn::Reply {
            text: Some(text.into()),
            tool_calls: vec![ScriptedToolCall::new(name, args)],
            usage: None,
        }
    }

    /// The model runs `cmd` through the `shell` tool as `["bash", "-lc", cmd]`.
    pub fn shell(cmd: impl Into<String>) -> Self {
        Turn::tool_call(
            "shell",
            serde_json::json!({ "command": ["bash", "-lc", cmd.into()] }),
        )
    }

    /// The model runs `cmd` through Codex CLI's `exec_command` tool (`{"cmd": cmd}`),
    /// for replaying a task against Codex.
    pub fn exec_command(cmd: impl Into<String>) -> Self {
        Turn::tool_call("exec_command", serde_json::json!({ "cmd": cmd.into() }))
    }

    /// The model calls the `apply_patch` tool with `patch` as its `input`.
    pub fn apply_patch(patch: impl Into<String>) -> Self {
        Turn::tool_call("apply_patch", serde_json::json!({ "input": patch.into() }))
    }

    /// The server answers `status` with `body` as it is.
    pub fn http_error(status: u16, body: impl Into<String>) -> Self {
        Turn::HttpError {
            status,
            body: body.into(),
            retry_after: None,
            retry_after_ms: None,
        }
    }

    /// The server answers `status` with an OpenAI-shaped error body carrying `message`.
    pub fn http_error_message(status: u16, message: &str) -> Self {
        let body = serde_json::json!({
            "error": { "message": message, "type": "scripted_error", "param": null, "code": null }
        });
        Turn::http_error(status, body.to_string())
    }

    /// The server answers `status` with `body` and asks the client to wait
    /// `wait` first: `retry-after-ms` in milliseconds and `retry-after` in
    /// whole seconds (rounded up), as OpenAI does.
    pub fn http_error_with_retry_after(
        status: u16,
        body: impl Into<String>,
        wait: Duration,
    ) -> Self {
        let millis = wait.as_millis();
        let seconds = millis.div_ceil(1000);
        Turn::HttpError {
            status,
            body: body.into(),
            retry_after: Some(seconds.to_string()),
            retry_after_ms: Some(millis.to_string()),
        }
    }

    /// Streams the first `n_events` events of `inner`, then closes the stream.
    pub fn cut_after(n_events: usize, inner: Turn) -> Self {
        Turn::CutAfter {
            events: n_events,
            turn: Box::new(inner),
        }
    }

    /// Opens the stream, sends nothing for `duration`, then streams `inner`.
    pub fn stall(inner: Turn, duration: Duration) -> Self {
        Turn::stall_after(0, inner, duration)
    }

    /// Streams `n_events` events of `inner`, goes silent for `duration`, then streams the rest.
    pub fn stall_after(n_events: usize, inner: Turn, duration: Duration) -> Self {
        Turn::Stall {
            after_events: n_events,
            duration_ms: duration_millis(duration),
            turn: Box::new(inner),
        }
    }

    /// Waits `delay` before answering at all (not even headers), then answers with `inner`.
    pub fn delayed(inner: Turn, delay: Duration) -> Self {
        Turn::Delayed {
            delay_ms: duration_millis(delay),
            turn: Box::new(inner),
        }
    }

    /// Answers with `inner` once the test releases `gate` (see [`Turn::Held`]).
    pub fn held(inner: Turn, gate: impl Into<String>) -> Self {
        Turn::Held {
            gate: gate.into(),
            turn: Box::new(inner),
        }
    }

    /// Streams `inner` with `delay` between events.
    pub fn slow(inner: Turn, delay: Duration) -> Self {
        Turn::Slow {
            delay_ms: duration_millis(delay),
            turn: Box::new(inner),
        }
    }

    /// Streams `inner` in network writes of at most `chunk_bytes` bytes.
    pub fn fragmented(inner: Turn, chunk_bytes: usize) -> Self {
        Turn::Fragmented {
            chunk_bytes,
            turn: Box::new(inner),
        }
    }

    /// Answers 200 with `text` as the event stream, verbatim.
    pub fn garbage(text: impl Into<String>) -> Self {
        Turn::Garbage { text: text.into() }
    }

    /// Sends `events` verbatim as SSE data lines (see [`Turn::RawEvents`]).
    pub fn raw_events(events: Vec<serde_json::Value>) -> Self {
        Turn::RawEvents { events, done: true }
    }

    /// Sets the usage a `Reply` reports (also inside wrappers such as `slow`).
    /// Has no effect on turns that never complete normally.
    pub fn with_usage(mut self, new_usage: Usage) -> Self {
        self.set_usage(new_usage);
        self
    }

    fn set_usage(&mut self, new_usage: Usage) {
        match self {
            Turn::Reply { usage, .. } => *usage = Some(new_usage),
            Turn::CutAfter { turn, .. }
            | Turn::Stall { turn, .. }
            | Turn::Delayed { turn, .. }
            | Turn::Held { turn, .. }
            | Turn::Slow { turn, .. }
            | Turn::Fragmented { turn, .. } => turn.set_usage(new_usage),
            Turn::HttpError { .. } | Turn::Garbage { .. } | Turn::RawEvents { .. } => {}
        }
    }
}

fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
