//! `POST /api/environments`, `GET /api/environments`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use kiln_protocol::api::{Environment, EnvironmentList, NewEnvironment};

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
