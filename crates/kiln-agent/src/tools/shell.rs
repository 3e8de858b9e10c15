//! The `shell` tool: one command through the sandbox, its output streamed to
//! the event log as a terminal chunk and summarised for the model.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kiln_protocol::{EventKind, ExecStream};
use kiln_sandbox::{ExecOutcome, ExecRequest, OutputChunk, Sandbox};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ToolResult;
use crate::chunks::{chunk_id, new_capture};
use crate::output::{CapturedOutput, Utf8Decoder};
use crate::{EventLog, StreamRedactor};

/// How long a command may take to die after cancellation (or after its
/// timeout) before kiln stops waiting for the sandbox to report it.
pub(super) const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Output pieces buffered between the sandbox and the event log.
const OUTPUT_CHANNEL_CAPACITY: usize = 256;

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

impl ShellRun<'_> {
    /// Run `argv` in `workdir`; returns what the model gets and the chunk.
    pub(super) async fn run(
        self,
        argv: Vec<String>,
        workdir: PathBuf,
        timeout: Duration,
    ) -> (ToolResult, CapturedOutput) {
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
        (result, writer.captured)
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
