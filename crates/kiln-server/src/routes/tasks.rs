//! Tasks: create, list, show, diff, messages, cancel.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use kiln_store::{Attempt, AttemptRef, NewTask, Task, TaskDetail, TaskPage, TaskQuery, TaskStatus};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::ApiJson;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// A task with its attempts, as `POST /api/tasks` and `GET /api/tasks/{id}` return it.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct TaskView {
    #[serde(flatten)]
    pub task: Task,
    pub attempts: Vec<Attempt>,
}

impl From<TaskDetail> for TaskView {
    fn from(detail: TaskDetail) -> Self {
        TaskView {
            task: detail.task,
            attempts: detail.attempts,
        }
    }
}

pub(super) async fn create(
    State(state): State<AppState>,
    Caller(who): Caller,
    ApiJson(new): ApiJson<NewTask>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    if new.prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    let detail = state.store().create_task(&who, &new).await?;
    Ok((StatusCode::CREATED, Json(detail.into())))
}

#[derive(Debug, Deserialize)]
pub(super) struct ListParams {
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    Caller(who): Caller,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskPage>, ApiError> {
    let Query(params) = query?;
    let status = params
        .status
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<TaskStatus>())
        .transpose()?;
    let request = TaskQuery {
        status,
        limit: params.limit,
        cursor: params.cursor.filter(|c| !c.is_empty()),
    };
    Ok(Json(state.store().list_tasks(&who, &request).await?))
}

pub(super) async fn show(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    Ok(Json(state.store().task(&who, &id).await?.into()))
}

pub(super) async fn diff(
    State(state): State<AppState>,
    Caller(who): Caller,
    path: Result<Path<(String, u32)>, axum::extract::rejection::PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path((id, n)) = path?;
    let attempt = AttemptRef::new(id, n);
    match state.store().attempt_diff(&who, &attempt).await? {
        Some(diff) => Ok(([(header::CONTENT_TYPE, "text/x-diff; charset=utf-8")], diff)),
        None => Err(ApiError::Conflict(format!(
            "{attempt} has no diff yet: it is still running, or ended before it changed anything"
        ))),
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "NewMessage")]
pub(crate) struct MessageBody {
    text: String,
    /// Every attempt when absent.
    #[serde(default)]
    #[schemars(range(min = 1))]
    attempt: Option<u32>,
}

pub(super) async fn message(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MessageBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let messages = state
        .store()
        .enqueue_message(&who, &id, body.attempt, &body.text)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "messages": messages }))))
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let outcome = state.store().cancel_task(&who, &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "cancelled": outcome.cancelled,
            "cancel_requested": outcome.cancel_requested,
        })),
    ))
}
