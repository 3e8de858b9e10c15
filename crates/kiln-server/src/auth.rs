//! `Authorization: Bearer <token>` on every `/api` route.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use kiln_store::Principal;

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller of a request.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "missing Authorization header: send `Authorization: Bearer <token>`".into(),
                )
            })?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|secret| !secret.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "malformed Authorization header: use `Bearer <token>`".into(),
                )
            })?;
        match state.store().verify_token(secret).await {
            Ok(Some(principal)) => Ok(Caller(principal)),
            Ok(None) | Err(kiln_store::StoreError::InvalidInput { .. }) => {
                Err(ApiError::Unauthorized("unknown or revoked token".into()))
            }
            Err(other) => Err(other.into()),
        }
    }
}
