//! Tasks and their attempts: rows mapped to the API's types
//! (`kiln_protocol::api`), creation, listing and diffs.

use kiln_protocol::api::{
    Attempt, AttemptState, NewTask, Task, TaskDetail, TaskPage, TaskQuery, TaskStatus,
    MAX_ATTEMPTS, MAX_PAGE,
};
use kiln_protocol::{micros_from_usd, usd_from_micros, DiffStat, EventKind, Mode, Usage};
use serde::{Deserialize, Serialize};

use crate::changes::Change;
use crate::clock::from_millis;
use crate::db::{query, DbRow, Tx};
use crate::error::{OpError, Result, StoreError};
use crate::ids::looks_like_id;
use crate::tokens::Principal;
use crate::Store;

pub(crate) const TASK_ID_PREFIX: &str = "t_";

/// Identifies one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttemptRef {
    pub task_id: String,
    pub n: u32,
}

impl AttemptRef {
    pub fn new(task_id: impl Into<String>, n: u32) -> Self {
        AttemptRef {
            task_id: task_id.into(),
            n,
        }
    }
}

impl std::fmt::Display for AttemptRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "attempt {} of task {}", self.n, self.task_id)
    }
}

macro_rules! select_task {
    () => {
        "SELECT id, owner_token_id, environment_id, prompt, mode, attempt_count, model,
            base_ref, budget_microusd, preferred_attempt, status, created_at, updated_at,
            user_id, team_id, shared, environment_version
         FROM tasks "
    };
}
pub(crate) use select_task;

macro_rules! select_attempt {
    () => {
        "SELECT task_id, n, status, tries, cancel_requested, worker_id, lease_expires_at,
            started_at, finished_at, final_message, files_changed, insertions, deletions,
            input_tokens, cached_input_tokens, output_tokens, branch, commit_sha, reason,
            checks_json, citations_valid, citations_invalid, cost_microusd,
            environment_version, wait_reason
         FROM attempts "
    };
}

pub(crate) fn task_from_row(row: &DbRow) -> Result<Task, OpError> {
    let mode = match row.text("mode")?.as_str() {
        "code" => Mode::Code,
        "ask" => Mode::Ask,
        other => return Err(StoreError::corrupt("task mode", other).into()),
    };
    let status: TaskStatus = row
        .text("status")?
        .parse()
        .map_err(|e| StoreError::corrupt("task status", e))?;
    Ok(Task {
        id: row.text("id")?,
        owner_token_id: row.text("owner_token_id")?,
        user_id: row.opt_text("user_id")?,
        team_id: row.opt_text("team_id")?,
        shared: row.bool("shared")?,
        environment_version: row
            .opt_int("environment_version")?
            .and_then(|v| u64::try_from(v).ok()),
        environment_id: row.text("environment_id")?,
        prompt: row.text("prompt")?,
        mode,
        attempt_count: row.uint("attempt_count")?,
        model: row.opt_text("model")?,
        base_ref: row.opt_text("base_ref")?,
        budget_usd: row
            .opt_int("budget_microusd")?
            .map(|m| usd_from_micros(u64::try_from(m).unwrap_or(0))),
        preferred_attempt: row
            .opt_int("preferred_attempt")?
            .and_then(|n| u32::try_from(n).ok()),
        status,
        created_at: from_millis(row.int("created_at")?),
        updated_at: from_millis(row.int("updated_at")?),
    })
}

fn attempt_from_row(row: &DbRow) -> Result<Attempt, OpError> {
    let diff_stat = match row.opt_int("files_changed")? {
        Some(files) => Some(DiffStat {
            files_changed: u64::try_from(files).unwrap_or(0),
            insertions: u64::try_from(row.opt_int("insertions")?.unwrap_or(0)).unwrap_or(0),
            deletions: u64::try_from(row.opt_int("deletions")?.unwrap_or(0)).unwrap_or(0),
        }),
        None => None,
    };
    Ok(Attempt {
        task_id: row.text("task_id")?,
        n: row.uint("n")?,
        status: row
            .text("status")?
            .parse::<AttemptState>()
            .map_err(|e| StoreError::corrupt("attempt status", e))?,
        tries: row.uint("tries")?,
        cancel_requested: row.bool("cancel_requested")?,
        worker_id: row.opt_text("worker_id")?,
        lease_expires_at: row.opt_int("lease_expires_at")?.map(from_millis),
        started_at: row.opt_int("started_at")?.map(from_millis),
        finished_at: row.opt_int("finished_at")?.map(from_millis),
        final_message: row.opt_text("final_message")?,
        diff_stat,
        usage: Usage {
            input_tokens: row.u64("input_tokens")?,
            cached_input_tokens: row.u64("cached_input_tokens")?,
            output_tokens: row.u64("output_tokens")?,
        },
        branch: row.opt_text("branch")?,
        commit_sha: row.opt_text("commit_sha")?,
        reason: row.opt_text("reason")?,
        checks: match row.opt_text("checks_json")? {
            Some(json) => {
                serde_json::from_str(&json).map_err(|e| StoreError::corrupt("attempt checks", e))?
            }
            None => Vec::new(),
        },
        citations_valid: row.uint("citations_valid")?,
        citations_invalid: row.uint("citations_invalid")?,
        cost_usd: row
            .opt_int("cost_microusd")?
            .map(|m| usd_from_micros(u64::try_from(m).unwrap_or(0))),
        rank: None,
        environment_version: row
            .opt_int("environment_version")?
            .and_then(|v| u64::try_from(v).ok()),
        wait_reason: row.opt_text("wait_reason")?,
    })
}

/// A task with its attempts and what is derived from them: the total cost
/// and (filled by the ranking) each finished attempt's place.
pub(crate) fn task_detail(task: Task, mut attempts: Vec<Attempt>) -> TaskDetail {
    let costs: Vec<f64> = attempts.iter().filter_map(|a| a.cost_usd).collect();
    let cost_usd = (!costs.is_empty()).then(|| costs.iter().sum());
    let ranking = kiln_protocol::ranking::rank(&attempts, task.preferred_attempt);
    kiln_protocol::ranking::apply_ranks(&mut attempts, &ranking);
    TaskDetail {
        task,
        attempts,
        ranking,
        cost_usd,
        pull_request: None,
    }
}

/// A task with its attempts as `tx` sees them (e.g. right after one of
/// them finished in it).
pub(crate) async fn task_detail_in(tx: &mut Tx, task_id: &str) -> Result<TaskDetail, OpError> {
    let task = tx
        .fetch_optional(query(concat!(select_task!(), "WHERE id = $1")).bind(task_id))
        .await?
        .ok_or_else(|| StoreError::not_found(format!("task {task_id}")))?;
    let task = task_from_row(&task)?;
    let attempts = tx
        .fetch_all(query(concat!(select_attempt!(), "WHERE task_id = $1 ORDER BY n")).bind(task_id))
        .await?
        .iter()
        .map(attempt_from_row)
        .collect::<Result<_, _>>()?;
    Ok(task_detail(task, attempts))
}

/// Appends `task.ranked` with `detail`'s ranking to the log of `log_of`,
/// which must be a finished attempt (no worker appends to its log).
async fn append_ranked_in(
    tx: &mut Tx,
    log_of: &AttemptRef,
    detail: &TaskDetail,
    now_ms: i64,
) -> Result<(), OpError> {
    let ranked = EventKind::TaskRanked {
        task_id: log_of.task_id.clone(),
        ranking: detail.ranking.clone(),
    };
    let last_id = crate::events::append_store_events(tx, log_of, vec![ranked], now_ms).await?;
    tx.notify_on_commit(Change::Events {
        task_id: log_of.task_id.clone(),
        last_id,
    });
    Ok(())
}

/// After attempts of a task finished in `tx`: appends `task.ranked` to the
/// log of the last of them (a finished attempt's log, so no worker writes
/// to it concurrently; a client reconnecting with `Last-Event-ID` gets it
/// again), and queues the environment's webhook deliveries
/// (`attempt.finished` for each, `task.finished` when the task is done) in
/// the same transaction, so that neither is lost or sent for a change that
/// rolled back.
pub(crate) async fn attempts_finished_in(
    tx: &mut Tx,
    task_id: &str,
    finished: &[u32],
    now_ms: i64,
) -> Result<(), OpError> {
    let Some(&log_of) = finished.last() else {
        return Ok(());
    };
    let detail = task_detail_in(tx, task_id).await?;
    append_ranked_in(tx, &AttemptRef::new(task_id, log_of), &detail, now_ms).await?;
    // Most environments have no webhook: build no payload for them.
    let environment_id = &detail.task.environment_id;
    let Some(url) = crate::environments::webhook_url_in(tx, environment_id).await? else {
        return Ok(());
    };
    for &n in finished {
        if let Some(attempt) = detail.attempts.iter().find(|a| a.n == n) {
            let data = serde_json::json!({
                "task": detail.task,
                "attempt": attempt,
                "ranking": detail.ranking,
            });
            crate::webhooks::enqueue_in(
                tx,
                environment_id,
                &url,
                task_id,
                crate::webhooks::ATTEMPT_FINISHED,
                data,
                now_ms,
            )
            .await?;
        }
    }
    if detail.task.status.is_finished() {
        let data = serde_json::to_value(&detail)
            .map_err(|e| StoreError::invalid("task", e.to_string()))?;
        crate::webhooks::enqueue_in(
            tx,
            environment_id,
            &url,
            task_id,
            crate::webhooks::TASK_FINISHED,
            data,
            now_ms,
        )
        .await?;
    }
    Ok(())
}

/// `budget_usd` as given, checked: a positive, finite number of dollars.
pub(crate) fn budget_micros(field: &'static str, budget: Option<f64>) -> Result<Option<i64>> {
    match budget {
        None => Ok(None),
        Some(usd) if usd.is_finite() && usd > 0.0 => Ok(Some(
            i64::try_from(micros_from_usd(usd)).unwrap_or(i64::MAX),
        )),
        Some(usd) => Err(StoreError::invalid(
            field,
            format!("{usd} is not a budget: give a positive number of US dollars, e.g. 2.5"),
        )),
    }
}

impl Store {
    /// Creates a task and queues its attempts.
    pub async fn create_task(&self, owner: &Principal, new: &NewTask) -> Result<TaskDetail> {
        if new.prompt.trim().is_empty() {
            return Err(StoreError::invalid("prompt", "the prompt is empty"));
        }
        if !(1..=MAX_ATTEMPTS).contains(&new.attempts) {
            return Err(StoreError::invalid(
                "attempts",
                format!("{} is out of range: use 1 to {MAX_ATTEMPTS}", new.attempts),
            ));
        }
        let budget = budget_micros("budget_usd", new.budget_usd)?;
        let environment = self
            .environment_for(
                owner,
                &new.environment,
                crate::access::EnvironmentAction::Run,
            )
            .await?;
        let task_id = self
            .run("create task", || async {
                let task_id = self.new_id(TASK_ID_PREFIX);
                let now = self.now_ms();
                let mut tx = self.begin().await?;
                tx.execute(
                    query(
                        "INSERT INTO tasks (id, owner_token_id, environment_id, prompt, mode,
                            attempt_count, model, base_ref, status, created_at, updated_at,
                            budget_microusd, user_id, team_id, environment_version)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $9, $9, $10, $11,
                            $12, (SELECT version FROM environments WHERE id = $3))",
                    )
                    .bind(&task_id)
                    .bind(&owner.token_id)
                    .bind(&environment.id)
                    .bind(new.prompt.as_str())
                    .bind(new.mode.to_string())
                    .bind(new.attempts)
                    .bind(new.model.as_deref())
                    .bind(new.base_ref.as_deref())
                    .bind(now)
                    .bind(budget)
                    .bind(owner.user_id.as_deref())
                    .bind(environment.team_id.as_deref()),
                )
                .await?;
                for n in 1..=new.attempts {
                    tx.execute(
                        query(
                            "INSERT INTO attempts (task_id, n, status) VALUES ($1, $2, 'queued')",
                        )
                        .bind(&task_id)
                        .bind(n),
                    )
                    .await?;
                }
                crate::audit::audit_in(
                    &mut tx,
                    owner,
                    "task.created",
                    crate::AuditSubject::new("task", &task_id)
                        .in_team(environment.team_id.as_deref()),
                    serde_json::json!({
                        "environment_id": environment.id,
                        "environment_version": environment.version,
                        "mode": new.mode.to_string(),
                        "attempts": new.attempts,
                    }),
                    now,
                )
                .await?;
                self.commit(tx, vec![Change::Queue]).await?;
                Ok(task_id)
            })
            .await?;
        self.task(owner, &task_id).await
    }

    /// Marks attempt `attempt` of a task preferred, or clears the mark
    /// (`None`): the preferred attempt ranks first whatever the evidence.
    /// Only a finished attempt may be preferred. A change of the ranking
    /// appends `task.ranked` (to the preferred attempt's log, or on clearing
    /// to the new best one's). Returns the task as it is now.
    pub async fn prefer_attempt(
        &self,
        who: &Principal,
        task_id: &str,
        attempt: Option<u32>,
    ) -> Result<TaskDetail> {
        self.run("mark an attempt preferred", || async {
            self.task_for(who, task_id, crate::access::TaskAction::Act)
                .await?;
            let now = self.now_ms();
            let mut tx = self.begin().await?;
            // The task row's lock first: an attempt finishing or reopening
            // meanwhile waits, so the status read below holds until commit.
            let before = tx
                .fetch_optional(
                    query(
                        "UPDATE tasks SET updated_at = $2 WHERE id = $1
                         RETURNING preferred_attempt",
                    )
                    .bind(task_id)
                    .bind(now),
                )
                .await?
                .ok_or_else(|| StoreError::not_found(format!("task {task_id}")))?
                .opt_int("preferred_attempt")?;
            let detail = task_detail_in(&mut tx, task_id).await?;
            if let Some(n) = attempt {
                let Some(chosen) = detail.attempts.iter().find(|a| a.n == n) else {
                    return Err(StoreError::invalid(
                        "attempt",
                        format!(
                            "task {task_id} has no attempt {n}: its attempts are 1 to {}",
                            detail.task.attempt_count
                        ),
                    )
                    .into());
                };
                if !chosen.status.is_finished() {
                    return Err(StoreError::Conflict {
                        message: format!(
                            "attempt {n} of task {task_id} is {}: only a finished attempt can be \
                             preferred; wait until it finishes",
                            chosen.status
                        ),
                    }
                    .into());
                }
            }
            if before == attempt.map(i64::from) {
                // Nothing changes: roll back rather than announce a ranking again.
                drop(tx);
                return Ok(detail);
            }
            tx.execute(
                query("UPDATE tasks SET preferred_attempt = $2 WHERE id = $1")
                    .bind(task_id)
                    .bind(attempt.map(i64::from)),
            )
            .await?;
            let detail = task_detail_in(&mut tx, task_id).await?;
            let log_of = attempt.or_else(|| detail.ranking.first().map(|e| e.attempt));
            if let Some(n) = log_of {
                let log_of = AttemptRef::new(task_id, n);
                // Reopened and claimed meanwhile, its worker owns the log
                // now: the ranking is in the answer and its next finish.
                let status = crate::events::lock_attempt_status(&mut tx, &log_of).await?;
                let finished = status
                    .and_then(|s| s.parse::<AttemptState>().ok())
                    .is_some_and(AttemptState::is_finished);
                if finished {
                    append_ranked_in(&mut tx, &log_of, &detail, now).await?;
                }
            }
            self.commit(tx, Vec::new()).await?;
            Ok(detail)
        })
        .await
    }

    /// A task with its attempts, if `who` may read it.
    pub async fn task(&self, who: &Principal, task_id: &str) -> Result<TaskDetail> {
        self.run("get task", || async {
            let task = self.visible_task(who, task_id).await?;
            let rows = self
                .inner
                .db
                .fetch_all(
                    query(concat!(select_attempt!(), "WHERE task_id = $1 ORDER BY n"))
                        .bind(task_id),
                )
                .await?;
            let attempts = rows
                .iter()
                .map(attempt_from_row)
                .collect::<Result<_, _>>()?;
            let mut detail = task_detail(task, attempts);
            detail.pull_request = crate::pulls::pull_request_in(&self.inner.db, task_id).await?;
            Ok(detail)
        })
        .await
    }

    /// Tasks newest first, `who`'s own unless admin, optionally of one
    /// status. Keyset pagination: the cursor is opaque to callers (it is the
    /// last task id of the previous page).
    pub async fn list_tasks(&self, who: &Principal, request: &TaskQuery) -> Result<TaskPage> {
        let limit = request.limit.unwrap_or(50);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(StoreError::invalid(
                "limit",
                format!("{limit} is out of range: use 1 to {MAX_PAGE}"),
            ));
        }
        let before = match &request.cursor {
            Some(cursor) if looks_like_id(cursor, TASK_ID_PREFIX) => cursor.clone(),
            Some(_) => {
                return Err(StoreError::invalid(
                    "cursor",
                    "not a cursor from a previous page; omit it to start from the newest task",
                ))
            }
            // Sorts after every id (ids are `t_` and lowercase base32).
            None => "t_~".to_string(),
        };
        let status = request.status.map(TaskStatus::as_str);
        let scope = match request.scope.as_deref().map(str::trim) {
            None | Some("") | Some("all") => "all",
            Some("mine") => "mine",
            Some("shared") => "shared",
            Some("team") => "team",
            Some(other) => {
                return Err(StoreError::invalid(
                    "scope",
                    format!("{other:?} is not a scope: use mine, shared, team or all"),
                ))
            }
        };
        self.run("list tasks", || async {
            let rows = self
                .inner
                .db
                .fetch_all(
                    query(concat!(
                        select_task!(),
                        "t WHERE id < $1 AND ",
                        crate::access::visible_tasks_sql!("$2", "$6", "$3"),
                        " AND ($4 IS NULL OR status = $4)
                           AND ($7 = 'all'
                                OR ($7 = 'mine' AND (t.user_id = $6
                                    OR (t.user_id IS NULL AND t.owner_token_id = $3)))
                                OR ($7 = 'shared' AND t.shared AND t.team_id IN
                                    (SELECT team_id FROM team_members WHERE user_id = $6))
                                OR ($7 = 'team' AND t.team_id IN
                                    (SELECT team_id FROM team_members WHERE user_id = $6)))
                         ORDER BY id DESC LIMIT $5"
                    ))
                    .bind(before.as_str())
                    .bind(who.admin)
                    .bind(&who.token_id)
                    .bind(status)
                    .bind(i64::from(limit) + 1)
                    .bind(who.user_id.as_deref())
                    .bind(scope),
                )
                .await?;
            let mut tasks = rows
                .iter()
                .map(task_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            let next_cursor = if tasks.len() > limit as usize {
                tasks.truncate(limit as usize);
                tasks.last().map(|t| t.id.clone())
            } else {
                None
            };
            Ok(TaskPage { tasks, next_cursor })
        })
        .await
    }

    /// The diff of a finished attempt (`None` until it finishes with one).
    pub async fn attempt_diff(
        &self,
        who: &Principal,
        attempt: &AttemptRef,
    ) -> Result<Option<String>> {
        self.run("get attempt diff", || async {
            self.task_for(who, &attempt.task_id, crate::access::TaskAction::Read)
                .await?;
            let row = self
                .inner
                .db
                .fetch_optional(
                    query("SELECT diff FROM attempts WHERE task_id = $1 AND n = $2")
                        .bind(attempt.task_id.as_str())
                        .bind(attempt.n),
                )
                .await?
                .ok_or_else(|| StoreError::not_found(attempt.to_string()))?;
            Ok(row.opt_text("diff")?)
        })
        .await
    }

    /// A task `who` may read (the check of every read addressed by task id).
    pub(crate) async fn visible_task(
        &self,
        who: &Principal,
        task_id: &str,
    ) -> Result<Task, OpError> {
        self.task_for(who, task_id, crate::access::TaskAction::Read)
            .await
    }

    /// A task `who` may do `action` on: "not found" outside their teams,
    /// "forbidden" with the reason when their role or the task's sharing
    /// does not allow it (`access::check_task`).
    pub(crate) async fn task_for(
        &self,
        who: &Principal,
        task_id: &str,
        action: crate::access::TaskAction,
    ) -> Result<Task, OpError> {
        let row = self
            .inner
            .db
            .fetch_optional(query(concat!(select_task!(), "WHERE id = $1")).bind(task_id))
            .await?
            .ok_or_else(|| StoreError::not_found(format!("task {task_id}")))?;
        let task = task_from_row(&row)?;
        crate::access::check_task(who, &task, action)?;
        Ok(task)
    }

    /// Checks that `who` may do `action` on a task (for routes whose work
    /// happens outside the store, such as opening a pull request).
    pub async fn authorize_task(
        &self,
        who: &Principal,
        task_id: &str,
        action: crate::access::TaskAction,
    ) -> Result<Task> {
        self.run("check access to a task", || {
            self.task_for(who, task_id, action)
        })
        .await
    }
}
