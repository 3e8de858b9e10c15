//! Tokens: `POST /api/tokens`, `GET /api/tokens`, `DELETE /api/tokens/{id}`
//! (revoke). Every user creates, lists and revokes their own; admins
//! anyone's, worker tokens, and tokens of new users (docs/roles.md).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use kiln_store::{NewToken, TokenFor, TokenInfo};
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
    /// The user the token is for (id or name; admins). Without it an
    /// admin's token is a new user of its own named `name`, anyone else's
    /// is their own.
    #[serde(default)]
    user: Option<String>,
    /// A token of a new admin user named `name` (owners).
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
    /// The user it belongs to (`None` for a worker token).
    user_id: Option<String>,
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
            user_id: token.info.user_id,
            created_at: token.info.created_at,
            secret: token.secret,
        }
    }
}

pub(super) async fn create(
    State(state): State<AppState>,
    Caller(who): Caller,
    ApiJson(body): ApiJson<NewTokenBody>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    if body.name.trim().is_empty() {
        return Err(ApiError::invalid(
            "name",
            "give the token a name, e.g. the person's or the machine's",
        ));
    }
    let user = body
        .user
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty());
    let whose = match (body.admin, body.worker, user) {
        (true, true, _) => {
            return Err(ApiError::invalid(
                "worker",
                "a worker token cannot be an admin token: drop one of `admin` and `worker`",
            ))
        }
        (_, true, Some(_)) | (true, _, Some(_)) => {
            return Err(ApiError::invalid(
                "user",
                "a token for an existing user takes that user's role: drop `admin`/`worker`, \
                 or drop `user`",
            ))
        }
        (_, true, None) => TokenFor::Worker,
        (_, false, Some(user)) => TokenFor::User(user),
        // An admin's token without a user is a new user of its own, as
        // every token was before users existed (old scripts rely on it).
        (admin, false, None) if who.admin => TokenFor::NewUser { admin },
        (true, false, None) => TokenFor::NewUser { admin: true },
        (false, false, None) => TokenFor::Caller,
    };
    let token = state
        .store()
        .issue_token(&who, body.name.trim(), &whose)
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedToken::from(token))))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct TokenListQuery {
    /// Only this user's tokens (id or name; admins).
    #[serde(default)]
    user: Option<String>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    Caller(who): Caller,
    query: Result<Query<TokenListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = query?;
    let user = params
        .user
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let tokens = state.store().tokens(&who, user).await?;
    Ok(Json(json!({ "tokens": tokens })))
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let revoked = state.store().revoke_token_as(&who, &id).await?;
    // Open event streams of the token end now rather than at their next check.
    state
        .inner
        .revocations
        .send_modify(|n| *n = n.wrapping_add(1));
    Ok(Json(revoked))
}
