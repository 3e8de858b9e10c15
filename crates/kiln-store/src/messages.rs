//! Follow-up and steering messages from users to attempts.

use kiln_protocol::api::Message;

use crate::changes::Change;
use crate::clock::from_millis;
use crate::db::{query, DbRow};
use crate::error::{OpError, Result, StoreError};
use crate::store::refresh_task_status;
use crate::tasks::AttemptRef;
use crate::tokens::Principal;
use crate::Store;

/// Longest message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

fn message_from_row(row: &DbRow) -> Result<Message, OpError> {
    Ok(Message {
        id: row.int("id")?,
        task_id: row.text("task_id")?,
        attempt: row.uint("attempt")?,
        text: row.text("text")?,
        user_id: row.opt_text("user_id")?,
        created_at: from_millis(row.int("created_at")?),
        delivered_at: row.opt_int("delivered_at")?.map(from_millis),
    })
}

impl Store {
    /// Queues a message for one attempt of a task, or for each of them.
    ///
    /// A running or waiting attempt takes it at its next model turn. A
    /// finished attempt (succeeded, failed or cancelled) is reopened: it goes
    /// back to the queue with `resume` set, so a worker continues it with
    /// the message.
    pub async fn enqueue_message(
        &self,
        who: &Principal,
        task_id: &str,
        attempt: Option<u32>,
        text: &str,
    ) -> Result<Vec<Message>> {
        if text.trim().is_empty() {
            return Err(StoreError::invalid("text", "the message is empty"));
        }
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(StoreError::invalid(
                "text",
                format!(
                    "the message has {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                    text.len()
                ),
            ));
        }
        self.run("send a message", || async {
            let task = self
                .task_for(who, task_id, crate::access::TaskAction::Act)
                .await?;
            let targets: Vec<u32> = match attempt {
                Some(n) if (1..=task.attempt_count).contains(&n) => vec![n],
                Some(n) => {
                    return Err(
                        StoreError::not_found(AttemptRef::new(task_id, n).to_string()).into(),
                    )
                }
                None => (1..=task.attempt_count).collect(),
            };
            let now = self.now_ms();
            let mut tx = self.begin().await?;
            let reopened = tx
                .execute(
                    query(
                        "UPDATE attempts SET status = 'queued', resume = TRUE, tries = 0,
                            finished_at = NULL, reason = NULL, cancel_requested = FALSE
                         WHERE task_id = $1 AND ($2 IS NULL OR n = $2)
                           AND status IN ('succeeded', 'failed', 'cancelled', 'checks_failed')",
                    )
                    .bind(task_id)
                    .bind(attempt.map(i64::from)),
                )
                .await?;
            if reopened > 0 {
                refresh_task_status(&mut tx, task_id, now).await?;
            }
            let count = i64::try_from(targets.len()).unwrap_or(i64::MAX);
            let top = tx
                .fetch_one(
                    query(
                        "UPDATE counters SET value = value + $1 WHERE name = 'message_id'
                         RETURNING value",
                    )
                    .bind(count),
                )
                .await?
                .int("value")?;
            let mut messages = Vec::with_capacity(targets.len());
            let mut changes = Vec::with_capacity(targets.len() + 1);
            for (offset, n) in (0_i64..).zip(targets) {
                let row = tx
                    .fetch_one(
                        query(
                            "INSERT INTO messages (id, task_id, attempt, text, created_at, user_id)
                             VALUES ($1, $2, $3, $4, $5, $6)
                             RETURNING id, task_id, attempt, text, user_id, created_at, delivered_at",
                        )
                        .bind(top - count + 1 + offset)
                        .bind(task_id)
                        .bind(n)
                        .bind(text)
                        .bind(now)
                        .bind(who.user_id.as_deref()),
                    )
                    .await?;
                messages.push(message_from_row(&row)?);
                changes.push(Change::Messages {
                    task_id: task_id.to_string(),
                    attempt: n,
                });
            }
            if reopened > 0 {
                changes.push(Change::Queue);
            }
            self.commit(tx, changes).await?;
            Ok(messages)
        })
        .await
    }

    /// The attempt's undelivered messages in the order they were sent,
    /// marked delivered in the same step (each is taken exactly once).
    pub async fn take_undelivered(&self, attempt: &AttemptRef) -> Result<Vec<Message>> {
        self.run("take messages", || async {
            let mut tx = self.begin().await?;
            let rows = tx
                .fetch_all(
                    query(
                        "UPDATE messages SET delivered_at = $3
                         WHERE task_id = $1 AND attempt = $2 AND delivered_at IS NULL
                         RETURNING id, task_id, attempt, text, user_id, created_at, delivered_at",
                    )
                    .bind(attempt.task_id.as_str())
                    .bind(attempt.n)
                    .bind(self.now_ms()),
                )
                .await?;
            let mut messages = rows
                .iter()
                .map(message_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            messages.sort_by_key(|m| m.id);
            self.commit(tx, Vec::new()).await?;
            Ok(messages)
        })
        .await
    }

    /// Every message of a task, delivered or not, in the order sent.
    pub async fn messages(&self, who: &Principal, task_id: &str) -> Result<Vec<Message>> {
        self.run("list messages", || async {
            self.visible_task(who, task_id).await?;
            let rows = self
                .inner
                .db
                .fetch_all(
                    query(
                        "SELECT id, task_id, attempt, text, user_id, created_at, delivered_at
                         FROM messages WHERE task_id = $1 ORDER BY id",
                    )
                    .bind(task_id),
                )
                .await?;
            rows.iter().map(message_from_row).collect()
        })
        .await
    }
}
