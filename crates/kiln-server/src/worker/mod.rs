//! The in-process worker pool: `max_parallel` workers claim attempts from
//! the store's queue and run them; a sweeper takes back attempts whose
//! lease expired (workers of another process that died).

mod event_sink;
pub(crate) mod run;
mod supervise;

use std::sync::Arc;
use std::time::Duration;

use kiln_store::{Principal, RecoverScope};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;
use kiln_workspace::Mirrors;

/// The identity workers use to read tasks and environments of any owner.
pub(crate) fn system_principal() -> Principal {
    Principal {
        token_id: "system".into(),
        name: "kiln worker".into(),
        admin: true,
        worker: false,
        user_name: "kiln".into(),
        role: kiln_protocol::teams::ServerRole::Owner,
        ..Principal::default()
    }
}

/// This server's worker ids: the same across restarts of a server on the
/// same host and data directory, so that a restart can take back exactly
/// the attempts its previous process held (`RecoverScope::Worker`) without
/// touching those of other servers sharing a PostgreSQL store.
pub(crate) fn worker_ids(config: &crate::ServerConfig) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().replace('|', "-"))
        .unwrap_or_else(|_| "host".into());
    let digest = Sha256::digest(config.data_dir.to_string_lossy().as_bytes());
    let dir: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    (0..config.max_parallel.max(1))
        .map(|i| format!("serve-{host}-{dir}-{i}"))
        .collect()
}

/// Runs the workers and the lease sweeper until `shutdown`. Attempts in
/// flight then get `config.drain` to finish; those still running after it
/// are left `running` in the store and recovered at the next start,
/// exactly as after a crash.
pub(crate) async fn run_pool(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mirrors = shared.mirrors.clone();
    let mut tasks = JoinSet::new();
    for worker_id in worker_ids(&shared.config) {
        tasks.spawn(worker_loop(
            shared.clone(),
            mirrors.clone(),
            worker_id,
            shutdown.clone(),
        ));
    }
    tasks.spawn(sweep_expired_leases(shared.clone(), shutdown.clone()));
    while tasks.join_next().await.is_some() {}
}

/// The expired-lease sweep alone, for a server without local workers
/// (`--no-local-workers`): remote workers that die still lose their attempts.
pub(crate) async fn run_sweeper(shared: Arc<Shared>, shutdown: CancellationToken) {
    sweep_expired_leases(shared, shutdown).await;
}

async fn worker_loop(
    shared: Arc<Shared>,
    mirrors: Arc<Mirrors>,
    worker_id: String,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let mut subscription = shared.store.subscribe();
        match shared
            .store
            .claim_next(&worker_id, shared.config.lease)
            .await
        {
            Ok(Some(claimed)) => {
                tracing::info!("{worker_id} runs {}", claimed.attempt);
                let attempt = claimed.attempt.clone();
                let run = run::run_claimed(&shared, &mirrors, &worker_id, claimed);
                tokio::pin!(run);
                tokio::select! {
                    _ = &mut run => {}
                    _ = shutdown.cancelled() => {
                        // Drain: the attempt may finish within the deadline.
                        // Past it, it stays `running` in the store and the
                        // next start (or the lease sweeper of another server)
                        // takes it up again.
                        if tokio::time::timeout(shared.config.drain, &mut run).await.is_err() {
                            tracing::warn!("{attempt} still ran when the drain deadline passed; left to the next start");
                        }
                        return;
                    }
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = subscription.wait_for_queue() => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            Err(err) => {
                tracing::warn!("{worker_id} cannot claim: {err}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

async fn sweep_expired_leases(shared: Arc<Shared>, shutdown: CancellationToken) {
    let period = (shared.config.lease / 2).max(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.cancelled() => return,
        }
        match shared
            .store
            .recover(RecoverScope::ExpiredLeases, shared.config.max_tries)
            .await
        {
            Ok(report) if !report.requeued.is_empty() => {
                tracing::warn!(
                    "requeued {} attempts whose lease expired",
                    report.requeued.len()
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!("lease sweep failed: {err}"),
        }
    }
}
