//! `/api/environments`: create, list, show, edit, delete, secrets and the
//! version history. The store decides who may (crates/kiln-store/src/access.rs);
//! a secret's value goes in and never comes out.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use kiln_protocol::api::{Environment, EnvironmentList, NewEnvironment};
use kiln_protocol::teams::{EnvironmentPatch, EnvironmentVersionList, SecretValue};

use super::ApiJson;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn create(
    State(state): State<AppState>,
    Caller(who): Caller,
    ApiJson(new): ApiJson<NewEnvironment>,
) -> Result<(StatusCode, Json<Environment>), ApiError> {
    // Checked (and echoed in errors) without a credential it carries: the
    // store splits that out and seals it.
    state
        .inner
        .config
        .repo_access
        .check_async(&kiln_store::repo_without_credential(&new.repo), who.admin)
        .await?;
    if let Some(webhook) = &new.webhook {
        crate::webhooks::check_url(&state.inner, webhook.url.trim(), who.admin).await?;
    }
    let created = state.store().create_environment(&who, &new).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn list(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<EnvironmentList>, ApiError> {
    let environments = state.store().list_environments(&who).await?;
    Ok(Json(EnvironmentList { environments }))
}

pub(super) async fn show(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<Environment>, ApiError> {
    Ok(Json(state.store().environment(&who, &id).await?))
}

pub(super) async fn update(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<EnvironmentPatch>,
) -> Result<Json<Environment>, ApiError> {
    // Whether the caller may change it at all comes first: a member's
    // request learns nothing from the location rules.
    state
        .store()
        .environment_for(&who, &id, kiln_store::EnvironmentAction::Manage)
        .await?;
    // The same location rules as a creation: an edit is no way around them.
    if let Some(repo) = &patch.repo {
        state
            .inner
            .config
            .repo_access
            .check_async(&kiln_store::repo_without_credential(repo), who.admin)
            .await?;
    }
    if let Some(Some(webhook)) = &patch.webhook {
        crate::webhooks::check_url(&state.inner, webhook.url.trim(), who.admin).await?;
    }
    Ok(Json(
        state.store().update_environment(&who, &id, &patch).await?,
    ))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store().delete_environment(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn set_secret(
    State(state): State<AppState>,
    Caller(who): Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    ApiJson(secret): ApiJson<SecretValue>,
) -> Result<StatusCode, ApiError> {
    let Path((id, name)) = path?;
    state
        .store()
        .set_environment_secret(&who, &id, &name, &secret.value)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn remove_secret(
    State(state): State<AppState>,
    Caller(who): Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path((id, name)) = path?;
    state
        .store()
        .remove_environment_secret(&who, &id, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn versions(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<EnvironmentVersionList>, ApiError> {
    let versions = state.store().environment_versions(&who, &id).await?;
    Ok(Json(EnvironmentVersionList { versions }))
}
