//! The `shell` tool: one command through the sandbox, its output streamed to
//! the event log as a terminal chunk and summarised for the model.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_model::ToolSpec;
use kiln_patch::ShellPatch;
use kiln_protocol::{EventKind, ExecStream};
use kiln_sandbox::{ExecOutcome, ExecRequest, OutputChunk, Sandbox};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::args::{
    parse_arguments, parse_exec_command, parse_shell, APPLY_PATCH, EXEC_COMMAND,
    EXEC_COMMAND_SHAPE, SHELL, SHELL_SHAPE,
};
use super::{Tool, ToolContext, ToolResult};
use crate::chunks::{chunk_id, new_capture};
use crate::output::{CapturedOutput, Utf8Decoder};
use crate::{EventLog, StreamRedactor};

/// How long a command may take to die after cancellation (or after its
/// timeout) before kiln stops waiting for the sandbox to report it.
pub(super) const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Output pieces buffered between the sandbox and the event log.
const OUTPUT_CHANNEL_CAPACITY: usize = 256;

/// The `shell` tool (also called as Codex's `exec_command`).
pub struct ShellTool {
    /// Shown in the spec; a call's own `timeout_ms` overrides it.
    default_timeout: Duration,
}

impl ShellTool {
    pub fn new(default_timeout: Duration) -> Self {
        ShellTool { default_timeout }
    }
}

#[async_trait::async_trait]
impl Tool for ShellTool {
    fn name(&self) -> &str {
        SHELL
    }

    fn aliases(&self) -> &[&str] {
        &[EXEC_COMMAND]
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: SHELL.to_string(),
            description: "Run a command in the workspace sandbox (no network) and get its exit \
                code and output. Pass the program and its arguments as an array; for pipes, \
                globs or `&&`, use [\"bash\", \"-lc\", \"SCRIPT\"]. The output starts with a \
                header naming its terminal chunk id (e.g. `[chunk t3] exit code 1, 0.4s`), which \
                citations use; long output keeps its beginning and end."
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
                            self.default_timeout.as_millis()
                        )
                    }
                },
                "required": ["command"],
                "additionalProperties": false
            }),
        }
    }

    /// Commands run in the sandbox, which mounts the workspace read-only in
    /// Ask mode: the sandbox, not the registry, keeps them from writing.
    fn changes_files(&self) -> bool {
        false
    }

    async fn call(&self, arguments: &str, ctx: &mut ToolContext<'_>) -> ToolResult {
        let parsed = if ctx.called_as() == EXEC_COMMAND {
            parse_arguments(
                EXEC_COMMAND,
                arguments,
                EXEC_COMMAND_SHAPE,
                parse_exec_command,
            )
        } else {
            parse_arguments(ctx.called_as(), arguments, SHELL_SHAPE, parse_shell)
        };
        let args = match parsed {
            Ok(args) => args,
            Err(problem) => return ToolResult::error(problem),
        };
        if let Some(found) = patch_in_shell_command(&args.argv) {
            // A leading `cd DIR &&` is relative to the call's workdir.
            let workdir = match (args.workdir, found.workdir) {
                (Some(base), Some(cd)) => Some(Path::new(&base).join(cd).display().to_string()),
                (base, cd) => cd.or(base),
            };
            let patch_arguments = json!({"input": found.patch, "workdir": workdir}).to_string();
            return ctx.call_tool(APPLY_PATCH, &patch_arguments).await;
        }
        let workdir = match ctx.resolve_workdir(args.workdir.as_deref()) {
            Ok(dir) => dir,
            Err(problem) => return ToolResult::error(problem),
        };
        let limits = ctx.limits();
        let timeout = args
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(limits.command_timeout)
            .min(limits.max_command_timeout);
        let tool_output_max_bytes = limits.tool_output_max_bytes;
        let chunk = ctx.next_chunk();
        let run = ShellRun {
            sandbox: ctx.sandbox().as_ref(),
            events: ctx.events(),
            cancel: ctx.cancel(),
            call_id: ctx.call_id(),
            chunk,
            tool_output_max_bytes,
            grace: CANCEL_GRACE,
        };
        let (result, captured) = run.run(args.argv, workdir, timeout).await;
        ctx.keep_chunk(chunk, captured);
        result
    }
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

pub(super) struct ShellRun<'a> {
    pub(super) sandbox: &'a dyn Sandbox,
    pub(super) events: &'a EventLog,
    pub(super) cancel: &'a CancellationToken,
    pub(super) call_id: &'a str,
    pub(super) chunk: u64,
    pub(super) tool_output_max_bytes: usize,
    /// See [`CANCEL_GRACE`].
    pub(super) grace: Duration,
}

/// Decodes both pipes, redacts secrets (across pieces: a secret the
/// command printed in two writes is still found) and records their text in
/// order of arrival. The chunk, and so what the model is shown, holds the
/// redacted text only.
struct ChunkWriter<'a> {
    events: &'a EventLog,
    chunk_id: String,
    stdout: Utf8Decoder,
    stderr: Utf8Decoder,
    stdout_redactor: StreamRedactor,
    stderr_redactor: StreamRedactor,
    captured: CapturedOutput,
    streamed_bytes: u64,
}

impl ChunkWriter<'_> {
    fn push(&mut self, piece: OutputChunk) {
        self.streamed_bytes += piece.data.len() as u64;
        let text = match piece.stream {
            ExecStream::Stdout => {
                let text = self.stdout.push(&piece.data);
                self.stdout_redactor.push(&text)
            }
            ExecStream::Stderr => {
                let text = self.stderr.push(&piece.data);
                self.stderr_redactor.push(&text)
            }
        };
        self.record(piece.stream, text);
    }

    fn record(&mut self, stream: ExecStream, text: String) {
        if text.is_empty() {
            return;
        }
        self.captured.push(&text);
        self.events.emit(EventKind::ExecOutput {
            chunk_id: self.chunk_id.clone(),
            stream,
            text,
        });
    }

    fn finish(&mut self) {
        let out = self.stdout.finish();
        let out = self.stdout_redactor.push(&out) + &self.stdout_redactor.finish();
        self.record(ExecStream::Stdout, out);
        let err = self.stderr.finish();
        let err = self.stderr_redactor.push(&err) + &self.stderr_redactor.finish();
        self.record(ExecStream::Stderr, err);
    }
}

/// How waiting for the sandbox ended.
enum Ended {
    Finished(Result<ExecOutcome, kiln_sandbox::SandboxError>),
    /// Cancelled or past its timeout, and the sandbox did not report back
    /// within the grace period.
    Abandoned,
}

/// How a command ended, for callers that judge it themselves (kiln's checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandEnd {
    pub(crate) exit_code: Option<i32>,
    pub(crate) timed_out: bool,
    pub(crate) duration: Duration,
    /// What stopped it or kept it from running (a limit, a sandbox failure).
    pub(crate) problem: Option<String>,
}

impl ShellRun<'_> {
    /// Run `argv` in `workdir`; returns what the model gets and the chunk.
    pub(super) async fn run(
        self,
        argv: Vec<String>,
        workdir: PathBuf,
        timeout: Duration,
    ) -> (ToolResult, CapturedOutput) {
        let (result, captured, _) = self.run_to_end(argv, workdir, timeout).await;
        (result, captured)
    }

    /// [`run`](Self::run), and how the command ended.
    pub(super) async fn run_to_end(
        self,
        argv: Vec<String>,
        workdir: PathBuf,
        timeout: Duration,
    ) -> (ToolResult, CapturedOutput, CommandEnd) {
        let chunk_id = chunk_id(self.chunk);
        self.events.emit(EventKind::ExecBegin {
            call_id: self.call_id.to_string(),
            chunk_id: chunk_id.clone(),
            command: argv.clone(),
            cwd: workdir.display().to_string(),
        });
        let request = ExecRequest {
            argv,
            cwd: workdir,
            timeout,
            // No terminal is attached: keep pagers from waiting for one.
            // Python bytecode caches are keyed on whole-second mtimes, so a
            // file patched within a second of a test run could be run stale;
            // not writing them also keeps the workspace's diff clean.
            env: [
                ("PAGER", "cat"),
                ("GIT_PAGER", "cat"),
                ("PYTHONDONTWRITEBYTECODE", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        let mut writer = ChunkWriter {
            events: self.events,
            chunk_id: chunk_id.clone(),
            stdout: Utf8Decoder::default(),
            stderr: Utf8Decoder::default(),
            stdout_redactor: self.events.stream_redactor(),
            stderr_redactor: self.events.stream_redactor(),
            captured: new_capture(),
            streamed_bytes: 0,
        };

        let started = Instant::now();
        let (sender, mut receiver) = mpsc::channel::<OutputChunk>(OUTPUT_CHANNEL_CAPACITY);
        let exec = self
            .sandbox
            .exec(request, Some(sender), self.cancel.child_token());
        tokio::pin!(exec);
        // The sandbox enforces the timeout and honours cancellation; these
        // bounds only keep a misbehaving backend from hanging the attempt.
        let give_up = async {
            tokio::select! {
                () = self.cancel.cancelled() => {}
                () = tokio::time::sleep(timeout.saturating_add(self.grace)) => {}
            }
            tokio::time::sleep(self.grace).await;
        };
        tokio::pin!(give_up);
        let ended = loop {
            tokio::select! {
                result = &mut exec => break Ended::Finished(result),
                Some(piece) = receiver.recv() => writer.push(piece),
                () = &mut give_up => break Ended::Abandoned,
            }
        };
        // Output still buffered when the command ended belongs to it.
        receiver.close();
        while let Some(piece) = receiver.recv().await {
            writer.push(piece);
        }
        writer.finish();
        let elapsed = started.elapsed();

        let (outcome, problem) = match ended {
            Ended::Finished(Ok(outcome)) => (Some(outcome), None),
            Ended::Finished(Err(err)) => {
                (None, Some(format!("the command could not be run: {err}")))
            }
            Ended::Abandoned => (
                None,
                Some(format!(
                    "the sandbox did not report the command's end within {}s of its {} \
                     (it may still be running)",
                    self.grace.as_secs_f64(),
                    if self.cancel.is_cancelled() {
                        "cancellation"
                    } else {
                        "timeout"
                    }
                )),
            ),
        };
        if let Some(outcome) = &outcome {
            // A sandbox that does not stream still reports the output at the end.
            if writer.streamed_bytes == 0 && !outcome.output.is_empty() {
                let output = self.events.redact(&outcome.output).into_owned();
                writer.record(ExecStream::Stdout, output);
            }
        }
        let omitted_bytes = match &outcome {
            Some(outcome) if writer.streamed_bytes > 0 => {
                outcome.total_bytes.saturating_sub(writer.streamed_bytes)
            }
            Some(outcome) => outcome.omitted_bytes,
            None => 0,
        };
        self.events.emit(EventKind::ExecEnd {
            call_id: self.call_id.to_string(),
            chunk_id: chunk_id.clone(),
            exit_code: outcome.as_ref().and_then(|o| o.exit_code),
            duration_ms: outcome
                .as_ref()
                .map_or(elapsed, |o| o.duration)
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            timed_out: outcome.as_ref().is_some_and(|o| o.timed_out),
            killed_by: outcome.as_ref().and_then(|o| o.killed_by.clone()),
            omitted_bytes,
        });

        if let Some(problem) = &problem {
            self.events.emit(EventKind::Warning {
                message: format!("{chunk_id}: {problem}"),
            });
        }
        let header = header(&chunk_id, outcome.as_ref(), problem.as_deref(), timeout);
        let body = if writer.captured.total_bytes() == 0 {
            "(no output)\n".to_string()
        } else {
            writer.captured.view_for_model(self.tool_output_max_bytes)
        };
        let success = outcome.as_ref().is_some_and(ExecOutcome::success);
        let result = ToolResult {
            output: format!("{header}\n{body}"),
            success,
        };
        let end = CommandEnd {
            exit_code: outcome.as_ref().and_then(|o| o.exit_code),
            timed_out: outcome.as_ref().is_some_and(|o| o.timed_out),
            duration: outcome.as_ref().map_or(elapsed, |o| o.duration),
            problem: problem.or_else(|| {
                outcome.as_ref().and_then(|o| {
                    if o.cancelled {
                        Some("cancelled".to_string())
                    } else {
                        o.killed_by
                            .as_ref()
                            .map(|limit| format!("killed by the sandbox: {limit}"))
                    }
                })
            }),
        };
        (result, writer.captured, end)
    }
}

/// `[chunk t3] exit code 1, 0.4s`, or what stopped the command.
fn header(
    chunk_id: &str,
    outcome: Option<&ExecOutcome>,
    problem: Option<&str>,
    timeout: Duration,
) -> String {
    let Some(outcome) = outcome else {
        return format!(
            "[chunk {chunk_id}] {}",
            problem.unwrap_or("the command did not run")
        );
    };
    let took = seconds(outcome.duration);
    let mut header = if outcome.cancelled {
        format!("[chunk {chunk_id}] cancelled by the user, {took}")
    } else if outcome.timed_out {
        format!(
            "[chunk {chunk_id}] timed out after {} and was killed; pass a larger timeout_ms or run less at once",
            seconds(timeout)
        )
    } else if let Some(limit) = &outcome.killed_by {
        format!("[chunk {chunk_id}] killed by the sandbox: {limit}, {took}")
    } else if let Some(code) = outcome.exit_code {
        format!("[chunk {chunk_id}] exit code {code}, {took}")
    } else {
        format!("[chunk {chunk_id}] ended by a signal, {took}")
    };
    let others: Vec<&str> = outcome
        .limits_reached
        .iter()
        .map(String::as_str)
        .filter(|limit| Some(*limit) != outcome.killed_by.as_deref())
        .collect();
    if !others.is_empty() {
        header.push_str(&format!(" (limits reached: {})", others.join(", ")));
    }
    header
}

/// `0.4s`, `12s`.
fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1}s")
    } else {
        format!("{secs:.0}s")
    }
}

#[cfg(test)]
#[path = "shell_tests.rs"]
mod tests;
