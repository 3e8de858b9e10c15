//! The worker's slots: each claims an attempt, runs it, and claims again,
//! until the worker is told to stop.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_agent::AgentConfig;
use kiln_protocol::worker::{ClaimRequest, WorkerIdentity};
use kiln_sandbox::SandboxPolicy;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{ServerClient, DEFAULT_CLAIM_WAIT_SECS};
use crate::WorkerError;

/// Longest wait between claims while the server cannot be reached.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(30);

/// Everything a worker needs; the agent and sandbox settings are its own
/// defaults, which each claim completes (model, mode, budgets, network,
/// the environment's variables and image).
#[derive(Clone)]
pub struct WorkerConfig {
    /// The kiln server's URL.
    pub server: String,
    /// The worker token (`kiln token create --worker NAME`).
    pub token: String,
    /// The name the server lists the worker under.
    pub name: String,
    /// Where mirrors and checkouts live.
    pub data_dir: PathBuf,
    /// Attempts run at once.
    pub max_parallel: usize,
    /// The agent's settings besides what a claim says.
    pub agent: AgentConfig,
    /// The sandbox's settings besides what a claim says.
    pub sandbox: SandboxPolicy,
    /// How long running attempts may go on after a stop signal before they
    /// are cancelled and left to the server to run again.
    pub drain: Duration,
    /// How long one claim may wait on the server for work.
    pub claim_wait_secs: u32,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs and panic messages.
        f.debug_struct("WorkerConfig")
            .field("server", &self.server)
            .field("name", &self.name)
            .field("data_dir", &self.data_dir)
            .field("max_parallel", &self.max_parallel)
            .field("drain", &self.drain)
            .field("claim_wait_secs", &self.claim_wait_secs)
            .finish_non_exhaustive()
    }
}

impl WorkerConfig {
    pub fn new(
        server: impl Into<String>,
        token: impl Into<String>,
        name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        agent: AgentConfig,
        sandbox: SandboxPolicy,
    ) -> Self {
        WorkerConfig {
            server: server.into(),
            token: token.into(),
            name: name.into(),
            data_dir: data_dir.into(),
            max_parallel: 1,
            agent,
            sandbox,
            drain: Duration::from_secs(600),
            claim_wait_secs: DEFAULT_CLAIM_WAIT_SECS,
        }
    }
}

/// What every slot shares.
pub(crate) struct Context {
    pub(crate) client: ServerClient,
    pub(crate) config: WorkerConfig,
    pub(crate) attempts: crate::attempt::Attempts,
}

/// Runs attempts until `shutdown`: then claims nothing more, lets running
/// attempts finish within `config.drain`, and cancels those still running
/// without reporting them (their leases expire and the server runs them
/// again). Returns early with the error when the server refuses the
/// worker (a wrong or revoked token).
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let client = ServerClient::new(&config.server, &config.token)?;
    let attempts = crate::attempt::Attempts::new(&config.data_dir);
    let context = Arc::new(Context {
        client,
        config,
        attempts,
    });
    let stop_claiming = shutdown.child_token();
    let hard_stop = CancellationToken::new();
    let mut slots = JoinSet::new();
    for _ in 0..context.config.max_parallel.max(1) {
        slots.spawn(slot(
            context.clone(),
            stop_claiming.clone(),
            hard_stop.clone(),
        ));
    }
    let mut fatal = None;
    let drain_deadline = loop {
        tokio::select! {
            joined = slots.join_next() => match joined {
                None => break None,
                Some(Ok(Err(err))) => {
                    // Every slot would get the same answer: stop them all.
                    fatal.get_or_insert(err);
                    stop_claiming.cancel();
                }
                Some(Ok(Ok(()))) => {}
                Some(Err(err)) => tracing::error!("a worker slot stopped: {err}"),
            },
            _ = stop_claiming.cancelled() => {
                break Some(tokio::time::Instant::now() + context.config.drain);
            }
        }
    };
    if let Some(deadline) = drain_deadline {
        if !slots.is_empty() {
            tracing::warn!(
                "stopping: {} attempt slots still busy, given {:?} to finish",
                slots.len(),
                context.config.drain
            );
        }
        loop {
            tokio::select! {
                joined = slots.join_next() => match joined {
                    None => break,
                    Some(Ok(Err(err))) => { fatal.get_or_insert(err); }
                    Some(_) => {}
                },
                _ = tokio::time::sleep_until(deadline), if !hard_stop.is_cancelled() => {
                    tracing::warn!("the drain time is over: cancelling the attempts still running (the server runs them again)");
                    hard_stop.cancel();
                }
            }
        }
    }
    match fatal {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

async fn slot(
    context: Arc<Context>,
    stop_claiming: CancellationToken,
    hard_stop: CancellationToken,
) -> Result<(), WorkerError> {
    let request = ClaimRequest {
        worker: WorkerIdentity {
            name: context.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        wait_secs: context.config.claim_wait_secs,
    };
    let mut backoff = Duration::from_millis(250);
    while !stop_claiming.is_cancelled() {
        let claimed = tokio::select! {
            // A claim the server granted as this stopped is never run: its
            // lease expires and the server hands it to another worker.
            _ = stop_claiming.cancelled() => return Ok(()),
            claimed = context.client.claim(&request) => claimed,
        };
        match claimed {
            Ok(Some(claim)) => {
                backoff = Duration::from_millis(250);
                tracing::info!(
                    "running attempt {}/{} (try {})",
                    claim.attempt.task_id,
                    claim.attempt.n,
                    claim.try_number
                );
                crate::attempt::run_claimed(&context, claim, hard_stop.clone()).await;
            }
            Ok(None) => {}
            Err(err @ (WorkerError::Unauthorized { .. } | WorkerError::MissingToken)) => {
                return Err(err)
            }
            Err(err) => {
                tracing::warn!("{err}; claiming again in {backoff:?}");
                tokio::select! {
                    _ = stop_claiming.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_CLAIM_BACKOFF);
            }
        }
    }
    Ok(())
}
