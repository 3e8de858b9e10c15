//! Keeping secret values out of everything kiln stores, streams or sends to
//! the model.
//!
//! An environment's secrets reach its setup script; a script (or the agent,
//! if a secret lingers in a file) may print one, or encode it first: a basic
//! auth header is base64 of `user:secret`, a URL carries it percent-encoded, a
//! hash dump shows it in hex. A [`Redactor`] built from the secret values
//! replaces every occurrence of a value, and of its common encodings, with
//! `[REDACTED:NAME]`:
//!
//! - the value itself, JSON-escaped (as inside a JSON string) and
//!   percent-encoded (upper and lower case hex digits, `+` or `%20` for spaces);
//! - hex, lower and upper case;
//! - base64 with the standard and the URL-safe alphabet, padded and not, and
//!   at each of the 3 alignments: when the value sits inside a longer encoded
//!   string (`base64("user:" + secret)`), the characters that depend only on
//!   the value's bytes are found whatever precedes it.
//!
//! Values shorter than [`MIN_SECRET_LEN`] bytes are ignored: redacting every
//! `1` or `yes` would make output unreadable and protect nothing.
//!
//! ```
//! use kiln_agent::Redactor;
//!
//! let redactor = Redactor::new([("NPM_TOKEN", "npm_s3cr3t_value")]);
//! assert_eq!(
//!     redactor.redact("token=npm_s3cr3t_value; auth=bnBtX3MzY3IzdF92YWx1ZQ=="),
//!     "token=[REDACTED:NPM_TOKEN]; auth=[REDACTED:NPM_TOKEN]"
//! );
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use kiln_protocol::{CitationCheck, EventKind, FileChange, Item, PlanItem};

/// Secret values shorter than this many bytes are not redacted.
pub const MIN_SECRET_LEN: usize = 4;

/// Replaces secret values and their encodings; see the module documentation.
/// Cheap to share: clone the `Arc` from [`Redactor::shared`].
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Every form to look for, longest first so that a full padded encoding
    /// wins over its unpadded core at the same position.
    needles: Vec<Needle>,
}

#[derive(Debug, Clone)]
struct Needle {
    text: String,
    replacement: Arc<str>,
}

impl Redactor {
    /// A redactor for `secrets`, given as (name, value) pairs. The name shows
    /// in the replacement, so a reader knows which secret was there.
    pub fn new<N, V>(secrets: impl IntoIterator<Item = (N, V)>) -> Self
    where
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let mut needles: Vec<Needle> = Vec::new();
        for (name, value) in secrets {
            let value = value.as_ref();
            if value.len() < MIN_SECRET_LEN {
                continue;
            }
            let replacement: Arc<str> = format!("[REDACTED:{}]", name.as_ref()).into();
            for text in encodings(value) {
                if !needles.iter().any(|n| n.text == text) {
                    needles.push(Needle {
                        text,
                        replacement: replacement.clone(),
                    });
                }
            }
        }
        needles.sort_by_key(|needle| std::cmp::Reverse(needle.text.len()));
        Redactor { needles }
    }

    /// True when there is nothing to redact (no secrets, or all too short).
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every secret form replaced; borrowed when there was none.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let spans = self.spans(text);
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for span in spans {
            out.push_str(&text[at..span.start]);
            out.push_str(&span.replacement);
            at = span.end;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }

    fn redact_owned(&self, text: String) -> String {
        match self.redact(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(redacted) => redacted,
        }
    }

    /// The byte length of the longest form searched for.
    fn longest(&self) -> usize {
        self.needles.first().map_or(0, |n| n.text.len())
    }

    /// Where secret forms occur in `text`, in order, overlapping occurrences
    /// merged (the union is redacted, under the first one's name).
    fn spans(&self, text: &str) -> Vec<Span> {
        let mut found: Vec<Span> = Vec::new();
        for needle in &self.needles {
            for (start, matched) in text.match_indices(needle.text.as_str()) {
                found.push(Span {
                    start,
                    end: start + matched.len(),
                    replacement: needle.replacement.clone(),
                });
            }
        }
        found.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        let mut merged: Vec<Span> = Vec::with_capacity(found.len());
        for span in found {
            match merged.last_mut() {
                Some(last) if span.start < last.end => last.end = last.end.max(span.end),
                _ => merged.push(span),
            }
        }
        merged
    }

    /// A redactor for text that arrives in pieces (a command's output): a
    /// secret split between two pieces is still found. See [`StreamRedactor`].
    pub fn stream(self: &Arc<Self>) -> StreamRedactor {
        StreamRedactor {
            redactor: self.clone(),
            pending: String::new(),
        }
    }

    /// `kind` with every text field redacted: messages, tool calls and
    /// outputs, command lines and output, setup output, diffs, plans,
    /// citations, warnings, errors and the final message.
    pub fn redact_event(&self, kind: EventKind) -> EventKind {
        if self.is_empty() {
            return kind;
        }
        let r = |text: String| self.redact_owned(text);
        // Exhaustive on purpose: a new event kind must decide what it redacts.
        match kind {
            EventKind::AttemptStarted {
                mode,
                model,
                provider,
                cwd,
                instructions,
            } => EventKind::AttemptStarted {
                mode,
                model,
                provider,
                cwd: r(cwd),
                instructions: instructions.into_iter().map(r).collect(),
            },
            EventKind::SetupFinished {
                success,
                exit_code,
                duration_ms,
                reason,
            } => EventKind::SetupFinished {
                success,
                exit_code,
                duration_ms,
                reason: reason.map(r),
            },
            EventKind::DiffReady {
                stat,
                bytes,
                cut,
                diff,
                fetch,
            } => EventKind::DiffReady {
                stat,
                bytes,
                cut,
                diff: diff.map(r),
                fetch,
            },
            EventKind::CommitCreated { branch, sha, base } => {
                EventKind::CommitCreated { branch, sha, base }
            }
            EventKind::TaskStatus { task_id, status } => EventKind::TaskStatus { task_id, status },
            EventKind::SetupOutput { stream, text } => EventKind::SetupOutput {
                stream,
                text: r(text),
            },
            EventKind::ModelDelta { text } => EventKind::ModelDelta { text: r(text) },
            EventKind::Message { role, text } => EventKind::Message {
                role,
                text: r(text),
            },
            EventKind::ToolCall {
                call_id,
                name,
                arguments,
            } => EventKind::ToolCall {
                call_id,
                name,
                arguments: r(arguments),
            },
            EventKind::ToolOutput {
                call_id,
                output,
                success,
            } => EventKind::ToolOutput {
                call_id,
                output: r(output),
                success,
            },
            EventKind::ExecBegin {
                call_id,
                chunk_id,
                command,
                cwd,
            } => EventKind::ExecBegin {
                call_id,
                chunk_id,
                command: command.into_iter().map(r).collect(),
                cwd: r(cwd),
            },
            EventKind::ExecOutput {
                chunk_id,
                stream,
                text,
            } => EventKind::ExecOutput {
                chunk_id,
                stream,
                text: r(text),
            },
            EventKind::ExecEnd {
                call_id,
                chunk_id,
                exit_code,
                duration_ms,
                timed_out,
                killed_by,
                omitted_bytes,
            } => EventKind::ExecEnd {
                call_id,
                chunk_id,
                exit_code,
                duration_ms,
                timed_out,
                killed_by: killed_by.map(r),
                omitted_bytes,
            },
            EventKind::PatchApplied { call_id, changes } => EventKind::PatchApplied {
                call_id,
                changes: changes
                    .into_iter()
                    .map(|change| FileChange {
                        path: r(change.path),
                        kind: change.kind,
                        moved_from: change.moved_from.map(r),
                        diff: r(change.diff),
                    })
                    .collect(),
            },
            EventKind::PlanUpdated { explanation, plan } => EventKind::PlanUpdated {
                explanation: explanation.map(r),
                plan: plan
                    .into_iter()
                    .map(|item| PlanItem {
                        step: r(item.step),
                        ..item
                    })
                    .collect(),
            },
            usage @ EventKind::Usage { .. } => usage,
            EventKind::CheckFinished(check) => {
                EventKind::CheckFinished(kiln_protocol::CheckResult {
                    command: r(check.command),
                    reason: check.reason.map(r),
                    ..check
                })
            }
            // Written by the server from its own rows: nothing of the sandbox in them.
            ranked @ EventKind::TaskRanked { .. } => ranked,
            EventKind::PrOpened {
                forge,
                number,
                url,
                branch,
                updated,
            } => EventKind::PrOpened {
                forge,
                number,
                url: r(url),
                branch,
                updated,
            },
            EventKind::ContextCompacted {
                items,
                tokens_before,
            } => EventKind::ContextCompacted {
                items: items
                    .into_iter()
                    .map(|item| self.redact_item(item))
                    .collect(),
                tokens_before,
            },
            EventKind::CitationChecked(check) => EventKind::CitationChecked(CitationCheck {
                citation: r(check.citation),
                valid: check.valid,
                reason: check.reason.map(r),
            }),
            EventKind::Warning { message } => EventKind::Warning {
                message: r(message),
            },
            EventKind::Error { message } => EventKind::Error {
                message: r(message),
            },
            EventKind::AttemptFinished {
                status,
                reason,
                final_message,
                usage,
                cost_usd,
            } => EventKind::AttemptFinished {
                status,
                reason: reason.map(r),
                final_message: final_message.map(r),
                usage,
                cost_usd,
            },
        }
    }

    /// `item` with its text, arguments or output redacted.
    pub fn redact_item(&self, item: Item) -> Item {
        match item {
            Item::Message { role, text } => Item::Message {
                role,
                text: self.redact_owned(text),
            },
            Item::FunctionCall {
                call_id,
                name,
                arguments,
            } => Item::FunctionCall {
                call_id,
                name,
                arguments: self.redact_owned(arguments),
            },
            Item::FunctionCallOutput { call_id, output } => Item::FunctionCallOutput {
                call_id,
                output: self.redact_owned(output),
            },
        }
    }
}

struct Span {
    start: usize,
    end: usize,
    replacement: Arc<str>,
}

/// Redacts text that arrives in pieces. Each [`push`](Self::push) returns
/// what can be shown now: it holds back the last few bytes that could be
/// the start of a secret completed by the next piece (at most the longest
/// secret form, less one byte), and [`finish`](Self::finish) returns the rest.
/// The concatenation of everything returned is the redacted concatenation of
/// everything pushed.
#[derive(Debug)]
pub struct StreamRedactor {
    redactor: Arc<Redactor>,
    pending: String,
}

impl StreamRedactor {
    /// Add a piece; returns the redacted text that is safe to release.
    pub fn push(&mut self, piece: &str) -> String {
        let keep = self.redactor.longest().saturating_sub(1);
        if keep == 0 {
            return piece.to_string();
        }
        self.pending.push_str(piece);
        if self.pending.len() <= keep {
            return String::new();
        }
        let mut cut = self.pending.len() - keep;
        while !self.pending.is_char_boundary(cut) {
            cut -= 1;
        }
        // A secret that starts before the cut ends within the pending text
        // (it is at most `keep + 1` bytes long): release it whole.
        for span in self.redactor.spans(&self.pending) {
            if span.start < cut && span.end > cut {
                cut = span.end;
            }
        }
        let rest = self.pending.split_off(cut);
        let released = std::mem::replace(&mut self.pending, rest);
        self.redactor.redact_owned(released)
    }

    /// Everything still held back, redacted.
    pub fn finish(&mut self) -> String {
        self.redactor
            .redact_owned(std::mem::take(&mut self.pending))
    }
}

/// Every form of `value` to look for.
fn encodings(value: &str) -> Vec<String> {
    let bytes = value.as_bytes();
    let mut forms = vec![value.to_string()];
    if let Ok(json) = serde_json::to_string(value) {
        forms.push(json[1..json.len() - 1].to_string());
    }
    forms.push(percent_encode(bytes, false, true));
    forms.push(percent_encode(bytes, false, false));
    forms.push(percent_encode(bytes, true, true));
    forms.push(hex(bytes, false));
    forms.push(hex(bytes, true));
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(engine.encode(bytes));
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3usize {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(bytes);
            let encoded = engine.encode(&shifted);
            // Characters carrying any bit of the filler, or of whatever
            // follows the value, are left out: 6 bits per character.
            let first = (8 * offset).div_ceil(6);
            let last = 8 * (offset + bytes.len()) / 6;
            if let Some(core) = encoded.get(first..last) {
                forms.push(core.to_string());
            }
        }
    }
    forms.sort();
    forms.dedup();
    forms.retain(|form| form.len() >= MIN_SECRET_LEN);
    forms
}

/// Percent-encoding of everything but RFC 3986's unreserved characters.
fn percent_encode(bytes: &[u8], form_spaces: bool, upper: bool) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else if form_spaces && byte == b' ' {
            out.push('+');
        } else if upper {
            out.push_str(&format!("%{byte:02X}"));
        } else {
            out.push_str(&format!("%{byte:02x}"));
        }
    }
    out
}

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "redact_tests.rs"]
mod tests;
