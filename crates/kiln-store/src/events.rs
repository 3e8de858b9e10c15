//! Event logs: every event of every attempt, in order, with an id per task
//! that the task's SSE stream uses as `Last-Event-ID`.
//!
//! Ids come from `tasks.last_event_id`, updated in the appending
//! transaction. The task row's lock makes appends to one task take turns, so
//! a task's ids increase in commit order: a reader that has seen id N never
//! later finds a new event of that task with an id below N (which a
//! PostgreSQL sequence would not promise). Appends to different tasks do not
//! wait for each other; one global counter would make every append in the
//! cluster wait for the previous commit's fsync.

use chrono::{DateTime, Utc};
use kiln_protocol::{Event, EventKind};
use serde::Serialize;

use crate::changes::Change;
use crate::clock::{from_millis, to_millis};
use crate::db::{query, Backend, DbRow, Tx};
use crate::error::{OpError, Result, StoreError};
use crate::tasks::AttemptRef;
use crate::Store;

/// Most events one [`Store::events`] call returns.
pub const MAX_EVENTS_PER_READ: u32 = 10_000;

/// An event as stored, with its JSON kept as written (SSE sends it as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredEvent {
    /// Increasing in commit order within the task; the SSE `id:` of the
    /// task's stream. Unique per task, not across tasks.
    pub id: i64,
    pub task_id: String,
    pub attempt: u32,
    pub seq: u64,
    pub ts: DateTime<Utc>,
    /// The event's `type` tag, e.g. `exec.begin`.
    pub kind: String,
    /// The [`Event`] as JSON.
    pub json: String,
}

impl StoredEvent {
    pub fn event(&self) -> Result<Event> {
        serde_json::from_str(&self.json).map_err(|e| StoreError::corrupt("event", e))
    }
}

/// What [`Store::append_events`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Events that were new; the others had been appended before.
    pub inserted: usize,
    /// The id of the last new event.
    pub last_id: Option<i64>,
}

fn stored_event_from_row(row: &DbRow) -> Result<StoredEvent, OpError> {
    Ok(StoredEvent {
        id: row.int("id")?,
        task_id: row.text("task_id")?,
        attempt: row.uint("attempt")?,
        seq: row.u64("seq")?,
        ts: from_millis(row.int("ts")?),
        kind: row.text("kind")?,
        json: row.text("body")?,
    })
}

/// An event serialized once, with its tag pulled out for the `kind` column.
#[derive(Clone)]
struct Encoded {
    seq: i64,
    ts: i64,
    kind: String,
    json: String,
}

fn encode(event: &Event) -> Result<Encoded, StoreError> {
    #[derive(serde::Deserialize)]
    struct Tag<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    // Stored exactly as kiln writes its JSONL logs, so SSE can send it as is.
    let json =
        serde_json::to_string(event).map_err(|e| StoreError::invalid("event", e.to_string()))?;
    let kind = serde_json::from_str::<Tag>(&json)
        .map_err(|e| StoreError::invalid("event", e.to_string()))?
        .kind
        .into_owned();
    Ok(Encoded {
        seq: i64::try_from(event.seq)
            .map_err(|_| StoreError::invalid("event", format!("seq {} is too large", event.seq)))?,
        ts: to_millis(event.ts),
        kind,
        json,
    })
}

/// Inserts encoded events under ids reserved in this transaction; returns
/// how many were new and the last new id.
async fn insert_events(
    tx: &mut Tx,
    attempt: &AttemptRef,
    events: Vec<Encoded>,
) -> Result<Appended, OpError> {
    let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let top = tx
        .fetch_optional(
            query(
                "UPDATE tasks SET last_event_id = last_event_id + $2 WHERE id = $1
                 RETURNING last_event_id",
            )
            .bind(attempt.task_id.as_str())
            .bind(count),
        )
        .await?
        .ok_or_else(|| StoreError::not_found(attempt.to_string()))?
        .int("last_event_id")?;
    let mut appended = Appended::default();
    for (offset, event) in (0_i64..).zip(events) {
        let id = top - count + 1 + offset;
        let inserted = tx
            .execute(
                query(
                    "INSERT INTO events (id, task_id, attempt, seq, ts, kind, body)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (task_id, attempt, seq) DO NOTHING",
                )
                .bind(id)
                .bind(attempt.task_id.as_str())
                .bind(attempt.n)
                .bind(event.seq)
                .bind(event.ts)
                .bind(event.kind)
                .bind(event.json),
            )
            .await;
        match inserted {
            Ok(0) => {}
            Ok(_) => {
                appended.inserted += 1;
                appended.last_id = Some(id);
            }
            Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                return Err(StoreError::not_found(attempt.to_string()).into())
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(appended)
}

/// Inserts events that carry their own `seq`s (a remote worker's) inside
/// `tx`; stored `seq`s are skipped.
pub(crate) async fn insert_new_events(
    tx: &mut Tx,
    attempt: &AttemptRef,
    events: &[&Event],
) -> Result<Appended, OpError> {
    if events.is_empty() {
        return Ok(Appended::default());
    }
    let encoded = events
        .iter()
        .map(|event| encode(event))
        .collect::<Result<Vec<_>, _>>()?;
    insert_events(tx, attempt, encoded).await
}

/// The next `seq` of an attempt's log.
pub(crate) async fn next_seq(tx: &mut Tx, attempt: &AttemptRef) -> Result<u64, OpError> {
    let row = tx
        .fetch_one(
            query("SELECT COALESCE(MAX(seq), 0) AS last FROM events WHERE task_id = $1 AND attempt = $2")
                .bind(attempt.task_id.as_str())
                .bind(attempt.n),
        )
        .await?;
    Ok(row.u64("last")? + 1)
}

/// The status of `attempt`, its row locked until `tx` ends (on PostgreSQL;
/// SQLite's single writer serializes anyway). Events the store writes into
/// a finished attempt's log take their `seq` after its last event; a claim
/// of a follow-up meanwhile would hand its worker the same `seq`. With the
/// lock the claim skips the row (`SKIP LOCKED`) until this commits, or,
/// claimed first, is seen as `running` here.
pub(crate) async fn lock_attempt_status(
    tx: &mut Tx,
    attempt: &AttemptRef,
) -> Result<Option<String>, OpError> {
    let sql = match tx.backend() {
        Backend::Sqlite => "SELECT status FROM attempts WHERE task_id = $1 AND n = $2",
        Backend::Postgres => "SELECT status FROM attempts WHERE task_id = $1 AND n = $2 FOR UPDATE",
    };
    let row = tx
        .fetch_optional(query(sql).bind(attempt.task_id.as_str()).bind(attempt.n))
        .await?;
    Ok(row.map(|row| row.text("status")).transpose()?)
}

/// Appends events the store itself writes (recovery and cancellation
/// notices) after the attempt's last one; returns the last id.
pub(crate) async fn append_store_events(
    tx: &mut Tx,
    attempt: &AttemptRef,
    kinds: Vec<EventKind>,
    now_ms: i64,
) -> Result<i64, OpError> {
    let first = next_seq(tx, attempt).await?;
    let mut encoded = Vec::with_capacity(kinds.len());
    for (seq, kind) in (first..).zip(kinds) {
        let event = Event {
            seq,
            ts: from_millis(now_ms),
            kind,
        };
        encoded.push(encode(&event)?);
    }
    let appended = insert_events(tx, attempt, encoded).await?;
    appended.last_id.ok_or_else(|| {
        StoreError::corrupt("event log", format!("{attempt} refused a new event")).into()
    })
}

impl Store {
    /// Appends events of one attempt. Idempotent: an event whose
    /// `(task, attempt, seq)` is stored already is skipped, so a worker may
    /// retry a batch after an error. Events keep the `seq` they carry.
    pub async fn append_events(&self, attempt: &AttemptRef, events: &[Event]) -> Result<Appended> {
        if events.is_empty() {
            return Ok(Appended::default());
        }
        let encoded: Vec<Encoded> = events.iter().map(encode).collect::<Result<_>>()?;
        self.run("append events", || async {
            let mut tx = self.begin().await?;
            let appended = insert_events(&mut tx, attempt, encoded.clone()).await?;
            match appended.last_id {
                Some(last_id) => {
                    let change = Change::Events {
                        task_id: attempt.task_id.clone(),
                        last_id,
                    };
                    self.commit(tx, vec![change]).await?;
                }
                // Nothing new: roll back so the reserved ids are not spent.
                None => drop(tx),
            }
            Ok(appended)
        })
        .await
    }

    /// Appends one event (see [`Store::append_events`]).
    pub async fn append_event(&self, attempt: &AttemptRef, event: &Event) -> Result<Appended> {
        self.append_events(attempt, std::slice::from_ref(event))
            .await
    }

    /// Events of a task with id above `after_id` (0 for all), in id order,
    /// at most `limit`; only attempt `attempt` when given. Callers check that
    /// the reader may see the task (e.g. with [`Store::task`]) first.
    pub async fn events(
        &self,
        task_id: &str,
        attempt: Option<u32>,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        if !(1..=MAX_EVENTS_PER_READ).contains(&limit) {
            return Err(StoreError::invalid(
                "limit",
                format!("{limit} is out of range: use 1 to {MAX_EVENTS_PER_READ}"),
            ));
        }
        self.run("read events", || async {
            let rows = self
                .inner
                .db
                .fetch_all(
                    query(
                        "SELECT id, task_id, attempt, seq, ts, kind, body FROM events
                         WHERE task_id = $1 AND ($2 IS NULL OR attempt = $2) AND id > $3
                         ORDER BY id LIMIT $4",
                    )
                    .bind(task_id)
                    .bind(attempt.map(i64::from))
                    .bind(after_id)
                    .bind(i64::from(limit)),
                )
                .await?;
            rows.iter().map(stored_event_from_row).collect()
        })
        .await
    }

    /// Every event of attempt `n` that a follow-up rebuilds its
    /// conversation and terminal chunks from (messages, tool calls and
    /// outputs, compactions, command output), in order, however long the
    /// log: read in pages, leaving out the model's streamed deltas and the rest.
    pub async fn conversation_events(&self, task_id: &str, n: u32) -> Result<Vec<Event>> {
        const SQL: &str = "SELECT id, task_id, attempt, seq, ts, kind, body FROM events
             WHERE task_id = $1 AND attempt = $2 AND id > $3
               AND kind IN ('message', 'tool.call', 'tool.output', 'context.compacted',
                            'exec.begin', 'exec.output', 'exec.end')
             ORDER BY id LIMIT $4";
        let mut events = Vec::new();
        let mut after = 0i64;
        loop {
            let page = self
                .run("read the conversation", || async {
                    let rows = self
                        .inner
                        .db
                        .fetch_all(
                            query(SQL)
                                .bind(task_id)
                                .bind(i64::from(n))
                                .bind(after)
                                .bind(i64::from(MAX_EVENTS_PER_READ)),
                        )
                        .await?;
                    rows.iter()
                        .map(stored_event_from_row)
                        .collect::<std::result::Result<Vec<_>, OpError>>()
                })
                .await?;
            let Some(last) = page.last() else {
                return Ok(events);
            };
            after = last.id;
            let full = page.len() as u32 == MAX_EVENTS_PER_READ;
            for stored in page {
                events.push(stored.event()?);
            }
            if !full {
                return Ok(events);
            }
        }
    }
}
