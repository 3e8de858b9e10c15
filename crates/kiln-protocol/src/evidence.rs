//! The evidence an attempt's result rests on, and what is done with it:
//! the checks kiln re-runs itself, the ranking of a task's attempts, the
//! cost of the tokens, and delivery (pull requests, outgoing webhooks).
//!
//! These types cross every boundary (repository configuration and
//! environments name checks; the agent reports their results; the store
//! records them; the API and the CLI show them), so they live here once.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A check a repository (`.kiln/config.toml`, AGENTS.md) or an environment
/// names: a shell command kiln runs itself after the agent's last turn, in
/// the attempt's sandbox with the agent phase's policy. Exit code 0 passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// A short name (`tests`, `clippy`); unique among an attempt's checks.
    pub name: String,
    /// Run with `sh -c` in the repository root (the attempt's working directory).
    pub command: String,
    /// Killed after this many seconds; `None` means kiln's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// The result of one check run by kiln (`check.finished`). Its output is the
/// terminal chunk `chunk_id`, citable as `【tN†L1-L9】` like a command's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CheckResult {
    pub name: String,
    pub command: String,
    pub passed: bool,
    /// `None` when it was killed (timeout, limit) or could not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    #[serde(default)]
    pub timed_out: bool,
    /// The terminal chunk holding its output.
    pub chunk_id: String,
    /// Why it failed, for people ("exited with 1", "timed out after 60s").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One attempt's place in its task's ranking (best first) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RankEntry {
    /// The attempt number.
    pub attempt: u32,
    /// 1 is the best.
    pub rank: u32,
    /// A user marked this attempt preferred: it ranks first whatever the evidence.
    #[serde(default)]
    pub preferred: bool,
    /// The evidence, in the order it was weighed ("checks passed (2/2)",
    /// "3 of 3 citations valid", "diff +12 −3 in 2 files", "cost $0.0123").
    pub reasons: Vec<String>,
}

/// The forge an environment opens pull requests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForgeKind {
    Github,
    Gitlab,
    /// Forgejo and Gitea (the same REST API).
    Forgejo,
}

impl ForgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitlab => "gitlab",
            ForgeKind::Forgejo => "forgejo",
        }
    }
}

impl std::fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// An environment's forge: `{kind, api_url?, repo: "owner/name", token_secret}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgeConfig {
    pub kind: ForgeKind,
    /// The REST API's base URL; `None` means the public service
    /// (`https://api.github.com`, `https://gitlab.com/api/v4`,
    /// `https://codeberg.org/api/v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// `owner/name` on the forge (a GitLab project path may have more parts).
    pub repo: String,
    /// The name of the environment secret holding the forge token. Used by
    /// the server only: never shown to the agent.
    pub token_secret: String,
}

/// An environment's outgoing webhook as given: `{url, secret}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Signs every delivery (HMAC-SHA256); stored sealed, never shown again.
    pub secret: String,
}

/// `POST /api/tasks/{id}/pr`: `{attempt?, draft?}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPullRequest {
    /// The attempt to propose; `None` means the task's best-ranked attempt.
    #[serde(default)]
    pub attempt: Option<u32>,
    #[serde(default)]
    pub draft: bool,
}

/// A task's pull (or merge) request. One per task: a follow-up or another
/// attempt updates it rather than opening a second one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PullRequest {
    pub task_id: String,
    /// The attempt whose commit it proposes now.
    pub attempt: u32,
    pub forge: ForgeKind,
    /// The forge's number (GitHub/Forgejo `number`, GitLab `iid`).
    pub number: u64,
    /// The page people open.
    pub url: String,
    /// The branch pushed to the environment's remote.
    pub branch: String,
    pub draft: bool,
    /// The user who opened it.
    #[serde(default)]
    pub opened_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One outgoing webhook delivery, as `GET /api/environments/{id}/webhook/deliveries` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookDelivery {
    pub id: i64,
    pub environment_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// `task.finished`, `attempt.finished`, `pr.opened`.
    pub event: String,
    pub url: String,
    /// `pending` (will be tried again), `delivered`, `failed` (gave up).
    pub status: String,
    /// Tries so far.
    pub tries: u32,
    /// The HTTP status of the last answer, if one came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_code: Option<u16>,
    /// Why the last try failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_try_at: Option<DateTime<Utc>>,
}

/// Cost in US dollars from micro-dollars (how the store keeps it: integers
/// add up exactly on both databases).
pub fn usd_from_micros(micros: u64) -> f64 {
    micros as f64 / 1_000_000.0
}

/// Micro-dollars from a cost in US dollars (rounded; negative is 0).
pub fn micros_from_usd(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1_000_000.0).round() as u64
    } else {
        0
    }
}
