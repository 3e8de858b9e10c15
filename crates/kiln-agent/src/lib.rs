//! kiln's agent loop: one attempt at a task, from the prompt to a final
//! message whose citations have been checked.
//!
//! [`run_attempt`] assembles the context (a system prompt for the [`Mode`],
//! the repository's `AGENTS.md` guidance found by [`discover_instructions`],
//! the conversation), streams model turns from a [`ModelClient`], runs the tool
//! calls they make through a [`ToolRegistry`] (`shell` through a [`Sandbox`],
//! `apply_patch` through `kiln-patch`, `update_plan`), and keeps going until the model answers
//! without calling a tool, a budget in [`Limits`] runs out, or the caller
//! cancels. Every step is an [`Event`](kiln_protocol::Event) numbered by an
//! [`EventLog`]; [`history_from_events`] turns a log back into a conversation
//! to continue. Context that nears the window is compacted; the final
//! message's `【F:path†L1-L9】` and `【t3†L2】` citations are checked with
//! [`check_citations`].
//!
//! ```
//! use std::sync::Arc;
//! use kiln_agent::{run_attempt, AgentConfig, EventLog, MemorySink};
//! use kiln_model::{ModelClient, ModelError, ModelEvent, ModelRequest, ModelStream};
//! use kiln_protocol::{AttemptStatus, Item, Mode, Usage};
//! use tokio_util::sync::CancellationToken;
//!
//! /// A model that answers every request with the same message.
//! struct Echo;
//!
//! #[async_trait::async_trait]
//! impl ModelClient for Echo {
//!     async fn stream(&self, _request: &ModelRequest) -> Result<ModelStream, ModelError> {
//!         let events = vec![
//!             Ok(ModelEvent::ItemDone(Item::assistant("Nothing to do."))),
//!             Ok(ModelEvent::Completed { usage: Usage::default() }),
//!         ];
//!         Ok(Box::pin(futures::stream::iter(events)))
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let workspace = tempfile::tempdir().unwrap();
//! let mut policy = kiln_sandbox::SandboxPolicy::for_workspace(workspace.path());
//! policy.backend = kiln_sandbox::Backend::None;
//! let sandbox = kiln_sandbox::create(policy).unwrap();
//!
//! let config = AgentConfig::new("any-model", Mode::Code, workspace.path());
//! let sink = MemorySink::new();
//! let events = EventLog::new(1, vec![sink.clone()]);
//! let outcome = run_attempt(
//!     &config,
//!     Arc::new(Echo),
//!     sandbox,
//!     Vec::new(),
//!     "Tidy up.".to_string(),
//!     &events,
//!     CancellationToken::new(),
//! )
//! .await;
//! assert_eq!(outcome.status, AttemptStatus::Succeeded);
//! assert_eq!(outcome.final_message.as_deref(), Some("Nothing to do."));
//! assert_eq!(kiln_agent::history_from_events(&sink.events()), outcome.history);
//! # });
//! ```
//!
//! [`Mode`]: kiln_protocol::Mode
//! [`ModelClient`]: kiln_model::ModelClient
//! [`Sandbox`]: kiln_sandbox::Sandbox

mod attempt;
pub mod checks;
mod chunks;
mod citations;
mod compaction;
mod config;
mod event_log;
mod history;
mod instructions;
mod linked_git;
mod model_turn;
mod output;
mod plan;
mod prompt;
mod redact;
mod steering;
mod tools;
pub mod workspace_file;

pub use attempt::{run_attempt, run_attempt_with, AttemptInput};
pub use checks::{discover_checks, DiscoveredChecks};
pub use chunks::ChunkStore;
pub use citations::{check_citations, parse_citations, Citation, CitationTarget, LineRange};
pub use config::{AgentConfig, InstructionsConfig, Limits};
pub use event_log::{EventLog, MemorySink};
pub use history::history_from_events;
pub use instructions::{
    discover_instructions, discover_instructions_within, project_root, Instructions,
};
pub use kiln_protocol::AttemptReport;
pub use output::CapturedOutput;
pub use plan::{
    report_unstartable, run, sandbox_policy, AttemptPlan, Publish, SandboxPlan, Setup, Workspace,
    MAX_DIFF_IN_EVENT, MAX_REPORTED_DIFF,
};
pub use redact::{Redactor, StreamRedactor, MIN_SECRET_LEN};
pub use steering::{commit_message, UserMessages};
pub use tools::{
    ApplyPatchTool, DuplicateTool, ShellTool, Tool, ToolContext, ToolRegistry, ToolResult,
    UpdatePlanTool,
};
pub use workspace_file::{WorkspaceFile, WorkspaceFileError};
