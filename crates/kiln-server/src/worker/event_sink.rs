//! An [`EventSink`] that persists an attempt's events in batches.
//!
//! The agent emits synchronously and often (`model.delta` per token), while a
//! store append costs one commit: events go through a channel to a task that
//! appends whatever accumulated every [`FLUSH_INTERVAL`] (or at
//! [`MAX_BATCH`] events), retrying a failed batch (appends are idempotent).

use std::sync::Mutex;
use std::time::Duration;

use kiln_protocol::{Event, EventSink};
use kiln_store::{AttemptRef, Store};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
const MAX_BATCH: usize = 200;

pub(crate) struct StoreSink {
    tx: Mutex<Option<mpsc::UnboundedSender<Event>>>,
}

/// The writer half; [`BatchWriter::close`] waits until everything is stored.
pub(crate) struct BatchWriter {
    handle: JoinHandle<()>,
}

impl StoreSink {
    pub(crate) fn start(store: Store, attempt: AttemptRef) -> (StoreSink, BatchWriter) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(write_batches(store, attempt, rx));
        (
            StoreSink {
                tx: Mutex::new(Some(tx)),
            },
            BatchWriter { handle },
        )
    }

    /// No more events: the writer flushes what it holds and stops.
    pub(crate) fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }
}

impl EventSink for StoreSink {
    fn emit(&self, event: &Event) {
        if let Ok(tx) = self.tx.lock() {
            if let Some(tx) = tx.as_ref() {
                // The writer outlives every sender; a send fails only after close.
                let _ = tx.send(event.clone());
            }
        }
    }
}

impl BatchWriter {
    pub(crate) async fn finished(self) {
        if let Err(err) = self.handle.await {
            tracing::error!("the event writer stopped abnormally: {err}");
        }
    }
}

async fn write_batches(store: Store, attempt: AttemptRef, mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut batch = Vec::new();
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_INTERVAL;
        let mut open = true;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(event)) => batch.push(event),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_elapsed) => break,
            }
        }
        append_with_retry(&store, &attempt, &batch).await;
        batch.clear();
        if !open {
            return;
        }
    }
}

async fn append_with_retry(store: &Store, attempt: &AttemptRef, batch: &[Event]) {
    let mut delay = Duration::from_millis(100);
    for _ in 0..8 {
        match store.append_events(attempt, batch).await {
            Ok(_) => return,
            Err(err) => {
                tracing::warn!("storing events of {attempt} failed, retrying: {err}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::error!("gave up storing {} events of {attempt}", batch.len());
}
