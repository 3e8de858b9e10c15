//! The agent loop: context → model turn → tool calls → … → final message,
//! within the attempt's budgets, every step an event.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_model::{ModelClient, ModelRequest, ToolSpec};
use kiln_protocol::{format_usd, AttemptReport, AttemptStatus, EventKind, Item, Role, Usage};
use kiln_sandbox::Sandbox;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::chunks::{last_chunk_number_in, ChunkStore};
use crate::citations::check_citations;
use crate::compaction::{
    estimate_tokens, items_bytes, keep_newest, last_user_message, needs_compaction,
    shrink_old_tool_outputs, tokens_for_bytes,
};
use crate::history::answer_unanswered_calls;
use crate::instructions::{discover_instructions_within, project_root};
use crate::model_turn::{TurnFailure, TurnOutput, TurnRunner};
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
        guidance: instructions_message(&instructions, &cwd.display().to_string()),
        tools: toolbox.specs(),
        toolbox,
        history: input.history,
        steering: input.steering,
        usage: Usage::default(),
        turns: 0,
        reported: None,
        workspace_root,
        cwd,
    };
    let end = attempt.run(input.prompt).await;
    attempt.finish(end)
}

/// How the loop ended.
enum End {
    Finished(String),
    Failed(String),
    Cancelled,
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

        let mut force_compaction = false;
        loop {
            if let Some(end) = self.stopped() {
                return end;
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
            End::Cancelled => End::Cancelled,
        };
        let (status, final_message, reason) = match end {
            End::Finished(text) => (AttemptStatus::Succeeded, Some(text), None),
            End::Failed(reason) => {
                self.events.emit(EventKind::Error {
                    message: reason.clone(),
                });
                (AttemptStatus::Failed, None, Some(reason))
            }
            End::Cancelled => (
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
        report
    }
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
