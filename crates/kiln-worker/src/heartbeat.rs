//! What watches a running attempt from outside the agent loop: the lease's
//! heartbeats, which bring the user's cancel and steering messages.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::LeaseClient;
use crate::WorkerError;

/// Steering messages waiting in the agent's channel at most; more wait in
/// the heartbeat's own queue, so a flood of replies never delays a heartbeat.
pub const STEERING_CAPACITY: usize = 64;

/// The heartbeat task of one attempt. Stops when dropped.
pub struct Heartbeats {
    stop: CancellationToken,
    handle: Option<JoinHandle<()>>,
    lost: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<String>>>,
}

impl Heartbeats {
    /// Heartbeats every `lease / 3` through `lease_client`: a user's cancel
    /// cancels `cancel`; messages go to the returned receiver (the agent's
    /// steering channel); a lost lease, or none renewed for a whole lease
    /// (the server has given the attempt to another worker by then), cancels
    /// `cancel` and stops every later call of `lease_client`.
    pub fn start(
        lease_client: LeaseClient,
        lease: Duration,
        cancel: CancellationToken,
    ) -> (Heartbeats, mpsc::Receiver<String>) {
        let (steering, receiver) = mpsc::channel(STEERING_CAPACITY);
        let stop = CancellationToken::new();
        let lost = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let beat = Beat {
            lease_client,
            lease,
            cancel,
            steering,
            waiting: VecDeque::new(),
            lost: lost.clone(),
            received: received.clone(),
        };
        let handle = tokio::spawn(beat.run(stop.clone()));
        let heartbeats = Heartbeats {
            stop,
            handle: Some(handle),
            lost,
            received,
        };
        (heartbeats, receiver)
    }

    /// The lease was lost (or not renewed for a whole lease).
    pub fn lease_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Every message the server delivered so far (in the agent's channel
    /// or still waiting for room there).
    pub fn received(&self) -> Vec<String> {
        self.received.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Stops heartbeating (before the finish, which ends the lease).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Beat {
    lease_client: LeaseClient,
    lease: Duration,
    cancel: CancellationToken,
    steering: mpsc::Sender<String>,
    /// Messages received that the agent's channel had no room for yet.
    waiting: VecDeque<String>,
    lost: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<String>>>,
}

impl Beat {
    async fn run(mut self, stop: CancellationToken) {
        let period = (self.lease / 3).max(Duration::from_millis(100));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let beat = tokio::select! {
                _ = stop.cancelled() => return,
                beat = self.lease_client.heartbeat() => beat,
            };
            match beat {
                Ok(reply) => {
                    renewed = Instant::now();
                    if reply.cancel_requested {
                        self.cancel.cancel();
                    }
                    if let Ok(mut received) = self.received.lock() {
                        received.extend(reply.messages.iter().cloned());
                    }
                    self.waiting.extend(reply.messages);
                }
                Err(WorkerError::LeaseLost { .. }) => {
                    tracing::warn!(
                        "lost the lease on {}/{}; stopping it",
                        self.lease_client.address().task_id,
                        self.lease_client.address().n
                    );
                    self.lose();
                    return;
                }
                Err(err) if renewed.elapsed() >= self.lease => {
                    tracing::warn!(
                        "no heartbeat reached the server for a whole lease ({err}); \
                         the server has given the attempt to another worker: stopping it"
                    );
                    self.lease_client.give_up();
                    self.lose();
                    return;
                }
                // Tried again at the next tick, well within the lease.
                Err(err) => tracing::warn!("heartbeat failed: {err}"),
            }
            self.pass_on_messages();
        }
    }

    fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }

    /// Moves waiting messages into the agent's channel while it has room.
    fn pass_on_messages(&mut self) {
        while let Some(text) = self.waiting.pop_front() {
            match self.steering.try_send(text) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(text)) => {
                    self.waiting.push_front(text);
                    return;
                }
                // The agent ended: the caller finds the messages unread.
                Err(mpsc::error::TrySendError::Closed(text)) => {
                    self.waiting.push_front(text);
                    return;
                }
            }
        }
    }
}
