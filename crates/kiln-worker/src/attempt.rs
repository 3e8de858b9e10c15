//! One claimed attempt: heartbeats and event upload around the one attempt
//! function every front door calls, then the finish.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_agent::{AgentConfig, EventLog, Redactor};
use kiln_model::{ModelClient, ProviderConfig, WireApi};
use kiln_protocol::worker::{FinishRequest, WorkerClaim};
use kiln_protocol::{AttemptReport, AttemptStatus, Event, EventKind, EventSink, Role};
use kiln_workspace::{run_git, BaseCheckouts, GitError, Repo, Worktree};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::LeaseClient;
use crate::heartbeat::Heartbeats;
use crate::pool::Context;
use crate::repository::{mirror_dir, AttemptRemote};
use crate::uploader::{UploadEnd, Uploader};

/// The worker's places on disk for attempts: a mirror per server
/// repository (`DATA/mirrors`), a checkout per attempt (`DATA/checkouts`).
pub(crate) struct Attempts {
    data_dir: PathBuf,
    bases: BaseCheckouts,
    /// One lock per mirror: fetches and worktree changes take turns.
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

/// An attempt's checkout and the mirror its commits live in.
pub(crate) struct Checkout {
    pub(crate) worktree: Worktree,
    pub(crate) mirror: PathBuf,
    pub(crate) full_checkout_reason: Option<String>,
}

impl Attempts {
    pub(crate) fn new(data_dir: &Path) -> Self {
        Attempts {
            data_dir: data_dir.to_path_buf(),
            bases: BaseCheckouts::new(data_dir.join("bases")),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// An empty directory only the worker reads, as git's `HOME`.
    fn git_home(&self) -> Result<PathBuf, String> {
        use std::os::unix::fs::DirBuilderExt;
        let home = self.data_dir.join("git-home");
        match std::fs::DirBuilder::new().mode(0o700).create(&home) {
            Ok(()) => Ok(home),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(home),
            Err(err) => Err(format!("cannot create {}: {err}", home.display())),
        }
    }

    /// The attempt's checkout: fetched from the server into the mirror of
    /// its `mirror_key`, at the base commit, or for a follow-up at the tip
    /// of the branch the server serves.
    async fn checkout(
        &self,
        claim: &WorkerClaim,
        remote: &AttemptRemote,
    ) -> Result<Checkout, String> {
        let mirror = mirror_dir(&self.data_dir.join("mirrors"), &claim.repository.mirror_key);
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(mirror.clone()).or_default().clone()
        };
        let _turn = lock.lock().await;
        let request = CheckoutRequest {
            mirror,
            dest: self
                .data_dir
                .join("checkouts")
                .join(&claim.attempt.task_id)
                .join(claim.attempt.n.to_string()),
            bases: self.bases.clone(),
            remote: remote.clone(),
            base_commit: claim.repository.base_commit.clone(),
            resume: claim.resume,
        };
        tokio::task::spawn_blocking(move || request.run())
            .await
            .map_err(|err| format!("the checkout stopped: {err}"))?
            .map_err(|err| {
                format!("cannot check out the attempt's repository from the server: {err}")
            })
    }
}

struct CheckoutRequest {
    mirror: PathBuf,
    dest: PathBuf,
    bases: BaseCheckouts,
    remote: AttemptRemote,
    base_commit: String,
    resume: bool,
}

impl CheckoutRequest {
    fn run(self) -> Result<Checkout, GitError> {
        let io = |path: &Path, err: std::io::Error| {
            GitError::Overlay(format!("cannot prepare {}: {err}", path.display()))
        };
        if !self.mirror.join(".git").exists() {
            let parent = self.mirror.parent().unwrap_or(Path::new("/"));
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
            // Made beside its final name, so a crash never leaves half a mirror.
            let partial = self.mirror.with_extension("partial");
            let _ = std::fs::remove_dir_all(&partial);
            run_git(
                parent,
                [
                    OsStr::new("init"),
                    OsStr::new("--quiet"),
                    partial.as_os_str(),
                ],
            )?;
            std::fs::rename(&partial, &self.mirror).map_err(|e| io(&self.mirror, e))?;
        }
        let repo = Repo::at(&self.mirror);
        let branch = &self.remote.branch;
        // The follow-up's branch lands beside the branches, never on one a
        // parked checkout of this worker may hold.
        let resumed = format!("refs/kiln-resume/{branch}");
        let mut args = self.remote.options.clone();
        args.extend(["fetch", "--quiet", "--", &self.remote.url].map(String::from));
        args.push("+refs/remotes/origin/*:refs/remotes/origin/*".into());
        args.push("+refs/tags/*:refs/tags/*".into());
        if self.resume {
            args.push(format!("+refs/heads/{branch}:{resumed}"));
        }
        repo.git_with_env(&args, &self.remote.env)?;
        if self.dest.exists() || repo.resolve(&format!("refs/heads/{branch}")).is_ok() {
            repo.discard_checkout(&self.dest)?;
            let _ = repo.git(["branch", "-D", "--end-of-options", branch]);
        }
        if let Some(parent) = self.dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        let start = if self.resume {
            repo.resolve(&resumed)?
        } else {
            repo.resolve(&format!("{}^{{commit}}", self.base_commit))?
        };
        let (worktree, full_checkout_reason) =
            repo.add_checkout(&self.bases, &start, branch, &self.dest)?;
        Ok(Checkout {
            worktree,
            mirror: self.mirror,
            full_checkout_reason,
        })
    }
}

/// Runs `claim` to its end and reports it, unless the lease was lost or
/// `hard_stop` fired first (then nothing more is sent: the lease expires
/// and the server runs the attempt again, keeping the events sent so far).
pub(crate) async fn run_claimed(
    context: &Context,
    claim: WorkerClaim,
    hard_stop: CancellationToken,
) {
    let lease = context.client.lease(&claim);
    let cancel = CancellationToken::new();
    let done = CancellationToken::new();
    let _done_guard = done.clone().drop_guard();
    {
        // Abandoning an attempt stops its writes before it stops its work:
        // what it emits while winding down never reaches the server.
        let lease = lease.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = hard_stop.cancelled() => {
                    lease.give_up();
                    cancel.cancel();
                }
                _ = done.cancelled() => {}
            }
        });
    }

    let (upload_sink, uploader) = Uploader::start(lease.clone(), cancel.clone());
    let user_messages = Arc::new(UserMessages::default());
    let mut secrets: Vec<(String, String)> =
        vec![("KILN_LEASE_TOKEN".to_string(), claim.lease_token.clone())];
    if let Some(setup) = &claim.setup {
        secrets.extend(setup.secrets.clone());
    }
    let events = EventLog::new(
        claim.next_seq,
        vec![
            Arc::new(upload_sink) as Arc<dyn EventSink>,
            user_messages.clone() as Arc<dyn EventSink>,
        ],
    )
    .with_redactor(Redactor::new(secrets));
    let (heartbeats, steering) = Heartbeats::start(
        lease.clone(),
        Duration::from_secs(claim.lease_secs.max(1)),
        cancel.clone(),
    );

    let report = match execute(context, &claim, &lease, steering, &events, cancel.clone()).await {
        Ok(report) => report,
        Err(reason) => {
            // git's errors name this machine's paths: not the server's business.
            let data_dir = context.config.data_dir.to_string_lossy();
            let reason = reason.replace(data_dir.as_ref(), "WORKER_DATA");
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
            AttemptReport::failed(status, reason)
        }
    };

    // Every event reaches the server before the finish (heartbeats go on
    // meanwhile: a slow upload must not cost the lease).
    let upload = uploader.finish().await;
    let lost = heartbeats.lease_lost() || lease.lease_lost();
    let unread = unread(heartbeats.received(), &user_messages.seen());
    heartbeats.stop().await;
    let address = format!("{}/{}", claim.attempt.task_id, claim.attempt.n);
    match upload {
        _ if lost => {
            tracing::warn!("attempt {address} ended without its lease: nothing reported");
        }
        UploadEnd::Delivered => {
            let finish = FinishRequest {
                report,
                unread_messages: unread,
            };
            match lease.finish(&finish).await {
                Ok(()) => tracing::info!("attempt {address} finished"),
                Err(err) => tracing::error!("reporting the end of {address} failed: {err}"),
            }
        }
        UploadEnd::LeaseLost => {
            tracing::warn!("attempt {address} lost its lease: nothing reported");
        }
        UploadEnd::Failed(reason) => {
            // A log with a gap cannot be finished; the server runs the
            // attempt again once the lease expires.
            lease.give_up();
            tracing::error!("attempt {address}: {reason}; left to the server to run again");
        }
    }
}

/// The attempt itself: `Err` is a reason it failed before the agent could
/// report one.
async fn execute(
    context: &Context,
    claim: &WorkerClaim,
    lease: &LeaseClient,
    steering: mpsc::Receiver<String>,
    events: &EventLog,
    cancel: CancellationToken,
) -> Result<AttemptReport, String> {
    let model = model_client(claim, lease)?;
    let git_home = context.attempts.git_home()?;
    let remote = AttemptRemote::new(context.client.base_url(), claim, &git_home);
    if claim.setup.is_some() {
        return Err("this worker cannot run setup scripts yet".into());
    }
    let checkout = context.attempts.checkout(claim, &remote).await?;
    if let Some(reason) = &checkout.full_checkout_reason {
        events.emit(EventKind::Warning {
            message: format!("the checkout is a full copy, not copy-on-write: {reason}"),
        });
    }
    let path = checkout.worktree.path().to_path_buf();
    let mut policy = context.config.sandbox.clone();
    policy.workspace = path.clone();
    policy.read_only = claim.mode.is_read_only();
    policy.network = claim.sandbox.network;
    policy.env.extend(claim.sandbox.env.clone());
    policy.extra_read_only.push(checkout.mirror.join(".git"));
    if let Some(image) = &claim.sandbox.image {
        policy.backend = kiln_sandbox::Backend::Podman;
        policy.image = Some(image.clone());
    }
    let sandbox =
        kiln_sandbox::create(policy).map_err(|e| format!("cannot create the sandbox: {e}"))?;

    let input = if claim.resume {
        kiln_agent::AttemptInput::resume(claim.prompt.clone(), &claim.history)
    } else {
        kiln_agent::AttemptInput::new(claim.prompt.clone())
    }
    .with_steering(steering);
    let agent = agent_config(&context.config.agent, claim, &path);
    let result =
        kiln_agent::run_attempt_with(&agent, model, sandbox.clone(), input, events, cancel).await;
    sandbox.shutdown();
    drop(sandbox);

    let mut report = AttemptReport::new(result.status);
    report.reason = result.reason;
    report.final_message = result.final_message;
    report.usage = result.usage;
    report.citations = result.citations;
    let worktree = &checkout.worktree;
    match worktree.diff_against(&claim.repository.base_commit, MAX_DIFF) {
        Ok(diff) => {
            report.diff_stat = Some(kiln_protocol::DiffStat {
                files_changed: diff.files_changed,
                insertions: diff.insertions,
                deletions: diff.deletions,
            });
            report.diff = Some(events.redact(&diff.text).into_owned());
        }
        Err(err) => {
            events.emit(EventKind::Warning {
                message: format!("cannot compute the diff: {err}"),
            });
        }
    }
    let title: String = claim
        .prompt
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(72)
        .collect();
    match worktree.commit_all(&events.redact(&format!("kiln: {title}"))) {
        Ok(commit) => {
            report.branch = Some(worktree.branch().to_string());
            report.commit_sha = commit;
        }
        Err(err) => {
            events.emit(EventKind::Warning {
                message: format!("cannot commit: {err}"),
            });
        }
    }
    let mirror = checkout.mirror.clone();
    let pushed = tokio::task::spawn_blocking(move || remote.push_branch(&mirror))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(err) = pushed {
        return Err(format!(
            "cannot push the attempt's branch to the server: {err}"
        ));
    }
    Ok(report)
}

/// Largest diff reported; the pushed branch holds all of it.
const MAX_DIFF: usize = 16 * 1024 * 1024;

/// The worker's agent settings, completed by the claim.
fn agent_config(base: &AgentConfig, claim: &WorkerClaim, checkout: &Path) -> AgentConfig {
    let mut agent = base.clone();
    agent.model = claim.model.clone();
    agent.provider = "kiln server".into();
    agent.mode = claim.mode;
    agent.cwd = checkout.to_path_buf();
    agent.workspace_root = Some(checkout.to_path_buf());
    let limits = &claim.limits;
    agent.limits.max_turns = limits.max_turns;
    agent.limits.max_total_tokens = limits.max_total_tokens;
    agent.limits.wall_clock = limits.wall_clock_secs.map(Duration::from_secs);
    agent.limits.command_timeout = Duration::from_secs(limits.command_timeout_secs);
    agent.limits.max_command_timeout = Duration::from_secs(limits.max_command_timeout_secs);
    agent.limits.context_window = limits.context_window;
    agent
}

/// kiln-model's own client, pointed at the server's model endpoint for
/// this attempt, with the lease token as its key: the worker has no other.
fn model_client(claim: &WorkerClaim, lease: &LeaseClient) -> Result<Arc<dyn ModelClient>, String> {
    let wire_api = match claim.wire_api.as_str() {
        "responses" => WireApi::Responses,
        "chat" => WireApi::Chat,
        other => {
            return Err(format!(
                "the server's model speaks {other:?}, which this worker does not know: run a `kiln worker` of the server's version"
            ))
        }
    };
    let mut provider =
        ProviderConfig::new("kiln server", lease.attempt_url("/model"), None, wire_api);
    provider.api_key = Some(lease.lease_token().to_string());
    kiln_model::connect(&provider).map_err(|err| format!("cannot reach the model: {err}"))
}

/// The user messages the agent took into its conversation, to tell which
/// steering messages it never read.
#[derive(Default)]
struct UserMessages(Mutex<Vec<String>>);

impl EventSink for UserMessages {
    fn emit(&self, event: &Event) {
        if let EventKind::Message {
            role: Role::User,
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
    fn seen(&self) -> Vec<String> {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// `received` minus what the agent used (each use cancels one copy).
fn unread(received: Vec<String>, seen: &[String]) -> Vec<String> {
    let mut seen = seen.to_vec();
    received
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
