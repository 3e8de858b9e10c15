//! What watches a running attempt from outside the agent loop: lease
//! heartbeats, cancellation requests, and user messages for steering.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_store::{AttemptRef, Change, Store, StoreError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Stops the watcher when dropped; tells whether the lease was lost.
pub(crate) struct Supervisor {
    stop: CancellationToken,
    handle: Option<JoinHandle<()>>,
    lease_lost: Arc<AtomicBool>,
    forwarded: Arc<Mutex<Vec<String>>>,
}

impl Supervisor {
    /// Heartbeats every `lease / 3`; cancels `cancel` when the user cancels
    /// or the lease is lost; forwards messages for the attempt to `steering`
    /// (the agent reads them at its next model turn).
    pub(crate) fn start(
        store: Store,
        worker_id: String,
        attempt: AttemptRef,
        lease: Duration,
        cancel: CancellationToken,
        steering: mpsc::Sender<String>,
    ) -> Self {
        let stop = CancellationToken::new();
        let lease_lost = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let watch = Watch {
            forwarded: forwarded.clone(),
            store,
            worker_id,
            attempt,
            lease,
            cancel,
            steering,
            lease_lost: lease_lost.clone(),
            pending: Mutex::new(VecDeque::new()),
        };
        let handle = tokio::spawn(watch.run(stop.clone()));
        Supervisor {
            stop,
            handle: Some(handle),
            lease_lost,
            forwarded,
        }
    }

    /// The texts passed to the agent's steering channel so far.
    pub(crate) fn forwarded(&self) -> Vec<String> {
        self.forwarded.lock().map(|f| f.clone()).unwrap_or_default()
    }

    pub(crate) fn lease_lost(&self) -> bool {
        self.lease_lost.load(Ordering::SeqCst)
    }

    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Watch {
    store: Store,
    worker_id: String,
    attempt: AttemptRef,
    lease: Duration,
    cancel: CancellationToken,
    steering: mpsc::Sender<String>,
    lease_lost: Arc<AtomicBool>,
    forwarded: Arc<Mutex<Vec<String>>>,
    /// Messages taken from the store that the agent's channel had no room
    /// for yet: handed on as it reads, never by waiting in this loop, which
    /// must keep renewing the lease however many messages a user sends.
    pending: Mutex<VecDeque<String>>,
}

impl Watch {
    async fn run(self, stop: CancellationToken) {
        let period = (self.lease / 3).max(Duration::from_millis(100));
        let mut heartbeat = tokio::time::interval(period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut subscription = self.store.subscribe();
            // Deliver what waits now; later messages wake the subscription.
            self.forward_messages().await;
            let task_id = self.attempt.task_id.clone();
            let n = self.attempt.n;
            let waiting = self.has_pending();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = heartbeat.tick() => self.heartbeat().await,
                permit = self.steering.reserve(), if waiting => {
                    if let (Ok(permit), Some(text)) = (permit, self.next_pending()) {
                        permit.send(text);
                    }
                    continue;
                }
                wake = subscription.wait_for(|change| match change {
                    Change::Cancel { task_id: t } => *t == task_id,
                    Change::Messages { task_id: t, attempt } => *t == task_id && *attempt == n,
                    _ => false,
                }) => {
                    if let kiln_store::Wake::Changed(Change::Messages { .. }) = wake {
                        continue;
                    }
                    if self.store.cancel_requested(&self.attempt).await.unwrap_or(false) {
                        self.cancel.cancel();
                    }
                }
            }
        }
    }

    async fn heartbeat(&self) {
        match self
            .store
            .heartbeat(&self.worker_id, &self.attempt, self.lease)
            .await
        {
            Ok(lease) if lease.cancel_requested => self.cancel.cancel(),
            Ok(_) => {}
            Err(StoreError::LeaseLost { .. }) => {
                tracing::warn!("lost the lease on {}; stopping it", self.attempt);
                self.lease_lost.store(true, Ordering::SeqCst);
                self.cancel.cancel();
            }
            // A failed renewal is retried at the next tick, well within the lease.
            Err(err) => tracing::warn!("heartbeat of {} failed: {err}", self.attempt),
        }
    }

    async fn forward_messages(&self) {
        match self.store.take_undelivered(&self.attempt).await {
            Ok(messages) => {
                for message in messages {
                    // Counted as forwarded when taken: one the agent never
                    // reads (still pending, or the channel closed) becomes a
                    // follow-up, by the caller's comparison with what it used.
                    if let Ok(mut forwarded) = self.forwarded.lock() {
                        forwarded.push(message.text.clone());
                    }
                    if let Ok(mut pending) = self.pending.lock() {
                        pending.push_back(message.text);
                    }
                }
            }
            Err(err) => tracing::warn!("reading messages of {} failed: {err}", self.attempt),
        }
        // As many as the channel has room for now; the rest when it has.
        while let Some(text) = self.next_pending() {
            match self.steering.try_send(text) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(text)) => {
                    if let Ok(mut pending) = self.pending.lock() {
                        pending.push_front(text);
                    }
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    fn has_pending(&self) -> bool {
        self.pending.lock().is_ok_and(|p| !p.is_empty())
    }

    fn next_pending(&self) -> Option<String> {
        self.pending.lock().ok().and_then(|mut p| p.pop_front())
    }
}
