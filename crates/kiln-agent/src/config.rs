//! What an attempt is allowed to do and how it is shaped: model, mode, budgets.

use std::path::PathBuf;
use std::time::Duration;

use kiln_model::{ModelPrice, PriceTable};
use kiln_protocol::{CheckSpec, Mode};

/// Everything [`run_attempt`](crate::run_attempt) needs besides the model, the
/// sandbox and the conversation. Build it with [`AgentConfig::new`] and adjust
/// the public fields; the defaults suit an interactive `kiln exec`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Model name sent to the provider.
    pub model: String,
    /// Provider name, recorded in `attempt.started`.
    pub provider: String,
    /// Code (may edit) or Ask (read-only, no `apply_patch`).
    pub mode: Mode,
    /// Where commands run by default; the project root is found from here.
    pub cwd: PathBuf,
    /// The root of the workspace when the caller knows it (the server's
    /// checkout): kiln reads no repository file outside it (AGENTS.md,
    /// cited files), whatever `.git` the agent leaves behind. `None`: the
    /// project root found from `cwd` (the nearest ancestor with `.git`).
    pub workspace_root: Option<PathBuf>,
    /// kiln's home directory, for the global `AGENTS.md`.
    pub kiln_home: Option<PathBuf>,
    pub instructions: InstructionsConfig,
    pub limits: Limits,
    /// Extra guidance from the user's configuration, appended to the system prompt.
    pub user_instructions: Option<String>,
    /// What `model`'s tokens cost: the cost in `usage` and `attempt.finished`
    /// events and what [`Limits::max_cost_usd`] is measured with.
    pub prices: PriceTable,
    /// Checks the caller adds to the repository's (an environment's, `kiln
    /// exec --check`); one of the same name replaces the repository's. See
    /// docs/checks.md.
    pub checks: Vec<CheckSpec>,
    /// Whether kiln runs the checks after the agent's last turn (`kiln exec
    /// --no-checks` turns them off).
    pub run_checks: bool,
}

impl AgentConfig {
    /// A configuration with default limits for `model` working in `cwd`.
    pub fn new(model: impl Into<String>, mode: Mode, cwd: impl Into<PathBuf>) -> Self {
        AgentConfig {
            model: model.into(),
            provider: String::new(),
            mode,
            cwd: cwd.into(),
            workspace_root: None,
            kiln_home: None,
            instructions: InstructionsConfig::default(),
            limits: Limits::default(),
            user_instructions: None,
            prices: PriceTable::builtin(),
            checks: Vec::new(),
            run_checks: true,
        }
    }

    /// The price of `model`'s tokens, when the user or kiln knows it.
    pub fn price(&self) -> Option<ModelPrice> {
        self.prices.price(&self.model)
    }
}

/// How repository guidance (`AGENTS.md`) is found and bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstructionsConfig {
    /// File names tried after `AGENTS.override.md` and `AGENTS.md` in each directory.
    pub fallback_filenames: Vec<String>,
    /// Bytes of guidance kept across all files; the rest is cut with a warning.
    pub byte_budget: usize,
}

impl Default for InstructionsConfig {
    fn default() -> Self {
        InstructionsConfig {
            fallback_filenames: Vec::new(),
            byte_budget: 32 * 1024,
        }
    }
}

/// Budgets that end an attempt (turns, tokens, money, time) and bound what one step may use.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Model turns per attempt (one request/response each, retries not counted).
    pub max_turns: u32,
    /// Input + output tokens over the whole attempt, as the provider reports them.
    pub max_total_tokens: Option<u64>,
    /// US dollars per attempt at [`AgentConfig::price`]: no turn starts once
    /// the attempt's cost reached it. An attempt with a budget and a model
    /// of unknown price does not start (the budget could not hold).
    pub max_cost_usd: Option<f64>,
    /// Wall-clock budget for the attempt, commands included.
    pub wall_clock: Option<Duration>,
    /// Timeout of a command when the model does not ask for one.
    pub command_timeout: Duration,
    /// The longest timeout the model may ask for with `timeout_ms`.
    pub max_command_timeout: Duration,
    /// The model's context window in tokens; compaction starts at 80 % of it.
    pub context_window: u64,
    /// Bytes of one command's output sent to the model (head and tail halves).
    pub tool_output_max_bytes: usize,
    /// Model turns the agent gets to fix a failing check before kiln re-runs
    /// the checks and records the result; 0 records the failure at once.
    pub check_fix_turns: u32,
    /// Timeout of a check that names none, and the most a check's own
    /// `timeout_secs` gets.
    pub check_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_turns: 50,
            max_total_tokens: None,
            max_cost_usd: None,
            wall_clock: None,
            command_timeout: Duration::from_secs(120),
            max_command_timeout: Duration::from_secs(600),
            context_window: 128_000,
            tool_output_max_bytes: 16 * 1024,
            check_fix_turns: 3,
            check_timeout: Duration::from_secs(600),
        }
    }
}
