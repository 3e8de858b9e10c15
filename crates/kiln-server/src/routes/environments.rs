//! `POST /api/environments`, `GET /api/environments`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use kiln_store::{Environment, NewEnvironment};
use serde_json::{json, Value};

use super::ApiJson;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn create(
    State(state): State<AppState>,
    Caller(who): Caller,
    ApiJson(new): ApiJson<NewEnvironment>,
) -> Result<(StatusCode, Json<Environment>), ApiError> {
    check_repo(&new.repo)?;
    let created = state.store().create_environment(&who, &new).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn list(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Value>, ApiError> {
    let environments = state.store().list_environments(&who).await?;
    Ok(Json(json!({ "environments": environments })))
}

/// A URL (`https://…`, `ssh://…`, `git@host:org/repo`) is checked when the
/// mirror is cloned; a local path must be absolute (the server's working
/// directory means nothing to the client) and a git repository now.
fn check_repo(repo: &str) -> Result<(), ApiError> {
    let repo = repo.trim();
    if repo.is_empty() {
        return Err(ApiError::invalid(
            "repo",
            "name a local repository path or a git URL",
        ));
    }
    let scp_like = repo
        .split_once(':')
        .is_some_and(|(host, _)| host.contains('@') && !host.contains('/'));
    if repo.contains("://") || scp_like {
        return Ok(());
    }
    let path = std::path::Path::new(repo);
    if !path.is_absolute() {
        return Err(ApiError::invalid(
            "repo",
            format!("{repo:?} is a relative path: give the absolute path of the repository on the server, or a git URL"),
        ));
    }
    if !path.join(".git").exists() && !path.join("HEAD").exists() {
        return Err(ApiError::invalid(
            "repo",
            format!(
                "{repo} is not a git repository on the server: check the path, or give a git URL"
            ),
        ));
    }
    Ok(())
}
