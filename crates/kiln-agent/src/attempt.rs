//! The agent loop: context → model turn → tool calls → … → final message,
//! within the attempt's budgets, every step an event.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_model::{ModelClient, ModelRequest, ToolSpec};
use kiln_protocol::{
    format_usd, AttemptReport, AttemptStatus, CheckResult, CheckSpec, CitationCheck, EventKind,
    Item, Mode, Role, Usage,
};
use kiln_sandbox::Sandbox;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::checks::discover_checks;
use crate::chunks::{last_chunk_number_in, ChunkStore};
use crate::citations::check_citations;
use crate::compaction::{
    estimate_tokens, items_bytes, keep_newest, last_user_message, needs_compaction,
    shrink_old_tool_outputs, tokens_for_bytes,
};
use crate::history::answer_unanswered_calls;
use crate::instructions::{discover_instructions_within, project_root};
use crate::model_turn::{TurnFailure, TurnOutput, TurnRunner};
use crate::output::suffix_at_line_boundary;
use crate::prompt::{
    dropped_message, instructions_message, summary_message, system_prompt, SUMMARY_REQUEST,
};
use crate::tools::Toolbox;
use crate::{AgentConfig, EventLog};

/// What an attempt starts from besides its configuration.
#[derive(Debug)]
pub struct AttemptInput {
    /// The user's request for this run (the task, or a follow-up when resuming).
    pub prompt: String,
    /// The conversation so far; empty for a fresh attempt (see
    /// [`history_from_events`](crate::history_from_events)).
    pub history: Vec<Item>,
    /// Terminal chunks of earlier runs, so that the final message may cite
    /// them (see [`ChunkStore::from_events`]).
    pub chunks: ChunkStore,
    /// Messages from the user while the attempt runs ("steering"); each is
    /// added to the conversation before the next model turn.
    pub steering: Option<mpsc::Receiver<String>>,
}

impl AttemptInput {
    /// A fresh attempt on `prompt`.
    pub fn new(prompt: impl Into<String>) -> Self {
        AttemptInput {
            prompt: prompt.into(),
            history: Vec::new(),
            chunks: ChunkStore::new(),
            steering: None,
        }
    }

    /// A follow-up to the run recorded in `events` (its conversation and its
    /// terminal chunks).
    pub fn resume(prompt: impl Into<String>, events: &[kiln_protocol::Event]) -> Self {
        AttemptInput {
            prompt: prompt.into(),
            history: crate::history_from_events(events),
            chunks: ChunkStore::from_events(events),
            steering: None,
        }
    }

    pub fn with_history(mut self, history: Vec<Item>) -> Self {
        self.history = history;
        self
    }

    pub fn with_steering(mut self, steering: mpsc::Receiver<String>) -> Self {
        self.steering = Some(steering);
        self
    }
}

/// Run one attempt: see [`run_attempt_with`]. This is the form for a fresh
/// run or a resumed one whose earlier chunks need not be cited.
pub async fn run_attempt(
    config: &AgentConfig,
    model: Arc<dyn ModelClient>,
    sandbox: Arc<dyn Sandbox>,
    history: Vec<Item>,
    prompt: String,
    events: &EventLog,
    cancel: CancellationToken,
) -> AttemptReport {
    let input = AttemptInput::new(prompt).with_history(history);
    run_attempt_with(config, model, sandbox, input, events, cancel).await
}

/// Run one attempt in place, in `config.cwd`, with a sandbox the caller
/// built: the plan-less form of [`crate::run`] (no setup, diff or commit).
pub async fn run_attempt_with(
    config: &AgentConfig,
    model: Arc<dyn ModelClient>,
    sandbox: Arc<dyn Sandbox>,
    input: AttemptInput,
    events: &EventLog,
    cancel: CancellationToken,
) -> AttemptReport {
    let cwd = config.cwd.clone();
    let root = config
        .workspace_root
        .clone()
        .or_else(|| project_root(&cwd))
        .unwrap_or_else(|| cwd.clone());
    let plan = crate::AttemptPlan::new(
        config.clone(),
        crate::Workspace::InPlace { root, cwd },
        crate::SandboxPlan::Ready(sandbox),
        input,
    );
    crate::run(plan, model, events, cancel).await
}

/// The agent loop of one attempt, to its end.
///
/// Emits `attempt.started`, the prompt as a `message`, then per turn
/// `model.delta`s, the assistant's `message`s and `tool.call`s, each call's
/// `exec.*` / `patch.applied` / `plan.updated` and its `tool.output`, and a
/// `usage`; `context.compacted` when the history is compacted; after the
/// final message one `citation.checked` per citation; `warning`s and `error`s
/// as they occur; [`crate::run`] then finishes the attempt (diff, commit,
/// `attempt.finished`). Never panics on bad
/// input and never outlives `cancel` by more than a command's kill time: every
/// failure ends the attempt with a reason.
pub(crate) async fn run_loop(
    config: &AgentConfig,
    model: Arc<dyn ModelClient>,
    sandbox: Arc<dyn Sandbox>,
    input: AttemptInput,
    events: &EventLog,
    cancel: CancellationToken,
) -> AttemptReport {
    let stop = cancel.child_token();
    let deadline_hit = Arc::new(AtomicBool::new(false));
    let _wall_clock = config
        .limits
        .wall_clock
        .map(|limit| WallClock::start(limit, stop.clone(), deadline_hit.clone()));

    let cwd = std::path::absolute(&config.cwd).unwrap_or_else(|_| config.cwd.clone());
    let workspace_root = match &config.workspace_root {
        Some(root) => std::path::absolute(root).unwrap_or_else(|_| root.clone()),
        None => project_root(&cwd).unwrap_or_else(|| cwd.clone()),
    };
    let instructions = discover_instructions_within(
        &cwd,
        Some(&workspace_root),
        &config.instructions,
        config.kiln_home.as_deref(),
    );
    events.emit(EventKind::AttemptStarted {
        mode: config.mode,
        model: config.model.clone(),
        provider: config.provider.clone(),
        cwd: cwd.display().to_string(),
        instructions: instructions
            .sources
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    });
    for warning in &instructions.warnings {
        events.emit(EventKind::Warning {
            message: warning.clone(),
        });
    }
    // Read before the agent's first turn: nothing it writes changes what it
    // is checked against. An Ask task changes nothing, so there is nothing
    // to check (and a failing suite must not fail an answer).
    let checks = if config.run_checks && config.mode != Mode::Ask {
        let found = discover_checks(&workspace_root, &config.checks);
        for warning in found.warnings {
            events.emit(EventKind::Warning { message: warning });
        }
        found.checks
    } else {
        Vec::new()
    };

    let first_chunk = last_chunk_number_in(&input.history).max(input.chunks.last_number()) + 1;
    let toolbox = Toolbox::new(
        config.mode,
        cwd.clone(),
        config.limits.clone(),
        sandbox,
        input.chunks,
        first_chunk,
    );
    let mut attempt = Attempt {
        config,
        model,
        events,
        cancel,
        stop,
        deadline_hit,
        system_prompt: system_prompt(config.mode, config.user_instructions.as_deref()),
        guidance: with_checks_note(
            instructions_message(&instructions, &cwd.display().to_string()),
            &checks,
        ),
        tools: toolbox.specs(),
        toolbox,
        history: input.history,
        steering: input.steering,
        usage: Usage::default(),
        turns: 0,
        reported: None,
        workspace_root,
        cwd,
        checks,
        check_results: Vec::new(),
        fix_turns_end: None,
    };
    let end = attempt.run(input.prompt).await;
    let end = attempt.verify(end).await;
    attempt.finish(end)
}

/// How the loop ended.
enum End {
    Finished(String),
    Failed(String),
    Cancelled,
    /// The model finished, but a check kiln ran itself failed: the final
    /// message and the reason.
    ChecksFailed(String, String),
    /// The turns given to fix a failing check are used up.
    FixTurnsUsed,
}

/// Cancels the stop token when the wall-clock budget runs out; stops
/// watching when dropped.
struct WallClock(tokio::task::JoinHandle<()>);

impl WallClock {
    fn start(limit: Duration, stop: CancellationToken, hit: Arc<AtomicBool>) -> Self {
        WallClock(tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(limit) => {
                    hit.store(true, Ordering::SeqCst);
                    stop.cancel();
                }
                () = stop.cancelled() => {}
            }
        }))
    }
}

impl Drop for WallClock {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Attempt<'a> {
    config: &'a AgentConfig,
    model: Arc<dyn ModelClient>,
    events: &'a EventLog,
    /// The caller's token: cancellation by the user.
    cancel: CancellationToken,
    /// Fires on cancellation and when the wall clock runs out.
    stop: CancellationToken,
    deadline_hit: Arc<AtomicBool>,
    system_prompt: String,
    /// The AGENTS.md message sent ahead of the history.
    guidance: Option<String>,
    tools: Vec<ToolSpec>,
    toolbox: Toolbox,
    history: Vec<Item>,
    steering: Option<mpsc::Receiver<String>>,
    usage: Usage,
    turns: u32,
    /// Tokens the provider counted for the last request and its answer, and
    /// the history length they cover.
    reported: Option<(u64, usize)>,
    workspace_root: PathBuf,
    cwd: PathBuf,
    /// The checks kiln runs after the model's final message.
    checks: Vec<CheckSpec>,
    /// Their results, latest run.
    check_results: Vec<CheckResult>,
    /// While the model fixes a failing check: the turn count that ends it.
    fix_turns_end: Option<u32>,
}

impl Attempt<'_> {
    async fn run(&mut self, prompt: String) -> End {
        if !self.cwd.is_dir() {
            return End::Failed(format!(
                "the working directory {} does not exist or is not a directory",
                self.cwd.display()
            ));
        }
        // A log cut short may hold calls that never got an output.
        answer_unanswered_calls(&mut self.history);
        self.push_message(Role::User, prompt);
        self.converse().await
    }

    /// Model turns and their tool calls until the model answers without a
    /// call, a budget runs out, or the turns to fix a check are used up.
    async fn converse(&mut self) -> End {
        let mut force_compaction = false;
        loop {
            if let Some(end) = self.stopped() {
                return end;
            }
            if self.fix_turns_end.is_some_and(|end| self.turns >= end) {
                return End::FixTurnsUsed;
            }
            self.take_steering();
            if self.turns >= self.config.limits.max_turns {
                return End::Failed(format!(
                    "turn limit {} reached before the model finished",
                    self.config.limits.max_turns
                ));
            }
            if let Some(budget) = self.config.limits.max_total_tokens {
                if self.usage.total() >= budget {
                    return End::Failed(format!(
                        "token budget {budget} used up ({} tokens) before the model finished",
                        self.usage.total()
                    ));
                }
            }
            if let Some(end) = self.budget_end() {
                return end;
            }
            if let Err(end) = self.fit_context(force_compaction).await {
                return end;
            }

            let request = self.request(self.history.clone(), self.tools.clone());
            let turn = match self.turn_runner().run(&request, true).await {
                Ok(turn) => turn,
                // The estimate was off: the provider knows best. Compact once and try again.
                Err(TurnFailure::ContextWindowExceeded(reason)) if !force_compaction => {
                    self.warn(&format!(
                        "the request was too long for the model's context window ({reason}); \
                         compacting the conversation"
                    ));
                    force_compaction = true;
                    continue;
                }
                Err(failure) => return self.end_for(failure),
            };
            force_compaction = false;
            self.turns += 1;
            let usage = turn.usage;
            self.record_usage(&usage);
            let (final_text, calls) = self.record_turn(turn);
            // The provider's count covers the request and its answer; later
            // estimates add only what came after.
            self.reported = Some((usage.total(), self.history.len()));

            if calls.is_empty() {
                // A message from the user that arrived meanwhile gets an answer first.
                if self.take_steering() {
                    continue;
                }
                return match final_text {
                    Some(text) => End::Finished(text),
                    None => {
                        self.warn(
                            "the model ended its turn with neither a message nor a tool call; \
                             finishing with an empty final message",
                        );
                        End::Finished(String::new())
                    }
                };
            }
            for (call_id, name, arguments) in calls {
                let result = if self.stop.is_cancelled() {
                    crate::tools::ToolResult {
                        output: "error: not run: the attempt was stopped".to_string(),
                        success: false,
                    }
                } else {
                    self.toolbox
                        .call(&call_id, &name, &arguments, self.events, &self.stop)
                        .await
                };
                // What the model gets back is what the log records: secrets
                // redacted (a command may have printed one).
                let output = self.events.redact(&result.output).into_owned();
                self.events.emit(EventKind::ToolOutput {
                    call_id: call_id.clone(),
                    output: output.clone(),
                    success: result.success,
                });
                self.history
                    .push(Item::FunctionCallOutput { call_id, output });
            }
        }
    }

    fn turn_runner(&self) -> TurnRunner<'_> {
        TurnRunner {
            model: &self.model,
            events: self.events,
            stop: &self.stop,
        }
    }

    fn request(&self, history: Vec<Item>, tools: Vec<ToolSpec>) -> ModelRequest {
        let mut input = Vec::with_capacity(history.len() + 1);
        if let Some(guidance) = &self.guidance {
            input.push(Item::user(guidance.clone()));
        }
        input.extend(history);
        ModelRequest {
            model: self.config.model.clone(),
            instructions: self.system_prompt.clone(),
            input,
            tools,
            ..ModelRequest::default()
        }
    }

    /// Record the turn's items in the history and the log. Returns the last
    /// assistant message and the tool calls, in order.
    fn record_turn(&mut self, turn: TurnOutput) -> (Option<String>, Vec<(String, String, String)>) {
        let mut last_text = None;
        let mut calls = Vec::new();
        for item in turn.items {
            match item {
                Item::Message { role, text } => {
                    if role == Role::Assistant {
                        last_text = Some(text.clone());
                    }
                    self.push_message(role, text);
                }
                Item::FunctionCall {
                    call_id,
                    name,
                    arguments,
                } => {
                    self.events.emit(EventKind::ToolCall {
                        call_id: call_id.clone(),
                        name: name.clone(),
                        arguments: arguments.clone(),
                    });
                    calls.push((call_id.clone(), name.clone(), arguments.clone()));
                    self.history.push(Item::FunctionCall {
                        call_id,
                        name,
                        arguments,
                    });
                }
                Item::FunctionCallOutput { .. } => {
                    self.warn("the model sent a tool output item; it was ignored");
                }
            }
        }
        (last_text, calls)
    }

    fn push_message(&mut self, role: Role, text: String) {
        self.events.emit(EventKind::Message {
            role,
            text: text.clone(),
        });
        self.history.push(Item::Message { role, text });
    }

    /// Add the user's messages that arrived since the last turn; true if any.
    fn take_steering(&mut self) -> bool {
        let mut messages = Vec::new();
        if let Some(steering) = &mut self.steering {
            while let Ok(message) = steering.try_recv() {
                if !message.trim().is_empty() {
                    messages.push(message);
                }
            }
        }
        let any = !messages.is_empty();
        for message in messages {
            self.push_message(Role::User, message);
        }
        any
    }

    fn record_usage(&mut self, turn: &Usage) {
        self.usage.add(turn);
        let price = self.config.price();
        self.events.emit(EventKind::Usage {
            turn: *turn,
            total: self.usage,
            turn_cost_usd: price.map(|price| price.cost(turn)),
            total_cost_usd: price.map(|price| price.cost(&self.usage)),
        });
    }

    /// The end of an attempt whose cost reached its budget. A budget on a
    /// model of unknown price ends it before the first turn: it could not hold.
    fn budget_end(&self) -> Option<End> {
        let budget = self.config.limits.max_cost_usd?;
        let Some(price) = self.config.price() else {
            let model = &self.config.model;
            return Some(End::Failed(format!(
                "a budget of {} is set, but the price of model {model:?} is unknown: set \
                 [model_prices.{model:?}] input, cached_input and output (US dollars per \
                 million tokens) in kiln's config.toml, or remove the budget",
                format_usd(budget)
            )));
        };
        let spent = price.cost(&self.usage);
        (spent >= budget).then(|| {
            End::Failed(format!(
                "budget {} reached ({} spent)",
                format_usd(budget),
                format_usd(spent)
            ))
        })
    }

    /// Make the next request fit the context window: shorten old tool
    /// outputs, then if needed replace the conversation with a summary the
    /// model writes (or, if that fails, with its newest part). Fails only
    /// when even the compacted conversation is larger than the window.
    /// With `force`, compaction happens whatever the estimate says (the
    /// provider rejected the last request as too long).
    async fn fit_context(&mut self, force: bool) -> Result<(), End> {
        let window = self.config.limits.context_window;
        let tokens_before = self.estimate_tokens();
        if !force && !needs_compaction(tokens_before, window) {
            return Ok(());
        }
        if shrink_old_tool_outputs(&mut self.history) {
            self.compacted(tokens_before);
            if !force && !needs_compaction(self.estimate_tokens(), window) {
                return Ok(());
            }
        }
        // A conversation that is already just the task and a summary cannot shrink further.
        if self.history.len() > 2 {
            self.summarise(tokens_before).await?;
        }
        let tokens = self.estimate_tokens();
        if tokens > window {
            return Err(End::Failed(format!(
                "the conversation needs about {tokens} tokens even after compaction, more than \
                 the context window of {window}; raise the model's context window or shorten the \
                 prompt and AGENTS.md"
            )));
        }
        Ok(())
    }

    async fn summarise(&mut self, tokens_before: u64) -> Result<(), End> {
        let window = self.config.limits.context_window;
        // The summary request must fit too, with room left for the answer.
        let fixed = estimate_tokens(&self.system_prompt, &[], self.guidance.as_deref(), &[])
            + tokens_for_bytes(SUMMARY_REQUEST.len());
        let room_bytes = (window * 7 / 10).saturating_sub(fixed).saturating_mul(4);
        let mut input = keep_newest(
            &self.history,
            usize::try_from(room_bytes).unwrap_or(usize::MAX),
        );
        input.push(Item::user(SUMMARY_REQUEST));
        let request = self.request(input, Vec::new());
        let summary = match self.turn_runner().run(&request, false).await {
            Ok(turn) => {
                self.record_usage(&turn.usage);
                turn.items.into_iter().rev().find_map(|item| match item {
                    Item::Message {
                        role: Role::Assistant,
                        text,
                    } if !text.trim().is_empty() => Some(text),
                    _ => None,
                })
            }
            Err(TurnFailure::Stopped) => return Err(self.end_for(TurnFailure::Stopped)),
            Err(TurnFailure::Failed(reason) | TurnFailure::ContextWindowExceeded(reason)) => {
                self.warn(&format!(
                    "summarising the conversation failed ({reason}); dropping its oldest part instead"
                ));
                None
            }
        };
        let task = last_user_message(&self.history).cloned();
        let last_chunk = self.toolbox.last_chunk_number();
        let mut compacted: Vec<Item> = task.iter().cloned().collect();
        match summary {
            Some(summary) => compacted.push(Item::user(summary_message(&summary, last_chunk))),
            None => {
                // Keep about half the window. Bytes stand in for tokens at the
                // ratio the provider's own count showed, when it showed one.
                let by_bytes = estimate_tokens(
                    &self.system_prompt,
                    &self.tools,
                    self.guidance.as_deref(),
                    &self.history,
                )
                .max(1);
                let tokens_per_estimated = (tokens_before as f64 / by_bytes as f64).max(1.0);
                let half_window_bytes = window as f64 * 2.0 / tokens_per_estimated;
                let kept = keep_newest(&self.history, half_window_bytes as usize);
                let dropped = self.history.len() - kept.len();
                compacted.push(Item::user(dropped_message(dropped, last_chunk)));
                compacted.extend(kept.into_iter().filter(|item| Some(item) != task.as_ref()));
            }
        }
        self.history = compacted;
        self.compacted(tokens_before);
        Ok(())
    }

    /// The history changed shape: record it so a resumed run sees the same.
    fn compacted(&mut self, tokens_before: u64) {
        self.reported = None;
        self.events.emit(EventKind::ContextCompacted {
            items: self.history.clone(),
            tokens_before,
        });
    }

    /// Tokens of the next request: the provider's count for the last turn
    /// plus an estimate for what was added since, or the estimate for all of
    /// it, whichever is larger.
    fn estimate_tokens(&self) -> u64 {
        let by_bytes = estimate_tokens(
            &self.system_prompt,
            &self.tools,
            self.guidance.as_deref(),
            &self.history,
        );
        match self.reported {
            Some((tokens, len)) if len <= self.history.len() => by_bytes
                .max(tokens.saturating_add(tokens_for_bytes(items_bytes(&self.history[len..])))),
            _ => by_bytes,
        }
    }

    fn warn(&self, message: &str) {
        self.events.emit(EventKind::Warning {
            message: message.to_string(),
        });
    }

    fn stopped(&self) -> Option<End> {
        if self.cancel.is_cancelled() {
            Some(End::Cancelled)
        } else if self.stop.is_cancelled() {
            Some(self.wall_clock_end())
        } else {
            None
        }
    }

    fn wall_clock_end(&self) -> End {
        let limit = self.config.limits.wall_clock.unwrap_or_default();
        End::Failed(format!(
            "wall-clock limit of {} reached before the model finished",
            format_duration(limit)
        ))
    }

    fn end_for(&self, failure: TurnFailure) -> End {
        match failure {
            TurnFailure::Stopped => self.stopped().unwrap_or_else(|| {
                // The stop token fires only through cancel or the wall clock.
                if self.deadline_hit.load(Ordering::SeqCst) {
                    self.wall_clock_end()
                } else {
                    End::Cancelled
                }
            }),
            TurnFailure::Failed(reason) => End::Failed(reason),
            TurnFailure::ContextWindowExceeded(reason) => {
                End::Failed(format!("model request failed: {reason}"))
            }
        }
    }

    fn finish(mut self, end: End) -> AttemptReport {
        // The outcome is stored and shown like the events: no secret in it.
        let redact = |text: String| self.events.redact(&text).into_owned();
        let end = match end {
            End::Finished(text) => End::Finished(redact(text)),
            End::Failed(reason) => End::Failed(redact(reason)),
            End::ChecksFailed(text, reason) => End::ChecksFailed(redact(text), redact(reason)),
            End::Cancelled => End::Cancelled,
            End::FixTurnsUsed => End::Failed(
                "the turns to fix a failing check ended without a final message".to_string(),
            ),
        };
        let (status, final_message, reason) = match end {
            End::Finished(text) => (AttemptStatus::Succeeded, Some(text), None),
            End::ChecksFailed(text, reason) => {
                (AttemptStatus::ChecksFailed, Some(text), Some(reason))
            }
            End::Failed(reason) => {
                self.events.emit(EventKind::Error {
                    message: reason.clone(),
                });
                (AttemptStatus::Failed, None, Some(reason))
            }
            End::Cancelled | End::FixTurnsUsed => (
                AttemptStatus::Cancelled,
                None,
                Some("cancelled by the user".to_string()),
            ),
        };
        let citations = match &final_message {
            Some(text) => check_citations(text, &self.workspace_root, &self.toolbox.chunks),
            None => Vec::new(),
        };
        for check in &citations {
            self.events.emit(EventKind::CitationChecked(check.clone()));
        }
        let mut report = AttemptReport::new(status);
        report.final_message = final_message;
        report.reason = reason;
        report.usage = self.usage;
        report.cost_usd = self.config.price().map(|price| price.cost(&self.usage));
        report.history = std::mem::take(&mut self.history);
        report.citations = citations;
        report.checks = std::mem::take(&mut self.check_results);
        report
    }
}

/// Bytes of a failing check's output quoted to the model (its end, where
/// test runners put their summary).
const CHECK_TAIL_BYTES: usize = 2048;

/// What kiln checks itself once the model has finished: the checks (with
/// turns to fix a failing one) and the citations of the final message (with
/// one turn to correct them).
impl Attempt<'_> {
    async fn verify(&mut self, end: End) -> End {
        let End::Finished(mut text) = end else {
            return end;
        };
        if !self.checks.is_empty() {
            if let Some(end) = self.run_checks().await {
                return end;
            }
            let limits = &self.config.limits;
            let fix_turns = limits
                .check_fix_turns
                .min(limits.max_turns.saturating_sub(self.turns));
            if self.failing_checks().next().is_some()
                && fix_turns == 0
                && limits.check_fix_turns > 0
            {
                self.warn("a check failed, and the turn limit leaves no turn to fix it");
            }
            if self.failing_checks().next().is_some() && fix_turns > 0 {
                let message = fix_message(
                    self.failing_checks().collect(),
                    &self.toolbox.chunks,
                    fix_turns,
                );
                self.push_message(Role::User, message);
                self.fix_turns_end = Some(self.turns.saturating_add(fix_turns));
                match self.converse().await {
                    End::Finished(fixed) => text = fixed,
                    End::FixTurnsUsed => self.warn(&format!(
                        "the model did not finish within the {fix_turns} turns given to fix the                          failing checks; its earlier final message stands"
                    )),
                    other => return other,
                }
                self.fix_turns_end = None;
                if let Some(end) = self.run_checks().await {
                    return end;
                }
            }
        }
        if let Some(corrected) = self.correct_citations(&text).await {
            text = corrected;
        }
        match self.failing_checks().next() {
            Some(failed) => {
                let reason = failure_reason(failed);
                End::ChecksFailed(text, reason)
            }
            None => End::Finished(text),
        }
    }

    fn failing_checks(&self) -> impl Iterator<Item = &CheckResult> {
        self.check_results.iter().filter(|result| !result.passed)
    }

    /// Run every check as its own terminal chunk and record its result
    /// (`check.finished`). `Some` when the attempt was stopped meanwhile.
    async fn run_checks(&mut self) -> Option<End> {
        let mut results = Vec::with_capacity(self.checks.len());
        for check in self.checks.clone() {
            if let Some(end) = self.stopped() {
                return Some(end);
            }
            // A repository's check must not hold the attempt longer than
            // the operator allows, whatever it asks for.
            let ceiling = self.config.limits.check_timeout;
            let timeout = check
                .timeout_secs
                .map_or(ceiling, |secs| Duration::from_secs(secs).min(ceiling));
            let call_id = format!("check:{}", check.name);
            let (_, chunk_id, ended) = self
                .toolbox
                .run_command(&call_id, &check.command, timeout, self.events, &self.stop)
                .await;
            let passed = ended.exit_code == Some(0) && !ended.timed_out && ended.problem.is_none();
            let reason = if ended.timed_out {
                Some(format!("timed out after {}", format_duration(timeout)))
            } else if let Some(problem) = &ended.problem {
                Some(problem.clone())
            } else {
                match ended.exit_code {
                    Some(0) => None,
                    Some(code) => Some(format!("exited with {code}")),
                    None => Some("ended by a signal".to_string()),
                }
            };
            let result = CheckResult {
                name: check.name.clone(),
                command: check.command.clone(),
                passed,
                exit_code: ended.exit_code,
                duration_ms: u64::try_from(ended.duration.as_millis()).unwrap_or(u64::MAX),
                timed_out: ended.timed_out,
                chunk_id,
                reason,
            };
            self.events.emit(EventKind::CheckFinished(result.clone()));
            results.push(result);
        }
        self.check_results = results;
        self.stopped()
    }

    /// When citations of `text` do not hold, tell the model which and why
    /// and let it write its final message once more (one turn; tools are
    /// not run then: the checks have judged the workspace as it is). The
    /// corrected message, if the model wrote one.
    async fn correct_citations(&mut self, text: &str) -> Option<String> {
        let invalid: Vec<CitationCheck> =
            check_citations(text, &self.workspace_root, &self.toolbox.chunks)
                .into_iter()
                .filter(|check| !check.valid)
                .collect();
        if invalid.is_empty() || self.stopped().is_some() {
            return None;
        }
        if self.turns >= self.config.limits.max_turns {
            self.warn(
                "citations of the final message do not hold, and the turn limit leaves no turn                  to correct them",
            );
            return None;
        }
        self.push_message(Role::User, citation_message(&invalid));
        if self.fit_context(false).await.is_err() {
            return None;
        }
        let request = self.request(self.history.clone(), self.tools.clone());
        let turn = match self.turn_runner().run(&request, true).await {
            Ok(turn) => turn,
            Err(failure) => {
                let why = match failure {
                    crate::model_turn::TurnFailure::Stopped => "the attempt was stopped".into(),
                    crate::model_turn::TurnFailure::Failed(reason)
                    | crate::model_turn::TurnFailure::ContextWindowExceeded(reason) => reason,
                };
                self.warn(&format!(
                    "the turn to correct the citations failed ({why}); the final message stands"
                ));
                return None;
            }
        };
        self.turns += 1;
        self.record_usage(&turn.usage);
        let (corrected, calls) = self.record_turn(turn);
        for (call_id, _, _) in calls {
            let output = "error: not run: only a corrected final message was asked for;                           the workspace was already checked"
                .to_string();
            self.events.emit(EventKind::ToolOutput {
                call_id: call_id.clone(),
                output: output.clone(),
                success: false,
            });
            self.history
                .push(Item::FunctionCallOutput { call_id, output });
        }
        corrected.filter(|text| !text.trim().is_empty())
    }
}

/// The guidance, with the checks kiln will run named up front, so that the
/// model can run them itself before it claims to be done.
fn with_checks_note(guidance: Option<String>, checks: &[CheckSpec]) -> Option<String> {
    if checks.is_empty() {
        return guidance;
    }
    let mut note = String::from(
        "After your final message kiln runs these checks itself, from the repository root, \
         and judges your work by them; run them before you finish:\n",
    );
    for check in checks {
        note.push_str(&format!("- {}: `{}`\n", check.name, check.command));
    }
    Some(match guidance {
        Some(guidance) => format!("{guidance}\n\n{note}"),
        None => note,
    })
}

/// The message that gives the model its chance to fix failing checks.
fn fix_message(failing: Vec<&CheckResult>, chunks: &ChunkStore, turns: u32) -> String {
    let mut message = format!(
        "kiln ran the repository's checks after your final message, and {} of them failed:\n",
        failing.len()
    );
    for check in failing {
        let how = match (check.exit_code, &check.reason) {
            (Some(code), _) if !check.timed_out => format!("exit code {code}"),
            (_, Some(reason)) => reason.clone(),
            _ => "failed".to_string(),
        };
        message.push_str(&format!(
            "\n- `{}` (`{}`): {how}; its output is terminal chunk {}",
            check.name, check.command, check.chunk_id
        ));
        let tail = chunks
            .get(&check.chunk_id)
            .map(|chunk| chunk.text())
            .unwrap_or_default();
        let tail = suffix_at_line_boundary(&tail, CHECK_TAIL_BYTES).trim_end();
        if !tail.is_empty() {
            message.push_str(&format!(", which ends:\n```\n{tail}\n```"));
        }
        message.push('\n');
    }
    message.push_str(&format!(
        "\nFix the cause (do not weaken, skip or delete the check), then end with your final \
         message again. You have up to {turns} turns; kiln then runs every check once more and \
         records the result."
    ));
    message
}

/// The message that asks the model to correct its citations.
fn citation_message(invalid: &[CitationCheck]) -> String {
    let mut message =
        String::from("kiln checked the citations of your final message, and these do not hold:\n");
    for check in invalid {
        let reason = check.reason.as_deref().unwrap_or("it does not hold");
        message.push_str(&format!("\n- {}: {reason}", check.citation));
    }
    message.push_str(
        "\n\nWrite your final message once more, in full, with citations that point at lines \
         that exist (or without those citations). Do not call tools: they are not run now.",
    );
    message
}

/// `check tests failed (exit 1, see t9)`.
fn failure_reason(check: &CheckResult) -> String {
    let how = match (check.exit_code, check.timed_out, &check.reason) {
        (_, true, _) => "timed out".to_string(),
        (Some(code), _, _) => format!("exit {code}"),
        (None, _, Some(reason)) => reason.clone(),
        (None, _, None) => "failed".to_string(),
    };
    format!(
        "check {} failed ({how}, see {})",
        check.name, check.chunk_id
    )
}

/// `45s`, `10m`, `1h 30m`.
fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}
