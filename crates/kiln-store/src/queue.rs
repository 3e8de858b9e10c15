//! The attempt queue: claims with leases, heartbeats, finishing,
//! cancellation and recovery of attempts whose worker was lost.
//! docs/store.md describes the protocol.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_protocol::api::{CancelOutcome, Task};
use kiln_protocol::{micros_from_usd, AttemptReport, AttemptStatus, EventKind, Usage};
use serde::{Deserialize, Serialize};

use crate::changes::Change;
use crate::clock::{duration_millis, from_millis};
use crate::db::{query, Backend, Tx};
use crate::error::{OpError, Result, StoreError};
use crate::store::refresh_task_status;
use crate::tasks::{select_task, task_from_row, AttemptRef};
use crate::tokens::Principal;
use crate::Store;

/// The claim statement; only PostgreSQL's row lock clause differs. SQLite
/// needs none: the statement runs under its single-writer lock.
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE attempts SET status = 'running', worker_id = $1, lease_expires_at = $2,
                started_at = $3, finished_at = NULL, tries = tries + 1, cancel_requested = FALSE,
                lease_token_sha256 = $4
             WHERE (task_id, n) = (
                SELECT task_id, n FROM attempts WHERE status IN ('queued', 'interrupted')
                ORDER BY task_id, n LIMIT 1 ",
            $lock,
            ")
             RETURNING task_id, n, tries, resume"
        )
    };
}
const CLAIM_SQLITE: &str = claim_sql!("");
// NO KEY UPDATE (not UPDATE): it does not block the KEY SHARE lock that an
// event insert's foreign-key check takes on the attempt row.
const CLAIM_POSTGRES: &str = claim_sql!("FOR NO KEY UPDATE SKIP LOCKED");

/// An attempt a worker now holds, with what it needs to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedAttempt {
    pub attempt: AttemptRef,
    pub task: Task,
    /// 1 for the first run; more after interruptions.
    pub try_number: u32,
    /// A follow-up message reopened this finished attempt: continue it (same
    /// checkout, full history) rather than starting fresh.
    pub resume: bool,
    /// The `seq` to give the next event of this attempt: the log continues
    /// across runs and follow-ups.
    pub next_seq: u64,
    pub lease_expires_at: DateTime<Utc>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub expires_at: DateTime<Utc>,
    /// The user cancelled the task: stop the attempt and finish it as cancelled.
    pub cancel_requested: bool,
}

/// Which running attempts [`Store::recover`] considers lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoverScope<'a> {
    /// Those whose lease has expired (any worker): the periodic sweep.
    ExpiredLeases,
    /// All of one worker's, e.g. when a worker process restarts under the same id.
    Worker(&'a str),
    /// Every running attempt of the server's own workers: at the start of an
    /// embedded server, whose in-process workers all died with it. Attempts
    /// that remote workers (`kiln worker`) hold are left alone: those workers
    /// may well be alive, and if not, their leases expire.
    AllRunning,
}

/// What [`Store::recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Back in the queue as `interrupted`, to run again.
    pub requeued: Vec<AttemptRef>,
    /// Interrupted `max_tries` times: now failed.
    pub failed: Vec<AttemptRef>,
    /// Their cancellation was requested before the worker was lost: now cancelled.
    pub cancelled: Vec<AttemptRef>,
}

/// Attempt counts for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    pub queued: u64,
    pub interrupted: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub checks_failed: u64,
    /// Tokens of every finished attempt.
    pub usage: Usage,
}

impl QueueStats {
    /// Attempts waiting for a worker.
    pub fn depth(&self) -> u64 {
        self.queued + self.interrupted
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Takes the oldest waiting attempt (FIFO by task creation, then attempt
    /// number) for `worker_id`, leased until now + `lease`. Concurrent
    /// claimers, in this process or on other machines, never get the same
    /// attempt.
    pub async fn claim_next(
        &self,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedAttempt>> {
        if worker_id.is_empty() || worker_id.contains('|') {
            return Err(StoreError::invalid(
                "worker_id",
                "use a non-empty id without '|'",
            ));
        }
        self.run("claim an attempt", || async {
            let mut tx = self.begin().await?;
            let claimed = self.claim_in(&mut tx, worker_id, lease, None).await?;
            self.commit(tx, Vec::new()).await?;
            Ok(claimed)
        })
        .await
    }

    /// The claim of [`Store::claim_next`] inside `tx`; `lease_token_sha256`
    /// is the hash of a remote worker's lease token (`None` clears the one
    /// an earlier claim left, so it stops working).
    pub(crate) async fn claim_in(
        &self,
        tx: &mut Tx,
        worker_id: &str,
        lease: Duration,
        lease_token_sha256: Option<&str>,
    ) -> Result<Option<ClaimedAttempt>, OpError> {
        let now = self.now_ms();
        let expires = now.saturating_add(duration_millis(lease));
        let claim_sql = match tx.backend() {
            Backend::Sqlite => CLAIM_SQLITE,
            Backend::Postgres => CLAIM_POSTGRES,
        };
        let Some(row) = tx
            .fetch_optional(
                query(claim_sql)
                    .bind(worker_id)
                    .bind(expires)
                    .bind(now)
                    .bind(lease_token_sha256),
            )
            .await?
        else {
            return Ok(None);
        };
        let attempt = AttemptRef::new(row.text("task_id")?, row.uint("n")?);
        let try_number = row.uint("tries")?;
        let resume = row.bool("resume")?;
        // The environment version it runs with, whatever changes later.
        tx.execute(
            query(
                "UPDATE attempts SET wait_reason = NULL, environment_version =
                    (SELECT e.version FROM tasks t JOIN environments e ON e.id = t.environment_id
                     WHERE t.id = $1)
                 WHERE task_id = $1 AND n = $2",
            )
            .bind(attempt.task_id.as_str())
            .bind(attempt.n),
        )
        .await?;
        refresh_task_status(tx, &attempt.task_id, now).await?;
        let task_row = tx
            .fetch_one(query(concat!(select_task!(), "WHERE id = $1")).bind(&attempt.task_id))
            .await?;
        let task = task_from_row(&task_row)?;
        let next_seq = crate::events::next_seq(tx, &attempt).await?;
        Ok(Some(ClaimedAttempt {
            attempt,
            task,
            try_number,
            resume,
            next_seq,
            lease_expires_at: from_millis(expires),
        }))
    }

    /// Renews the lease of a running attempt and tells the worker whether
    /// cancellation was requested. `LeaseLost` means: stop, it is not yours.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        attempt: &AttemptRef,
        lease: Duration,
    ) -> Result<Lease> {
        self.run("renew a lease", || async {
            let expires = self.now_ms().saturating_add(duration_millis(lease));
            let mut tx = self.begin().await?;
            let row = tx
                .fetch_optional(
                    query(
                        "UPDATE attempts SET lease_expires_at = $4
                         WHERE task_id = $1 AND n = $2 AND worker_id = $3 AND status = 'running'
                         RETURNING cancel_requested",
                    )
                    .bind(attempt.task_id.as_str())
                    .bind(attempt.n)
                    .bind(worker_id)
                    .bind(expires),
                )
                .await?
                .ok_or_else(|| lease_lost(worker_id, attempt))?;
            let cancel_requested = row.bool("cancel_requested")?;
            self.commit(tx, Vec::new()).await?;
            Ok(Lease {
                expires_at: from_millis(expires),
                cancel_requested,
            })
        })
        .await
    }

    /// Records how a running attempt ended. Only the worker holding it may.
    pub async fn finish(
        &self,
        worker_id: &str,
        attempt: &AttemptRef,
        outcome: &AttemptReport,
    ) -> Result<()> {
        self.run("finish an attempt", || async {
            let mut tx = self.begin().await?;
            self.finish_in(&mut tx, worker_id, attempt, outcome).await?;
            self.commit(tx, Vec::new()).await
        })
        .await
    }

    /// The update of [`Store::finish`] inside `tx`.
    pub(crate) async fn finish_in(
        &self,
        tx: &mut Tx,
        worker_id: &str,
        attempt: &AttemptRef,
        outcome: &AttemptReport,
    ) -> Result<(), OpError> {
        let stat = outcome.diff_stat;
        let checks_json = if outcome.checks.is_empty() {
            None
        } else {
            Some(
                serde_json::to_string(&outcome.checks)
                    .map_err(|e| StoreError::invalid("checks", e.to_string()))?,
            )
        };
        let (citations_valid, citations_invalid) = outcome.citation_counts();
        {
            let now = self.now_ms();
            let changed = tx
                .execute(
                    query(
                        "UPDATE attempts SET status = $4, finished_at = $5, lease_expires_at = NULL,
                            final_message = $6, diff = $7, files_changed = $8, insertions = $9,
                            deletions = $10, input_tokens = $11, cached_input_tokens = $12,
                            output_tokens = $13, branch = $14, commit_sha = $15, reason = $16,
                            checks_json = $17, citations_valid = $18, citations_invalid = $19,
                            cost_microusd = $20
                         WHERE task_id = $1 AND n = $2 AND worker_id = $3 AND status = 'running'",
                    )
                    .bind(attempt.task_id.as_str())
                    .bind(attempt.n)
                    .bind(worker_id)
                    .bind(outcome.status.as_str())
                    .bind(now)
                    .bind(outcome.final_message.as_deref())
                    .bind(outcome.diff.as_deref())
                    .bind(stat.map(|s| to_i64(s.files_changed)))
                    .bind(stat.map(|s| to_i64(s.insertions)))
                    .bind(stat.map(|s| to_i64(s.deletions)))
                    .bind(to_i64(outcome.usage.input_tokens))
                    .bind(to_i64(outcome.usage.cached_input_tokens))
                    .bind(to_i64(outcome.usage.output_tokens))
                    .bind(outcome.branch.as_deref())
                    .bind(outcome.commit_sha.as_deref())
                    .bind(outcome.reason.as_deref())
                    .bind(checks_json)
                    .bind(i64::from(citations_valid))
                    .bind(i64::from(citations_invalid))
                    .bind(outcome.cost_usd.map(|usd| to_i64(micros_from_usd(usd)))),
                )
                .await?;
            if changed == 0 {
                return Err(lease_lost(worker_id, attempt).into());
            }
            refresh_task_status(tx, &attempt.task_id, now).await?;
            crate::tasks::attempts_finished_in(tx, &attempt.task_id, &[attempt.n], now).await
        }
    }

    /// Cancels a task: attempts that wait are cancelled now; running ones
    /// get `cancel_requested`, which their workers see on the next heartbeat
    /// (and through a [`Change::Cancel`] notification at once).
    pub async fn cancel_task(&self, who: &Principal, task_id: &str) -> Result<CancelOutcome> {
        self.run("cancel a task", || async {
            self.task_for(who, task_id, crate::access::TaskAction::Act)
                .await?;
            let now = self.now_ms();
            let mut tx = self.begin().await?;
            let mut cancelled: Vec<u32> = tx
                .fetch_all(
                    query(
                        "UPDATE attempts SET status = 'cancelled', finished_at = $2,
                            reason = 'cancelled before it ran'
                         WHERE task_id = $1 AND status IN ('queued', 'interrupted')
                         RETURNING n",
                    )
                    .bind(task_id)
                    .bind(now),
                )
                .await?
                .iter()
                .map(|row| row.uint("n"))
                .collect::<Result<_, _>>()?;
            cancelled.sort_unstable();
            let mut requested: Vec<u32> = tx
                .fetch_all(
                    query(
                        "UPDATE attempts SET cancel_requested = TRUE
                         WHERE task_id = $1 AND status = 'running' RETURNING n",
                    )
                    .bind(task_id),
                )
                .await?
                .iter()
                .map(|row| row.uint("n"))
                .collect::<Result<_, _>>()?;
            requested.sort_unstable();
            refresh_task_status(&mut tx, task_id, now).await?;
            let mut changes = Vec::new();
            let mut last_event = None;
            for &n in &cancelled {
                let finished = EventKind::AttemptFinished {
                    status: AttemptStatus::Cancelled,
                    reason: Some("cancelled before it ran".to_string()),
                    final_message: None,
                    usage: Usage::default(),
                    cost_usd: None,
                };
                last_event = Some(
                    crate::events::append_store_events(
                        &mut tx,
                        &AttemptRef::new(task_id, n),
                        vec![finished],
                        now,
                    )
                    .await?,
                );
            }
            crate::tasks::attempts_finished_in(&mut tx, task_id, &cancelled, now).await?;
            if let Some(last_id) = last_event {
                changes.push(Change::Events {
                    task_id: task_id.to_string(),
                    last_id,
                });
            }
            if !requested.is_empty() {
                changes.push(Change::Cancel {
                    task_id: task_id.to_string(),
                });
            }
            self.commit(tx, changes).await?;
            Ok(CancelOutcome {
                cancelled,
                cancel_requested: requested,
            })
        })
        .await
    }

    /// Whether cancellation of a running attempt was requested (for workers
    /// between heartbeats).
    pub async fn cancel_requested(&self, attempt: &AttemptRef) -> Result<bool> {
        self.run("read cancel flag", || async {
            let row = self
                .inner
                .db
                .fetch_optional(
                    query("SELECT cancel_requested FROM attempts WHERE task_id = $1 AND n = $2")
                        .bind(attempt.task_id.as_str())
                        .bind(attempt.n),
                )
                .await?
                .ok_or_else(|| StoreError::not_found(attempt.to_string()))?;
            Ok(row.bool("cancel_requested")?)
        })
        .await
    }

    /// Takes back running attempts whose worker is gone (per `scope`). Each
    /// becomes `interrupted` and waits in the queue to run again from
    /// scratch, keeping its events; one claimed `max_tries` times fails with
    /// reason "interrupted N times"; one whose cancellation was requested is
    /// cancelled. A notice is appended to each attempt's event log.
    pub async fn recover(&self, scope: RecoverScope<'_>, max_tries: u32) -> Result<RecoveryReport> {
        let max_tries = max_tries.max(1);
        let candidates = self
            .run("find lost attempts", || async {
                let q = match scope {
                    RecoverScope::ExpiredLeases => query(
                        "SELECT task_id, n, tries, worker_id, lease_expires_at, cancel_requested
                         FROM attempts WHERE status = 'running' AND lease_expires_at < $1
                         ORDER BY task_id, n",
                    )
                    .bind(self.now_ms()),
                    RecoverScope::Worker(worker) => query(
                        "SELECT task_id, n, tries, worker_id, lease_expires_at, cancel_requested
                         FROM attempts WHERE status = 'running' AND worker_id = $1
                         ORDER BY task_id, n",
                    )
                    .bind(worker),
                    RecoverScope::AllRunning => query(
                        "SELECT task_id, n, tries, worker_id, lease_expires_at, cancel_requested
                         FROM attempts WHERE status = 'running'
                           AND (worker_id IS NULL OR worker_id NOT LIKE 'remote:%')
                         ORDER BY task_id, n",
                    ),
                };
                let rows = self.inner.db.fetch_all(q).await?;
                rows.iter()
                    .map(|row| {
                        Ok(LostAttempt {
                            attempt: AttemptRef::new(row.text("task_id")?, row.uint("n")?),
                            tries: row.uint("tries")?,
                            worker_id: row.opt_text("worker_id")?.unwrap_or_default(),
                            lease_expires_at: row.opt_int("lease_expires_at")?,
                            cancel_requested: row.bool("cancel_requested")?,
                        })
                    })
                    .collect::<Result<Vec<_>, OpError>>()
            })
            .await?;
        let mut report = RecoveryReport::default();
        for lost in candidates {
            let verdict = self
                .run("recover a lost attempt", || {
                    self.recover_one(&lost, scope, max_tries)
                })
                .await?;
            match verdict {
                Some(Verdict::Requeued) => report.requeued.push(lost.attempt),
                Some(Verdict::Failed) => report.failed.push(lost.attempt),
                Some(Verdict::Cancelled) => report.cancelled.push(lost.attempt),
                // Its worker renewed the lease or finished it meanwhile.
                None => {}
            }
        }
        Ok(report)
    }

    async fn recover_one(
        &self,
        lost: &LostAttempt,
        scope: RecoverScope<'_>,
        max_tries: u32,
    ) -> Result<Option<Verdict>, OpError> {
        let now = self.now_ms();
        let cause = match scope {
            RecoverScope::ExpiredLeases => {
                format!("worker {} stopped renewing its lease", lost.worker_id)
            }
            RecoverScope::Worker(_) => format!("worker {} restarted", lost.worker_id),
            RecoverScope::AllRunning => "the server restarted while it ran".to_string(),
        };
        let (verdict, status, reason) = if lost.cancel_requested {
            (
                Verdict::Cancelled,
                "cancelled",
                format!("cancelled; {cause}"),
            )
        } else if lost.tries >= max_tries {
            (
                Verdict::Failed,
                "failed",
                format!("interrupted {} times", lost.tries),
            )
        } else {
            (
                Verdict::Requeued,
                "interrupted",
                format!("interrupted: {cause}"),
            )
        };
        let finished_at = (verdict != Verdict::Requeued).then_some(now);
        let mut tx = self.begin().await?;
        // The guard (same worker, same try, same lease) skips an attempt
        // whose worker came back and renewed its lease since we looked.
        let changed = tx
            .execute(
                query(
                    "UPDATE attempts SET status = $6, reason = $7, finished_at = $8,
                        lease_expires_at = NULL, cancel_requested = FALSE
                     WHERE task_id = $1 AND n = $2 AND status = 'running' AND worker_id = $3
                       AND tries = $4 AND lease_expires_at = $5",
                )
                .bind(lost.attempt.task_id.as_str())
                .bind(lost.attempt.n)
                .bind(lost.worker_id.as_str())
                .bind(lost.tries)
                .bind(lost.lease_expires_at)
                .bind(status)
                .bind(reason.as_str())
                .bind(finished_at),
            )
            .await?;
        if changed == 0 {
            return Ok(None);
        }
        refresh_task_status(&mut tx, &lost.attempt.task_id, now).await?;
        let notice = match verdict {
            Verdict::Requeued => EventKind::Warning {
                message: format!(
                    "attempt interrupted ({cause}); it will run again from a fresh checkout (try {} of {max_tries})",
                    lost.tries + 1
                ),
            },
            Verdict::Failed => EventKind::AttemptFinished {
                status: AttemptStatus::Failed,
                reason: Some(reason.clone()),
                final_message: None,
                usage: Usage::default(),
                cost_usd: None,
            },
            Verdict::Cancelled => EventKind::AttemptFinished {
                status: AttemptStatus::Cancelled,
                reason: Some(reason.clone()),
                final_message: None,
                usage: Usage::default(),
                cost_usd: None,
            },
        };
        let last_id =
            crate::events::append_store_events(&mut tx, &lost.attempt, vec![notice], now).await?;
        if verdict != Verdict::Requeued {
            crate::tasks::attempts_finished_in(
                &mut tx,
                &lost.attempt.task_id,
                std::slice::from_ref(&lost.attempt.n),
                now,
            )
            .await?;
        }
        let mut changes = vec![Change::Events {
            task_id: lost.attempt.task_id.clone(),
            last_id,
        }];
        if verdict == Verdict::Requeued {
            changes.push(Change::Queue);
        }
        self.commit(tx, changes).await?;
        Ok(Some(verdict))
    }

    /// Attempt counts by state and token totals, for `/metrics`.
    pub async fn queue_stats(&self) -> Result<QueueStats> {
        self.run("read queue statistics", || async {
            let rows = self
                .inner
                .db
                .fetch_all(query(
                    "SELECT status, COUNT(*) AS n,
                        CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens,
                        CAST(COALESCE(SUM(cached_input_tokens), 0) AS BIGINT) AS cached_input_tokens,
                        CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens
                     FROM attempts GROUP BY status",
                ))
                .await?;
            let mut stats = QueueStats::default();
            for row in rows {
                let n = row.u64("n")?;
                match row.text("status")?.as_str() {
                    "queued" => stats.queued = n,
                    "interrupted" => stats.interrupted = n,
                    "running" => stats.running = n,
                    "succeeded" => stats.succeeded = n,
                    "failed" => stats.failed = n,
                    "cancelled" => stats.cancelled = n,
                    "checks_failed" => stats.checks_failed = n,
                    other => return Err(StoreError::corrupt("attempt status", other).into()),
                }
                stats.usage.add(&Usage {
                    input_tokens: row.u64("input_tokens")?,
                    cached_input_tokens: row.u64("cached_input_tokens")?,
                    output_tokens: row.u64("output_tokens")?,
                });
            }
            Ok(stats)
        })
        .await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Requeued,
    Failed,
    Cancelled,
}

#[derive(Debug)]
struct LostAttempt {
    attempt: AttemptRef,
    tries: u32,
    worker_id: String,
    lease_expires_at: Option<i64>,
    cancel_requested: bool,
}

pub(crate) fn lease_lost(worker_id: &str, attempt: &AttemptRef) -> StoreError {
    StoreError::LeaseLost {
        task_id: attempt.task_id.clone(),
        attempt: attempt.n,
        worker_id: worker_id.to_string(),
    }
}
