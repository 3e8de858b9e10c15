//! A scripted reply as Chat Completions streams it: `chat.completion.chunk`
//! objects with content deltas, tool calls assembled by `index` (id and name on
//! the first fragment only), a finish chunk, a usage chunk with empty
//! `choices`, and `data: [DONE]`.

use kiln_protocol::Usage;
use serde_json::{json, Value};

use crate::render::{split_in_pieces, ReplyContext};
use crate::script::ScriptedToolCall;

/// The chunks of one successful reply, in order (without the final `[DONE]`).
pub(crate) fn reply_chunks(
    ctx: &ReplyContext,
    text: Option<&str>,
    tool_calls: &[ScriptedToolCall],
    usage: Usage,
) -> Vec<Value> {
    let chunk_id = format!("chatcmpl-kiln-{}", ctx.turn_number);
    let chunk = |choices: Value| {
        json!({
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": ctx.created_at,
            "model": ctx.model,
            "choices": choices,
        })
    };
    let delta = |delta: Value, finish_reason: Value| {
        chunk(
            json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }]),
        )
    };

    let mut chunks = vec![delta(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    if let Some(text) = text {
        for piece in split_in_pieces(text, 4) {
            chunks.push(delta(json!({ "content": piece }), Value::Null));
        }
    }
    for (index, call) in tool_calls.iter().enumerate() {
        chunks.push(delta(
            json!({"tool_calls": [{
                "index": index,
                "id": ctx.call_id(call, index),
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }]}),
            Value::Null,
        ));
        for piece in split_in_pieces(&call.arguments, 3) {
            chunks.push(delta(
                json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
    }
    let finish_reason = if tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    chunks.push(delta(json!({}), json!(finish_reason)));
    let mut usage_chunk = chunk(json!([]));
    usage_chunk["usage"] = json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
    });
    chunks.push(usage_chunk);
    chunks
}

/// One chunk as SSE text.
pub(crate) fn sse_frame(chunk: &Value) -> String {
    format!("data: {chunk}\n\n")
}

/// The terminator every OpenAI-compatible server sends last.
pub(crate) const DONE_FRAME: &str = "data: [DONE]\n\n";
