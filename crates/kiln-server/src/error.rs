//! The HTTP layer's one error type: every failure becomes
//! `{"error": {"code", "message"}}` with the status that fits it.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_store::StoreError;
use schemars::JsonSchema;
use serde::Serialize;

/// The body of every error response: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Error")]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

/// What failed: a stable machine-readable `code` (`not_found`,
/// `invalid_field`, …) and a message for people that names the problem.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct ErrorDetail {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

/// What went wrong with a request, as the client is told.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token, a malformed `Authorization` header, or an unknown/revoked token.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is authenticated but may not do this (admin-only routes).
    #[error("{0}")]
    Forbidden(String),
    /// Missing, or not visible to the caller (the two are not told apart).
    #[error("{0} not found")]
    NotFound(String),
    /// A field holds an unusable value; `field` names it as the API does.
    #[error("invalid {field}: {message}")]
    InvalidField { field: String, message: String },
    /// The body is not JSON, or not the JSON this route takes.
    #[error("{message}")]
    BadRequest { status: StatusCode, message: String },
    #[error("{0}")]
    Conflict(String),
    /// A worker's lease on the attempt is gone (expired, taken back,
    /// re-claimed or finished): the worker must stop writing.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// The caller holds as much of the server as one caller may (open
    /// event streams per token).
    #[error("{0}")]
    TooManyRequests(String),
    /// A service kiln called for the request (a forge, the environment's
    /// remote) refused or failed; `code` says which and how
    /// (`forge_denied`, `forge_rate_limited`, `push_failed`, …).
    #[error("{message}")]
    Upstream {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// A server-side failure; the detail is logged, the client gets a summary.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::InvalidField { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            ApiError::BadRequest { status, .. } => (
                *status,
                if *status == StatusCode::PAYLOAD_TOO_LARGE {
                    "payload_too_large"
                } else {
                    "bad_request"
                },
            ),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::LeaseLost(_) => (StatusCode::CONFLICT, "lease_lost"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::Upstream { status, code, .. } => (*status, code),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!("request failed: {self}");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
            },
        };
        (status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { what } => ApiError::NotFound(what),
            StoreError::InvalidInput { field, message } => ApiError::invalid(field, message),
            StoreError::Conflict { message } => ApiError::Conflict(message),
            StoreError::Forbidden { message } => ApiError::Forbidden(message),
            lost @ StoreError::LeaseLost { .. } => ApiError::LeaseLost(lost.to_string()),
            unknown @ StoreError::UnknownLease => ApiError::Unauthorized(unknown.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::forge::ForgeError> for ApiError {
    fn from(err: crate::forge::ForgeError) -> Self {
        use crate::forge::ForgeError;
        let (status, code) = match &err {
            ForgeError::Config(_) => (StatusCode::UNPROCESSABLE_ENTITY, "forge_config"),
            ForgeError::Denied { .. } => (StatusCode::BAD_GATEWAY, "forge_denied"),
            ForgeError::NotFound { .. } => (StatusCode::BAD_GATEWAY, "forge_not_found"),
            ForgeError::Rejected { .. } => (StatusCode::CONFLICT, "forge_rejected"),
            ForgeError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "forge_rate_limited"),
            ForgeError::Unexpected { .. } | ForgeError::Unreachable { .. } => {
                (StatusCode::BAD_GATEWAY, "forge_error")
            }
        };
        ApiError::Upstream {
            status,
            code,
            message: err.to_string(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let message = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                "send the body as JSON with Content-Type: application/json".to_string()
            }
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => {
                "the request body is too large".to_string()
            }
            // serde's text names the field ("missing field `prompt`",
            // "attempts: invalid type: string ...").
            other => other.body_text(),
        };
        ApiError::BadRequest { status, message }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest {
            status: StatusCode::BAD_REQUEST,
            message: rejection.body_text(),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest {
            status: StatusCode::BAD_REQUEST,
            message: rejection.body_text(),
        }
    }
}
