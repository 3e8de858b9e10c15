//! The human-readable view of an event stream, written to stderr as it
//! happens. Stdout stays free for the final message (and `--json`).
//!
//! Every text in an event may come from a command or the model, and a
//! terminal obeys control sequences in what it is given: OSC 52 writes the
//! clipboard, CSI sequences clear the screen or move the cursor over what was
//! shown, a lone carriage return hides the start of a line. So every string
//! of an event is passed through [`terminal_safe`] before it is rendered, and
//! the only control sequences written are the renderer's own colours.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use kiln_protocol::{
    AttemptStatus, Event, EventKind, EventSink, ExecStream, FileChangeKind, Role, StepStatus,
};

/// Lines of one command's output shown live; the rest stays in the log.
const OUTPUT_LINES_SHOWN: usize = 40;

pub struct HumanRenderer {
    style: Style,
    state: Mutex<RenderState>,
}

#[derive(Default)]
struct RenderState {
    streaming_text: bool,
    /// The assistant text since the last `message` event was shown as deltas.
    message_streamed: bool,
    chunk_lines_shown: usize,
    chunk_elided: bool,
    pending_partial_line: bool,
    /// The model of the attempt, from `attempt.started`: the footer names it
    /// when its price is unknown.
    model: Option<String>,
}

#[derive(Clone, Copy)]
struct Style {
    color: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }
    fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }
    fn red(self, text: &str) -> String {
        self.paint("31", text)
    }
    fn green(self, text: &str) -> String {
        self.paint("32", text)
    }
    fn cyan(self, text: &str) -> String {
        self.paint("36", text)
    }
    fn yellow(self, text: &str) -> String {
        self.paint("33", text)
    }
}

impl HumanRenderer {
    pub fn new() -> Self {
        let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        HumanRenderer {
            style: Style { color },
            state: Mutex::new(RenderState::default()),
        }
    }

    fn render(&self, state: &mut RenderState, event: &Event) -> String {
        let s = self.style;
        let mut out = String::new();
        if state.streaming_text && !matches!(event.kind, EventKind::ModelDelta { .. }) {
            state.streaming_text = false;
            out.push('\n');
        }
        match &event.kind {
            EventKind::AttemptStarted {
                mode,
                model,
                provider,
                cwd,
                instructions,
            } => {
                state.model = Some(model.clone());
                out += &s.bold(&format!("kiln {mode} · {model} ({provider}) · {cwd}\n"));
                if !instructions.is_empty() {
                    out += &s.dim(&format!("instructions: {}\n", instructions.join(", ")));
                }
            }
            EventKind::SetupOutput { text, .. } => out += &s.dim(text),
            EventKind::ModelDelta { text } => {
                if !state.streaming_text {
                    state.streaming_text = true;
                    state.message_streamed = true;
                    out += &s.cyan("assistant ");
                }
                out += text;
            }
            EventKind::Message { role, text } => match role {
                Role::User => out += &format!("{} {}\n", s.bold("user"), text.trim_end()),
                Role::Assistant => {
                    // Already shown through model.delta when the provider streamed it.
                    if !std::mem::take(&mut state.message_streamed) {
                        out += &format!("{} {}\n", s.cyan("assistant"), text.trim_end());
                    }
                }
            },
            EventKind::ToolCall { .. } | EventKind::ToolOutput { .. } => {}
            EventKind::ExecBegin {
                chunk_id, command, ..
            } => {
                state.chunk_lines_shown = 0;
                state.chunk_elided = false;
                state.pending_partial_line = false;
                out += &format!(
                    "{} {}  {}\n",
                    s.yellow("$"),
                    display_command(command),
                    s.dim(chunk_id)
                );
            }
            EventKind::ExecOutput { text, stream, .. } => {
                out += &self.render_output(state, text, *stream);
            }
            EventKind::ExecEnd {
                exit_code,
                duration_ms,
                timed_out,
                killed_by,
                ..
            } => {
                if state.pending_partial_line {
                    out.push('\n');
                    state.pending_partial_line = false;
                }
                if state.chunk_elided {
                    out += &s.dim("  … more output in the log\n");
                }
                let secs = *duration_ms as f64 / 1000.0;
                let verdict = match (exit_code, timed_out, killed_by) {
                    (_, _, Some(limit)) => s.red(&format!("killed: {limit}")),
                    (_, true, _) => s.red("timed out"),
                    (Some(0), _, _) => s.green("exit 0"),
                    (Some(code), _, _) => s.red(&format!("exit {code}")),
                    (None, _, _) => s.red("killed by a signal"),
                };
                out += &format!("  {verdict} {}\n", s.dim(&format!("· {secs:.1}s")));
            }
            EventKind::PatchApplied { changes, .. } => {
                for change in changes {
                    let letter = match change.kind {
                        FileChangeKind::Add => s.green("A"),
                        FileChangeKind::Modify => s.yellow("M"),
                        FileChangeKind::Delete => s.red("D"),
                    };
                    let (added, removed) = count_diff_lines(&change.diff);
                    out += &format!(
                        "{} {letter} {} {}\n",
                        s.bold("patch"),
                        change.path,
                        s.dim(&format!("+{added} -{removed}"))
                    );
                    out += &self.render_diff(&change.diff);
                }
            }
            EventKind::PlanUpdated { explanation, plan } => {
                out += &s.bold("plan\n");
                if let Some(explanation) = explanation {
                    out += &s.dim(&format!("  {explanation}\n"));
                }
                for item in plan {
                    let mark = match item.status {
                        StepStatus::Completed => s.green("[x]"),
                        StepStatus::InProgress => s.yellow("[~]"),
                        StepStatus::Pending => "[ ]".to_string(),
                    };
                    out += &format!("  {mark} {}\n", item.step);
                }
            }
            EventKind::SetupFinished {
                success,
                duration_ms,
                reason,
                ..
            } => {
                let secs = *duration_ms as f64 / 1000.0;
                let verdict = if *success {
                    s.green("setup done")
                } else {
                    s.red(&format!(
                        "setup failed: {}",
                        reason.as_deref().unwrap_or("unknown reason")
                    ))
                };
                out += &format!("{verdict} {}\n", s.dim(&format!("· {secs:.1}s")));
            }
            EventKind::DiffReady { stat, .. } => {
                out += &format!(
                    "{} {} files changed, {} {}\n",
                    s.bold("diff"),
                    stat.files_changed,
                    s.green(&format!("+{}", stat.insertions)),
                    s.red(&format!("-{}", stat.deletions)),
                );
            }
            EventKind::CommitCreated { branch, sha, .. } => {
                out += &format!(
                    "{} {} on branch {branch}\n",
                    s.bold("committed"),
                    &sha[..sha.len().min(12)],
                );
            }
            EventKind::TaskStatus { .. } => {}
            EventKind::Usage { .. } => {}
            EventKind::ContextCompacted { tokens_before, .. } => {
                out += &s.dim(&format!(
                    "context compacted (was ~{tokens_before} tokens)\n"
                ));
            }
            EventKind::CitationChecked(check) => {
                if !check.valid {
                    let reason = check.reason.as_deref().unwrap_or("unverified");
                    out += &s.yellow(&format!(
                        "citation {} not verified: {reason}\n",
                        check.citation
                    ));
                }
            }
            EventKind::Warning { message } => out += &s.yellow(&format!("warning: {message}\n")),
            EventKind::Error { message } => out += &s.red(&format!("error: {message}\n")),
            EventKind::CheckFinished(check) => {
                // Its command and output were shown as a command's, above.
                let secs = check.duration_ms as f64 / 1000.0;
                let verdict = if check.passed {
                    s.green("passed")
                } else {
                    let why = check.reason.as_deref().unwrap_or("failed");
                    s.red(&format!("failed: {why}"))
                };
                out += &format!(
                    "{} {} {verdict} {}\n",
                    s.bold("check"),
                    check.name,
                    s.dim(&format!("· {secs:.1}s · output {}", check.chunk_id))
                );
            }
            EventKind::TaskRanked { ranking, .. } => {
                let places: Vec<String> = ranking
                    .iter()
                    .map(|entry| {
                        let mark = if entry.preferred { " (preferred)" } else { "" };
                        format!("{}. attempt {}{mark}", entry.rank, entry.attempt)
                    })
                    .collect();
                out += &format!("{} {}\n", s.bold("ranked"), places.join(" · "));
            }
            EventKind::PrOpened { url, updated, .. } => {
                let word = if *updated {
                    "pull request updated"
                } else {
                    "pull request opened"
                };
                out += &format!("{word} {url}\n");
            }
            EventKind::AttemptFinished {
                status,
                reason,
                usage,
                cost_usd,
                ..
            } => {
                let tokens = format!(
                    "tokens: {} in ({} cached) · {} out · {}",
                    usage.input_tokens,
                    usage.cached_input_tokens,
                    usage.output_tokens,
                    cost_text(*cost_usd, state.model.as_deref())
                );
                match status {
                    AttemptStatus::Succeeded => {
                        out += &format!("{} {}\n", s.green("done"), s.dim(&tokens))
                    }
                    AttemptStatus::Failed
                    | AttemptStatus::Cancelled
                    | AttemptStatus::ChecksFailed => {
                        let word = match status {
                            AttemptStatus::Cancelled => "cancelled",
                            AttemptStatus::ChecksFailed => "checks failed",
                            _ => "failed",
                        };
                        let reason = reason.as_deref().unwrap_or("");
                        out += &format!("{} {reason} {}\n", s.red(word), s.dim(&tokens));
                    }
                }
            }
        }
        out
    }

    fn render_output(&self, state: &mut RenderState, text: &str, stream: ExecStream) -> String {
        let mut out = String::new();
        for piece in text.split_inclusive('\n') {
            if state.chunk_lines_shown >= OUTPUT_LINES_SHOWN {
                state.chunk_elided = true;
                break;
            }
            if !state.pending_partial_line {
                out.push_str("  ");
            }
            let shown = match stream {
                ExecStream::Stdout => self.style.dim(piece.trim_end_matches('\n')),
                ExecStream::Stderr => self.style.paint("2;31", piece.trim_end_matches('\n')),
            };
            out += &shown;
            if piece.ends_with('\n') {
                out.push('\n');
                state.chunk_lines_shown += 1;
                state.pending_partial_line = false;
            } else {
                state.pending_partial_line = true;
            }
        }
        out
    }

    fn render_diff(&self, diff: &str) -> String {
        let mut out = String::new();
        for line in diff
            .lines()
            .filter(|l| !l.starts_with("---") && !l.starts_with("+++"))
        {
            let painted = match line.chars().next() {
                Some('+') => self.style.green(line),
                Some('-') => self.style.red(line),
                Some('@') => self.style.cyan(line),
                _ => self.style.dim(line),
            };
            out += &format!("  {painted}\n");
        }
        out
    }
}

fn display_command(command: &[String]) -> String {
    match command {
        [shell, flag, script]
            if (shell == "bash" || shell == "sh")
                && flag.starts_with('-')
                && flag.contains('c') =>
        {
            script.clone()
        }
        _ => command.join(" "),
    }
}

fn count_diff_lines(diff: &str) -> (usize, usize) {
    diff.lines().fold((0, 0), |(added, removed), line| {
        if line.starts_with("+++") || line.starts_with("---") {
            (added, removed)
        } else if line.starts_with('+') {
            (added + 1, removed)
        } else if line.starts_with('-') {
            (added, removed + 1)
        } else {
            (added, removed)
        }
    })
}

/// `text` with control characters made visible, so that a terminal shows
/// them instead of obeying them: newlines and tabs are kept, a carriage
/// return before a newline is dropped (CRLF line ends read as lines), and
/// every other C0 or C1 control character, DEL and the Unicode bidirectional
/// overrides (which reorder what is shown) are written as an escape such as
/// `\x1b` or `\u{202e}`.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' && chars.peek() == Some(&'\n') {
            continue;
        }
        if !needs_escape(c) {
            out.push(c);
        } else if c == '\r' {
            out.push_str("\\r");
        } else if u32::from(c) < 0x80 {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The attempt's cost for the footer, or what to set to see it.
fn cost_text(cost_usd: Option<f64>, model: Option<&str>) -> String {
    match (cost_usd, model) {
        (Some(cost), _) => format!("cost {}", kiln_protocol::format_usd(cost)),
        (None, Some(model)) => format!(
            "unknown price: set [model_prices.{}]",
            toml::Value::String(model.to_string())
        ),
        (None, None) => "cost unknown".to_string(),
    }
}

/// A copy of `event` whose every string is [`terminal_safe`]. Going through
/// the event's JSON form reaches every field, including those added later.
fn terminal_safe_event(event: &Event) -> Option<Event> {
    fn clean(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(text) => {
                if let Cow::Owned(safe) = terminal_safe(text) {
                    *text = safe;
                }
            }
            serde_json::Value::Array(values) => values.iter_mut().for_each(clean),
            serde_json::Value::Object(fields) => fields.values_mut().for_each(clean),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(event).ok()?;
    clean(&mut value);
    serde_json::from_value(value).ok()
}

impl EventSink for HumanRenderer {
    fn emit(&self, event: &Event) {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        // An event that cannot be made safe is not shown; the log keeps it.
        let Some(event) = terminal_safe_event(event) else {
            return;
        };
        let text = self.render(&mut state, &event);
        if !text.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
