//! Best-of-N: marking the attempt a user prefers (it ranks first), and
//! clearing the mark. The ranking itself is part of `GET /api/tasks/{id}`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use kiln_protocol::api::TaskDetail;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// `POST /api/tasks/{id}/attempts/{n}/prefer`.
pub(super) async fn prefer(
    State(state): State<AppState>,
    Caller(who): Caller,
    path: Result<Path<(String, u32)>, PathRejection>,
) -> Result<Json<TaskDetail>, ApiError> {
    let Path((id, n)) = path?;
    Ok(Json(
        state.store().prefer_attempt(&who, &id, Some(n)).await?,
    ))
}

/// `DELETE /api/tasks/{id}/attempts/{n}/prefer`: clears the mark when
/// attempt `n` holds it; otherwise nothing changes (so a stale client
/// cannot clear a mark someone put on another attempt since).
pub(super) async fn clear(
    State(state): State<AppState>,
    Caller(who): Caller,
    path: Result<Path<(String, u32)>, PathRejection>,
) -> Result<Json<TaskDetail>, ApiError> {
    let Path((id, n)) = path?;
    let detail = state.store().task(&who, &id).await?;
    if !detail.attempts.iter().any(|a| a.n == n) {
        return Err(ApiError::invalid(
            "attempt",
            format!(
                "task {id} has no attempt {n}: its attempts are 1 to {}",
                detail.task.attempt_count
            ),
        ));
    }
    if detail.task.preferred_attempt != Some(n) {
        return Ok(Json(detail));
    }
    Ok(Json(state.store().prefer_attempt(&who, &id, None).await?))
}
