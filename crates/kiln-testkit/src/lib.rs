//! Test support for kiln: a scripted OpenAI-compatible model server and fixture
//! repositories.
//!
//! [`ScriptedServer`] listens on a real loopback port and answers
//! `POST /v1/responses` (Responses API) and `POST /v1/chat/completions` (Chat
//! Completions), with or without the `/v1` prefix, by replaying a [`Script`] of
//! [`Turn`]s over real SSE, one turn per request, recording every request for
//! assertions. Turns cover realistic answers (streamed text, tool calls, usage)
//! and the failures clients must survive (HTTP errors with `retry-after`,
//! streams cut mid-way, stalls, garbage). [`fixtures::repo`] makes a real git
//! repository from a fixture project such as `calc-py`, and [`scenarios`]
//! holds ready-made scripts for them. The `kiln-testkit-server` binary serves
//! a JSON script for benchmarks. With the `postgres` feature, `postgres`
//! starts a throwaway PostgreSQL server for store and server tests.
//!
//! ```
//! use kiln_testkit::{Script, ScriptedServer, Turn};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let server = ScriptedServer::start(Script::new(vec![
//!     Turn::shell("python3 -m unittest -q"),
//!     Turn::message("All tests pass."),
//! ]))
//! .await;
//! let http = reqwest::Client::new();
//! let answer = http
//!     .post(format!("{}/responses", server.base_url()))
//!     .json(&serde_json::json!({"model": "m", "input": [], "stream": true}))
//!     .send()
//!     .await
//!     .unwrap()
//!     .text()
//!     .await
//!     .unwrap();
//! assert!(answer.contains("event: response.output_item.done"));
//! assert!(answer.contains(r#""name":"shell""#));
//! assert_eq!(server.turns_served(), 1);
//! assert_eq!(server.requests()[0].body["model"], "m");
//! # });
//! ```

mod chat_sse;
pub mod fixtures;
pub mod git_http;
pub mod postgres;
mod render;
mod responses_sse;
pub mod scenarios;
mod script;
mod server;

pub use render::WireApi;
pub use script::{Route, Script, ScriptedToolCall, Turn};
pub use server::{RecordedRequest, ScriptedServer};
