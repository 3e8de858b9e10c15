//! The tools the model may call (`shell`, `apply_patch`, `update_plan`) and
//! the dispatch from a call to its effect and the output the model gets back.

mod args;
mod shell;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_model::ToolSpec;
use kiln_patch::ShellPatch;
use kiln_protocol::{EventKind, Mode};
use kiln_sandbox::Sandbox;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::chunks::ChunkStore;
use crate::{EventLog, Limits};
use args::{parse_tool_call, ToolRequest, APPLY_PATCH, SHELL, UPDATE_PLAN};

/// What goes back to the model for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToolResult {
    pub(crate) output: String,
    pub(crate) success: bool,
}

impl ToolResult {
    fn ok(output: impl Into<String>) -> Self {
        ToolResult {
            output: output.into(),
            success: true,
        }
    }

    fn error(message: impl AsRef<str>) -> Self {
        ToolResult {
            output: format!("error: {}", message.as_ref()),
            success: false,
        }
    }
}

/// Runs tool calls for one attempt, and owns what they produce that outlives
/// a call: the terminal chunks and their numbering.
pub(crate) struct Toolbox {
    mode: Mode,
    cwd: PathBuf,
    limits: Limits,
    sandbox: Arc<dyn Sandbox>,
    pub(crate) chunks: ChunkStore,
    /// The number the next command's chunk gets.
    next_chunk: u64,
}

impl Toolbox {
    pub(crate) fn new(
        mode: Mode,
        cwd: PathBuf,
        limits: Limits,
        sandbox: Arc<dyn Sandbox>,
        chunks: ChunkStore,
        first_chunk: u64,
    ) -> Self {
        Toolbox {
            mode,
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

    fn available(&self) -> &'static [&'static str] {
        match self.mode {
            Mode::Code => &[SHELL, APPLY_PATCH, UPDATE_PLAN],
            Mode::Ask => &[SHELL, UPDATE_PLAN],
        }
    }

    /// The tools offered to the model in this mode.
    pub(crate) fn specs(&self) -> Vec<ToolSpec> {
        let mut specs = vec![shell_spec(self.limits.command_timeout)];
        if self.mode == Mode::Code {
            specs.push(apply_patch_spec());
        }
        specs.push(update_plan_spec());
        specs
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
        // Ask mode refuses patches even if a model calls the tool it was not offered.
        if name == APPLY_PATCH && self.mode == Mode::Ask {
            return refuse_patch_in_ask_mode();
        }
        let request = match parse_tool_call(name, arguments, self.available()) {
            Ok(request) => request,
            Err(problem) => return ToolResult::error(problem),
        };
        match request {
            ToolRequest::Shell {
                argv,
                workdir,
                timeout_ms,
            } => {
                if let Some(found) = patch_in_shell_command(&argv) {
                    if self.mode == Mode::Ask {
                        return refuse_patch_in_ask_mode();
                    }
                    // A leading `cd DIR &&` is relative to the call's workdir.
                    let workdir = match (workdir, found.workdir) {
                        (Some(base), Some(cd)) => {
                            Some(Path::new(&base).join(cd).display().to_string())
                        }
                        (base, cd) => cd.or(base),
                    };
                    return self
                        .apply_patch(call_id, found.patch, workdir, events)
                        .await;
                }
                let workdir = match self.resolve_workdir(workdir.as_deref()) {
                    Ok(dir) => dir,
                    Err(problem) => return ToolResult::error(problem),
                };
                let timeout = timeout_ms
                    .map(std::time::Duration::from_millis)
                    .unwrap_or(self.limits.command_timeout)
                    .min(self.limits.max_command_timeout);
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
                let (result, captured) = run.run(argv, workdir, timeout).await;
                self.chunks.insert(chunk, captured);
                result
            }
            ToolRequest::ApplyPatch { patch, workdir } => {
                self.apply_patch(call_id, patch, workdir, events).await
            }
            ToolRequest::UpdatePlan { explanation, plan } => {
                events.emit(EventKind::PlanUpdated { explanation, plan });
                ToolResult::ok("Plan updated.")
            }
        }
    }

    async fn apply_patch(
        &self,
        call_id: &str,
        patch: String,
        workdir: Option<String>,
        events: &EventLog,
    ) -> ToolResult {
        let root = match self.resolve_workdir(workdir.as_deref()) {
            Ok(dir) => dir,
            Err(problem) => return ToolResult::error(problem),
        };
        // Patching reads and writes files: keep it off the async workers.
        let applied = tokio::task::spawn_blocking(move || kiln_patch::apply(&root, &patch)).await;
        match applied {
            Ok(Ok(report)) => {
                let summary = report.summary();
                events.emit(EventKind::PatchApplied {
                    call_id: call_id.to_string(),
                    changes: report.changes,
                });
                ToolResult::ok(summary)
            }
            Ok(Err(err)) => ToolResult::error(format!(
                "the patch was not applied, no file was changed: {err}"
            )),
            Err(join) => ToolResult::error(format!(
                "the patch engine stopped unexpectedly ({join}); no file was changed"
            )),
        }
    }

    /// `workdir` as the model gave it, relative to the attempt's cwd, and
    /// inside the sandbox's workspace once `..` and symlinks are resolved.
    /// apply_patch runs in kiln's own process, not in the sandbox, so this
    /// check is what keeps a patch from landing outside the workspace.
    fn resolve_workdir(&self, workdir: Option<&str>) -> Result<PathBuf, String> {
        let Some(dir) = workdir else {
            return Ok(self.cwd.clone());
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

fn refuse_patch_in_ask_mode() -> ToolResult {
    ToolResult::error(
        "apply_patch is not available: this is an Ask task and the workspace is read-only; \
         answer the question without changing files",
    )
}

/// The patch of a shell call that is really a patch: `apply_patch <<'EOF' …
/// EOF` (optionally after `cd DIR &&`) as a `bash -lc` script, or
/// `["apply_patch", PATCH]`.
fn patch_in_shell_command(argv: &[String]) -> Option<ShellPatch> {
    match argv {
        [program, patch] if program == APPLY_PATCH || program == "applypatch" => Some(ShellPatch {
            patch: patch.clone(),
            workdir: None,
        }),
        [shell, flag, script]
            if matches!(shell.as_str(), "bash" | "sh" | "/bin/bash" | "/bin/sh")
                && matches!(flag.as_str(), "-lc" | "-c") =>
        {
            kiln_patch::patch_from_shell_command(script)
        }
        _ => None,
    }
}

fn shell_spec(default_timeout: std::time::Duration) -> ToolSpec {
    ToolSpec {
        name: SHELL.to_string(),
        description: "Run a command in the workspace sandbox (no network) and get its exit code \
            and output. Pass the program and its arguments as an array; for pipes, globs or \
            `&&`, use [\"bash\", \"-lc\", \"SCRIPT\"]. The output starts with a header naming its \
            terminal chunk id (e.g. `[chunk t3] exit code 1, 0.4s`), which citations use; long \
            output keeps its beginning and end."
            .to_string(),
        parameters: json!({
            "type": "object",
            "properties": {
                "command": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "The program and its arguments, e.g. [\"bash\", \"-lc\", \"rg -n parse src\"]."
                },
                "workdir": {
                    "type": "string",
                    "description": "Directory to run in, relative to the working directory (default: the working directory)."
                },
                "timeout_ms": {
                    "type": "number",
                    "description": format!(
                        "Kill the command after this many milliseconds (default {}).",
                        default_timeout.as_millis()
                    )
                }
            },
            "required": ["command"],
            "additionalProperties": false
        }),
    }
}

fn apply_patch_spec() -> ToolSpec {
    ToolSpec {
        name: APPLY_PATCH.to_string(),
        description: "Edit files with a patch in the apply_patch format (*** Begin Patch … \
            *** End Patch, with *** Add File / *** Update File / *** Delete File sections; paths \
            relative to the working directory). The patch applies completely or not at all."
            .to_string(),
        parameters: json!({
            "type": "object",
            "properties": {
                "input": {
                    "type": "string",
                    "description": "The whole patch, from *** Begin Patch to *** End Patch."
                }
            },
            "required": ["input"],
            "additionalProperties": false
        }),
    }
}

fn update_plan_spec() -> ToolSpec {
    ToolSpec {
        name: UPDATE_PLAN.to_string(),
        description: "Show the user your checklist for this task. Send the whole list each \
            time; keep exactly one step in_progress while working."
            .to_string(),
        parameters: json!({
            "type": "object",
            "properties": {
                "explanation": {"type": "string", "description": "Why the plan changed (optional)."},
                "plan": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "step": {"type": "string"},
                            "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]}
                        },
                        "required": ["step", "status"],
                        "additionalProperties": false
                    }
                }
            },
            "required": ["plan"],
            "additionalProperties": false
        }),
    }
}
