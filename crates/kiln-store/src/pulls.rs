//! Pull requests: one row per task (`pull_requests`), written when kiln
//! opens a task's pull (merge) request on its forge and rewritten when a
//! later push updates it, so that a task never gets a second one.
//! Recording one also appends `pr.opened` to the proposed attempt's log in
//! the same transaction: the row and the event never disagree.

use kiln_protocol::{EventKind, ForgeKind, PullRequest};

use crate::changes::Change;
use crate::clock::from_millis;
use crate::db::{query, DbRow, Tx};
use crate::error::{OpError, Result, StoreError};
use crate::tasks::AttemptRef;
use crate::Store;

/// What the forge answered for a task's pull request, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedPullRequest {
    /// The attempt whose commit the pull request now proposes.
    pub attempt: AttemptRef,
    pub forge: ForgeKind,
    /// GitHub's and Forgejo's `number`, GitLab's `iid`.
    pub number: u64,
    pub url: String,
    pub branch: String,
    pub draft: bool,
}

fn forge_from_str(text: &str) -> Result<ForgeKind, StoreError> {
    match text {
        "github" => Ok(ForgeKind::Github),
        "gitlab" => Ok(ForgeKind::Gitlab),
        "forgejo" => Ok(ForgeKind::Forgejo),
        other => Err(StoreError::corrupt("pull request forge", other)),
    }
}

fn pull_request_from_row(row: &DbRow) -> Result<PullRequest, OpError> {
    Ok(PullRequest {
        task_id: row.text("task_id")?,
        attempt: row.uint("attempt")?,
        forge: forge_from_str(&row.text("forge")?)?,
        number: row.u64("number")?,
        url: row.text("url")?,
        branch: row.text("branch")?,
        draft: row.bool("draft")?,
        opened_by: row.opt_text("opened_by")?,
        created_at: from_millis(row.int("created_at")?),
        updated_at: from_millis(row.int("updated_at")?),
    })
}

const SELECT_PULL_REQUEST: &str =
    "SELECT task_id, attempt, forge, number, url, branch, draft, opened_by, created_at, updated_at
     FROM pull_requests WHERE task_id = $1";

pub(crate) async fn pull_request_in(
    db: &crate::db::Db,
    task_id: &str,
) -> Result<Option<PullRequest>, OpError> {
    db.fetch_optional(query(SELECT_PULL_REQUEST).bind(task_id))
        .await?
        .as_ref()
        .map(pull_request_from_row)
        .transpose()
}

async fn pull_request_in_tx(tx: &mut Tx, task_id: &str) -> Result<Option<PullRequest>, OpError> {
    tx.fetch_optional(query(SELECT_PULL_REQUEST).bind(task_id))
        .await?
        .as_ref()
        .map(pull_request_from_row)
        .transpose()
}

impl Store {
    /// The task's pull request, if kiln opened one. Callers check that the
    /// reader may see the task first (as [`Store::task`] does).
    pub async fn pull_request(&self, task_id: &str) -> Result<Option<PullRequest>> {
        self.run("get pull request", || async {
            pull_request_in(&self.inner.db, task_id).await
        })
        .await
    }

    /// Records the task's pull request as the forge answered it: the first
    /// time as new, later as an update of the same row (the number and URL
    /// the forge gave, the attempt now proposed). Appends `pr.opened`
    /// (`updated` on a later push) to that attempt's log. Returns the
    /// record and whether it updated an earlier one.
    ///
    /// Refused while the attempt is queued or running: its worker numbers
    /// the attempt's events itself, and an event slipped in between would
    /// take one of its numbers.
    pub async fn record_pull_request(
        &self,
        opened: &OpenedPullRequest,
    ) -> Result<(PullRequest, bool)> {
        let number = i64::try_from(opened.number).map_err(|_| {
            StoreError::invalid(
                "number",
                format!("{} is too large for a pull request number", opened.number),
            )
        })?;
        self.run("record pull request", || async {
            let attempt = &opened.attempt;
            let mut tx = self.begin().await?;
            let status = crate::events::lock_attempt_status(&mut tx, attempt)
                .await?
                .ok_or_else(|| StoreError::not_found(attempt.to_string()))?;
            if matches!(status.as_str(), "queued" | "running") {
                return Err(StoreError::Conflict {
                    message: format!("{attempt} is {status}: propose it once it has finished"),
                }
                .into());
            }
            let now = self.now_ms();
            let earlier = pull_request_in_tx(&mut tx, &attempt.task_id).await?;
            // One row per task: a later proposal takes it over, keeping created_at.
            tx.execute(
                query(
                    "INSERT INTO pull_requests (task_id, attempt, forge, number, url,
                        branch, draft, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                     ON CONFLICT (task_id) DO UPDATE SET attempt = excluded.attempt,
                        forge = excluded.forge, number = excluded.number, url = excluded.url,
                        branch = excluded.branch, draft = excluded.draft,
                        updated_at = excluded.updated_at",
                )
                .bind(attempt.task_id.as_str())
                .bind(attempt.n)
                .bind(opened.forge.as_str())
                .bind(number)
                .bind(opened.url.as_str())
                .bind(opened.branch.as_str())
                .bind(opened.draft)
                .bind(now),
            )
            .await?;
            let updated = earlier.is_some();
            let event = EventKind::PrOpened {
                forge: opened.forge,
                number: opened.number,
                url: opened.url.clone(),
                branch: opened.branch.clone(),
                updated,
            };
            let last_id =
                crate::events::append_store_events(&mut tx, attempt, vec![event], now).await?;
            let record = pull_request_in_tx(&mut tx, &attempt.task_id)
                .await?
                .ok_or_else(|| StoreError::corrupt("pull request", "vanished while recorded"))?;
            // The outbox: the delivery commits with the record, or neither does.
            let environment_id = tx
                .fetch_one(
                    query("SELECT environment_id FROM tasks WHERE id = $1")
                        .bind(attempt.task_id.as_str()),
                )
                .await?
                .text("environment_id")?;
            if let Some(url) = crate::environments::webhook_url_in(&mut tx, &environment_id).await?
            {
                crate::webhooks::enqueue_in(
                    &mut tx,
                    &environment_id,
                    &url,
                    &attempt.task_id,
                    crate::webhooks::WEBHOOK_PR_OPENED,
                    serde_json::json!({"pull_request": &record, "updated": updated}),
                    now,
                )
                .await?;
            }
            let change = Change::Events {
                task_id: attempt.task_id.clone(),
                last_id,
            };
            self.commit(tx, vec![change]).await?;
            Ok((record, updated))
        })
        .await
    }
}
