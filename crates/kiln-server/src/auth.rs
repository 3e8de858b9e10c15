//! `Authorization: Bearer <token>` on every `/api` route (and on `/metrics`
//! unless it is opened on purpose), or a browser session's cookie
//! (`kiln_session`, from single sign-on) with its CSRF token for changes.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
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
        // A bearer token wins over a session cookie sent along with it.
        if !parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION)
        {
            if let Some((session, mut who)) = session_of(state, &parts.headers).await? {
                who.origin = origin(parts);
                // A cookie rides along on cross-site requests too: a change
                // needs the CSRF token only kiln's own pages can read.
                if !matches!(parts.method, Method::GET | Method::HEAD) {
                    require_csrf(&parts.headers, &session)?;
                }
                return Ok(Caller(who));
            }
        }
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

/// The browser session cookie single sign-on sets.
pub(crate) const SESSION_COOKIE: &str = "kiln_session";

/// The header a session's changes carry its CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Path=/, Secure on https.
pub(crate) fn cookie(name: &str, value: &str, max_age_secs: Option<i64>, secure: bool) -> String {
    let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if let Some(age) = max_age_secs {
        cookie.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        cookie.push_str("; Secure");
    }
    cookie
}

/// The value of cookie `name` in the request, if any.
pub(crate) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

/// Whether two secrets are present and equal; digests are compared, so
/// the time taken says nothing about how much of a guess was right.
pub(crate) fn same_secret(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes()),
        _ => false,
    }
}

/// The live session of the request's cookie and its user, if any.
pub(crate) async fn session_of(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(kiln_store::Session, Principal)>, ApiError> {
    let Some(id) = cookie_value(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let store = state.store();
    let Some(session) = store.session(&id).await? else {
        return Ok(None);
    };
    // A disabled user's sessions stop working with their tokens.
    Ok(store
        .session_principal(&session)
        .await?
        .map(|who| (session, who)))
}

/// Refuses a session's change without its CSRF token.
pub(crate) fn require_csrf(
    headers: &HeaderMap,
    session: &kiln_store::Session,
) -> Result<(), ApiError> {
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if same_secret(sent, Some(&session.csrf_token)) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "a change made with a session cookie needs its CSRF token in the X-CSRF-Token header (GET /auth/session returns it)".into(),
        ))
    }
}

/// The client's address (see [`origin`]) for handlers that have no
/// [`Caller`], such as the sign-in routes.
pub(crate) struct Origin(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Origin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Origin(origin(parts)))
    }
}

/// What a request proved who it is with: a bearer token, or (without an
/// `Authorization` header) a session cookie. Long-lived responses (event
/// streams) check it again while they run.
pub(crate) enum Credential {
    Token(String),
    Session(String),
}

impl Credential {
    /// The credential [`Caller`] accepted for these headers.
    pub(crate) fn of(headers: &HeaderMap) -> Result<Credential, ApiError> {
        if !headers.contains_key(axum::http::header::AUTHORIZATION) {
            if let Some(id) = cookie_value(headers, SESSION_COOKIE) {
                return Ok(Credential::Session(id));
            }
        }
        Ok(Credential::Token(bearer(headers)?.to_string()))
    }

    /// Whether it still works (not revoked, expired, ended or disabled).
    pub(crate) async fn still_valid(
        &self,
        store: &kiln_store::Store,
    ) -> Result<bool, kiln_store::StoreError> {
        match self {
            Credential::Token(secret) => match store.verify_token(secret).await {
                Ok(who) => Ok(who.is_some()),
                Err(kiln_store::StoreError::InvalidInput { .. }) => Ok(false),
                Err(err) => Err(err),
            },
            Credential::Session(id) => match store.session(id).await? {
                Some(session) => Ok(store.session_principal(&session).await?.is_some()),
                None => Ok(false),
            },
        }
    }
}
