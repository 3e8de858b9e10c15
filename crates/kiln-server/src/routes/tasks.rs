//! Tasks: create, list, show, diff, messages, cancel.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use kiln_protocol::api::{
    CancelOutcome, MessageList, NewMessage, NewTask, TaskDetail, TaskPage, TaskQuery, TaskStatus,
};
use kiln_store::AttemptRef;
use serde::Deserialize;

use super::ApiJson;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn create(
    State(state): State<AppState>,
    Caller(who): Caller,
    ApiJson(new): ApiJson<NewTask>,
) -> Result<(StatusCode, Json<TaskDetail>), ApiError> {
    if new.prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    let detail = state.store().create_task(&who, &new).await?;
    Ok((StatusCode::CREATED, Json(detail)))
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
        .transpose()
        .map_err(|e| ApiError::invalid("status", e.to_string()))?;
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
) -> Result<Json<TaskDetail>, ApiError> {
    Ok(Json(state.store().task(&who, &id).await?))
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

pub(super) async fn message(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewMessage>,
) -> Result<(StatusCode, Json<MessageList>), ApiError> {
    let messages = state
        .store()
        .enqueue_message(&who, &id, body.attempt, &body.text)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(MessageList { messages })))
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<CancelOutcome>), ApiError> {
    let outcome = state.store().cancel_task(&who, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(outcome)))
}
