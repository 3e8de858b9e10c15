//! Tasks: create, list, show, diff, bundle, messages, cancel.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use kiln_protocol::api::{
    AttemptState, CancelOutcome, MessageList, NewMessage, NewTask, TaskDetail, TaskPage, TaskQuery,
    TaskStatus,
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

/// The largest bundle served (it is held in memory while it is sent): an
/// attempt's own commits are far smaller.
const MAX_BUNDLE_BYTES: usize = 128 << 20;

/// `GET /api/tasks/{id}/attempts/{n}/bundle`: the attempt's commits as a git
/// bundle of `<base>..kiln/<task>/<n>` (what `kiln task apply` fetches into
/// the user's clone, which must have the base), with the base, commit and
/// branch in `Kiln-Base-Commit`, `Kiln-Commit` and `Kiln-Branch`. Like the
/// diff, for the task's owner and admins only.
pub(super) async fn bundle(
    State(state): State<AppState>,
    Caller(who): Caller,
    path: Result<Path<(String, u32)>, axum::extract::rejection::PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path((id, n)) = path?;
    let detail = state.store().task(&who, &id).await?;
    let attempt = detail
        .attempts
        .iter()
        .find(|a| a.n == n)
        .ok_or_else(|| ApiError::NotFound(format!("attempt {n} of task {id}")))?;
    if matches!(
        attempt.status,
        AttemptState::Queued | AttemptState::Running | AttemptState::Interrupted
    ) {
        return Err(ApiError::Conflict(format!(
            "attempt {n} of task {id} is {}: wait until it finishes",
            attempt.status.as_str()
        )));
    }
    let commit = attempt.commit_sha.clone().ok_or_else(|| {
        ApiError::Conflict(format!(
            "attempt {n} of task {id} has no commit: it changed nothing"
        ))
    })?;
    let attempt_ref = AttemptRef::new(id.clone(), n);
    let base = super::worker_api::recorded_base(&state.inner, &attempt_ref)
        .await
        .map_err(ApiError::Conflict)?;
    let environment = state
        .store()
        .environment(
            &crate::worker::system_principal(),
            &detail.task.environment_id,
        )
        .await?;
    let mirror = state
        .inner
        .mirrors
        .mirror_dir(&environment.owner_token_id, &environment.repo);
    let branch = format!("kiln/{id}/{n}");
    let (bundle_branch, bundle_base, bundle_commit) =
        (branch.clone(), base.clone(), commit.clone());
    let bytes = tokio::task::spawn_blocking(move || {
        let repo = kiln_workspace::Repo::at(&mirror);
        // A follow-up that committed but has not finished yet moved the
        // branch past what the attempt's record says.
        match repo.resolve(&format!("refs/heads/{bundle_branch}")) {
            Ok(tip) if tip == bundle_commit => {}
            Ok(_) => return Ok(None),
            Err(err) => return Err(kiln_workspace::ApplyError::from(err)),
        }
        kiln_workspace::apply::bundle(&repo, &bundle_branch, &bundle_base, MAX_BUNDLE_BYTES)
            .map(Some)
    })
    .await
    .map_err(|err| ApiError::Internal(format!("the bundle task stopped: {err}")))?
    .map_err(|err| {
        if let kiln_workspace::ApplyError::BundleTooLarge { .. } = err {
            return ApiError::Conflict(err.to_string());
        }
        let reason = crate::scrub_data_dir(&err.to_string(), &state.inner.config.data_dir);
        tracing::warn!("bundling {attempt_ref} failed: {reason}");
        ApiError::Internal(format!("cannot bundle {attempt_ref}: {reason}"))
    })?
    .ok_or_else(|| {
        ApiError::Conflict(format!(
            "branch {branch} moved on since attempt {n} finished (a follow-up is running?): try again when it is done"
        ))
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-git-bundle".to_string()),
            (header::HeaderName::from_static("kiln-base-commit"), base),
            (header::HeaderName::from_static("kiln-commit"), commit),
            (header::HeaderName::from_static("kiln-branch"), branch),
        ],
        bytes,
    ))
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
