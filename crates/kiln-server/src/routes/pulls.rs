//! `POST /api/tasks/{id}/pr`: the task's pull request (crate::pulls).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use kiln_protocol::{NewPullRequest, PullRequest};

use super::ApiJson;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// 201 with the new pull request, or 200 with the updated one.
pub(super) async fn open(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<NewPullRequest>,
) -> Result<(StatusCode, Json<PullRequest>), ApiError> {
    // Opening a pull request acts on the task: a viewer of a shared task
    // may read it but not propose it (403); outside its team it is 404.
    state
        .store()
        .authorize_task(&who, &id, kiln_store::TaskAction::Act)
        .await?;
    let detail = state.store().task(&who, &id).await?;
    let (record, updated) = crate::pulls::open_or_update(
        &state.inner,
        &who,
        &detail,
        request.attempt,
        Some(request.draft),
    )
    .await?;
    let status = if updated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(record)))
}
