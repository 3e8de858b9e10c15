//! Turns a scripted [`Turn`] into what goes on the wire for one wire API:
//! either a plain HTTP answer or a paced list of SSE frames.

use std::time::Duration;

use kiln_protocol::Usage;

use crate::script::{ScriptedToolCall, Turn};
use crate::{chat_sse, responses_sse};

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireApi {
    Responses,
    Chat,
}

/// Facts about the request a reply is rendered for.
pub(crate) struct ReplyContext {
    /// 1-based position of the turn in the script.
    pub turn_number: usize,
    pub model: String,
    pub created_at: u64,
    pub request_bytes: usize,
}

impl ReplyContext {
    pub fn call_id(&self, call: &ScriptedToolCall, index: usize) -> String {
        call.call_id
            .clone()
            .unwrap_or_else(|| format!("call_{}_{}", self.turn_number, index))
    }
}

/// A streamed answer and how to pace it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamPlan {
    pub frames: Vec<String>,
    pub delay_between_frames: Duration,
    /// Go silent for the duration after this many frames.
    pub stall: Option<(usize, Duration)>,
    /// End the body after this many frames.
    pub cut_after: Option<usize>,
    /// Split the body into writes of at most this many bytes.
    pub chunk_bytes: Option<usize>,
}

impl StreamPlan {
    fn new(frames: Vec<String>) -> Self {
        StreamPlan {
            frames,
            delay_between_frames: Duration::ZERO,
            stall: None,
            cut_after: None,
            chunk_bytes: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    Http {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    Stream(StreamPlan),
}

pub(crate) fn render(turn: &Turn, wire: WireApi, ctx: &ReplyContext) -> Answer {
    match turn {
        Turn::Reply {
            text,
            tool_calls,
            usage,
        } => {
            let usage = usage.unwrap_or_else(|| estimate_usage(ctx, text.as_deref(), tool_calls));
            let frames = match wire {
                WireApi::Responses => {
                    responses_sse::reply_events(ctx, text.as_deref(), tool_calls, usage)
                        .iter()
                        .map(responses_sse::sse_frame)
                        .collect()
                }
                WireApi::Chat => {
                    let mut frames: Vec<String> =
                        chat_sse::reply_chunks(ctx, text.as_deref(), tool_calls, usage)
                            .iter()
                            .map(chat_sse::sse_frame)
                            .collect();
                    frames.push(chat_sse::DONE_FRAME.to_string());
                    frames
                }
            };
            Answer::Stream(StreamPlan::new(frames))
        }
        Turn::HttpError {
            status,
            body,
            retry_after,
            retry_after_ms,
        } => {
            let mut headers = vec![("content-type", "application/json".to_string())];
            if let Some(value) = retry_after {
                headers.push(("retry-after", value.clone()));
            }
            if let Some(value) = retry_after_ms {
                headers.push(("retry-after-ms", value.clone()));
            }
            Answer::Http {
                status: *status,
                headers,
                body: body.clone(),
            }
        }
        Turn::Garbage { text } => Answer::Stream(StreamPlan::new(vec![text.clone()])),
        Turn::RawEvents { events, done } => {
            let mut frames: Vec<String> = match wire {
                WireApi::Responses => events.iter().map(responses_sse::sse_frame).collect(),
                WireApi::Chat => events.iter().map(chat_sse::sse_frame).collect(),
            };
            if *done && wire == WireApi::Chat {
                frames.push(chat_sse::DONE_FRAME.to_string());
            }
            Answer::Stream(StreamPlan::new(frames))
        }
        Turn::CutAfter { events, turn } => with_plan(render(turn, wire, ctx), |plan| {
            plan.cut_after = Some(*events);
        }),
        Turn::Stall {
            after_events,
            duration_ms,
            turn,
        } => with_plan(render(turn, wire, ctx), |plan| {
            plan.stall = Some((*after_events, Duration::from_millis(*duration_ms)));
        }),
        // The wait happens in the server before it answers.
        Turn::Delayed { turn, .. } | Turn::Held { turn, .. } => render(turn, wire, ctx),
        Turn::Slow { delay_ms, turn } => with_plan(render(turn, wire, ctx), |plan| {
            plan.delay_between_frames = Duration::from_millis(*delay_ms);
        }),
        Turn::Fragmented { chunk_bytes, turn } => with_plan(render(turn, wire, ctx), |plan| {
            plan.chunk_bytes = Some((*chunk_bytes).max(1));
        }),
    }
}

/// The gates `turn` waits for before answering, outermost first.
pub(crate) fn held_gates(turn: &Turn) -> Vec<&str> {
    match turn {
        Turn::Held { gate, turn } => {
            let mut gates = vec![gate.as_str()];
            gates.extend(held_gates(turn));
            gates
        }
        Turn::CutAfter { turn, .. }
        | Turn::Stall { turn, .. }
        | Turn::Delayed { turn, .. }
        | Turn::Slow { turn, .. }
        | Turn::Fragmented { turn, .. } => held_gates(turn),
        Turn::Reply { .. }
        | Turn::HttpError { .. }
        | Turn::Garbage { .. }
        | Turn::RawEvents { .. } => Vec::new(),
    }
}

/// How long to wait before answering at all.
pub(crate) fn answer_delay(turn: &Turn) -> Duration {
    match turn {
        Turn::Delayed { delay_ms, turn } => Duration::from_millis(*delay_ms) + answer_delay(turn),
        Turn::CutAfter { turn, .. }
        | Turn::Held { turn, .. }
        | Turn::Stall { turn, .. }
        | Turn::Slow { turn, .. }
        | Turn::Fragmented { turn, .. } => answer_delay(turn),
        Turn::Reply { .. }
        | Turn::HttpError { .. }
        | Turn::Garbage { .. }
        | Turn::RawEvents { .. } => Duration::ZERO,
    }
}

/// Applies a pacing wrapper; an HTTP error answer has nothing to pace.
fn with_plan(answer: Answer, change: impl FnOnce(&mut StreamPlan)) -> Answer {
    match answer {
        Answer::Stream(mut plan) => {
            change(&mut plan);
            Answer::Stream(plan)
        }
        http => http,
    }
}

/// About four bytes per token, like the usual rule of thumb; deterministic for a
/// given request so benchmarks see context growth turn over turn.
fn estimate_usage(ctx: &ReplyContext, text: Option<&str>, calls: &[ScriptedToolCall]) -> Usage {
    let output_bytes = text.map_or(0, str::len)
        + calls
            .iter()
            .map(|call| call.name.len() + call.arguments.len())
            .sum::<usize>();
    Usage {
        input_tokens: (ctx.request_bytes / 4).max(1) as u64,
        cached_input_tokens: 0,
        output_tokens: (output_bytes / 4).max(1) as u64,
    }
}

/// Splits `text` into at most `pieces` non-empty parts on character boundaries,
/// so deltas exercise the client's reassembly.
pub(crate) fn split_in_pieces(text: &str, pieces: usize) -> Vec<&str> {
    if text.is_empty() {
        return Vec::new();
    }
    let target = text.len().div_ceil(pieces.max(1));
    let mut parts = Vec::with_capacity(pieces);
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = target.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        let (head, tail) = rest.split_at(cut);
        parts.push(head);
        rest = tail;
    }
    parts
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
