//! Model providers: one [`ModelClient`] trait, implemented for the OpenAI
//! Responses API and for Chat Completions (what Ollama, vLLM, llama.cpp,
//! LM Studio and most gateways speak).
//!
//! (Interface sketch; the implementation lands with issue 2.)

use std::pin::Pin;

use futures::Stream;
use kiln_protocol::{Item, Usage};
use serde::{Deserialize, Serialize};

/// A tool offered to the model, described by a JSON schema for its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// One model turn's input.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRequest {
    pub model: String,
    /// The system prompt (Responses `instructions`, Chat `system` message).
    pub instructions: String,
    pub input: Vec<Item>,
    pub tools: Vec<ToolSpec>,
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

pub type ModelStream = Pin<Box<dyn Stream<Item = Result<ModelEvent, ModelError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Other(String),
}

#[async_trait::async_trait]
pub trait ModelClient: Send + Sync {
    /// Start one turn. Transient HTTP failures before the stream starts are
    /// retried inside; a stream that breaks mid-way yields a retryable error.
    async fn stream(&self, request: &ModelRequest) -> Result<ModelStream, ModelError>;
}
