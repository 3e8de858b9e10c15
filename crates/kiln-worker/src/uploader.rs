//! Uploading an attempt's events to the server in batches.
//!
//! The agent emits synchronously and often (a `model.delta` per token), while
//! an upload is an HTTP round trip: [`UploadSink::emit`] only appends to a
//! queue, and an uploader task sends what accumulated every
//! [`FLUSH_INTERVAL`] (at once when [`MAX_BATCH`] events wait). A batch that
//! failed on the way is sent again as it was (the server accepts repeated
//! seqs), so the log on the server has no gap and no duplicate.
//!
//! The queue is bounded by [`MAX_PENDING`]: a server unreachable for that
//! long cannot receive a gap-free log any more, so the attempt is stopped and
//! nothing more is sent (its lease expires and it runs again elsewhere).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kiln_protocol::worker::EventBatch;
use kiln_protocol::{Event, EventSink};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::LeaseClient;
use crate::WorkerError;

/// How long events wait for company before they are sent.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(25);
/// Events per request at most.
pub const MAX_BATCH: usize = 500;
/// Events kept waiting for the server at most.
pub const MAX_PENDING: usize = 100_000;

/// Waits between tries of a batch the server did not take, at most.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// How the upload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadEnd {
    /// Every event emitted reached the server.
    Delivered,
    /// The lease was lost (or given up): what was left was dropped.
    LeaseLost,
    /// Events could not be delivered; the log on the server stops early.
    Failed(String),
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Event>,
    closed: bool,
    /// Set when events were dropped: the log cannot continue.
    broken: Option<String>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    /// The attempt's token: cancelled when the log cannot continue.
    attempt: CancellationToken,
}

/// The [`EventSink`] half, for the attempt's `EventLog`.
pub struct UploadSink {
    shared: Arc<Shared>,
}

/// The task that sends the queued events.
pub struct Uploader {
    shared: Arc<Shared>,
    handle: JoinHandle<UploadEnd>,
}

impl Uploader {
    /// Starts uploading through `lease`. `attempt` is cancelled when the log
    /// cannot be continued (the lease is lost, or too many events wait).
    pub fn start(lease: LeaseClient, attempt: CancellationToken) -> (UploadSink, Uploader) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            attempt,
        });
        let handle = tokio::spawn(upload(lease, shared.clone()));
        (
            UploadSink {
                shared: shared.clone(),
            },
            Uploader { shared, handle },
        )
    }

    /// No more events: sends what is queued and says how the upload ended.
    pub async fn finish(self) -> UploadEnd {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_one();
        match self.handle.await {
            Ok(end) => end,
            Err(err) => UploadEnd::Failed(format!("the event uploader stopped: {err}")),
        }
    }
}

impl EventSink for UploadSink {
    fn emit(&self, event: &Event) {
        let mut queue = lock(&self.shared.queue);
        if queue.closed || queue.broken.is_some() {
            return;
        }
        if queue.events.len() >= MAX_PENDING {
            queue.broken = Some(format!(
                "{MAX_PENDING} events are waiting for the server: stopped the attempt, whose log cannot continue"
            ));
            queue.events.clear();
            drop(queue);
            self.shared.attempt.cancel();
            self.shared.wake.notify_one();
            return;
        }
        queue.events.push_back(event.clone());
        drop(queue);
        // An idle uploader starts its FLUSH_INTERVAL wait; a waiting one
        // checks whether the batch is full.
        self.shared.wake.notify_one();
    }
}

async fn upload(lease: LeaseClient, shared: Arc<Shared>) -> UploadEnd {
    let mut retry_delay = Duration::from_millis(100);
    loop {
        let batch = match next_batch(&shared).await {
            Next::Batch(batch) => batch,
            Next::Done => return UploadEnd::Delivered,
            Next::Broken(reason) => return UploadEnd::Failed(reason),
        };
        let sent = batch.len();
        match lease.events(&EventBatch { events: batch }).await {
            Ok(_reply) => {
                let mut queue = lock(&shared.queue);
                let taken = sent.min(queue.events.len());
                queue.events.drain(..taken);
                retry_delay = Duration::from_millis(100);
            }
            Err(WorkerError::LeaseLost { .. }) => {
                let mut queue = lock(&shared.queue);
                queue.events.clear();
                queue.broken = Some("the lease is lost".into());
                drop(queue);
                shared.attempt.cancel();
                return UploadEnd::LeaseLost;
            }
            Err(err) if err.is_transient() => {
                // The lease client tried a few times already; keep the
                // batch and go on trying while the lease holds (the
                // heartbeat gives it up when the server stays away).
                tracing::warn!("{err}; trying again");
                tokio::time::sleep(retry_delay).await;
                retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
            }
            Err(err) => {
                // Refused for good (a gap, a bad event): more would not fit.
                let reason = format!("the server refused the attempt's events: {err}");
                let mut queue = lock(&shared.queue);
                queue.events.clear();
                queue.broken = Some(reason.clone());
                drop(queue);
                shared.attempt.cancel();
                return UploadEnd::Failed(reason);
            }
        }
    }
}

enum Next {
    Batch(Vec<Event>),
    Done,
    Broken(String),
}

/// The next events to send, once [`FLUSH_INTERVAL`] passed since the first
/// of them was seen (or a batch is full, or the sink closed).
async fn next_batch(shared: &Shared) -> Next {
    let mut deadline = None;
    loop {
        let notified = shared.wake.notified();
        {
            let queue = lock(&shared.queue);
            if let Some(reason) = &queue.broken {
                return Next::Broken(reason.clone());
            }
            let ready = queue.closed
                || queue.events.len() >= MAX_BATCH
                || deadline.is_some_and(|at| tokio::time::Instant::now() >= at);
            if !queue.events.is_empty() && ready {
                let take = queue.events.len().min(MAX_BATCH);
                return Next::Batch(queue.events.iter().take(take).cloned().collect());
            }
            if queue.events.is_empty() && queue.closed {
                return Next::Done;
            }
            if !queue.events.is_empty() && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + FLUSH_INTERVAL);
            }
        }
        match deadline {
            Some(at) => {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            None => notified.await,
        }
    }
}

fn lock(mutex: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
