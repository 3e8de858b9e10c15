//! `Authorization: Bearer <token>` on every `/api` route (and on `/metrics`
//! unless it is opened on purpose).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use kiln_store::Principal;
use sha2::{Digest, Sha256};

use crate::config::MetricsAccess;
use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller of a user API request (never a worker token).
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let secret = bearer(&parts.headers)?;
        let mut who = principal(state, secret).await?;
        who.origin = origin(parts);
        // A worker machine holds its token on disk: if it is stolen, it
        // must not read or change anyone's tasks, environments or tokens.
        if who.worker {
            return Err(ApiError::Forbidden(
                "this is a worker token: it only lets `kiln worker` claim and run attempts (/api/worker/*); use a user token for this API".into(),
            ));
        }
        Ok(Caller(who))
    }
}

/// The client's address as the connection shows it (a proxy in front of
/// kiln shows as itself: kiln does not trust forwarded headers).
pub(crate) fn origin(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip().to_string())
}

/// The authenticated caller of `/api/worker/claim`: a worker token.
pub struct WorkerCaller(pub Principal);

impl FromRequestParts<AppState> for WorkerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let secret = bearer(&parts.headers)?;
        let who = principal(state, secret).await?;
        if !who.worker {
            return Err(ApiError::Forbidden(
                "only a worker token claims attempts: an admin creates one with `kiln token create --worker NAME`, and `kiln worker --token` uses it".into(),
            ));
        }
        Ok(WorkerCaller(who))
    }
}

/// The lease a worker's call about `attempt` presents (`Authorization:
/// Bearer LEASE_TOKEN`), checked to be that attempt's current one.
pub(crate) async fn lease(
    state: &AppState,
    headers: &HeaderMap,
    attempt: &kiln_store::AttemptRef,
) -> Result<kiln_store::LeaseHolder, ApiError> {
    let secret = bearer(headers)?;
    Ok(state.store().verify_lease(secret, attempt).await?)
}

/// The token a request carries.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "missing Authorization header: send `Authorization: Bearer <token>`".into(),
            )
        })?;
    header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|secret| !secret.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized("malformed Authorization header: use `Bearer <token>`".into())
        })
}

/// Who `secret` belongs to, if it is a live token.
pub(crate) async fn principal(state: &AppState, secret: &str) -> Result<Principal, ApiError> {
    match state.store().verify_token(secret).await {
        Ok(Some(principal)) => Ok(principal),
        Ok(None) | Err(kiln_store::StoreError::InvalidInput { .. }) => {
            Err(ApiError::Unauthorized("unknown or revoked token".into()))
        }
        Err(other) => Err(other.into()),
    }
}

/// Whether a request may read `/metrics`: queue depths and token usage tell
/// an outsider how busy the server is and what it costs.
pub(crate) async fn may_read_metrics(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let access = &state.inner.config.metrics_access;
    if *access == MetricsAccess::Public {
        return Ok(());
    }
    let secret = bearer(headers)?;
    if let MetricsAccess::AdminOrToken(expected) = access {
        // Digests compared, so the time taken says nothing about the token.
        if Sha256::digest(secret.as_bytes()) == Sha256::digest(expected.as_bytes()) {
            return Ok(());
        }
    }
    if principal(state, secret).await?.admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only an admin token or the metrics token (--metrics-token) may read /metrics".into(),
        ))
    }
}
