//! The tools the model may call, as one registry.
//!
//! Every tool is a [`Tool`]: its name, the [`ToolSpec`] the model is shown,
//! whether it may change files, and what a call does. A [`ToolRegistry`] is
//! built per attempt from the built-in tools (`shell`, `apply_patch`,
//! `update_plan`) plus any the caller registers; it alone decides what is
//! offered to the model, how a call finds its tool, and what Ask mode
//! refuses. The agent loop only asks the registry for specs and hands it
//! calls, so a new tool (an MCP server's, a skill) never touches the loop.

mod apply_patch;
mod args;
mod shell;
mod update_plan;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_model::ToolSpec;
use kiln_protocol::Mode;
use kiln_sandbox::Sandbox;
use tokio_util::sync::CancellationToken;

use crate::chunks::ChunkStore;
use crate::output::CapturedOutput;
use crate::{EventLog, Limits};

pub use apply_patch::ApplyPatchTool;
pub use shell::ShellTool;
pub use update_plan::UpdatePlanTool;

/// What goes back to the model for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    pub output: String,
    /// False when the call failed; the output then says why.
    pub success: bool,
}

impl ToolResult {
    pub fn ok(output: impl Into<String>) -> Self {
        ToolResult {
            output: output.into(),
            success: true,
        }
    }

    /// A failed call: `message` becomes `error: message`, for the model to
    /// read and correct.
    pub fn error(message: impl AsRef<str>) -> Self {
        ToolResult {
            output: format!("error: {}", message.as_ref()),
            success: false,
        }
    }
}

/// One tool the model may call.
///
/// A call never fails: every problem (bad arguments, a command that could
/// not run) is an error [`ToolResult`] the model can act on. A tool emits
/// the events of its effect (`exec.*`, `patch.applied`, `plan.updated`)
/// through [`ToolContext::events`]; the loop records `tool.call` and
/// `tool.output` around it.
#[async_trait::async_trait]
pub trait Tool: Send + Sync {
    /// The name the model calls it by; unique in a registry.
    fn name(&self) -> &str;

    /// Other names the model may use for it (not offered, but accepted).
    fn aliases(&self) -> &[&str] {
        &[]
    }

    /// What the model is told about the tool and its arguments.
    fn spec(&self) -> ToolSpec;

    /// Whether a call may change files in the workspace outside the
    /// sandbox's control. Ask mode neither offers nor runs such a tool.
    fn changes_files(&self) -> bool;

    /// Run one call with the model's raw JSON `arguments`.
    async fn call(&self, arguments: &str, ctx: &mut ToolContext<'_>) -> ToolResult;
}

/// A registry already holds a tool (or alias) of that name.
#[derive(Debug, thiserror::Error)]
#[error("a tool named `{0}` is already registered; give the new tool another name")]
pub struct DuplicateTool(pub String);

/// The tools of one attempt and the mode that decides which may run.
pub struct ToolRegistry {
    mode: Mode,
    tools: Vec<Arc<dyn Tool>>,
}

impl ToolRegistry {
    /// No tools yet.
    pub fn empty(mode: Mode) -> Self {
        ToolRegistry {
            mode,
            tools: Vec::new(),
        }
    }

    /// kiln's own tools: `shell`, `apply_patch` and `update_plan`.
    pub fn builtin(mode: Mode, limits: &Limits) -> Self {
        let mut registry = ToolRegistry::empty(mode);
        let builtins: [Arc<dyn Tool>; 3] = [
            Arc::new(ShellTool::new(limits.command_timeout)),
            Arc::new(ApplyPatchTool),
            Arc::new(UpdatePlanTool),
        ];
        registry.tools.extend(builtins);
        registry
    }

    /// Add `tool`, refusing a name or alias that is taken: a tool from a
    /// repository's MCP configuration must not replace one of kiln's.
    pub fn register(&mut self, tool: Arc<dyn Tool>) -> Result<(), DuplicateTool> {
        let names = std::iter::once(tool.name()).chain(tool.aliases().iter().copied());
        for name in names {
            if self.find(name).is_some() {
                return Err(DuplicateTool(name.to_string()));
            }
        }
        self.tools.push(tool);
        Ok(())
    }

    fn allowed(&self, tool: &dyn Tool) -> bool {
        !(self.mode == Mode::Ask && tool.changes_files())
    }

    fn offered(&self) -> impl Iterator<Item = &Arc<dyn Tool>> {
        self.tools.iter().filter(|tool| self.allowed(tool.as_ref()))
    }

    /// The tools offered to the model, in registration order.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.offered().map(|tool| tool.spec()).collect()
    }

    /// The names offered to the model.
    pub fn names(&self) -> Vec<String> {
        self.offered().map(|tool| tool.name().to_string()).collect()
    }

    fn find(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools
            .iter()
            .find(|tool| tool.name() == name || tool.aliases().contains(&name))
    }

    /// Run the call named `ctx.called_as`.
    async fn dispatch(&self, arguments: &str, ctx: &mut ToolContext<'_>) -> ToolResult {
        let name = ctx.called_as;
        match self.find(name) {
            None => ToolResult::error(format!(
                "unknown tool `{name}`; the available tools are: {}",
                self.names().join(", ")
            )),
            // Refused even though it was not offered: a model may call it anyway.
            Some(tool) if !self.allowed(tool.as_ref()) => ToolResult::error(format!(
                "{name} is not available: this is an Ask task and the workspace is read-only; \
                 answer the question without changing files"
            )),
            Some(tool) => tool.call(arguments, ctx).await,
        }
    }
}

/// What a tool call may use: the attempt's workspace, sandbox, limits and
/// event log, its terminal chunks, and the other tools.
pub struct ToolContext<'a> {
    call_id: &'a str,
    called_as: &'a str,
    events: &'a EventLog,
    cancel: &'a CancellationToken,
    cwd: &'a Path,
    limits: &'a Limits,
    sandbox: &'a Arc<dyn Sandbox>,
    chunks: &'a mut ChunkStore,
    next_chunk: &'a mut u64,
    registry: &'a ToolRegistry,
}

impl ToolContext<'_> {
    /// The id the model gave this call; events of its effect carry it.
    pub fn call_id(&self) -> &str {
        self.call_id
    }

    /// The name the model used: the tool's own or one of its aliases.
    pub fn called_as(&self) -> &str {
        self.called_as
    }

    pub fn events(&self) -> &EventLog {
        self.events
    }

    /// Fires when the attempt is cancelled or out of time.
    pub fn cancel(&self) -> &CancellationToken {
        self.cancel
    }

    /// The attempt's working directory, where relative paths start.
    pub fn cwd(&self) -> &Path {
        self.cwd
    }

    pub fn limits(&self) -> &Limits {
        self.limits
    }

    pub fn sandbox(&self) -> &Arc<dyn Sandbox> {
        self.sandbox
    }

    /// Number the next terminal chunk (`t7`); keep its output with
    /// [`keep_chunk`](Self::keep_chunk) so the final message may cite it.
    pub fn next_chunk(&mut self) -> u64 {
        let number = *self.next_chunk;
        *self.next_chunk += 1;
        number
    }

    pub fn keep_chunk(&mut self, number: u64, output: CapturedOutput) {
        self.chunks.insert(number, output);
    }

    /// Run another tool for this call, with the same refusals as a call from
    /// the model (a patch sent through `shell` is still refused in Ask mode).
    pub async fn call_tool(&mut self, name: &str, arguments: &str) -> ToolResult {
        let registry = self.registry;
        let mut ctx = ToolContext {
            call_id: self.call_id,
            called_as: name,
            events: self.events,
            cancel: self.cancel,
            cwd: self.cwd,
            limits: self.limits,
            sandbox: self.sandbox,
            chunks: &mut *self.chunks,
            next_chunk: &mut *self.next_chunk,
            registry,
        };
        registry.dispatch(arguments, &mut ctx).await
    }

    /// `workdir` as the model gave it, relative to the attempt's cwd, and
    /// inside the sandbox's workspace once `..` and symlinks are resolved.
    /// Tools that run in kiln's own process (apply_patch) depend on this
    /// check to keep their effect inside the workspace.
    pub fn resolve_workdir(&self, workdir: Option<&str>) -> Result<PathBuf, String> {
        let Some(dir) = workdir else {
            return Ok(self.cwd.to_path_buf());
        };
        let path = self.cwd.join(Path::new(dir));
        let outside = || {
            format!(
                "workdir `{dir}` is outside the workspace {}; use a directory inside it",
                self.sandbox.policy().workspace.display()
            )
        };
        let resolved = match path.canonicalize() {
            Ok(resolved) if resolved.is_dir() => resolved,
            _ => {
                return Err(format!(
                    "workdir `{dir}` is not a directory (relative paths start at {})",
                    self.cwd.display()
                ))
            }
        };
        let workspace = self
            .sandbox
            .policy()
            .workspace
            .canonicalize()
            .map_err(|_| outside())?;
        if resolved.starts_with(&workspace) {
            Ok(resolved)
        } else {
            Err(outside())
        }
    }
}

/// The tools of one attempt with what their calls produce that outlives a
/// call: the terminal chunks and their numbering.
pub(crate) struct Toolbox {
    registry: ToolRegistry,
    cwd: PathBuf,
    limits: Limits,
    sandbox: Arc<dyn Sandbox>,
    pub(crate) chunks: ChunkStore,
    /// The number the next command's chunk gets.
    next_chunk: u64,
}

impl Toolbox {
    /// kiln's built-in tools for `mode`.
    pub(crate) fn new(
        mode: Mode,
        cwd: PathBuf,
        limits: Limits,
        sandbox: Arc<dyn Sandbox>,
        chunks: ChunkStore,
        first_chunk: u64,
    ) -> Self {
        let registry = ToolRegistry::builtin(mode, &limits);
        Toolbox::with_registry(registry, cwd, limits, sandbox, chunks, first_chunk)
    }

    pub(crate) fn with_registry(
        registry: ToolRegistry,
        cwd: PathBuf,
        limits: Limits,
        sandbox: Arc<dyn Sandbox>,
        chunks: ChunkStore,
        first_chunk: u64,
    ) -> Self {
        Toolbox {
            registry,
            cwd,
            limits,
            sandbox,
            chunks,
            next_chunk: first_chunk.max(1),
        }
    }

    pub(crate) fn last_chunk_number(&self) -> u64 {
        self.next_chunk - 1
    }

    /// The tools offered to the model.
    pub(crate) fn specs(&self) -> Vec<ToolSpec> {
        self.registry.specs()
    }

    /// Run `sh -c command` in the workspace root as a terminal chunk of its
    /// own (`exec.*` under `call_id`, kept so a message may cite it): how kiln
    /// runs a check. Returns what a model would see, the chunk id and how the
    /// command ended.
    pub(crate) async fn run_command(
        &mut self,
        call_id: &str,
        command: &str,
        timeout: std::time::Duration,
        events: &EventLog,
        cancel: &CancellationToken,
    ) -> (ToolResult, String, shell::CommandEnd) {
        let chunk = self.next_chunk;
        self.next_chunk += 1;
        let run = shell::ShellRun {
            sandbox: self.sandbox.as_ref(),
            events,
            cancel,
            call_id,
            chunk,
            tool_output_max_bytes: self.limits.tool_output_max_bytes,
            grace: shell::CANCEL_GRACE,
        };
        let argv = vec!["sh".to_string(), "-c".to_string(), command.to_string()];
        let root = self.sandbox.policy().workspace.clone();
        let (result, captured, end) = run.run_to_end(argv, root, timeout).await;
        self.chunks.insert(chunk, captured);
        (result, crate::chunks::chunk_id(chunk), end)
    }

    /// Run one call. Never fails: every problem becomes an error output the
    /// model can read and correct.
    pub(crate) async fn call(
        &mut self,
        call_id: &str,
        name: &str,
        arguments: &str,
        events: &EventLog,
        cancel: &CancellationToken,
    ) -> ToolResult {
        let mut ctx = ToolContext {
            call_id,
            called_as: name,
            events,
            cancel,
            cwd: &self.cwd,
            limits: &self.limits,
            sandbox: &self.sandbox,
            chunks: &mut self.chunks,
            next_chunk: &mut self.next_chunk,
            registry: &self.registry,
        };
        self.registry.dispatch(arguments, &mut ctx).await
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
