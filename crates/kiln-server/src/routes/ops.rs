//! Health (without authentication, for probes) and metrics (for admins, a
//! scraper's metrics token, or anyone with `--metrics-public`).

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;

use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn healthz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.store().ping().await?;
    Ok("ok\n")
}

pub(super) async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    crate::auth::may_read_metrics(&state, &headers).await?;
    let stats = state.store().queue_stats().await?;
    let body = state.inner.metrics.render(&stats);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    ))
}
