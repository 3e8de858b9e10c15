//! Model providers: one [`ModelClient`] trait, implemented for the OpenAI
//! Responses API and for Chat Completions (what Ollama, vLLM, llama.cpp,
//! LM Studio and most gateways speak), chosen per provider by
//! [`ProviderConfig::wire_api`].
//!
//! [`connect`] validates a [`ProviderConfig`], resolves its API key and returns
//! a client whose [`ModelClient::stream`] sends one turn and yields
//! [`ModelEvent`]s as the server streams them: text deltas for live display,
//! complete items (assistant messages, function calls with their arguments
//! assembled), then `Completed` with the token usage. Failures before the
//! stream starts (connection refused, 429, 5xx) are retried with backoff
//! inside, honouring `retry-after`; a stream that breaks or goes silent
//! yields a retryable [`ModelError`] the caller can retry with
//! [`ModelClient::turn_retry`]. Every error says which provider failed, what
//! it answered, and what to check.
//!
//! ```
//! use futures::StreamExt;
//! use kiln_model::{connect, ModelEvent, ModelRequest, ProviderConfig, WireApi};
//! use kiln_protocol::Item;
//! use kiln_testkit::{Script, ScriptedServer, Turn};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // A local OpenAI-compatible server (here a scripted one) needs no key.
//! let server = ScriptedServer::start(Script::new(vec![Turn::message("Hello!")])).await;
//! let provider = ProviderConfig::new("local", server.base_url(), None, WireApi::Chat);
//! let client = connect(&provider)?;
//!
//! let request = ModelRequest {
//!     model: "qwen3-coder".into(),
//!     instructions: "You are a helpful assistant.".into(),
//!     input: vec![Item::user("Say hello.")],
//!     ..ModelRequest::default()
//! };
//! let mut stream = client.stream(&request).await?;
//! let mut text = String::new();
//! while let Some(event) = stream.next().await {
//!     match event? {
//!         ModelEvent::TextDelta(delta) => text.push_str(&delta),
//!         ModelEvent::ItemDone(item) => assert_eq!(item, Item::assistant("Hello!")),
//!         ModelEvent::Completed { usage } => assert!(usage.input_tokens > 0),
//!     }
//! }
//! assert_eq!(text, "Hello!");
//! # Ok::<(), kiln_model::ModelError>(())
//! # }).unwrap();
//! ```

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kiln_protocol::{Item, Usage};
use serde::{Deserialize, Serialize};

mod chat;
mod config;
mod error;
mod pricing;
mod responses;
mod retry;
mod sse;
mod transport;
mod turn_stream;

pub use config::{ProviderConfig, WireApi, OPENAI_DEFAULT_BASE_URL};
pub use error::ModelError;
pub use pricing::{InvalidPrice, ModelPrice, PriceTable};
pub use retry::{RetryPolicy, TurnRetry};

/// A tool offered to the model, described by a JSON schema for its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// How hard a reasoning model should think (Responses `reasoning.effort`,
/// Chat `reasoning_effort`); not sent when unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningEffort {
    Minimal,
    Low,
    Medium,
    High,
}

/// A request that failed before its answer began streaming, about to be
/// sent again after `delay`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRetry {
    /// 1 for the first retry.
    pub retry: u32,
    /// `request_max_retries`.
    pub of: u32,
    pub delay: std::time::Duration,
    /// Why the request failed, as [`ModelError`]'s message.
    pub error: String,
}

/// Who hears about request retries (see [`ModelClient::stream_reporting_retries`]).
pub type RetryNotices<'a> = dyn Fn(&RequestRetry) + Send + Sync + 'a;

/// One model turn's input.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRequest {
    pub model: String,
    /// The system prompt (Responses `instructions`, Chat `system` message).
    pub instructions: String,
    pub input: Vec<Item>,
    pub tools: Vec<ToolSpec>,
    /// Whether the model may call several tools in one turn (default true).
    pub parallel_tool_calls: bool,
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Responses `prompt_cache_key`: requests sharing it are routed to share a
    /// prompt cache (e.g. one attempt's id). Not sent on Chat Completions.
    pub prompt_cache_key: Option<String>,
}

impl Default for ModelRequest {
    fn default() -> Self {
        ModelRequest {
            model: String::new(),
            instructions: String::new(),
            input: Vec::new(),
            tools: Vec::new(),
            parallel_tool_calls: true,
            reasoning_effort: None,
            prompt_cache_key: None,
        }
    }
}

/// What a streaming turn yields, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    /// A piece of assistant text, for live display.
    TextDelta(String),
    /// A complete output item (assistant message or function call).
    ItemDone(Item),
    /// The turn ended; always last on success.
    Completed { usage: Usage },
}

/// The events of one turn. After an `Err` or `Completed` nothing more comes.
pub type ModelStream = Pin<Box<dyn Stream<Item = Result<ModelEvent, ModelError>> + Send>>;

#[async_trait::async_trait]
pub trait ModelClient: Send + Sync {
    /// Start one turn. Transient HTTP failures before the stream starts are
    /// retried inside; a stream that breaks mid-way yields a retryable error.
    async fn stream(&self, request: &ModelRequest) -> Result<ModelStream, ModelError>;

    /// [`ModelClient::stream`], telling `on_retry` about each failed request
    /// it is about to send again, so that the retries reach the event log.
    async fn stream_reporting_retries(
        &self,
        request: &ModelRequest,
        on_retry: &RetryNotices<'_>,
    ) -> Result<ModelStream, ModelError> {
        let _ = on_retry;
        self.stream(request).await
    }

    /// How the caller should retry a turn whose stream failed with a
    /// retryable error: the provider's `stream_max_retries` and backoff.
    fn turn_retry(&self) -> TurnRetry {
        TurnRetry::default()
    }
}

/// A client for `provider`, speaking its wire API.
///
/// Fails when the provider's key variable is unset ([`ModelError::MissingApiKey`])
/// or its configuration cannot work ([`ModelError::InvalidConfig`]); does not
/// contact the server.
pub fn connect(provider: &ProviderConfig) -> Result<Arc<dyn ModelClient>, ModelError> {
    let transport = transport::Transport::new(provider)?;
    Ok(match provider.wire_api {
        WireApi::Responses => Arc::new(responses::ResponsesClient::new(transport)),
        WireApi::Chat => Arc::new(chat::ChatClient::new(transport)),
    })
}
