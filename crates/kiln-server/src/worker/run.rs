//! One claimed attempt from checkout to finish: the path every attempt of
//! `kiln serve` takes (the agent loop itself is `kiln-agent`'s).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use kiln_agent::{AttemptInput, EventLog};
use kiln_protocol::AttemptReport as AttemptOutcome;
use kiln_protocol::{AttemptStatus, EventKind, EventSink, ExecStream};
use kiln_sandbox::{Backend, OutputChunk, Sandbox};
use kiln_store::{AttemptRef, ClaimedAttempt, Environment, StoreError, MAX_EVENTS_PER_READ};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::checkout::{Checkout, Mirrors, Source};
use super::event_sink::StoreSink;
use super::supervise::Supervisor;
use crate::state::Shared;

/// Runs `claimed` to its end and records the outcome (unless the lease was lost).
pub(crate) async fn run_claimed(
    shared: &Shared,
    mirrors: &Mirrors,
    worker_id: &str,
    claimed: ClaimedAttempt,
) {
    let started = Instant::now();
    shared.metrics.attempt_started();
    let attempt = claimed.attempt.clone();
    let (sink, writer) = StoreSink::start(shared.store.clone(), attempt.clone());
    let sink = Arc::new(sink);
    let user_messages = Arc::new(UserMessages::default());
    let events = EventLog::new(
        claimed.next_seq,
        vec![
            sink.clone() as Arc<dyn EventSink>,
            user_messages.clone() as Arc<dyn EventSink>,
        ],
    );
    let cancel = CancellationToken::new();
    // A reopened attempt's follow-up is its new prompt: take it before the
    // supervisor starts passing messages on as steering.
    let follow_up = if claimed.resume {
        shared
            .store
            .take_undelivered(&attempt)
            .await
            .map(|messages| {
                messages
                    .into_iter()
                    .map(|m| m.text)
                    .collect::<Vec<_>>()
                    .join("\n\n")
            })
    } else {
        Ok(String::new())
    };
    let (steer_tx, steer_rx) = mpsc::channel(32);
    let supervisor = Supervisor::start(
        shared.store.clone(),
        worker_id.to_string(),
        attempt.clone(),
        shared.config.lease,
        cancel.clone(),
        steer_tx,
    );

    let run = async {
        let follow_up = follow_up.map_err(|e| format!("cannot read the follow-up: {e}"))?;
        run(
            shared,
            mirrors,
            &claimed,
            follow_up,
            &events,
            steer_rx,
            cancel.clone(),
        )
        .await
    };
    let outcome = match run.await {
        Ok(outcome) => outcome,
        Err(reason) => {
            // git's errors name mirror and checkout paths: the server's layout
            // is not the user's business.
            let reason = crate::scrub_data_dir(&reason, &shared.config.data_dir);
            let status = if cancel.is_cancelled() {
                AttemptStatus::Cancelled
            } else {
                events.emit(EventKind::Error {
                    message: reason.clone(),
                });
                AttemptStatus::Failed
            };
            events.emit(EventKind::AttemptFinished {
                status,
                reason: Some(reason.clone()),
                final_message: None,
                usage: Default::default(),
            });
            let mut outcome = AttemptOutcome::new(status);
            outcome.reason = Some(reason);
            outcome
        }
    };
    sink.close();
    writer.finished().await;
    let lost = supervisor.lease_lost();
    let unused = user_messages.not_seen(supervisor.forwarded());
    supervisor.stop().await;
    if !lost {
        match shared.store.finish(worker_id, &attempt, &outcome).await {
            Ok(()) if outcome.status != AttemptStatus::Cancelled => {
                continue_with_late_messages(shared, &attempt, unused).await;
            }
            Ok(()) => {}
            Err(err) => tracing::error!("recording the end of {attempt} failed: {err}"),
        }
    }
    shared.metrics.attempt_ended(started.elapsed());
}

/// Largest diff kept in the store; the commit on the branch has all of it.
const MAX_STORED_DIFF: usize = 16 * 1024 * 1024;

/// The diff, or when git had more than the store keeps (kiln stopped
/// reading there), a note saying where the full change is.
fn bounded_diff(diff: kiln_workspace::Diff, branch: &str, events: &EventLog) -> String {
    if !diff.cut {
        return diff.text;
    }
    let note = format!(
        "the diff is larger than the {MAX_STORED_DIFF} bytes kept in the store: \
         fetch branch {branch} from the server's mirror for the full change"
    );
    events.emit(EventKind::Warning {
        message: note.clone(),
    });
    format!("# {note}\n")
}

/// Messages that reached the attempt after the agent's last look at its
/// steering channel would otherwise be lost: they become a follow-up, which
/// reopens the attempt (as a message to a finished attempt does).
async fn continue_with_late_messages(shared: &Shared, attempt: &AttemptRef, mut late: Vec<String>) {
    match shared.store.take_undelivered(attempt).await {
        Ok(messages) => late.extend(messages.into_iter().map(|m| m.text)),
        Err(err) => tracing::warn!("reading late messages of {attempt} failed: {err}"),
    }
    if late.is_empty() {
        return;
    }
    let system = super::system_principal();
    let text = late.join("\n\n");
    if let Err(err) = shared
        .store
        .enqueue_message(&system, &attempt.task_id, Some(attempt.n), &text)
        .await
    {
        tracing::error!("continuing {attempt} with late messages failed: {err}");
    }
}

/// The user messages the agent took into its conversation, to tell which
/// forwarded steering messages it never read.
#[derive(Default)]
struct UserMessages(std::sync::Mutex<Vec<String>>);

impl EventSink for UserMessages {
    fn emit(&self, event: &kiln_protocol::Event) {
        if let EventKind::Message {
            role: kiln_protocol::Role::User,
            text,
        } = &event.kind
        {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(text.clone());
            }
        }
    }
}

impl UserMessages {
    /// `forwarded` minus what the agent used (each use cancels one copy).
    fn not_seen(&self, forwarded: Vec<String>) -> Vec<String> {
        let mut seen = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        forwarded
            .into_iter()
            .filter(|text| match seen.iter().position(|s| s == text) {
                Some(i) => {
                    seen.swap_remove(i);
                    false
                }
                None => true,
            })
            .collect()
    }
}

/// Checkout, setup, agent, result. `Err` is a reason the attempt failed
/// before the agent could report one itself.
async fn run(
    shared: &Shared,
    mirrors: &Mirrors,
    claimed: &ClaimedAttempt,
    follow_up: String,
    events: &EventLog,
    steering: mpsc::Receiver<String>,
    cancel: CancellationToken,
) -> Result<AttemptOutcome, String> {
    let task = &claimed.task;
    let system = super::system_principal();
    let environment = shared
        .store
        .environment(&system, &task.environment_id)
        .await
        .map_err(|e| format!("cannot read the environment: {e}"))?;
    let base = task
        .base_ref
        .as_deref()
        .or(environment.base_branch.as_deref());
    // Checked again before every clone or fetch: the owner may have lost
    // admin rights, or the name may resolve elsewhere by now.
    let checked = crate::repo_access::recheck_environment(shared, &environment)
        .await
        .map_err(|e| format!("cannot use the repository {}: {e}", environment.repo))?;
    let credential = shared
        .store
        .environment_repo_credential(&environment.id)
        .await
        .map_err(|e| format!("cannot read the repository's credential: {e}"))?;
    let fetch = mirrors
        .fetch_rules(&checked, &environment.repo, credential.as_ref())
        .map_err(|e| format!("cannot prepare the fetch of {}: {e}", environment.repo))?;
    // Read on every run, follow-ups included: the redactor keeps their
    // values (and their encodings) out of every event, and setup needs them.
    let secrets = read_secrets(shared, &environment).await?;
    let mut redacted: Vec<(String, String)> = secrets
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if let Some(credential) = &credential {
        redacted.extend(
            credential
                .redaction_values()
                .into_iter()
                .map(|(name, value)| (name.to_string(), value)),
        );
    }
    events.set_redactor(kiln_agent::Redactor::new(redacted));
    let source = Source {
        repo: &environment.repo,
        owner: &environment.owner_token_id,
        fetch,
    };
    let mut checkout = mirrors
        .checkout(source, base, &task.id, claimed.attempt.n, claimed.resume)
        .await
        .map_err(|e| format!("cannot check out {}: {e}", environment.repo))?;
    if let Some(reason) = &checkout.full_checkout_reason {
        events.emit(EventKind::Warning {
            message: format!("the checkout is a full copy, not copy-on-write: {reason}"),
        });
    }
    let sandbox = build_sandbox(shared, &environment, &checkout, task.mode)?;

    if !claimed.resume {
        if let Some(script) = environment
            .setup_script
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            run_setup(&secrets, sandbox.as_ref(), script, events, &cancel).await?;
            // What setup wrote (`.npmrc`, `.env.local`) is the attempt's
            // base, not the agent's change: it stays out of the diff and the branch.
            checkout
                .record_setup()
                .map_err(|e| format!("cannot record the checkout after setup: {e}"))?;
        }
    }

    let input = if claimed.resume {
        let previous = shared
            .store
            .events(&task.id, Some(claimed.attempt.n), 0, MAX_EVENTS_PER_READ)
            .await
            .map_err(|e| format!("cannot read the attempt's history: {e}"))?
            .iter()
            .filter_map(|stored| stored.event().ok())
            .collect::<Vec<_>>();
        AttemptInput::resume(follow_up, &previous)
    } else {
        AttemptInput::new(task.prompt.clone())
    }
    .with_steering(steering);

    let mut agent = shared.config.agent.clone();
    agent.mode = task.mode;
    agent.cwd = checkout.worktree.path().to_path_buf();
    // Nothing above the checkout is read, whatever `.git` the agent leaves.
    agent.workspace_root = Some(checkout.worktree.path().to_path_buf());
    if let Some(model) = &task.model {
        agent.model = model.clone();
    }
    let result = kiln_agent::run_attempt_with(
        &agent,
        shared.model.clone(),
        sandbox.clone(),
        input,
        events,
        cancel,
    )
    .await;
    sandbox.shutdown();
    drop(sandbox);

    let mut outcome = AttemptOutcome::new(result.status);
    outcome.reason = result.reason;
    outcome.final_message = result.final_message;
    outcome.usage = result.usage;
    record_result(&checkout, &task.prompt, events, &mut outcome);
    Ok(outcome)
}

fn build_sandbox(
    shared: &Shared,
    environment: &Environment,
    checkout: &Checkout,
    mode: kiln_protocol::Mode,
) -> Result<Arc<dyn Sandbox>, String> {
    let mut policy = shared.config.sandbox.clone();
    policy.workspace = checkout.worktree.path().to_path_buf();
    policy.read_only = mode.is_read_only();
    policy.network = environment.network;
    policy.env.extend(environment.env.clone());
    // git inside the sandbox needs the mirror's metadata the worktree points to.
    policy.extra_read_only.push(checkout.git_dir.clone());
    if let Some(image) = &environment.image {
        policy.backend = Backend::Podman;
        policy.image = Some(image.clone());
    }
    kiln_sandbox::create(policy).map_err(|e| format!("cannot create the sandbox: {e}"))
}

pub(crate) async fn read_secrets(
    shared: &Shared,
    environment: &Environment,
) -> Result<BTreeMap<String, String>, String> {
    shared
        .store
        .environment_secrets(&environment.id)
        .await
        .map_err(|e| match e {
            // These already say whose secrets and what to do.
            StoreError::SecretKeyMismatch { .. } | StoreError::SecretTampered { .. } => {
                e.to_string()
            }
            other => format!("cannot read the environment's secrets: {other}"),
        })
}

async fn run_setup(
    secrets: &BTreeMap<String, String>,
    sandbox: &dyn Sandbox,
    script: &str,
    events: &EventLog,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let setup = sandbox.run_setup(script, secrets, Some(tx), cancel.clone());
    let forward = async {
        // One stream redactor per pipe: a secret printed in two chunks is
        // still caught (the per-event pass sees only one chunk at a time).
        let mut redactors: BTreeMap<bool, kiln_agent::StreamRedactor> = BTreeMap::new();
        while let Some(chunk) = rx.recv().await {
            let is_stderr = chunk.stream == ExecStream::Stderr;
            let redactor = redactors
                .entry(is_stderr)
                .or_insert_with(|| events.stream_redactor());
            let text = redactor.push(&String::from_utf8_lossy(&chunk.data));
            if !text.is_empty() {
                events.emit(EventKind::SetupOutput {
                    stream: chunk.stream,
                    text,
                });
            }
        }
        for (is_stderr, mut redactor) in redactors {
            let text = redactor.finish();
            if !text.is_empty() {
                let stream = if is_stderr {
                    ExecStream::Stderr
                } else {
                    ExecStream::Stdout
                };
                events.emit(EventKind::SetupOutput { stream, text });
            }
        }
    };
    let (result, ()) = tokio::join!(setup, forward);
    let outcome = result.map_err(|e| format!("cannot run the setup script: {e}"))?;
    if outcome.cancelled || cancel.is_cancelled() {
        return Err("cancelled during setup".into());
    }
    if !outcome.success() {
        let status = match (outcome.exit_code, outcome.timed_out) {
            (_, true) => "timed out".to_string(),
            (Some(code), _) => format!("exited with {code}"),
            (None, _) => format!("was killed ({})", outcome.killed_by.unwrap_or_default()),
        };
        events.emit(EventKind::SetupOutput {
            stream: ExecStream::Stderr,
            text: format!("setup script {status}\n"),
        });
        return Err(format!("the setup script {status}"));
    }
    Ok(())
}

/// Diff, diff stat and a commit on the attempt's branch; a failure here is
/// a warning, since the agent's result stands without them.
fn record_result(
    checkout: &Checkout,
    prompt: &str,
    events: &EventLog,
    outcome: &mut AttemptOutcome,
) {
    match checkout.diff(MAX_STORED_DIFF) {
        Ok((diff, stat)) => {
            let diff = events
                .redact(&bounded_diff(diff, checkout.worktree.branch(), events))
                .into_owned();
            outcome.diff = Some(diff);
            outcome.diff_stat = Some(stat);
        }
        Err(err) => {
            events.emit(EventKind::Warning {
                message: format!("cannot compute the diff: {err}"),
            });
        }
    }
    let title: String = prompt
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(72)
        .collect();
    let message = format!("kiln: {title}");
    match checkout.commit(&events.redact(&message)) {
        Ok(commit) => {
            outcome.branch = Some(checkout.worktree.branch().to_string());
            outcome.commit_sha = commit;
        }
        Err(err) => {
            events.emit(EventKind::Warning {
                message: format!("cannot commit on {}: {err}", checkout.worktree.branch()),
            });
        }
    }
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
