//! Outgoing webhooks as a transactional outbox: a delivery is a row of
//! `webhook_deliveries` inserted in the transaction that made the change it
//! announces (an attempt's finish, a pull request), so it is sent exactly
//! when that change committed, whichever worker (in-process or remote)
//! finished the attempt. The server's delivery loop claims due rows, sends
//! them and records each try (docs/webhooks.md).

use std::time::Duration;

use kiln_protocol::WebhookDelivery;
use serde_json::Value;

use crate::clock::from_millis;
use crate::db::{query, Backend, DbRow, Tx};
use crate::error::{OpError, Result, StoreError};
use crate::tokens::Principal;
use crate::Store;

/// The `event` (and `X-Kiln-Event`) of an attempt's completion.
pub const WEBHOOK_ATTEMPT_FINISHED: &str = "attempt.finished";
/// The `event` of a task's completion (every attempt finished).
pub const WEBHOOK_TASK_FINISHED: &str = "task.finished";
/// The `event` of a pull request opened or updated.
pub const WEBHOOK_PR_OPENED: &str = "pr.opened";

pub(crate) const ATTEMPT_FINISHED: &str = WEBHOOK_ATTEMPT_FINISHED;
pub(crate) const TASK_FINISHED: &str = WEBHOOK_TASK_FINISHED;

/// Most deliveries [`Store::webhook_deliveries`] lists at once.
pub const MAX_DELIVERIES_LISTED: u32 = 500;

/// A delivery the caller now holds, to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueWebhook {
    pub id: i64,
    pub environment_id: String,
    pub event: String,
    /// The URL the environment named when the delivery was queued.
    pub url: String,
    /// The exact bytes to send (and sign).
    pub body: String,
    /// Tries before this one.
    pub tries: u32,
}

/// How one try of a delivery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTry {
    /// The receiver answered 2xx.
    pub delivered: bool,
    /// The HTTP status of the answer, if one came.
    pub response_code: Option<u16>,
    /// Why the try failed, for people.
    pub error: Option<String>,
    /// When not delivered: try again after this long, or (`None`) give up.
    pub retry_in: Option<Duration>,
}

macro_rules! claim_due_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE webhook_deliveries SET next_try_at = $2
             WHERE id IN (SELECT id FROM webhook_deliveries
                          WHERE status = 'pending' AND next_try_at <= $1
                          ORDER BY next_try_at, id LIMIT $3 ",
            $lock,
            ")
             RETURNING id, environment_id, event, url, body, tries"
        )
    };
}

const CLAIM_DUE_SQLITE: &str = claim_due_sql!("");
// Two servers on one database never send the same delivery at once.
const CLAIM_DUE_POSTGRES: &str = claim_due_sql!("FOR UPDATE SKIP LOCKED");

/// Queues a delivery of `event` to `url`, the environment's webhook (see
/// [`crate::environments::webhook_url_in`]), inside `tx`; returns its id.
/// The body is `{event, delivery_id, environment_id, task_id, created_at, data}`.
pub(crate) async fn enqueue_in(
    tx: &mut Tx,
    environment_id: &str,
    url: &str,
    task_id: &str,
    event: &str,
    data: Value,
    now_ms: i64,
) -> Result<i64, OpError> {
    let id = tx
        .fetch_one(query(
            "UPDATE counters SET value = value + 1 WHERE name = 'webhook_delivery_id'
             RETURNING value",
        ))
        .await?
        .int("value")?;
    let body = serde_json::json!({
        "event": event,
        "delivery_id": id,
        "environment_id": environment_id,
        "task_id": task_id,
        "created_at": from_millis(now_ms),
        "data": data,
    });
    let body = serde_json::to_string(&body)
        .map_err(|e| StoreError::invalid("webhook body", e.to_string()))?;
    tx.execute(
        query(
            "INSERT INTO webhook_deliveries (id, environment_id, task_id, event, url, body,
                status, tries, next_try_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7)",
        )
        .bind(id)
        .bind(environment_id)
        .bind(task_id)
        .bind(event)
        .bind(url)
        .bind(body)
        .bind(now_ms),
    )
    .await?;
    Ok(id)
}

fn delivery_from_row(row: &DbRow) -> Result<WebhookDelivery, OpError> {
    Ok(WebhookDelivery {
        id: row.int("id")?,
        environment_id: row.text("environment_id")?,
        task_id: row.opt_text("task_id")?,
        event: row.text("event")?,
        url: row.text("url")?,
        status: row.text("status")?,
        tries: row.uint("tries")?,
        response_code: row
            .opt_int("response_code")?
            .and_then(|code| u16::try_from(code).ok()),
        error: row.opt_text("error")?,
        created_at: from_millis(row.int("created_at")?),
        last_try_at: row.opt_int("last_try_at")?.map(from_millis),
    })
}

impl Store {
    /// Queues a delivery of `event` (e.g. [`WEBHOOK_PR_OPENED`]) with `data`
    /// to the environment's webhook; `None` when it has none. `data` must
    /// hold nothing secret: the receiver is outside kiln.
    pub async fn enqueue_webhook(
        &self,
        environment_id: &str,
        task_id: &str,
        event: &str,
        data: Value,
    ) -> Result<Option<i64>> {
        self.run("queue a webhook delivery", || async {
            let mut tx = self.begin().await?;
            let Some(url) = crate::environments::webhook_url_in(&mut tx, environment_id).await?
            else {
                return Ok(None);
            };
            let id = enqueue_in(
                &mut tx,
                environment_id,
                &url,
                task_id,
                event,
                data.clone(),
                self.now_ms(),
            )
            .await?;
            self.commit(tx, Vec::new()).await?;
            Ok(Some(id))
        })
        .await
    }

    /// Takes up to `limit` deliveries that are due; each is held for `hold`
    /// (no other caller gets it meanwhile) and comes back due after that if
    /// the holder never records a try (e.g. it crashed).
    pub async fn claim_webhook_deliveries(
        &self,
        limit: u32,
        hold: Duration,
    ) -> Result<Vec<DueWebhook>> {
        self.run("claim webhook deliveries", || async {
            let now = self.now_ms();
            let until = now.saturating_add(i64::try_from(hold.as_millis()).unwrap_or(i64::MAX));
            let mut tx = self.begin().await?;
            let sql = match tx.backend() {
                Backend::Sqlite => CLAIM_DUE_SQLITE,
                Backend::Postgres => CLAIM_DUE_POSTGRES,
            };
            let rows = tx
                .fetch_all(query(sql).bind(now).bind(until).bind(i64::from(limit)))
                .await?;
            let mut due = rows
                .iter()
                .map(|row| {
                    Ok(DueWebhook {
                        id: row.int("id")?,
                        environment_id: row.text("environment_id")?,
                        event: row.text("event")?,
                        url: row.text("url")?,
                        body: row.text("body")?,
                        tries: row.uint("tries")?,
                    })
                })
                .collect::<Result<Vec<_>, OpError>>()?;
            self.commit(tx, Vec::new()).await?;
            due.sort_by_key(|d| d.id);
            Ok(due)
        })
        .await
    }

    /// Records one try of a pending delivery: `delivered`, `pending` again
    /// (after `retry_in`) or `failed`.
    pub async fn record_webhook_try(&self, id: i64, outcome: &WebhookTry) -> Result<()> {
        self.run("record a webhook try", || async {
            let now = self.now_ms();
            let (status, next) = match (outcome.delivered, outcome.retry_in) {
                (true, _) => ("delivered", None),
                (false, Some(delay)) => (
                    "pending",
                    Some(now.saturating_add(to_millis_duration(delay))),
                ),
                (false, None) => ("failed", None),
            };
            let mut tx = self.begin().await?;
            let changed = tx
                .execute(
                    query(
                        "UPDATE webhook_deliveries SET status = $2, tries = tries + 1,
                            response_code = $3, error = $4, next_try_at = $5, last_try_at = $6
                         WHERE id = $1 AND status = 'pending'",
                    )
                    .bind(id)
                    .bind(status)
                    .bind(outcome.response_code.map(i64::from))
                    .bind(outcome.error.as_deref())
                    .bind(next)
                    .bind(now),
                )
                .await?;
            if changed == 0 {
                return Err(StoreError::Conflict {
                    message: format!("webhook delivery {id} is not pending"),
                }
                .into());
            }
            self.commit(tx, Vec::new()).await
        })
        .await
    }

    /// An environment's deliveries, newest first (at most `limit`), for its
    /// owner or an admin; others get not-found.
    pub async fn webhook_deliveries(
        &self,
        who: &Principal,
        environment_id: &str,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>> {
        if !(1..=MAX_DELIVERIES_LISTED).contains(&limit) {
            return Err(StoreError::invalid(
                "limit",
                format!("{limit} is out of range: use 1 to {MAX_DELIVERIES_LISTED}"),
            ));
        }
        let environment = self.environment(who, environment_id).await?;
        self.run("list webhook deliveries", || async {
            let rows = self
                .inner
                .db
                .fetch_all(
                    query(
                        "SELECT id, environment_id, task_id, event, url, status, tries,
                            response_code, error, created_at, last_try_at
                         FROM webhook_deliveries WHERE environment_id = $1
                         ORDER BY id DESC LIMIT $2",
                    )
                    .bind(environment.id.as_str())
                    .bind(i64::from(limit)),
                )
                .await?;
            rows.iter().map(delivery_from_row).collect()
        })
        .await
    }
}

fn to_millis_duration(delay: Duration) -> i64 {
    i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)
}
