//! The one attempt path: every front door (`kiln exec`, the server's pool,
//! `kiln worker`) describes an attempt as an [`AttemptPlan`] and calls
//! [`run`]. Sandbox, setup, the agent loop and the finish step (diff,
//! commit, publish) exist here once, and `attempt.finished` is always the
//! last event of a run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kiln_model::ModelClient;
use kiln_protocol::{AttemptReport, AttemptStatus, EventKind, ExecStream, Mode};
use kiln_sandbox::{OutputChunk, Sandbox, SandboxPolicy};
use kiln_workspace::Checkout;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::attempt::{run_loop, AttemptInput};
use crate::{AgentConfig, EventLog};

/// Largest diff a report carries; the commit on the branch has all of it.
pub const MAX_REPORTED_DIFF: usize = 16 * 1024 * 1024;

/// Largest diff that travels inside the `diff.ready` event itself; a larger
/// one is fetched from where the event's `fetch` says.
pub const MAX_DIFF_IN_EVENT: usize = 256 * 1024;

/// Everything one attempt needs: where it works, how its commands are
/// confined, what runs before the agent, the agent's configuration and
/// input, and what happens to the result.
pub struct AttemptPlan {
    /// Model, mode, limits, instructions. `cwd` and `workspace_root` are set
    /// from [`AttemptPlan::workspace`].
    pub agent: AgentConfig,
    pub workspace: Workspace,
    pub sandbox: SandboxPlan,
    /// Runs first, with network and its secrets (not for a follow-up).
    pub setup: Option<Setup>,
    pub input: AttemptInput,
    /// The commit message for the attempt's change; no commit when `None`.
    pub commit_message: Option<String>,
    /// Called after the commit and before `attempt.finished`.
    pub publish: Option<Arc<dyn Publish>>,
    /// Where a client gets a diff too large for the `diff.ready` event.
    pub diff_location: Option<String>,
}

impl AttemptPlan {
    /// A plan with no setup, no commit and no publishing.
    pub fn new(
        agent: AgentConfig,
        workspace: Workspace,
        sandbox: SandboxPlan,
        input: AttemptInput,
    ) -> Self {
        AttemptPlan {
            agent,
            workspace,
            sandbox,
            setup: None,
            input,
            commit_message: None,
            publish: None,
            diff_location: None,
        }
    }
}

/// Where the agent works.
pub enum Workspace {
    /// The user's own checkout (`kiln exec`): changed in place; no diff or
    /// commit of its own. `root` is what the sandbox exposes; the agent
    /// starts in `cwd` within it.
    InPlace { root: PathBuf, cwd: PathBuf },
    /// A checkout of the attempt's own, which knows its base: diffed and
    /// committed at the end. The agent starts in `subdir` within it.
    Checkout {
        checkout: Box<Checkout>,
        subdir: PathBuf,
    },
}

impl Workspace {
    /// The directory the sandbox holds.
    pub fn root(&self) -> &Path {
        match self {
            Workspace::InPlace { root, .. } => root,
            Workspace::Checkout { checkout, .. } => checkout.path(),
        }
    }

    pub fn checkout(&self) -> Option<&Checkout> {
        match self {
            Workspace::InPlace { .. } => None,
            Workspace::Checkout { checkout, .. } => Some(checkout.as_ref()),
        }
    }

    /// Give back the checkout (for a caller that parks or reports it).
    pub fn into_checkout(self) -> Option<Checkout> {
        match self {
            Workspace::InPlace { .. } => None,
            Workspace::Checkout { checkout, .. } => Some(*checkout),
        }
    }
}

/// The sandbox the attempt's commands (and setup) run in.
pub enum SandboxPlan {
    /// Built by [`run`] from this base policy through [`sandbox_policy`].
    Policy(Box<SandboxPolicy>),
    /// Already built by the caller (tests, embedders).
    Ready(Arc<dyn Sandbox>),
}

/// The environment's setup script and the secrets only it sees.
#[derive(Clone, Default)]
pub struct Setup {
    pub script: String,
    pub secrets: BTreeMap<String, String>,
}

/// A step after the commit (a remote worker pushes the branch back to its
/// server). An error fails the attempt with that reason: its result would
/// not be where people look for it.
#[async_trait::async_trait]
pub trait Publish: Send + Sync {
    async fn publish(&self, checkout: &Checkout, commit: &str) -> Result<(), String>;
}

/// The ONE sandbox policy builder: `base` (from configuration: backend,
/// limits, network, paths, environment) made into the policy of an attempt
/// in `workspace` and `mode`. `kiln sandbox` uses it too, so its commands
/// run exactly as an agent's would.
pub fn sandbox_policy(base: &SandboxPolicy, workspace: &Workspace, mode: Mode) -> SandboxPolicy {
    let mut policy = base.clone();
    policy.workspace = workspace.root().to_path_buf();
    policy.read_only = policy.read_only || mode.is_read_only();
    // git inside the sandbox needs the repository metadata the checkout's
    // `.git` file points to; read-only: its refs are not the agent's.
    let git_dir = match workspace {
        Workspace::Checkout { checkout, .. } => Some(checkout.git_dir.clone()),
        Workspace::InPlace { root, .. } => crate::linked_git::linked_git_common_dir(root),
    };
    if let Some(dir) = git_dir {
        if !policy.extra_read_only.contains(&dir) {
            policy.extra_read_only.push(dir);
        }
    }
    policy
}

/// Run one attempt from its plan to its end: sandbox, setup, the agent
/// loop, then the diff (`diff.ready`), the commit (`commit.created`), the
/// publish step, and `attempt.finished`, always last. Never panics; every
/// failure ends the attempt with a reason.
pub async fn run(
    plan: AttemptPlan,
    model: Arc<dyn ModelClient>,
    events: &EventLog,
    cancel: CancellationToken,
) -> AttemptReport {
    let AttemptPlan {
        mut agent,
        mut workspace,
        sandbox,
        setup,
        input,
        commit_message,
        publish,
        diff_location,
    } = plan;
    match &workspace {
        Workspace::InPlace { cwd, .. } => agent.cwd = cwd.clone(),
        Workspace::Checkout { checkout, subdir } => {
            agent.cwd = checkout.path().join(subdir);
            // Nothing above the checkout is read, whatever `.git` the agent leaves.
            agent.workspace_root = Some(checkout.path().to_path_buf());
        }
    }
    let sandbox = match sandbox {
        SandboxPlan::Ready(sandbox) => sandbox,
        SandboxPlan::Policy(base) => {
            match kiln_sandbox::create(sandbox_policy(&base, &workspace, agent.mode)) {
                Ok(sandbox) => sandbox,
                Err(err) => {
                    let reason = format!("cannot create the sandbox: {err}");
                    return end_early(events, &cancel, reason);
                }
            }
        }
    };

    if let Some(setup) = setup.filter(|s| !s.script.trim().is_empty()) {
        if let Err(reason) = run_setup(&setup, sandbox.as_ref(), events, &cancel).await {
            sandbox.shutdown();
            return end_early(events, &cancel, reason);
        }
        if let Workspace::Checkout { checkout, .. } = &mut workspace {
            // What setup wrote (`.npmrc`, `.env.local`) is the attempt's
            // base, not the agent's change: it stays out of the diff and the branch.
            if let Err(err) = checkout.record_setup() {
                sandbox.shutdown();
                let reason = format!("cannot record the checkout after setup: {err}");
                return end_early(events, &cancel, reason);
            }
        }
    }

    let mut report = run_loop(&agent, model, sandbox.clone(), input, events, cancel).await;
    sandbox.shutdown();
    drop(sandbox);

    if let Workspace::Checkout { checkout, .. } = &workspace {
        record_diff(checkout, diff_location.as_deref(), events, &mut report);
        if let Some(message) = &commit_message {
            record_commit(checkout, message, events, &mut report);
        }
        if let (Some(publish), Some(sha)) = (&publish, report.commit_sha.clone()) {
            if let Err(reason) = publish.publish(checkout, &sha).await {
                let reason = events.redact(&reason).into_owned();
                events.emit(EventKind::Error {
                    message: reason.clone(),
                });
                if report.status == AttemptStatus::Succeeded {
                    report.status = AttemptStatus::Failed;
                    report.reason = Some(reason);
                }
            }
        }
    }
    finished(events, &report);
    report
}

/// The report and last events (`error`, `attempt.finished`) of an attempt
/// that could not start: its front door failed to prepare it (a checkout
/// that failed, unreadable secrets), or the cancel came first.
pub fn report_unstartable(
    events: &EventLog,
    cancel: &CancellationToken,
    reason: String,
) -> AttemptReport {
    end_early(events, cancel, reason)
}

fn end_early(events: &EventLog, cancel: &CancellationToken, reason: String) -> AttemptReport {
    let reason = events.redact(&reason).into_owned();
    let status = if cancel.is_cancelled() {
        AttemptStatus::Cancelled
    } else {
        events.emit(EventKind::Error {
            message: reason.clone(),
        });
        AttemptStatus::Failed
    };
    let report = AttemptReport::failed(status, reason);
    finished(events, &report);
    report
}

/// `attempt.finished`: emitted here and nowhere else.
fn finished(events: &EventLog, report: &AttemptReport) {
    events.emit(EventKind::AttemptFinished {
        status: report.status,
        reason: report.reason.clone(),
        final_message: report.final_message.clone(),
        usage: report.usage,
        cost_usd: report.cost_usd,
    });
}

/// The diff against the checkout's base (setup products excluded), redacted,
/// as `diff.ready` and in the report; a failure is a warning, since the
/// agent's result stands without it.
fn record_diff(
    checkout: &Checkout,
    location: Option<&str>,
    events: &EventLog,
    report: &mut AttemptReport,
) {
    let (diff, stat) = match checkout.diff(MAX_REPORTED_DIFF) {
        Ok(found) => found,
        Err(err) => {
            events.emit(EventKind::Warning {
                message: format!("cannot compute the diff: {err}"),
            });
            return;
        }
    };
    let fetch = location.map(str::to_string).unwrap_or_else(|| {
        format!(
            "git diff {} {} (after the commit)",
            checkout.base_commit,
            checkout.branch()
        )
    });
    let text = if diff.cut {
        let note = format!(
            "the diff is larger than the {MAX_REPORTED_DIFF} bytes kiln keeps: \
             the commit on branch {} holds the full change",
            checkout.branch()
        );
        events.emit(EventKind::Warning {
            message: note.clone(),
        });
        format!("# {note}\n")
    } else {
        events.redact(&diff.text).into_owned()
    };
    let inline = !diff.cut && text.len() <= MAX_DIFF_IN_EVENT;
    events.emit(EventKind::DiffReady {
        stat,
        bytes: diff.text.len() as u64,
        cut: diff.cut,
        diff: inline.then(|| text.clone()),
        fetch: (!inline).then_some(fetch),
    });
    report.diff = Some(text);
    report.diff_stat = Some(stat);
}

/// The agent's change committed on the attempt's branch (`commit.created`);
/// nothing to commit is not an error.
fn record_commit(
    checkout: &Checkout,
    message: &str,
    events: &EventLog,
    report: &mut AttemptReport,
) {
    match checkout.commit(&events.redact(message)) {
        Ok(Some(sha)) => {
            events.emit(EventKind::CommitCreated {
                branch: checkout.branch().to_string(),
                sha: sha.clone(),
                base: Some(checkout.base_commit.clone()),
            });
            report.branch = Some(checkout.branch().to_string());
            report.commit_sha = Some(sha);
        }
        // Nothing changed (an answer, a follow-up that only talked): the
        // branch keeps naming the attempt's state.
        Ok(None) => report.branch = Some(checkout.branch().to_string()),
        Err(err) => {
            events.emit(EventKind::Warning {
                message: format!("cannot commit on {}: {err}", checkout.branch()),
            });
        }
    }
}

/// The setup script in the sandbox, its output streamed as `setup.output`
/// (redacted, a secret split across chunks included) and its end as
/// `setup.finished`. `Err` is why the attempt cannot go on.
async fn run_setup(
    setup: &Setup,
    sandbox: &dyn Sandbox,
    events: &EventLog,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let running = sandbox.run_setup(&setup.script, &setup.secrets, Some(tx), cancel.clone());
    let forward = async {
        // One stream redactor per pipe: a secret printed in two chunks is
        // still caught (the per-event pass sees only one chunk at a time).
        let mut redactors: BTreeMap<bool, crate::StreamRedactor> = BTreeMap::new();
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
    let (result, ()) = tokio::join!(running, forward);
    let duration_ms = started.elapsed().as_millis() as u64;
    let finished = |success: bool, exit_code: Option<i32>, reason: Option<String>| {
        events.emit(EventKind::SetupFinished {
            success,
            exit_code,
            duration_ms,
            reason,
        });
    };
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(err) => {
            let reason = format!("cannot run the setup script: {err}");
            finished(false, None, Some(reason.clone()));
            return Err(reason);
        }
    };
    if outcome.cancelled || cancel.is_cancelled() {
        let reason = "cancelled during setup".to_string();
        finished(false, outcome.exit_code, Some(reason.clone()));
        return Err(reason);
    }
    if !outcome.success() {
        let status = match (outcome.exit_code, outcome.timed_out) {
            (_, true) => "timed out".to_string(),
            (Some(code), _) => format!("exited with {code}"),
            (None, _) => format!("was killed ({})", outcome.killed_by.unwrap_or_default()),
        };
        let reason = format!("the setup script {status}");
        finished(false, outcome.exit_code, Some(reason.clone()));
        return Err(reason);
    }
    finished(true, outcome.exit_code, None);
    Ok(())
}
