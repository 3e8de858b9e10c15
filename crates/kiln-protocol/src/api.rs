//! The bodies of `kiln serve`'s HTTP API, as the server writes them and its
//! clients (the `kiln task|env` commands, kiln-bench, tests) read them.
//!
//! The JSON shapes are part of kiln's public interface: `GET /api/openapi.json`
//! is generated from these types' schemas, and a field renamed here is a
//! breaking change for every client. kiln-store maps its rows to them.
//!
//! ```
//! use kiln_protocol::api::{NewTask, TaskStatus};
//! let body: NewTask = serde_json::from_str(r#"{"environment":"app","prompt":"fix it"}"#).unwrap();
//! assert_eq!(body.attempts, 1);
//! assert_eq!("running".parse::<TaskStatus>().unwrap(), TaskStatus::Running);
//! ```

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    CheckResult, CheckSpec, DiffStat, ForgeConfig, Mode, PullRequest, RankEntry, Usage,
    WebhookConfig,
};

/// Most attempts one task may run.
pub const MAX_ATTEMPTS: u32 = 8;
/// Largest page of `GET /api/tasks`.
pub const MAX_PAGE: u32 = 200;

/// A status word the API does not know (`?status=`, a stored row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStatus {
    /// What was given.
    pub given: String,
    /// The words that are accepted, for the message.
    pub expected: &'static str,
}

impl std::fmt::Display for UnknownStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not one of {}", self.given, self.expected)
    }
}

impl std::error::Error for UnknownStatus {}

/// A task's status, derived from its attempts whenever one changes:
///
/// - `queued` while every attempt is still queued;
/// - `running` while any attempt is queued, running or interrupted (and at
///   least one has left the queue);
/// - once every attempt is finished: `succeeded` if any attempt succeeded,
///   else `checks_failed` if any attempt's checks failed, else `cancelled`
///   if any was cancelled, else `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// No attempt succeeded and at least one finished with failing checks.
    ChecksFailed,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::ChecksFailed => "checks_failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded
                | TaskStatus::Failed
                | TaskStatus::Cancelled
                | TaskStatus::ChecksFailed
        )
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        Ok(match s {
            "queued" => TaskStatus::Queued,
            "running" => TaskStatus::Running,
            "succeeded" => TaskStatus::Succeeded,
            "failed" => TaskStatus::Failed,
            "cancelled" => TaskStatus::Cancelled,
            "checks_failed" => TaskStatus::ChecksFailed,
            other => {
                return Err(UnknownStatus {
                    given: other.to_string(),
                    expected: "queued, running, succeeded, failed, cancelled, checks_failed",
                })
            }
        })
    }
}

/// Where an attempt is in its life (see docs/store.md for the transitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptState {
    /// Waiting for a worker.
    Queued,
    /// Claimed by a worker that holds a lease on it.
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Its worker was lost mid-run; it waits in the queue to run again.
    Interrupted,
    /// The agent finished but a check kiln ran itself failed.
    ChecksFailed,
}

impl AttemptState {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Queued => "queued",
            AttemptState::Running => "running",
            AttemptState::Succeeded => "succeeded",
            AttemptState::Failed => "failed",
            AttemptState::Cancelled => "cancelled",
            AttemptState::Interrupted => "interrupted",
            AttemptState::ChecksFailed => "checks_failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            AttemptState::Succeeded
                | AttemptState::Failed
                | AttemptState::Cancelled
                | AttemptState::ChecksFailed
        )
    }
}

impl std::fmt::Display for AttemptState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for AttemptState {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        Ok(match s {
            "queued" => AttemptState::Queued,
            "running" => AttemptState::Running,
            "succeeded" => AttemptState::Succeeded,
            "failed" => AttemptState::Failed,
            "cancelled" => AttemptState::Cancelled,
            "interrupted" => AttemptState::Interrupted,
            "checks_failed" => AttemptState::ChecksFailed,
            other => {
                return Err(UnknownStatus {
                    given: other.to_string(),
                    expected:
                        "queued, running, succeeded, failed, cancelled, interrupted, checks_failed",
                })
            }
        })
    }
}

/// `POST /api/tasks`: `{environment, prompt, mode?, attempts?, model?, base_ref?, budget_usd?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NewTask {
    /// The environment's id or, among the caller's own, its name.
    pub environment: String,
    pub prompt: String,
    #[serde(default)]
    pub mode: Mode,
    /// How many attempts run in parallel (best-of-N), 1 to [`MAX_ATTEMPTS`].
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = MAX_ATTEMPTS))]
    pub attempts: u32,
    #[serde(default)]
    pub model: Option<String>,
    /// What to check out; `None` means the environment's base branch.
    #[serde(default)]
    pub base_ref: Option<String>,
    /// Most US dollars each attempt may spend on tokens; reaching it stops
    /// the attempt cleanly (its work kept). `None`: the environment's budget.
    #[serde(default)]
    pub budget_usd: Option<f64>,
}

fn one() -> u32 {
    1
}

impl NewTask {
    pub fn new(environment: impl Into<String>, prompt: impl Into<String>) -> Self {
        NewTask {
            environment: environment.into(),
            prompt: prompt.into(),
            mode: Mode::Code,
            attempts: 1,
            model: None,
            base_ref: None,
            budget_usd: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    pub id: String,
    /// The token the task was created with.
    pub owner_token_id: String,
    /// The author (`None` only for a task no user was migrated to).
    #[serde(default)]
    pub user_id: Option<String>,
    /// The team of the task's environment.
    #[serde(default)]
    pub team_id: Option<String>,
    /// Shared by its author with the team: every member of the team sees it.
    #[serde(default)]
    pub shared: bool,
    /// The environment's version when the task was created.
    #[serde(default)]
    pub environment_version: Option<u64>,
    pub environment_id: String,
    pub prompt: String,
    pub mode: Mode,
    pub attempt_count: u32,
    pub model: Option<String>,
    pub base_ref: Option<String>,
    /// The task's own budget per attempt, if it has one.
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// The attempt a user marked preferred: it ranks first.
    #[serde(default)]
    pub preferred_attempt: Option<u32>,
    pub status: TaskStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One attempt of a task, without its diff text
/// (`GET /api/tasks/{id}/attempts/{n}/diff` has it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    pub task_id: String,
    /// From 1.
    pub n: u32,
    pub status: AttemptState,
    /// Claims since the attempt was last queued fresh.
    pub tries: u32,
    pub cancel_requested: bool,
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub final_message: Option<String>,
    pub diff_stat: Option<DiffStat>,
    pub usage: Usage,
    pub branch: Option<String>,
    pub commit_sha: Option<String>,
    /// Why it failed, was cancelled or interrupted.
    pub reason: Option<String>,
    /// The checks kiln ran itself after the agent's last turn.
    #[serde(default)]
    pub checks: Vec<CheckResult>,
    /// Citations of the final message that held, and that did not.
    #[serde(default)]
    pub citations_valid: u32,
    #[serde(default)]
    pub citations_invalid: u32,
    /// What its tokens cost in US dollars, when the model's price is known.
    #[serde(default)]
    pub cost_usd: Option<f64>,
    /// Its place in the task's ranking (1 is best), once it finished.
    #[serde(default)]
    pub rank: Option<u32>,
    /// The environment version it ran with (set when a worker claims it).
    #[serde(default)]
    pub environment_version: Option<u64>,
    /// Why a waiting attempt has not started (a quota), until it does.
    #[serde(default)]
    pub wait_reason: Option<String>,
}

/// A task with its attempts, as `POST /api/tasks` and `GET /api/tasks/{id}`
/// return it: the task's fields and `attempts` side by side.
// The OpenAPI document has named this schema TaskView since the API began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "TaskView")]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: Task,
    pub attempts: Vec<Attempt>,
    /// The finished attempts, best first, with the evidence weighed.
    #[serde(default)]
    pub ranking: Vec<RankEntry>,
    /// What all its attempts cost, in US dollars (attempts of models with a
    /// known price only).
    #[serde(default)]
    pub cost_usd: Option<f64>,
    /// The task's pull request, once one was opened.
    #[serde(default)]
    pub pull_request: Option<PullRequest>,
}

/// `GET /api/tasks?status=&limit=&cursor=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    /// `mine` (authored by the caller), `shared` (shared with a team of the
    /// caller), `team` (every task of the caller's teams they may see) or
    /// `all` (everything visible; the default).
    pub scope: Option<String>,
    /// 1 to [`MAX_PAGE`]; `None` means 50.
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Tasks newest first, and the cursor of the next page if there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    pub next_cursor: Option<String>,
}

/// `POST /api/environments`: `{name, repo, base_branch?, setup_script?, env?,
/// secrets?, network?, image?, checks?, forge?, webhook?, budget_usd?}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NewEnvironment {
    pub name: String,
    /// A local path or a git URL. A user name and password or token in an
    /// https URL are split out and stored sealed, never shown again.
    pub repo: String,
    /// `None`: the repository's default branch.
    #[serde(default)]
    pub base_branch: Option<String>,
    /// Runs once per attempt, before the agent, with network and secrets.
    #[serde(default)]
    pub setup_script: Option<String>,
    /// Variables for setup and agent.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables for the setup script only.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Whether the agent phase has network access (off by default).
    #[serde(default)]
    pub network: bool,
    /// A container image to run in instead of the host's root filesystem.
    #[serde(default)]
    pub image: Option<String>,
    /// Checks kiln runs after every attempt, besides the repository's own.
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// Where pull requests are opened.
    #[serde(default)]
    pub forge: Option<ForgeConfig>,
    /// Where task and attempt completions (and pull requests) are POSTed.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Most US dollars one attempt may spend on tokens (a task may set its own).
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// The team that owns it (id or name); `None`: the one team where the
    /// caller is a maintainer.
    #[serde(default)]
    pub team: Option<String>,
}

/// An environment as the API shows it: secret names, never their values,
/// and the repository URL without its credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Environment {
    pub id: String,
    /// The token that created it.
    pub owner_token_id: String,
    /// The team it belongs to: its members run tasks on it, its maintainers change it.
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default)]
    pub team_name: Option<String>,
    /// +1 on every change (see `GET /api/environments/{id}/versions`).
    #[serde(default = "first_version")]
    pub version: u64,
    pub name: String,
    /// The repository location, without any credential it was given with.
    pub repo: String,
    /// Whether a credential from the repository URL is stored (sealed) for
    /// the server's clones and fetches.
    #[serde(default)]
    pub repo_has_credential: bool,
    pub base_branch: Option<String>,
    pub setup_script: Option<String>,
    pub env: BTreeMap<String, String>,
    pub secret_names: Vec<String>,
    pub network: bool,
    pub image: Option<String>,
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    #[serde(default)]
    pub forge: Option<ForgeConfig>,
    /// The outgoing webhook's URL (its secret is never shown).
    #[serde(default)]
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub budget_usd: Option<f64>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
}

fn first_version() -> u64 {
    1
}

/// `GET /api/environments`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentList {
    pub environments: Vec<Environment>,
}

/// `POST /api/tasks/{id}/messages`: steers a running attempt, continues a
/// finished one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "NewMessage")]
pub struct NewMessage {
    pub text: String,
    /// Every attempt when absent.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub attempt: Option<u32>,
}

/// A message for one attempt. A message sent to "all attempts" is stored
/// once per attempt, so each attempt takes its own copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    /// Increasing in the order messages were sent.
    pub id: i64,
    pub task_id: String,
    pub attempt: u32,
    pub text: String,
    /// Who sent it.
    #[serde(default)]
    pub user_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The answer to `POST /api/tasks/{id}/messages`: the message as stored for
/// each attempt it went to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageList {
    pub messages: Vec<Message>,
}

/// The answer to `POST /api/tasks/{id}/cancel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CancelOutcome {
    /// Attempts that had not started (or waited to re-run) and are now cancelled.
    pub cancelled: Vec<u32>,
    /// Running attempts whose workers are asked to stop.
    pub cancel_requested: Vec<u32>,
}

/// The `data:` of a `GET /api/tasks/{id}/events` frame whose `event:` is not
/// `task.status`: a stored event and the attempt it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptEvent {
    pub attempt: u32,
    #[serde(flatten)]
    pub event: crate::Event,
}

/// The `data:` of a `task.status` frame of `GET /api/tasks/{id}/events`:
/// sent when the stream opens and whenever the task's status changes; the
/// last frame of a stream that ends because the task finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatusFrame {
    /// Always `task.status`, so the data alone says what it is.
    #[serde(rename = "type")]
    pub kind: String,
    pub task_id: String,
    pub status: TaskStatus,
}

impl TaskStatusFrame {
    /// The SSE `event:` name of these frames.
    pub const EVENT: &'static str = "task.status";

    pub fn new(task_id: impl Into<String>, status: TaskStatus) -> Self {
        TaskStatusFrame {
            kind: Self::EVENT.to_string(),
            task_id: task_id.into(),
            status,
        }
    }
}

/// One frame of `GET /api/tasks/{id}/events`, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskStreamItem {
    /// An event of an attempt's log; `id` is its per-task id, the one to
    /// resume after with `Last-Event-ID`.
    Event { id: i64, event: AttemptEvent },
    /// The task's status (not stored; carries no id).
    Status(TaskStatusFrame),
}

/// Why a frame of the task event stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    pub event: String,
    pub reason: String,
}

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server sent a {:?} frame kiln cannot read: {}",
            self.event, self.reason
        )
    }
}

impl std::error::Error for BadFrame {}

impl TaskStreamItem {
    /// Decodes one SSE frame of the task event stream.
    pub fn from_frame(frame: &crate::sse::SseFrame) -> Result<Self, BadFrame> {
        let bad = |reason: String| BadFrame {
            event: frame.event.clone(),
            reason,
        };
        if frame.event == TaskStatusFrame::EVENT {
            let status: TaskStatusFrame =
                serde_json::from_str(&frame.data).map_err(|e| bad(e.to_string()))?;
            return Ok(TaskStreamItem::Status(status));
        }
        let id = frame
            .id
            .as_deref()
            .and_then(|id| id.parse::<i64>().ok())
            .ok_or_else(|| bad(format!("its id {:?} is not a number", frame.id)))?;
        let event: AttemptEvent =
            serde_json::from_str(&frame.data).map_err(|e| bad(e.to_string()))?;
        Ok(TaskStreamItem::Event { id, event })
    }
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
