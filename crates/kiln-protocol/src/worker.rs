//! The worker protocol: what `kiln worker` and `kiln serve` exchange over
//! HTTP (docs/workers.md describes the exchange; these are its bodies).
//!
//! A worker authenticates with a worker token (`kiln token create --worker`)
//! to claim attempts. A claim hands it a **lease token** that is valid for
//! that one attempt while the worker holds its lease: every call about the
//! attempt (heartbeat, events, finish, git, model) carries it, so a worker
//! whose lease was taken can no longer write, and a stolen lease token
//! reaches one attempt's repository and model stream, nothing else.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{AttemptReport, CheckSpec, Event, Mode};

/// `POST /api/worker/claim` (worker token). Long-polls: the answer is a
/// [`WorkerClaim`] (200) or nothing to do within `wait_secs` (204).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClaimRequest {
    pub worker: WorkerIdentity,
    /// How long the server may hold the request open waiting for work (it
    /// caps this, see docs/workers.md).
    #[serde(default)]
    pub wait_secs: u32,
}

/// Who the worker is, shown by `GET /api/workers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerIdentity {
    /// The worker's name (`kiln worker --name`), unique per worker token.
    pub name: String,
    /// The kiln version the worker runs.
    pub version: String,
}

/// One attempt, as addressed in worker URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct AttemptAddress {
    pub task_id: String,
    pub n: u32,
}

/// Everything a worker needs to run the attempt it claimed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerClaim {
    pub attempt: AttemptAddress,
    /// Bearer credential for this attempt's calls, valid while the lease holds.
    pub lease_token: String,
    /// Heartbeat well within this (the server takes the attempt back after it).
    pub lease_secs: u64,
    /// 1 for the first run; more after a worker was lost.
    pub try_number: u32,
    /// The `seq` of the attempt's next event: the log continues across runs.
    pub next_seq: u64,
    pub mode: Mode,
    /// The model to ask (through the server's model endpoint).
    pub model: String,
    /// The wire API the server's provider speaks: `responses` or `chat`.
    pub wire_api: String,
    /// The task's prompt, or for a follow-up (`resume`) the new message(s).
    pub prompt: String,
    /// A follow-up of a finished attempt: continue its branch and conversation.
    pub resume: bool,
    /// The events of the earlier runs that rebuild the conversation and its
    /// terminal chunks (messages, tool calls and outputs, exec output,
    /// compactions), whatever the log's length. Empty unless `resume`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Event>,
    pub repository: ClaimedRepository,
    pub sandbox: ClaimedSandbox,
    /// The environment's setup (absent for a follow-up, which keeps the
    /// first run's setup products on its branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<ClaimedSetup>,
    /// The agent's budgets, as the server is configured.
    pub limits: ClaimedLimits,
    /// The environment's checks, run after the agent's last turn with the
    /// repository's own (docs/checks.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckSpec>,
}

/// Where the attempt's code comes from and goes to, on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedRepository {
    /// Git smart-HTTP URL path on the server (relative to the server URL),
    /// e.g. `/api/worker/attempts/T/1/git`; authenticate with the lease token.
    pub git_path: String,
    /// The commit the attempt starts from (and its diff is measured against).
    pub base_commit: String,
    /// The attempt's branch, pushed back to the server when it ends. For a
    /// follow-up the server serves it, and the run continues from its tip.
    pub branch: String,
    /// A name that stays the same for every attempt of the environment's
    /// repository: the worker keeps one local mirror per name.
    pub mirror_key: String,
}

/// The sandbox the attempt's commands run in, beyond the worker's own policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedSandbox {
    /// Network for the agent's commands (setup always has it).
    pub network: bool,
    /// The environment's variables (not secrets).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A container image (podman backend) instead of the host's tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The setup script and the secrets only it sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedSetup {
    pub script: String,
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

/// The agent's budgets for this attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimedLimits {
    pub max_turns: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_tokens: Option<u64>,
    /// US dollars the attempt may cost at `price` (the task's budget, else
    /// its environment's, else the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// The price of the claim's model in the server's table (built-in
    /// prices and the operator's `[model_prices]`): the worker measures
    /// cost and budget with it, so that both doors agree. `None`: unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<crate::ModelPrice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_clock_secs: Option<u64>,
    pub command_timeout_secs: u64,
    pub max_command_timeout_secs: u64,
    pub context_window: u64,
    /// Turns to fix a failing check; `None` (a server from before checks)
    /// means the worker's own setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_fix_turns: Option<u32>,
    /// A check's timeout and its ceiling, in seconds; `None` as above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_timeout_secs: Option<u64>,
}

/// `POST /api/worker/attempts/{task}/{n}/heartbeat` (lease token): renews
/// the lease. 409 means the lease is lost: stop without writing anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HeartbeatReply {
    pub lease_secs: u64,
    /// The user cancelled the task: stop and finish as cancelled.
    pub cancel_requested: bool,
    /// Messages the user sent since the last heartbeat, to steer the agent
    /// (the server counts them delivered once they are in this reply).
    #[serde(default)]
    pub messages: Vec<String>,
}

/// `POST /api/worker/attempts/{task}/{n}/events` (lease token): events in
/// order, continuing the attempt's log without gaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    pub events: Vec<Event>,
}

/// The answer to an [`EventBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventBatchReply {
    /// The seq the next event must have.
    pub next_seq: u64,
}

/// `POST /api/worker/attempts/{task}/{n}/finish` (lease token), after the
/// branch was pushed: the attempt's report. The lease ends with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishRequest {
    pub report: AttemptReport,
    /// Steering messages the agent never read: the server turns them into a
    /// follow-up so none is lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unread_messages: Vec<String>,
}

/// A worker as `GET /api/workers` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerInfo {
    pub name: String,
    pub version: String,
    /// The worker token it authenticates with.
    pub token_id: String,
    /// Attempts it holds a lease on now.
    pub running: Vec<AttemptAddress>,
    pub last_contact: DateTime<Utc>,
}
