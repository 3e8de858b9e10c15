//! Quotas of teams and users: `GET`/`PUT /api/teams/{id}/quota` and
//! `/api/users/{id}/quota` (`{id}` is an id or a name). Admins set them;
//! a team's members and a user themselves read them. docs/quotas.md.

use axum::extract::{Path, State};
use axum::Json;
use kiln_protocol::teams::{Quota, QuotaScope, QuotaStatus};
use schemars::JsonSchema;
use serde::Deserialize;

use super::ApiJson;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// `PUT …/quota`: the whole quota. A field left out or `null` removes that
/// limit. Unknown fields are refused, so that a misspelt limit is not read
/// as "no limit".
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "QuotaUpdate")]
pub(crate) struct QuotaBody {
    /// Most attempts of the team's (or user's) tasks running at once; at least 1.
    #[serde(default)]
    max_concurrent_attempts: Option<u32>,
    /// Most US dollars its attempts may cost per calendar month (UTC); above 0.
    #[serde(default)]
    monthly_budget_usd: Option<f64>,
}

impl From<QuotaBody> for Quota {
    fn from(body: QuotaBody) -> Quota {
        Quota {
            max_concurrent_attempts: body.max_concurrent_attempts,
            monthly_budget_usd: body.monthly_budget_usd,
        }
    }
}

pub(super) async fn show_team(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<QuotaStatus>, ApiError> {
    Ok(Json(
        state.store().quota(&who, QuotaScope::Team, &id).await?,
    ))
}

pub(super) async fn show_user(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<QuotaStatus>, ApiError> {
    Ok(Json(
        state.store().quota(&who, QuotaScope::User, &id).await?,
    ))
}

pub(super) async fn set_team(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<QuotaBody>,
) -> Result<Json<QuotaStatus>, ApiError> {
    let quota = Quota::from(body);
    Ok(Json(state.store().set_team_quota(&who, &id, &quota).await?))
}

pub(super) async fn set_user(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<QuotaBody>,
) -> Result<Json<QuotaStatus>, ApiError> {
    let quota = Quota::from(body);
    Ok(Json(state.store().set_user_quota(&who, &id, &quota).await?))
}
