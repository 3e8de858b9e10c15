//! Tasks and their attempts as users see them.

use chrono::{DateTime, Utc};
use kiln_protocol::{DiffStat, Mode, Usage};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::changes::Change;
use crate::clock::from_millis;
use crate::db::{query, DbRow};
use crate::error::{OpError, Result, StoreError};
use crate::ids::looks_like_id;
use crate::tokens::Principal;
use crate::Store;

/// Most attempts one task may run.
pub const MAX_ATTEMPTS: u32 = 8;
/// Largest page of [`Store::list_tasks`].
pub const MAX_PAGE: u32 = 200;
pub(crate) const TASK_ID_PREFIX: &str = "t_";

/// A task's status, derived from its attempts whenever one changes:
///
/// - `queued` while every attempt is still queued;
/// - `running` while any attempt is queued, running or interrupted (and at
///   least one has left the queue);
/// - once every attempt is finished: `succeeded` if any attempt succeeded,
///   else `cancelled` if any was cancelled, else `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => TaskStatus::Queued,
            "running" => TaskStatus::Running,
            "succeeded" => TaskStatus::Succeeded,
            "failed" => TaskStatus::Failed,
            "cancelled" => TaskStatus::Cancelled,
            other => {
                return Err(StoreError::invalid(
                    "status",
                    format!(
                        "{other:?} is not one of queued, running, succeeded, failed, cancelled"
                    ),
                ))
            }
        })
    }
}

/// Where an attempt is in its life (see docs/store.md for the transitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptState {
    /// Waiting for a worker.
    Queued,
    /// Claimed by a worker that holds a lease on it.
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Its worker was lost mid-run; it waits in the queue to run again.
    Interrupted,
}

impl AttemptState {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Queued => "queued",
            AttemptState::Running => "running",
            AttemptState::Succeeded => "succeeded",
            AttemptState::Failed => "failed",
            AttemptState::Cancelled => "cancelled",
            AttemptState::Interrupted => "interrupted",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            AttemptState::Succeeded | AttemptState::Failed | AttemptState::Cancelled
        )
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "queued" => AttemptState::Queued,
            "running" => AttemptState::Running,
            "succeeded" => AttemptState::Succeeded,
            "failed" => AttemptState::Failed,
            "cancelled" => AttemptState::Cancelled,
            "interrupted" => AttemptState::Interrupted,
            other => return Err(StoreError::corrupt("attempt status", other)),
        })
    }
}

/// What a user asks for when creating a task. Deserializes from the API's
/// `{environment, prompt, mode?, attempts?, model?, base_ref?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NewTask {
    /// The environment's id or, among the caller's own, its name.
    pub environment: String,
    pub prompt: String,
    #[serde(default)]
    pub mode: Mode,
    /// How many attempts run in parallel (best-of-N), 1 to [`MAX_ATTEMPTS`].
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = MAX_ATTEMPTS))]
    pub attempts: u32,
    #[serde(default)]
    pub model: Option<String>,
    /// What to check out; `None` means the environment's base branch.
    #[serde(default)]
    pub base_ref: Option<String>,
}

fn one() -> u32 {
    1
}

impl NewTask {
    pub fn new(environment: impl Into<String>, prompt: impl Into<String>) -> Self {
        NewTask {
            environment: environment.into(),
            prompt: prompt.into(),
            mode: Mode::Code,
            attempts: 1,
            model: None,
            base_ref: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    pub id: String,
    pub owner_token_id: String,
    pub environment_id: String,
    pub prompt: String,
    pub mode: Mode,
    pub attempt_count: u32,
    pub model: Option<String>,
    pub base_ref: Option<String>,
    pub status: TaskStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One attempt of a task, without its diff text (see [`Store::attempt_diff`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    pub task_id: String,
    /// From 1.
    pub n: u32,
    pub status: AttemptState,
    /// Claims since the attempt was last queued fresh.
    pub tries: u32,
    pub cancel_requested: bool,
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub final_message: Option<String>,
    pub diff_stat: Option<DiffStat>,
    pub usage: Usage,
    pub branch: Option<String>,
    pub commit_sha: Option<String>,
    /// Why it failed, was cancelled or interrupted.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDetail {
    pub task: Task,
    pub attempts: Vec<Attempt>,
}

/// A page request of [`Store::list_tasks`]; deserializes from the query
/// string `?status=&limit=&cursor=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    /// 1 to [`MAX_PAGE`]; `None` means 50.
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Tasks newest first, and the cursor of the next page if there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    pub next_cursor: Option<String>,
}

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
            base_ref, status, created_at, updated_at FROM tasks "
    };
}
pub(crate) use select_task;

macro_rules! select_attempt {
    () => {
        "SELECT task_id, n, status, tries, cancel_requested, worker_id, lease_expires_at,
            started_at, finished_at, final_message, files_changed, insertions, deletions,
            input_tokens, cached_input_tokens, output_tokens, branch, commit_sha, reason
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
        .map_err(|e: StoreError| StoreError::corrupt("task status", e))?;
    Ok(Task {
        id: row.text("id")?,
        owner_token_id: row.text("owner_token_id")?,
        environment_id: row.text("environment_id")?,
        prompt: row.text("prompt")?,
        mode,
        attempt_count: row.uint("attempt_count")?,
        model: row.opt_text("model")?,
        base_ref: row.opt_text("base_ref")?,
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
        status: AttemptState::parse(&row.text("status")?)?,
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
    })
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
        let environment = self.environment(owner, &new.environment).await?;
        let task_id = self
            .run("create task", || async {
                let task_id = self.new_id(TASK_ID_PREFIX);
                let now = self.now_ms();
                let mut tx = self.begin().await?;
                tx.execute(
                    query(
                        "INSERT INTO tasks (id, owner_token_id, environment_id, prompt, mode,
                            attempt_count, model, base_ref, status, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $9, $9)",
                    )
                    .bind(&task_id)
                    .bind(&owner.token_id)
                    .bind(&environment.id)
                    .bind(new.prompt.as_str())
                    .bind(new.mode.to_string())
                    .bind(new.attempts)
                    .bind(new.model.as_deref())
                    .bind(new.base_ref.as_deref())
                    .bind(now),
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
                self.commit(tx, vec![Change::Queue]).await?;
                Ok(task_id)
            })
            .await?;
        self.task(owner, &task_id).await
    }

    /// A task with its attempts, if `who` owns it or is admin.
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
            Ok(TaskDetail { task, attempts })
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
        self.run("list tasks", || async {
            let rows = self
                .inner
                .db
                .fetch_all(
                    query(concat!(
                        select_task!(),
                        "WHERE id < $1 AND ($2 OR owner_token_id = $3)
                           AND ($4 IS NULL OR status = $4)
                         ORDER BY id DESC LIMIT $5"
                    ))
                    .bind(before.as_str())
                    .bind(who.admin)
                    .bind(&who.token_id)
                    .bind(status)
                    .bind(i64::from(limit) + 1),
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
            let row = self
                .inner
                .db
                .fetch_optional(
                    query(
                        "SELECT a.diff FROM attempts a JOIN tasks t ON t.id = a.task_id
                         WHERE a.task_id = $1 AND a.n = $2 AND ($3 OR t.owner_token_id = $4)",
                    )
                    .bind(attempt.task_id.as_str())
                    .bind(attempt.n)
                    .bind(who.admin)
                    .bind(&who.token_id),
                )
                .await?
                .ok_or_else(|| StoreError::not_found(attempt.to_string()))?;
            Ok(row.opt_text("diff")?)
        })
        .await
    }

    /// The owner check for operations addressed by task id.
    pub(crate) async fn visible_task(
        &self,
        who: &Principal,
        task_id: &str,
    ) -> Result<Task, OpError> {
        let row = self
            .inner
            .db
            .fetch_optional(
                query(concat!(
                    select_task!(),
                    "WHERE id = $1 AND ($2 OR owner_token_id = $3)"
                ))
                .bind(task_id)
                .bind(who.admin)
                .bind(&who.token_id),
            )
            .await?
            .ok_or_else(|| StoreError::not_found(format!("task {task_id}")))?;
        task_from_row(&row)
    }
}
