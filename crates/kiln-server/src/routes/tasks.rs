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
    scope: Option<String>,
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
        scope: params.scope.filter(|s| !s.is_empty()),
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
    let command = tokio::task::spawn_blocking(move || {
        let repo = kiln_workspace::Repo::at(&mirror);
        // A follow-up that committed but has not finished yet moved the
        // branch past what the attempt's record says.
        match repo.resolve(&format!("refs/heads/{bundle_branch}")) {
            Ok(tip) if tip == bundle_commit => {}
            Ok(_) => return Ok(None),
            Err(err) => return Err(kiln_workspace::ApplyError::from(err)),
        }
        kiln_workspace::apply::bundle_command(&repo, &bundle_branch, &bundle_base).map(Some)
    })
    .await
    .map_err(|err| ApiError::Internal(format!("the bundle task stopped: {err}")))?
    .map_err(|err| bundle_failed(&state, &attempt_ref, &err.to_string()))?
    .ok_or_else(|| {
        ApiError::Conflict(format!(
            "branch {branch} moved on since attempt {n} finished (a follow-up is running?): try again when it is done"
        ))
    })?;
    let body = stream_bundle(command)
        .await
        .map_err(|reason| bundle_failed(&state, &attempt_ref, &reason))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-git-bundle".to_string()),
            (header::HeaderName::from_static("kiln-base-commit"), base),
            (header::HeaderName::from_static("kiln-commit"), commit),
            (header::HeaderName::from_static("kiln-branch"), branch),
        ],
        body,
    ))
}

fn bundle_failed(state: &AppState, attempt: &AttemptRef, reason: &str) -> ApiError {
    // git's errors name the mirror's path: the server's layout is not the user's business.
    let reason = crate::scrub_data_dir(reason, &state.inner.config.data_dir);
    tracing::warn!("bundling {attempt} failed: {reason}");
    ApiError::Internal(format!("cannot bundle {attempt}: {reason}"))
}

/// git's bundle streamed as it is written, never held whole. git checks
/// its arguments before it writes anything, so a failure shows as no
/// output at all: the first chunk is awaited before the answer starts, and
/// no output is an error with git's reason. git is killed if the client
/// goes away.
async fn stream_bundle(command: std::process::Command) -> Result<axum::body::Body, String> {
    use futures::StreamExt;
    use tokio::io::AsyncReadExt;
    let mut command = tokio::process::Command::from(command);
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run git: {e}"))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("git's pipes were not opened".into());
    };
    // Drained all along, so that git never blocks on it; only the start is kept.
    let stderr = tokio::spawn(async move {
        let mut kept = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut kept).await;
        let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        kept
    });
    let mut stdout = tokio_util::io::ReaderStream::new(stdout);
    let first = match stdout.next().await {
        Some(Ok(chunk)) => chunk,
        Some(Err(err)) => return Err(format!("reading git's bundle failed: {err}")),
        None => {
            let status = child.wait().await.map_err(|e| e.to_string())?;
            let stderr = stderr.await.unwrap_or_default();
            return Err(format!(
                "git bundle wrote nothing ({status}): {}",
                String::from_utf8_lossy(&stderr).trim()
            ));
        }
    };
    let rest = futures::stream::unfold(
        (stdout, Some(child)),
        |(mut stdout, mut child)| async move {
            match stdout.next().await {
                Some(chunk) => Some((chunk, (stdout, child))),
                None => {
                    if let Some(mut child) = child.take() {
                        match child.wait().await {
                            Ok(status) if status.success() => {}
                            // The client's `git bundle unbundle` refuses the cut bundle.
                            other => tracing::warn!("git bundle ended badly: {other:?}"),
                        }
                    }
                    None
                }
            }
        },
    );
    let chunks = futures::stream::once(async move { Ok(first) }).chain(rest);
    Ok(axum::body::Body::from_stream(chunks))
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
