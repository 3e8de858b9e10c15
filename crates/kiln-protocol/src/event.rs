use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Item, Mode, PlanItem};

/// One entry of an attempt's append-only event log.
///
/// Serialised flat: `{"seq":3,"ts":"…","type":"exec.begin",…fields of the kind}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the attempt's log, from 1, without gaps.
    pub seq: u64,
    pub ts: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    pub fn new(seq: u64, kind: EventKind) -> Self {
        Event {
            seq,
            ts: Utc::now(),
            kind,
        }
    }
}

/// Receives events as an attempt produces them (terminal renderer, JSONL log
/// file, store, SSE fan-out). Implementations must not block for long: the
/// agent loop calls them inline.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: &Event);
}

/// Which pipe a piece of command output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecStream {
    Stdout,
    Stderr,
}

/// Token usage, as reported by the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
}

// The counts are the provider's word: a server that reports absurd numbers
// must not overflow (a panic in debug builds, a wrap to a small number that
// slips under a budget in release ones), so sums saturate.
impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    pub fn add(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.cached_input_tokens = self
            .cached_input_tokens
            .saturating_add(other.cached_input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileChangeKind {
    Add,
    Modify,
    Delete,
}

/// One file touched by an applied patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// Path relative to the workspace root (the destination for a move).
    pub path: String,
    pub kind: FileChangeKind,
    /// Source path when the file was moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_from: Option<String>,
    /// Unified diff of this file's change.
    pub diff: String,
}

/// Files changed, lines added and removed by an attempt's diff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DiffStat {
    pub files_changed: u64,
    pub insertions: u64,
    pub deletions: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    Succeeded,
    Failed,
    Cancelled,
    /// The agent finished, but a check kiln ran itself failed (whatever the
    /// model claimed). The work is kept on the attempt's branch.
    ChecksFailed,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Succeeded => "succeeded",
            AttemptStatus::Failed => "failed",
            AttemptStatus::Cancelled => "cancelled",
            AttemptStatus::ChecksFailed => "checks_failed",
        }
    }
}

impl std::fmt::Display for AttemptStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The verdict on one citation of the final message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CitationCheck {
    /// The citation as written, e.g. `【F:src/a.rs†L3-L9】`.
    pub citation: String,
    pub valid: bool,
    /// Why it is invalid (missing file, lines out of range…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What happened. The `type` tag names are part of kiln's public format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventKind {
    #[serde(rename = "attempt.started")]
    AttemptStarted {
        mode: Mode,
        model: String,
        provider: String,
        cwd: String,
        /// Names of the AGENTS.md files in effect, in the order they were read.
        #[serde(default)]
        instructions: Vec<String>,
    },
    /// Output of the environment's setup script (before the agent phase).
    #[serde(rename = "setup.output")]
    SetupOutput { stream: ExecStream, text: String },
    /// A piece of the assistant's message as it streams. Not part of the history.
    #[serde(rename = "model.delta")]
    ModelDelta { text: String },
    /// A complete message: the user's prompt or follow-up, or the assistant's text.
    #[serde(rename = "message")]
    Message { role: crate::Role, text: String },
    #[serde(rename = "tool.call")]
    ToolCall {
        call_id: String,
        name: String,
        arguments: String,
    },
    /// What went back to the model for a tool call, exactly as sent.
    #[serde(rename = "tool.output")]
    ToolOutput {
        call_id: String,
        output: String,
        success: bool,
    },
    #[serde(rename = "exec.begin")]
    ExecBegin {
        call_id: String,
        /// Terminal chunk id (`t1`, `t2`, …) that citations use.
        chunk_id: String,
        command: Vec<String>,
        cwd: String,
    },
    /// A piece of a command's output, as it happens. Lines of chunk `tN`
    /// are the concatenation of all its `exec.output` texts.
    #[serde(rename = "exec.output")]
    ExecOutput {
        chunk_id: String,
        stream: ExecStream,
        text: String,
    },
    #[serde(rename = "exec.end")]
    ExecEnd {
        call_id: String,
        chunk_id: String,
        exit_code: Option<i32>,
        duration_ms: u64,
        timed_out: bool,
        /// Set when a sandbox limit killed the command ("memory limit 2 GiB").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        killed_by: Option<String>,
        /// Bytes of output not kept in the log (past the capture cap).
        #[serde(default)]
        omitted_bytes: u64,
    },
    #[serde(rename = "patch.applied")]
    PatchApplied {
        call_id: String,
        changes: Vec<FileChange>,
    },
    #[serde(rename = "plan.updated")]
    PlanUpdated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        explanation: Option<String>,
        plan: Vec<PlanItem>,
    },
    /// Usage of one model turn and the running total of the attempt, with
    /// their cost in US dollars when the model's price is known.
    #[serde(rename = "usage")]
    Usage {
        turn: Usage,
        total: Usage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turn_cost_usd: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total_cost_usd: Option<f64>,
    },
    /// The history was compacted to fit the context window; `items` replaces it.
    #[serde(rename = "context.compacted")]
    ContextCompacted {
        items: Vec<Item>,
        tokens_before: u64,
    },
    #[serde(rename = "citation.checked")]
    CitationChecked(CitationCheck),
    #[serde(rename = "warning")]
    Warning { message: String },
    #[serde(rename = "error")]
    Error { message: String },
    /// The environment's setup script ended (it ran before the agent, with
    /// network and setup-only secrets).
    #[serde(rename = "setup.finished")]
    SetupFinished {
        success: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        duration_ms: u64,
        /// Why it failed (timed out, killed, exit code), for people.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The attempt's change against its base is known. `diff` holds it when it
    /// is small enough to travel in the log; otherwise `fetch` says where it is.
    #[serde(rename = "diff.ready")]
    DiffReady {
        stat: DiffStat,
        /// Size of the whole diff in bytes.
        bytes: u64,
        /// kiln stopped reading the diff at its size cap.
        #[serde(default)]
        cut: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        diff: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fetch: Option<String>,
    },
    /// The attempt's change was committed on its branch.
    #[serde(rename = "commit.created")]
    CommitCreated {
        branch: String,
        sha: String,
        /// The commit the attempt's change is measured from (what
        /// `kiln apply LOG` merges from). Absent in logs written before
        /// kiln recorded it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base: Option<String>,
    },
    /// The task this attempt belongs to changed status (`queued`, `running`,
    /// `succeeded`, `failed`, `cancelled`). Streamed to clients so none polls.
    #[serde(rename = "task.status")]
    TaskStatus { task_id: String, status: String },
    /// A check kiln ran itself after the agent's last turn. Its output was
    /// streamed before as `exec.begin`/`exec.output`/`exec.end` of `chunk_id`.
    #[serde(rename = "check.finished")]
    CheckFinished(crate::CheckResult),
    /// The ranking of a task's attempts changed (an attempt finished, or a
    /// user marked one preferred). Best first.
    #[serde(rename = "task.ranked")]
    TaskRanked {
        task_id: String,
        ranking: Vec<crate::RankEntry>,
    },
    /// A pull (merge) request was opened for the task, or updated with a new
    /// commit (`updated`).
    #[serde(rename = "pr.opened")]
    PrOpened {
        forge: crate::ForgeKind,
        number: u64,
        url: String,
        branch: String,
        #[serde(default)]
        updated: bool,
    },
    #[serde(rename = "attempt.finished")]
    AttemptFinished {
        status: AttemptStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        final_message: Option<String>,
        usage: Usage,
        /// The attempt's cost in US dollars, when the model's price is known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost_usd: Option<f64>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_tags_are_dotted_and_round_trip() {
        let event = Event::new(
            2,
            EventKind::ExecEnd {
                call_id: "c1".into(),
                chunk_id: "t1".into(),
                exit_code: Some(0),
                duration_ms: 12,
                timed_out: false,
                killed_by: None,
                omitted_bytes: 0,
            },
        );
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "exec.end");
        assert_eq!(json["chunk_id"], "t1");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn citation_event_is_flat() {
        let event = Event::new(
            1,
            EventKind::CitationChecked(CitationCheck {
                citation: "【t1†L1-L2】".into(),
                valid: false,
                reason: Some("no chunk t1".into()),
            }),
        );
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "citation.checked");
        assert_eq!(json["valid"], false);
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
