use std::collections::BTreeMap;

use kiln_sandbox::{SandboxError, SandboxPolicy};

use super::*;
use crate::MemorySink;

/// A sandbox whose behaviour the test chooses.
struct FakeSandbox {
    policy: SandboxPolicy,
    behaviour: Behaviour,
}

enum Behaviour {
    /// Never reports back, whatever happens.
    Hang,
    /// Streams these pieces on stdout, then exits 0.
    Stream(Vec<&'static [u8]>),
}

#[async_trait::async_trait]
impl Sandbox for FakeSandbox {
    async fn exec(
        &self,
        _request: ExecRequest,
        output: Option<mpsc::Sender<OutputChunk>>,
        _cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        match &self.behaviour {
            Behaviour::Hang => futures::future::pending().await,
            Behaviour::Stream(pieces) => {
                let sender = output.expect("the shell tool always asks for streamed output");
                let mut offset = 0;
                for piece in pieces {
                    sender
                        .send(OutputChunk {
                            stream: ExecStream::Stdout,
                            data: bytes::Bytes::from_static(piece),
                            offset,
                        })
                        .await
                        .unwrap();
                    offset += piece.len() as u64;
                }
                Ok(ExecOutcome {
                    exit_code: Some(0),
                    total_bytes: offset,
                    ..ExecOutcome::default()
                })
            }
        }
    }

    async fn run_setup(
        &self,
        _script: &str,
        _secrets: &BTreeMap<String, String>,
        _output: Option<mpsc::Sender<OutputChunk>>,
        _cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        unreachable!("the agent never runs setup")
    }

    fn policy(&self) -> &SandboxPolicy {
        &self.policy
    }

    fn describe(&self) -> String {
        "fake".to_string()
    }
}

async fn run(
    behaviour: Behaviour,
    cancel: &CancellationToken,
) -> (ToolResult, CapturedOutput, Vec<kiln_protocol::Event>) {
    run_redacting(behaviour, cancel, crate::Redactor::default()).await
}

async fn run_redacting(
    behaviour: Behaviour,
    cancel: &CancellationToken,
    redactor: crate::Redactor,
) -> (ToolResult, CapturedOutput, Vec<kiln_protocol::Event>) {
    let sandbox = FakeSandbox {
        policy: SandboxPolicy::for_workspace("/"),
        behaviour,
    };
    let sink = MemorySink::new();
    let events = EventLog::new(1, vec![sink.clone()]).with_redactor(redactor);
    let run = ShellRun {
        sandbox: &sandbox,
        events: &events,
        cancel,
        call_id: "call_1",
        chunk: 4,
        tool_output_max_bytes: 1000,
        grace: Duration::from_millis(20),
    };
    let (result, captured) = tokio::time::timeout(
        Duration::from_secs(30),
        run.run(
            vec!["true".into()],
            PathBuf::from("/"),
            Duration::from_millis(20),
        ),
    )
    .await
    .expect("the shell tool must not wait forever on its sandbox");
    (result, captured, sink.events())
}

#[tokio::test]
async fn a_sandbox_that_never_reports_back_does_not_hang_the_attempt() {
    let (result, _, events) = run(Behaviour::Hang, &CancellationToken::new()).await;
    assert!(!result.success);
    assert!(
        result
            .output
            .starts_with("[chunk t4] the sandbox did not report the command's end"),
        "{}",
        result.output
    );
    assert!(result.output.contains("of its timeout"));
    assert!(events.iter().any(|e| matches!(
        e.kind,
        EventKind::ExecEnd {
            exit_code: None,
            ..
        }
    )));
    assert!(events
        .iter()
        .any(|e| matches!(&e.kind, EventKind::Warning { message } if message.starts_with("t4: "))));
}

#[tokio::test]
async fn cancelled_commands_are_abandoned_after_the_grace_period() {
    let cancel = CancellationToken::new();
    cancel.cancel();
    let (result, _, _) = run(Behaviour::Hang, &cancel).await;
    assert!(
        result.output.contains("of its cancellation"),
        "{}",
        result.output
    );
}

#[tokio::test]
async fn characters_split_across_pieces_are_logged_whole() {
    let pieces: Vec<&'static [u8]> = vec![b"caf\xc3", b"\xa9\nna\xc3", b"\xafve\n"];
    let (result, captured, events) =
        run(Behaviour::Stream(pieces), &CancellationToken::new()).await;
    let logged: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ExecOutput { chunk_id, text, .. } => {
                assert_eq!(chunk_id, "t4");
                Some(text.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(logged.concat(), "café\nnaïve\n");
    assert!(logged.iter().all(|t| !t.contains('\u{fffd}')));
    assert_eq!(captured.total_lines(), 2);
    assert!(result.success);
    assert_eq!(result.output, "[chunk t4] exit code 0, 0.0s\ncafé\nnaïve\n");
    let begin = events
        .iter()
        .position(|e| matches!(e.kind, EventKind::ExecBegin { .. }));
    let end = events
        .iter()
        .position(|e| matches!(e.kind, EventKind::ExecEnd { .. }));
    assert_eq!(begin, Some(0));
    assert_eq!(end, Some(events.len() - 1));
}

#[tokio::test]
async fn a_secret_printed_in_two_pieces_is_redacted_from_the_log_and_the_model() {
    let pieces: Vec<&'static [u8]> = vec![b"token: ghp_abc", b"def123456\nYWJj", b"ZGVm\n"];
    let redactor = crate::Redactor::new([("GH_TOKEN", "ghp_abcdef123456"), ("SHORT", "abcdef")]);
    let (result, captured, events) = run_redacting(
        Behaviour::Stream(pieces),
        &CancellationToken::new(),
        redactor,
    )
    .await;
    let logged: String = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ExecOutput { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect();
    // `YWJjZGVm` is base64 of `abcdef`, split between the pieces too.
    assert_eq!(logged, "token: [REDACTED:GH_TOKEN]\n[REDACTED:SHORT]\n");
    assert_eq!(captured.total_lines(), 2);
    assert_eq!(
        result.output,
        "[chunk t4] exit code 0, 0.0s\ntoken: [REDACTED:GH_TOKEN]\n[REDACTED:SHORT]\n"
    );
}
