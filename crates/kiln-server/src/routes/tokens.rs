//! Tokens (admin only): `POST /api/tokens`, `GET /api/tokens`,
//! `DELETE /api/tokens/{id}` (revoke).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use kiln_store::{NewToken, Principal, TokenInfo};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::ApiJson;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewToken")]
pub(crate) struct NewTokenBody {
    name: String,
    #[serde(default)]
    admin: bool,
    /// A worker token for `kiln worker`: it claims and runs attempts and
    /// is refused on every other API.
    #[serde(default)]
    worker: bool,
}

/// `POST /api/tokens`' answer: the token and its secret, shown this once
/// (only its SHA-256 is stored).
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct CreatedToken {
    id: String,
    name: String,
    admin: bool,
    worker: bool,
    created_at: DateTime<Utc>,
    /// The bearer token; not stored, shown once.
    secret: String,
}

impl From<NewToken> for CreatedToken {
    fn from(token: NewToken) -> Self {
        CreatedToken {
            id: token.info.id,
            name: token.info.name,
            admin: token.info.admin,
            worker: token.info.worker,
            created_at: token.info.created_at,
            secret: token.secret,
        }
    }
}

fn require_admin(who: &Principal) -> Result<(), ApiError> {
    if who.admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only an admin token may manage tokens".into(),
        ))
    }
}

pub(super) async fn create(
    State(state): State<AppState>,
    Caller(who): Caller,
    ApiJson(body): ApiJson<NewTokenBody>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    require_admin(&who)?;
    if body.name.trim().is_empty() {
        return Err(ApiError::invalid(
            "name",
            "give the token a name, e.g. the person's",
        ));
    }
    let token = match (body.admin, body.worker) {
        (true, true) => {
            return Err(ApiError::invalid(
                "worker",
                "a worker token cannot be an admin token: drop one of `admin` and `worker`",
            ))
        }
        (_, true) => {
            state
                .store()
                .create_worker_token_by(&who, body.name.trim())
                .await?
        }
        (admin, false) => {
            state
                .store()
                .create_token_by(&who, body.name.trim(), admin)
                .await?
        }
    };
    Ok((StatusCode::CREATED, Json(CreatedToken::from(token))))
}

pub(super) async fn list(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Value>, ApiError> {
    require_admin(&who)?;
    let tokens = state.store().list_tokens().await?;
    Ok(Json(json!({ "tokens": tokens })))
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    require_admin(&who)?;
    let revoked = state.store().revoke_token_by(&who, &id).await?;
    // Open event streams of the token end now rather than at their next check.
    state
        .inner
        .revocations
        .send_modify(|n| *n = n.wrapping_add(1));
    Ok(Json(revoked))
}
