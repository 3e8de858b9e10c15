//! Change notification: who to wake when the store changes.
//!
//! Every committed change is sent on an in-process broadcast channel. On
//! PostgreSQL it is also sent with `NOTIFY` inside the same transaction (so it
//! is delivered only on commit), and a listener task forwards other
//! processes' notifications into the local channel. Notifications are hints:
//! a woken consumer re-reads the store, and [`Subscription`] also wakes on a
//! slow poll interval in case one was lost.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::broadcast;

/// The PostgreSQL channel kiln notifies on.
pub(crate) const PG_CHANNEL: &str = "kiln_changes";

/// Something changed that a consumer may be waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Events were appended to the task's log, up to event id `last_id`.
    Events { task_id: String, last_id: i64 },
    /// The task's status changed (re-read it for the new one).
    TaskStatus { task_id: String },
    /// An attempt became claimable (a new task, a requeue, a follow-up).
    Queue,
    /// Cancellation was requested for running attempts of the task.
    Cancel { task_id: String },
    /// A message waits for an attempt.
    Messages { task_id: String, attempt: u32 },
    /// Notifications may have been missed (the listener reconnected, or this
    /// receiver fell behind): re-read everything you watch.
    Resync,
}

impl Change {
    /// `origin|kind|fields…`; task ids never contain `|`.
    pub(crate) fn encode(&self, origin: &str) -> String {
        match self {
            Change::Events { task_id, last_id } => format!("{origin}|e|{task_id}|{last_id}"),
            Change::TaskStatus { task_id } => format!("{origin}|s|{task_id}"),
            Change::Queue => format!("{origin}|q"),
            Change::Cancel { task_id } => format!("{origin}|c|{task_id}"),
            Change::Messages { task_id, attempt } => format!("{origin}|m|{task_id}|{attempt}"),
            Change::Resync => format!("{origin}|r"),
        }
    }

    /// Returns the origin and the change; unknown payloads become `Resync`.
    pub(crate) fn decode(payload: &str) -> (&str, Change) {
        let mut parts = payload.split('|');
        let origin = parts.next().unwrap_or_default();
        let kind = parts.next().unwrap_or_default();
        let a = parts.next();
        let b = parts.next();
        let change = match (kind, a, b) {
            ("e", Some(task), Some(id)) => {
                id.parse().map_or(Change::Resync, |last_id| Change::Events {
                    task_id: task.to_string(),
                    last_id,
                })
            }
            ("s", Some(task), None) => Change::TaskStatus {
                task_id: task.to_string(),
            },
            ("q", None, None) => Change::Queue,
            ("c", Some(task), None) => Change::Cancel {
                task_id: task.to_string(),
            },
            ("m", Some(task), Some(n)) => {
                n.parse()
                    .map_or(Change::Resync, |attempt| Change::Messages {
                        task_id: task.to_string(),
                        attempt,
                    })
            }
            _ => Change::Resync,
        };
        (origin, change)
    }
}

/// Why [`Subscription::wait_for`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// A change the caller asked for.
    Changed(Change),
    /// Changes may have been missed (see [`Change::Resync`]).
    Resync,
    /// The poll interval passed without a matching change.
    PollInterval,
}

/// A receiver of [`Change`]s with the store's safety-net poll interval.
///
/// Subscribe *before* reading the store, then wait: a change committed
/// between the read and the wait is still seen.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) rx: broadcast::Receiver<Change>,
    pub(crate) poll_interval: Duration,
}

impl Subscription {
    /// Waits until a change for which `wanted` is true, a resync, or the poll
    /// interval, whichever comes first.
    pub async fn wait_for(&mut self, mut wanted: impl FnMut(&Change) -> bool) -> Wake {
        let deadline = tokio::time::Instant::now() + self.poll_interval;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_elapsed) => return Wake::PollInterval,
                Ok(Ok(Change::Resync)) => return Wake::Resync,
                Ok(Ok(change)) if wanted(&change) => return Wake::Changed(change),
                Ok(Ok(_other)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => return Wake::Resync,
                // The store is gone; only the poll interval can end the wait.
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    tokio::time::sleep_until(deadline).await;
                    return Wake::PollInterval;
                }
            }
        }
    }

    /// Waits for the queue to change (new claimable attempts).
    pub async fn wait_for_queue(&mut self) -> Wake {
        self.wait_for(|c| matches!(c, Change::Queue)).await
    }

    /// Waits for new events of one task.
    pub async fn wait_for_events(&mut self, task_id: &str) -> Wake {
        self.wait_for(|c| matches!(c, Change::Events { task_id: t, .. } if t == task_id))
            .await
    }

    /// Waits for new events of one task or a change of its status.
    pub async fn wait_for_task(&mut self, task_id: &str) -> Wake {
        self.wait_for(|c| match c {
            Change::Events { task_id: t, .. } | Change::TaskStatus { task_id: t } => t == task_id,
            _ => false,
        })
        .await
    }
}

/// Forwards other processes' notifications into `sender` until the store is
/// dropped (the task is aborted then).
pub(crate) async fn forward_pg_notifications(
    pool: PgPool,
    listener: PgListener,
    origin: String,
    sender: broadcast::Sender<Change>,
) {
    let mut listener = Some(listener);
    loop {
        let active = match listener.as_mut() {
            Some(active) => active,
            None if pool.is_closed() => return,
            None => match connect_listener(&pool).await {
                Ok(fresh) => {
                    // Anything may have happened while nobody listened.
                    let _ = sender.send(Change::Resync);
                    listener.insert(fresh)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for kiln changes; retrying");
                    // Back off between reconnection attempts; consumers keep
                    // working through their poll interval meanwhile.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        match active.try_recv().await {
            Ok(Some(notification)) => {
                let (from, change) = Change::decode(notification.payload());
                if from != origin {
                    let _ = sender.send(change);
                }
            }
            // The connection was lost; PgListener reconnects on the next call.
            Ok(None) => {
                let _ = sender.send(Change::Resync);
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "lost the LISTEN connection; reconnecting");
                listener = None;
            }
        }
    }
}

pub(crate) async fn connect_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(PG_CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_through_notify_payloads() {
        let changes = [
            Change::Events {
                task_id: "t_1".into(),
                last_id: 42,
            },
            Change::TaskStatus {
                task_id: "t_9".into(),
            },
            Change::Queue,
            Change::Cancel {
                task_id: "t_2".into(),
            },
            Change::Messages {
                task_id: "t_3".into(),
                attempt: 2,
            },
            Change::Resync,
        ];
        for change in changes {
            let payload = change.encode("p1");
            assert_eq!(Change::decode(&payload), ("p1", change));
        }
    }

    #[test]
    fn garbage_payload_means_resync() {
        assert_eq!(Change::decode("x|e|t_1|notanumber").1, Change::Resync);
        assert_eq!(Change::decode("").1, Change::Resync);
    }
}
