//! Chat Completions: `POST {base_url}/chat/completions` with `stream: true`,
//! as OpenAI, Ollama, vLLM, llama.cpp, LM Studio and most gateways serve it.

use kiln_protocol::{Item, Role, Usage};
use serde_json::{json, Value};

use crate::responses::preview;
use crate::sse::SseEvent;
use crate::transport::Transport;
use crate::turn_stream::{model_stream, StreamDecoder};
use crate::{
    ModelClient, ModelError, ModelEvent, ModelRequest, ModelStream, RetryNotices, TurnRetry,
};

pub(crate) struct ChatClient {
    transport: Transport,
}

impl ChatClient {
    pub fn new(transport: Transport) -> Self {
        ChatClient { transport }
    }
}

#[async_trait::async_trait]
impl ModelClient for ChatClient {
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
            .open("chat/completions", &request_body(request), on_retry)
            .await?;
        let decoder = ChatDecoder::new(events.provider().to_string());
        Ok(model_stream(events, decoder))
    }

    fn turn_retry(&self) -> TurnRetry {
        self.transport.turn_retry()
    }
}

/// The JSON body of a streamed chat request. Tool fields are left out when no
/// tools are offered, since some servers reject them on their own.
pub(crate) fn request_body(request: &ModelRequest) -> Value {
    let mut body = json!({
        "model": request.model,
        "messages": messages(&request.instructions, &request.input),
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    },
                })
            })
            .collect();
        body["tool_choice"] = json!("auto");
        body["parallel_tool_calls"] = json!(request.parallel_tool_calls);
    }
    if let Some(effort) = request.reasoning_effort {
        body["reasoning_effort"] = json!(effort);
    }
    body
}

/// The conversation as chat messages: the system prompt first; an assistant
/// message and the function calls right after it become one assistant message
/// with `tool_calls`; each output becomes a `tool` message.
pub(crate) fn messages(instructions: &str, items: &[Item]) -> Vec<Value> {
    let mut messages = Vec::with_capacity(items.len() + 1);
    if !instructions.is_empty() {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    // Whether the last message is an assistant turn that later calls may join.
    let mut open_assistant = false;
    for item in items {
        match item {
            Item::Message {
                role: Role::User,
                text,
            } => {
                messages.push(json!({"role": "user", "content": text}));
                open_assistant = false;
            }
            Item::Message {
                role: Role::Assistant,
                text,
            } => {
                messages.push(json!({"role": "assistant", "content": text}));
                open_assistant = true;
            }
            Item::FunctionCall {
                call_id,
                name,
                arguments,
            } => {
                let call = json!({
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                });
                match messages.last_mut() {
                    Some(last) if open_assistant => {
                        match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                            Some(calls) => calls.push(call),
                            None => last["tool_calls"] = json!([call]),
                        }
                    }
                    _ => messages
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
                open_assistant = true;
            }
            Item::FunctionCallOutput { call_id, output } => {
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
                open_assistant = false;
            }
        }
    }
    messages
}

/// A tool call being assembled from fragments.
#[derive(Debug, Default)]
struct PartialCall {
    index: Option<u64>,
    id: Option<String>,
    name: String,
    arguments: String,
}

impl PartialCall {
    fn merge(&mut self, id: Option<&str>, function: Option<&Value>) {
        if self.id.is_none() {
            self.id = id.filter(|id| !id.is_empty()).map(str::to_string);
        }
        let Some(function) = function else { return };
        if let Some(name) = function.get("name").and_then(Value::as_str) {
            // Names normally come once; servers that repeat the whole name on
            // every fragment must not make it "shellshell".
            if self.name != name {
                self.name.push_str(name);
            }
        }
        match function.get("arguments") {
            Some(Value::String(fragment)) => self.arguments.push_str(fragment),
            // A few servers send the arguments as a JSON object, whole.
            Some(Value::Null) | None => {}
            Some(object) => self.arguments = object.to_string(),
        }
    }

    fn is_empty(&self) -> bool {
        self.id.is_none() && self.name.is_empty() && self.arguments.is_empty()
    }
}

/// Whether a fragment with neither index nor id is a new call rather than more
/// of `last`: it names a tool and brings arguments while `last` is already
/// whole (named, with arguments that parse). Servers that send each call
/// complete in one fragment look like this.
fn starts_another_call(last: &PartialCall, function: Option<&Value>) -> bool {
    let Some(function) = function else {
        return false;
    };
    let names_a_tool = function
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|name| !name.is_empty());
    let brings_arguments = match function.get("arguments") {
        Some(Value::String(text)) => !text.trim().is_empty(),
        Some(Value::Null) | None => false,
        Some(_) => true,
    };
    names_a_tool
        && brings_arguments
        && !last.name.is_empty()
        && serde_json::from_str::<serde::de::IgnoredAny>(&last.arguments).is_ok()
}

/// Repairs arguments that some servers corrupt when their tool parser flushes
/// at the end of the stream: the streamed beginning followed by the whole
/// arguments again (`{"a":1}{"a":1}`, `{{"a":1}`). When the text is not JSON
/// but ends in a JSON object that starts with everything streamed before it,
/// that object is the intended arguments. Anything else passes through as it
/// is, for the agent to report.
fn undo_final_flush(arguments: String) -> String {
    if serde_json::from_str::<serde::de::IgnoredAny>(&arguments).is_ok() {
        return arguments;
    }
    let repaired = arguments
        .char_indices()
        .filter(|(start, ch)| *start > 0 && *ch == '{')
        .map(|(start, _)| arguments.split_at(start))
        .find(|(streamed, whole)| {
            let streamed = streamed.trim();
            whole.trim_start().starts_with(streamed)
                && serde_json::from_str::<serde_json::Map<String, Value>>(whole).is_ok()
        })
        .map(|(_, whole)| whole.trim().to_string());
    match repaired {
        Some(whole) => {
            tracing::debug!("tool arguments repeated by the server; kept the whole copy");
            whole
        }
        None => arguments,
    }
}

/// Assembles a streamed chat completion into [`ModelEvent`]s.
///
/// Text deltas go out as they arrive; the assistant message and the tool
/// calls go out when the stream ends (`[DONE]`, or the end of the body after
/// a `finish_reason`), followed by `Completed` with the usage chunk's numbers.
pub(crate) struct ChatDecoder {
    provider: String,
    text: String,
    calls: Vec<PartialCall>,
    /// The legacy `function_call` delta; used only when no `tool_calls` came.
    legacy_call: PartialCall,
    usage: Option<Usage>,
    finish_seen: bool,
}

impl ChatDecoder {
    pub fn new(provider: String) -> Self {
        ChatDecoder {
            provider,
            text: String::new(),
            calls: Vec::new(),
            legacy_call: PartialCall::default(),
            usage: None,
            finish_seen: false,
        }
    }

    /// Which call a fragment belongs to: by `index` when present (a new id on
    /// an index whose call already has a different id starts a new call, for
    /// servers that send index 0 for every call), else by `id`, else the last call.
    fn slot_for(
        &mut self,
        index: Option<u64>,
        id: Option<&str>,
        function: Option<&Value>,
    ) -> &mut PartialCall {
        let id = id.filter(|id| !id.is_empty());
        let found = match (index, id) {
            (Some(index), id) => {
                let by_index = self.calls.iter().rposition(|call| {
                    call.index == Some(index)
                        && !matches!((id, call.id.as_deref()), (Some(new), Some(old)) if new != old)
                });
                // A continuation that starts naming its index after an
                // index-less first fragment belongs to that fragment's call.
                let adopted = || {
                    let last = self.calls.len().checked_sub(1)?;
                    (id.is_none() && self.calls[last].index.is_none()).then_some(last)
                };
                let found = by_index.or_else(adopted);
                if let Some(slot) = found {
                    self.calls[slot].index = Some(index);
                }
                found
            }
            (None, Some(id)) => self
                .calls
                .iter()
                .rposition(|call| call.id.as_deref() == Some(id)),
            (None, None) => match self.calls.last() {
                Some(last) if starts_another_call(last, function) => None,
                Some(_) => Some(self.calls.len() - 1),
                None => None,
            },
        };
        let slot = match found {
            Some(slot) => slot,
            None => {
                self.calls.push(PartialCall {
                    index,
                    ..PartialCall::default()
                });
                self.calls.len() - 1
            }
        };
        &mut self.calls[slot]
    }

    fn on_delta(&mut self, delta: &Value, out: &mut Vec<ModelEvent>) {
        let content = match delta.get("content") {
            Some(Value::String(text)) => text.clone(),
            // Some servers send content as a list of typed parts.
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect(),
            _ => String::new(),
        };
        if !content.is_empty() {
            self.text.push_str(&content);
            out.push(ModelEvent::TextDelta(content));
        }
        let tool_calls = delta.get("tool_calls").and_then(Value::as_array);
        for fragment in tool_calls.into_iter().flatten() {
            let index = fragment.get("index").and_then(Value::as_u64);
            let id = fragment.get("id").and_then(Value::as_str);
            let function = fragment.get("function");
            self.slot_for(index, id, function).merge(id, function);
        }
        if tool_calls.is_none_or(|calls| calls.is_empty()) {
            if let Some(function_call) = delta.get("function_call").filter(|call| call.is_object())
            {
                self.legacy_call.merge(None, Some(function_call));
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<ModelEvent>) {
        if !self.text.trim().is_empty() {
            out.push(ModelEvent::ItemDone(Item::assistant(std::mem::take(
                &mut self.text,
            ))));
        }
        let mut calls: Vec<PartialCall> = std::mem::take(&mut self.calls)
            .into_iter()
            .filter(|call| !call.is_empty())
            .collect();
        if calls.is_empty() && !self.legacy_call.is_empty() {
            calls.push(std::mem::take(&mut self.legacy_call));
        }
        // One random stem per turn keeps synthetic ids unique across turns.
        let stem: u32 = rand::random();
        for (position, call) in calls.into_iter().enumerate() {
            let call_id = call
                .id
                .unwrap_or_else(|| format!("call_kiln_{stem:08x}_{position}"));
            // A tool without parameters may stream no argument text at all.
            let arguments = if call.arguments.trim().is_empty() {
                "{}".to_string()
            } else {
                undo_final_flush(call.arguments)
            };
            out.push(ModelEvent::ItemDone(Item::FunctionCall {
                call_id,
                name: call.name,
                arguments,
            }));
        }
        out.push(ModelEvent::Completed {
            usage: self.usage.take().unwrap_or_default(),
        });
    }
}

impl StreamDecoder for ChatDecoder {
    fn on_event(
        &mut self,
        event: &SseEvent,
        out: &mut Vec<ModelEvent>,
    ) -> Result<bool, ModelError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.finish(out);
            return Ok(true);
        }
        if data.is_empty() {
            return Ok(false);
        }
        let chunk: Value =
            serde_json::from_str(data).map_err(|error| ModelError::InvalidStream {
                provider: self.provider.clone(),
                detail: format!("chunk is not JSON ({error}): {}", preview(data)),
            })?;
        if let Some(error) = chunk.get("error").filter(|error| !error.is_null()) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| match error {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                });
            let code = error
                .get("code")
                .or_else(|| error.get("type"))
                .and_then(Value::as_str)
                .map(str::to_string);
            return Err(ModelError::Provider {
                provider: self.provider.clone(),
                retryable: ModelError::is_transient_code(code.as_deref()),
                message,
                code,
            });
        }
        if let Some(usage) = chunk.get("usage").filter(|usage| usage.is_object()) {
            let number =
                |pointer: &str| usage.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
            self.usage = Some(Usage {
                input_tokens: number("/prompt_tokens"),
                cached_input_tokens: number("/prompt_tokens_details/cached_tokens"),
                output_tokens: number("/completion_tokens"),
            });
        }
        let choices = chunk.get("choices").and_then(Value::as_array);
        // kiln asks for one choice; a server that sends more is read for the first.
        let first_choice = choices
            .into_iter()
            .flatten()
            .find(|choice| choice.get("index").and_then(Value::as_u64).unwrap_or(0) == 0);
        if let Some(choice) = first_choice {
            if let Some(delta) = choice.get("delta").or_else(|| choice.get("message")) {
                self.on_delta(delta, out);
            }
            if choice
                .get("finish_reason")
                .is_some_and(|reason| !reason.is_null())
            {
                self.finish_seen = true;
            }
        }
        Ok(false)
    }

    fn on_end(&mut self, out: &mut Vec<ModelEvent>) -> Result<(), ModelError> {
        // Some servers close right after the finish chunk without `[DONE]`;
        // the turn is whole then. Without a finish reason it was cut off.
        if self.finish_seen {
            self.finish(out);
            return Ok(());
        }
        Err(ModelError::StreamDisconnected {
            provider: self.provider.clone(),
            detail: "the stream ended without a finish_reason or [DONE]".to_string(),
        })
    }
}

#[cfg(test)]
#[path = "chat_tests.rs"]
mod tests;
