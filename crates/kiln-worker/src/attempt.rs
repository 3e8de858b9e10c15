//! One claimed attempt: heartbeats and event upload around the one attempt
//! function every front door calls, then the finish.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_agent::{
    AgentConfig, AttemptInput, AttemptPlan, EventLog, Publish, Redactor, SandboxPlan, Setup,
    Workspace,
};
use kiln_model::{ModelClient, ProviderConfig, WireApi};
use kiln_protocol::worker::{FinishRequest, WorkerClaim};
use kiln_protocol::{AttemptReport, AttemptStatus, EventKind, EventSink};
use kiln_workspace::{Checkout, FetchRules, Mirrors, Repo, Source, Start};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::LeaseClient;
use crate::heartbeat::Heartbeats;
use crate::pool::Context;
use crate::repository::AttemptRemote;
use crate::uploader::{UploadEnd, Uploader};

/// The worker's places on disk for attempts: kiln-workspace's mirrors and
/// checkouts under the data directory, one mirror per server repository.
pub(crate) struct Attempts {
    data_dir: PathBuf,
    mirrors: Mirrors,
}

/// Every mirror of a worker belongs to its server: one owner.
const MIRROR_OWNER: &str = "kiln-server";

impl Attempts {
    pub(crate) fn new(data_dir: &Path) -> Self {
        Attempts {
            data_dir: data_dir.to_path_buf(),
            mirrors: Mirrors::new(data_dir),
        }
    }

    /// An empty directory only the worker reads, as git's `HOME`.
    fn git_home(&self) -> Result<PathBuf, String> {
        let home = self.data_dir.join("git-home");
        kiln_workspace::mirrors::create_private_dir(&home).map_err(|err| err.to_string())?;
        Ok(home)
    }

    /// The attempt's checkout: fetched from the server into the mirror of
    /// its `mirror_key`, at the base commit, or for a follow-up at the tip
    /// of the branch the server serves (whoever ran it before).
    async fn checkout(
        &self,
        claim: &WorkerClaim,
        remote: &AttemptRemote,
    ) -> Result<Checkout, String> {
        let key = &claim.repository.mirror_key;
        let branch = &remote.branch;
        // The follow-up's branch lands beside the branches, never on one a
        // parked checkout of this worker may hold.
        let resumed = format!("refs/kiln-resume/{branch}");
        let mut refspecs = vec![
            "+refs/remotes/origin/*:refs/remotes/origin/*".to_string(),
            "+refs/tags/*:refs/tags/*".to_string(),
        ];
        if claim.resume {
            refspecs.push(format!("+refs/heads/{branch}:{resumed}"));
            // A fetch moments ago is reused: never continue from what an
            // earlier follow-up of this attempt left there.
            let mirror = self.mirrors.mirror_dir(MIRROR_OWNER, key);
            if mirror.join(".git").exists() {
                let _ = Repo::at(&mirror).git(["update-ref", "-d", &resumed]);
            }
        }
        let source = Source {
            url: &remote.url,
            owner: MIRROR_OWNER,
            name: key,
            fetch: FetchRules {
                options: remote.options.clone(),
                env: remote.env.clone(),
                refspecs,
            },
        };
        let start = if claim.resume {
            Start::Continue {
                base_commit: &claim.repository.base_commit,
                tip: &resumed,
            }
        } else {
            Start::Fresh {
                base: Some(&claim.repository.base_commit),
            }
        };
        self.mirrors
            .checkout(source, start, &claim.attempt.task_id, claim.attempt.n)
            .await
            .map_err(|err| {
                format!("cannot check out the attempt's repository from the server: {err}")
            })
    }
}

/// Pushes the attempt's branch back to the server once it is committed.
struct PushBranch {
    remote: AttemptRemote,
    pushed: AtomicBool,
}

#[async_trait::async_trait]
impl Publish for PushBranch {
    async fn publish(&self, checkout: &Checkout, _commit: &str) -> Result<(), String> {
        self.push(checkout.git_dir.clone()).await?;
        self.pushed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

impl PushBranch {
    async fn push(&self, git_dir: PathBuf) -> Result<(), String> {
        let remote = self.remote.clone();
        let mirror = git_dir.parent().map(Path::to_path_buf).unwrap_or(git_dir);
        tokio::task::spawn_blocking(move || remote.push_branch(&mirror))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot push the attempt's branch to the server: {e}"))
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
    let user_messages = Arc::new(kiln_agent::UserMessages::default());
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
            kiln_agent::report_unstartable(&events, &cancel, reason)
        }
    };

    // Every event reaches the server before the finish (heartbeats go on
    // meanwhile: a slow upload must not cost the lease).
    let upload = uploader.finish().await;
    let lost = heartbeats.lease_lost() || lease.lease_lost();
    let unread = user_messages.not_seen(heartbeats.received());
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

/// The attempt itself, through the one attempt function every front door
/// calls. `Err` is a reason it failed before that function could start.
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
    let checkout = context.attempts.checkout(claim, &remote).await?;
    if let Some(reason) = &checkout.full_checkout_reason {
        events.emit(EventKind::Warning {
            message: format!("the checkout is a full copy, not copy-on-write: {reason}"),
        });
    }
    let git_dir = checkout.git_dir.clone();
    let mut policy = context.config.sandbox.clone();
    policy.network = claim.sandbox.network;
    policy.env.extend(claim.sandbox.env.clone());
    if let Some(image) = &claim.sandbox.image {
        policy.backend = kiln_sandbox::Backend::Podman;
        policy.image = Some(image.clone());
    }
    let input = if claim.resume {
        AttemptInput::resume(claim.prompt.clone(), &claim.history)
    } else {
        AttemptInput::new(claim.prompt.clone())
    }
    .with_steering(steering);
    let agent = agent_config(&context.config.agent, claim);
    let mut plan = AttemptPlan::new(
        agent,
        Workspace::Checkout {
            checkout: Box::new(checkout),
            subdir: PathBuf::new(),
        },
        SandboxPlan::Policy(Box::new(policy)),
        input,
    );
    plan.setup = claim.setup.as_ref().map(|setup| Setup {
        script: setup.script.clone(),
        secrets: setup.secrets.clone(),
    });
    plan.commit_message = Some(kiln_agent::commit_message(&claim.prompt));
    let push = Arc::new(PushBranch {
        remote,
        pushed: AtomicBool::new(false),
    });
    plan.publish = Some(push.clone());
    let report = kiln_agent::run(plan, model, events, cancel).await;
    if !push.pushed.load(Ordering::SeqCst) && report.status != AttemptStatus::Cancelled {
        // No new commit (nothing changed): the branch still goes to the
        // server, where a follow-up on another worker continues it.
        if let Err(err) = push.push(git_dir).await {
            tracing::warn!("{err}");
        }
    }
    Ok(report)
}

/// The worker's agent settings, completed by the claim (`cwd` and the
/// workspace root come from the checkout).
fn agent_config(base: &AgentConfig, claim: &WorkerClaim) -> AgentConfig {
    let mut agent = base.clone();
    agent.model = claim.model.clone();
    agent.provider = "kiln server".into();
    agent.mode = claim.mode;
    let limits = &claim.limits;
    agent.limits.max_turns = limits.max_turns;
    agent.limits.max_total_tokens = limits.max_total_tokens;
    agent.limits.max_cost_usd = limits.max_cost_usd;
    agent.prices = kiln_model::PriceTable::only(&claim.model, limits.price);
    agent.limits.wall_clock = limits.wall_clock_secs.map(Duration::from_secs);
    agent.limits.command_timeout = Duration::from_secs(limits.command_timeout_secs);
    agent.limits.max_command_timeout = Duration::from_secs(limits.max_command_timeout_secs);
    agent.limits.context_window = limits.context_window;
    if let Some(turns) = limits.check_fix_turns {
        agent.limits.check_fix_turns = turns;
    }
    if let Some(secs) = limits.check_timeout_secs {
        agent.limits.check_timeout = Duration::from_secs(secs);
    }
    agent.checks = claim.checks.clone();
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
