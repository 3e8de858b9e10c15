//! A scripted reply as the Responses API streams it: the event sequence
//! `response.created`, per output item `response.output_item.added` → deltas →
//! `response.output_item.done`, then `response.completed` with usage.

use kiln_protocol::Usage;
use serde_json::{json, Value};

use crate::render::{split_in_pieces, ReplyContext};
use crate::script::ScriptedToolCall;

/// The events of one successful reply, in order, as JSON objects with a `type`.
pub(crate) fn reply_events(
    ctx: &ReplyContext,
    text: Option<&str>,
    tool_calls: &[ScriptedToolCall],
    usage: Usage,
) -> Vec<Value> {
    let response_id = format!("resp_kiln_{}", ctx.turn_number);
    let mut events = Vec::new();
    let mut output = Vec::new();
    events.push(json!({
        "type": "response.created",
        "response": response_object(ctx, &response_id, "in_progress", &[], None),
    }));
    events.push(json!({
        "type": "response.in_progress",
        "response": response_object(ctx, &response_id, "in_progress", &[], None),
    }));

    if let Some(text) = text {
        let output_index = output.len();
        let item_id = format!("msg_kiln_{}_{}", ctx.turn_number, output_index);
        events.push(json!({
            "type": "response.output_item.added",
            "output_index": output_index,
            "item": {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []},
        }));
        events.push(json!({
            "type": "response.content_part.added",
            "item_id": item_id, "output_index": output_index, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []},
        }));
        for piece in split_in_pieces(text, 4) {
            events.push(json!({
                "type": "response.output_text.delta",
                "item_id": item_id, "output_index": output_index, "content_index": 0,
                "delta": piece,
            }));
        }
        events.push(json!({
            "type": "response.output_text.done",
            "item_id": item_id, "output_index": output_index, "content_index": 0,
            "text": text,
        }));
        let part = json!({"type": "output_text", "text": text, "annotations": []});
        events.push(json!({
            "type": "response.content_part.done",
            "item_id": item_id, "output_index": output_index, "content_index": 0,
            "part": part,
        }));
        let item = json!({
            "id": item_id, "type": "message", "status": "completed", "role": "assistant",
            "content": [part],
        });
        events.push(json!({"type": "response.output_item.done", "output_index": output_index, "item": item}));
        output.push(item);
    }

    for (index, call) in tool_calls.iter().enumerate() {
        let output_index = output.len();
        let item_id = format!("fc_kiln_{}_{}", ctx.turn_number, output_index);
        let call_id = ctx.call_id(call, index);
        events.push(json!({
            "type": "response.output_item.added",
            "output_index": output_index,
            "item": {
                "id": item_id, "type": "function_call", "status": "in_progress",
                "call_id": call_id, "name": call.name, "arguments": "",
            },
        }));
        for piece in split_in_pieces(&call.arguments, 3) {
            events.push(json!({
                "type": "response.function_call_arguments.delta",
                "item_id": item_id, "output_index": output_index, "delta": piece,
            }));
        }
        events.push(json!({
            "type": "response.function_call_arguments.done",
            "item_id": item_id, "output_index": output_index, "arguments": call.arguments,
        }));
        let item = json!({
            "id": item_id, "type": "function_call", "status": "completed",
            "call_id": call_id, "name": call.name, "arguments": call.arguments,
        });
        events.push(json!({"type": "response.output_item.done", "output_index": output_index, "item": item}));
        output.push(item);
    }

    events.push(json!({
        "type": "response.completed",
        "response": response_object(ctx, &response_id, "completed", &output, Some(usage)),
    }));
    for (sequence_number, event) in events.iter_mut().enumerate() {
        event["sequence_number"] = json!(sequence_number);
    }
    events
}

fn response_object(
    ctx: &ReplyContext,
    id: &str,
    status: &str,
    output: &[Value],
    usage: Option<Usage>,
) -> Value {
    let usage = usage.map(|usage| {
        json!({
            "input_tokens": usage.input_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.input_tokens + usage.output_tokens,
        })
    });
    json!({
        "id": id,
        "object": "response",
        "created_at": ctx.created_at,
        "status": status,
        "model": ctx.model,
        "output": output,
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "usage": usage,
    })
}

/// One Responses event as SSE text: an `event:` line naming its type, then the data.
pub(crate) fn sse_frame(event: &Value) -> String {
    match event.get("type").and_then(Value::as_str) {
        Some(kind) => format!("event: {kind}\ndata: {event}\n\n"),
        None => format!("data: {event}\n\n"),
    }
}
