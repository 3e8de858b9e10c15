//! The OpenAI Responses API: `POST {base_url}/responses` with `stream: true`.

use kiln_protocol::{Item, Role, Usage};
use serde_json::{json, Value};

use crate::sse::SseEvent;
use crate::transport::Transport;
use crate::turn_stream::{model_stream, StreamDecoder};
use crate::{
    ModelClient, ModelError, ModelEvent, ModelRequest, ModelStream, RetryNotices, TurnRetry,
};

pub(crate) struct ResponsesClient {
    transport: Transport,
}

impl ResponsesClient {
    pub fn new(transport: Transport) -> Self {
        ResponsesClient { transport }
    }
}

#[async_trait::async_trait]
impl ModelClient for ResponsesClient {
    async fn stream(&self, request: &ModelRequest) -> Result<ModelStream, ModelError> {
        self.stream_reporting_retries(request, &|_| {}).await
    }

    async fn stream_reporting_retries(
        &self,
        request: &ModelRequest,
        on_retry: &RetryNotices<'_>,
    ) -> Result<ModelStream, ModelError> {
        let events = self
            .transport
            .open("responses", &request_body(request), on_retry)
            .await?;
        let decoder = ResponsesDecoder::new(events.provider().to_string());
        Ok(model_stream(events, decoder))
    }

    fn turn_retry(&self) -> TurnRetry {
        self.transport.turn_retry()
    }
}

/// The JSON body of a streamed Responses request. Nothing is stored server
/// side (`store: false`): every request carries the whole conversation.
/// Tool fields are left out when no tools are offered.
pub(crate) fn request_body(request: &ModelRequest) -> Value {
    let tools: Vec<Value> = request
        .tools
        .iter()
        .map(|tool| {
            json!({
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
                "strict": false,
            })
        })
        .collect();
    let mut body = json!({
        "model": request.model,
        "instructions": request.instructions,
        "input": request.input.iter().map(input_item).collect::<Vec<_>>(),
        "store": false,
        "stream": true,
    });
    // Tool options without tools are rejected by some servers.
    if !tools.is_empty() {
        body["tools"] = json!(tools);
        body["tool_choice"] = json!("auto");
        body["parallel_tool_calls"] = json!(request.parallel_tool_calls);
    }
    if let Some(effort) = request.reasoning_effort {
        body["reasoning"] = json!({ "effort": effort });
    }
    if let Some(key) = &request.prompt_cache_key {
        body["prompt_cache_key"] = json!(key);
    }
    body
}

fn input_item(item: &Item) -> Value {
    match item {
        Item::Message {
            role: Role::User,
            text,
        } => json!({
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        }),
        Item::Message {
            role: Role::Assistant,
            text,
        } => json!({
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text}],
        }),
        Item::FunctionCall {
            call_id,
            name,
            arguments,
        } => json!({
            "type": "function_call",
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
        }),
        Item::FunctionCallOutput { call_id, output } => json!({
            "type": "function_call_output",
            "call_id": call_id,
            "output": output,
        }),
    }
}

/// Maps Responses events to [`ModelEvent`]s; unknown event types are ignored.
pub(crate) struct ResponsesDecoder {
    provider: String,
    /// Items already handed out, so the final response's `output` adds only
    /// what no `output_item.done` event carried.
    emitted: Vec<Item>,
}

impl ResponsesDecoder {
    pub fn new(provider: String) -> Self {
        ResponsesDecoder {
            provider,
            emitted: Vec::new(),
        }
    }

    fn invalid(&self, detail: String) -> ModelError {
        ModelError::InvalidStream {
            provider: self.provider.clone(),
            detail,
        }
    }

    fn provider_error(&self, error: Option<&Value>, fallback: &str) -> ModelError {
        let message = error
            .and_then(|error| error.get("message"))
            .and_then(Value::as_str)
            .filter(|message| !message.is_empty())
            .unwrap_or(fallback)
            .to_string();
        let code = error
            .and_then(|error| error.get("code").or_else(|| error.get("type")))
            .and_then(Value::as_str)
            .map(str::to_string);
        ModelError::Provider {
            provider: self.provider.clone(),
            retryable: ModelError::is_transient_code(code.as_deref()),
            message,
            code,
        }
    }
}

impl StreamDecoder for ResponsesDecoder {
    fn on_event(
        &mut self,
        event: &SseEvent,
        out: &mut Vec<ModelEvent>,
    ) -> Result<bool, ModelError> {
        let mut data: Value = serde_json::from_str(&event.data).map_err(|error| {
            self.invalid(format!(
                "event data is not JSON ({error}): {}",
                preview(&event.data)
            ))
        })?;
        // A whole response object instead of events (a server that ignored
        // `stream: true`) reads like its final event.
        if data.get("type").is_none()
            && data.get("object").and_then(Value::as_str) == Some("response")
        {
            let status = data
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("completed");
            data = json!({ "type": format!("response.{status}"), "response": data });
        }
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or("");
        match kind {
            "response.output_text.delta" => {
                if let Some(delta) = data.get("delta").and_then(Value::as_str) {
                    if !delta.is_empty() {
                        out.push(ModelEvent::TextDelta(delta.to_string()));
                    }
                }
            }
            "response.output_item.done" => {
                if let Some(item) = data.get("item").and_then(output_item) {
                    self.emitted.push(item.clone());
                    out.push(ModelEvent::ItemDone(item));
                }
            }
            "response.completed" | "response.done" => {
                let response = data.get("response");
                // Some proxies skip `output_item.done` for some or all items;
                // the final response's output still lists them.
                let items = response
                    .and_then(|response| response.get("output"))
                    .and_then(Value::as_array);
                for item in items.into_iter().flatten().filter_map(output_item) {
                    if !self.emitted.contains(&item) {
                        out.push(ModelEvent::ItemDone(item));
                    }
                }
                let usage = response
                    .and_then(|response| response.get("usage"))
                    .map(parse_usage)
                    .unwrap_or_default();
                out.push(ModelEvent::Completed { usage });
                return Ok(true);
            }
            "response.failed" => {
                let error = data
                    .get("response")
                    .and_then(|response| response.get("error"));
                return Err(self.provider_error(error, "the response failed without a message"));
            }
            "response.incomplete" => {
                let reason = data
                    .pointer("/response/incomplete_details/reason")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown reason");
                return Err(ModelError::Provider {
                    provider: self.provider.clone(),
                    message: format!("the response is incomplete: {reason}"),
                    code: Some(reason.to_string()),
                    retryable: false,
                });
            }
            "error" => {
                let error = data.get("error").unwrap_or(&data);
                return Err(self.provider_error(
                    Some(error),
                    "the stream reported an error without a message",
                ));
            }
            _ => {}
        }
        Ok(false)
    }

    fn on_end(&mut self, _out: &mut Vec<ModelEvent>) -> Result<(), ModelError> {
        Err(ModelError::StreamDisconnected {
            provider: self.provider.clone(),
            detail: "the stream ended without response.completed".to_string(),
        })
    }
}

/// An output item as a conversation [`Item`]; `None` for kinds kiln does not
/// keep (reasoning, web search calls…).
fn output_item(item: &Value) -> Option<Item> {
    match item.get("type").and_then(Value::as_str)? {
        "message" => {
            let text: String = item
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|part| {
                    matches!(
                        part.get("type").and_then(Value::as_str),
                        Some("output_text" | "refusal")
                    )
                })
                .filter_map(|part| {
                    part.get("text")
                        .or_else(|| part.get("refusal"))
                        .and_then(Value::as_str)
                })
                .collect();
            Some(Item::assistant(text))
        }
        "function_call" => {
            let field = |name: &str| {
                item.get(name)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let call_id = Some(field("call_id"))
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| field("id"));
            Some(Item::FunctionCall {
                call_id,
                name: field("name"),
                arguments: field("arguments"),
            })
        }
        _ => None,
    }
}

fn parse_usage(usage: &Value) -> Usage {
    let number = |pointer: &str| usage.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: number("/input_tokens"),
        cached_input_tokens: number("/input_tokens_details/cached_tokens"),
        output_tokens: number("/output_tokens"),
    }
}

/// The start of a payload, for error messages.
pub(crate) fn preview(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
#[path = "responses_tests.rs"]
mod tests;
