//! The audit trail (admins only): `GET /api/audit` a page at a time, newest
//! first, and `GET /api/audit/export` as JSON lines, oldest first, streamed
//! (docs/audit.md).

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use bytes::Bytes;
use kiln_protocol::teams::{AuditPage, AuditQuery};
use kiln_store::AuditExport;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// The media type of the export: one JSON object per line.
pub(crate) const NDJSON: &str = "application/x-ndjson";

pub(super) async fn list(
    State(state): State<AppState>,
    Caller(who): Caller,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(query) = query?;
    Ok(Json(state.store().audit_events(&who, &query).await?))
}

pub(super) async fn export(
    State(state): State<AppState>,
    Caller(who): Caller,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query?;
    // Refusals (not an admin, a bad filter) are answered before the 200.
    let export = state.store().audit_export(&who, &query).await?;
    let lines = futures::stream::unfold(Some(export), next_lines);
    Ok((
        [
            (header::CONTENT_TYPE, NDJSON),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"kiln-audit.jsonl\"",
            ),
        ],
        Body::from_stream(lines),
    ))
}

/// The next batch of the export as JSON lines. A failure mid-way ends the
/// body with an error, so the client sees a broken transfer rather than a
/// trail that looks complete.
async fn next_lines(
    export: Option<AuditExport>,
) -> Option<(Result<Bytes, std::io::Error>, Option<AuditExport>)> {
    let mut export = export?;
    match export.next_batch().await {
        Ok(Some(events)) => {
            let mut out = Vec::with_capacity(events.len() * 256);
            for event in &events {
                if let Err(err) = serde_json::to_writer(&mut out, event) {
                    return Some((Err(std::io::Error::other(err)), None));
                }
                out.push(b'\n');
            }
            Some((Ok(Bytes::from(out)), Some(export)))
        }
        Ok(None) => None,
        Err(err) => {
            tracing::error!("audit export failed: {err}");
            Some((Err(std::io::Error::other(err.to_string())), None))
        }
    }
}
