//! `GET /api/tasks/{id}/events`: a task's event log over SSE, resumable.
//!
//! Each SSE event carries the stored event's per-task id as `id:`, its type
//! as `event:` and its JSON as `data:`. A client that reconnects with
//! `Last-Event-ID: N` (or `?after=N`) gets exactly the events after N. The
//! data is the event's JSON plus `attempt`.
//!
//! Between them come `task.status` frames (no `id:`): the task's status
//! when the stream opens and whenever it changes, learnt from the store's
//! change notifications. The stream ends once the task has finished and
//! every event was sent, with the final status as its last frame (or at
//! once, after the current status, with `?follow=false`).
//! A token holds at most `max_streams_per_token` streams at once, and a
//! stream ends when its token is revoked.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use kiln_protocol::api::{TaskStatus, TaskStatusFrame};
use kiln_store::{Store, StoredEvent};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Events read from the store per query.
const PAGE: u32 = 500;

#[derive(Debug, Deserialize)]
pub(super) struct EventParams {
    attempt: Option<u32>,
    after: Option<i64>,
    /// `false`: send what is stored now and end, instead of following.
    follow: Option<bool>,
}

pub(super) async fn stream(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(params) = query?;
    let detail = state.store().task(&who, &id).await?;
    if let Some(n) = params.attempt {
        if n == 0 || n > detail.task.attempt_count {
            return Err(ApiError::invalid(
                "attempt",
                format!(
                    "task {id} has attempts 1 to {}; attempts count from 1",
                    detail.task.attempt_count
                ),
            ));
        }
    }
    let after = match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                ApiError::invalid("Last-Event-ID", "send the id of the last event received")
            })?,
        None => params.after.unwrap_or(0),
    };
    let slot = state
        .inner
        .streams
        // A session has no token: its streams count against its user.
        .try_take(if who.token_id.is_empty() {
            format!("session:{}", who.user_id.clone().unwrap_or_default())
        } else {
            who.token_id.clone()
        })
        .ok_or_else(|| {
            ApiError::TooManyRequests(format!(
                "this token already has {} event streams open, the most the server allows (kiln serve --max-streams-per-token): close one first",
                state.inner.streams.limit()
            ))
        })?;
    let credential = crate::auth::Credential::of(&headers)?;
    let (tx, rx) = mpsc::channel(64);
    let store = state.store().clone();
    let who_task = id.clone();
    let shutdown = state.inner.shutdown.clone();
    let revocations = state.inner.revocations.subscribe();
    let recheck = state.inner.config.limits.token_recheck;
    tokio::spawn(async move {
        // Held for as long as the stream runs.
        let _slot = slot;
        tokio::select! {
            _ = pump(store.clone(), who_task, params.attempt, after, params.follow.unwrap_or(true), tx) => {}
            _ = token_revoked(&store, &credential, revocations, recheck) => {}
            _ = shutdown.cancelled() => {}
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Sends events, and the task's status whenever it changed, until the task
/// is finished and drained, or the client left. Woken by the store's change
/// notifications (new events of the task, a change of its status), never by
/// a timer of its own.
async fn pump(
    store: Store,
    task_id: String,
    attempt: Option<u32>,
    mut cursor: i64,
    follow: bool,
    tx: mpsc::Sender<Result<SseEvent, Infallible>>,
) -> Result<(), ()> {
    let mut sent_status = None;
    loop {
        // Subscribe before reading so a commit between the read and the wait wakes us.
        let mut subscription = store.subscribe();
        // Read before the events: once it is final, every event is stored
        // (`attempt.finished` is appended before the attempt is finished),
        // so the events read next are the last ones.
        let Some(status) = task_status(&store, &task_id).await else {
            return Err(());
        };
        let events = match store.events(&task_id, attempt, cursor, PAGE).await {
            Ok(events) => events,
            Err(err) => {
                tracing::warn!("event stream of {task_id} stopped: {err}");
                return Err(());
            }
        };
        let full_page = events.len() == PAGE as usize;
        for event in events {
            cursor = event.id;
            tx.send(Ok(to_sse(&event))).await.map_err(|_| ())?;
        }
        if full_page {
            continue;
        }
        if sent_status != Some(status) {
            tx.send(Ok(status_sse(&task_id, status)))
                .await
                .map_err(|_| ())?;
            sent_status = Some(status);
        }
        if status.is_finished() || !follow {
            return Ok(());
        }
        tokio::select! {
            _ = subscription.wait_for_task(&task_id) => {}
            _ = tx.closed() => return Err(()),
        }
    }
}

/// Returns once the request's token (or session) no longer works: at once after a revocation
/// on this server, within `recheck` after one on another server sharing
/// the store.
async fn token_revoked(
    store: &Store,
    credential: &crate::auth::Credential,
    mut revocations: tokio::sync::watch::Receiver<u64>,
    recheck: Duration,
) {
    loop {
        tokio::select! {
            changed = revocations.changed() => {
                if changed.is_err() {
                    // The server is going away; the shutdown token ends the stream.
                    std::future::pending::<()>().await;
                }
            }
            _ = tokio::time::sleep(recheck) => {}
        }
        match credential.still_valid(store).await {
            Ok(true) => {}
            Ok(false) => return,
            // A store hiccup is not a revocation: look again next time.
            Err(err) => tracing::warn!("cannot re-check an event stream's token: {err}"),
        }
    }
}

async fn task_status(store: &Store, task_id: &str) -> Option<TaskStatus> {
    // The caller's access was checked when the stream opened.
    let system = crate::worker::system_principal();
    match store.task(&system, task_id).await {
        Ok(detail) => Some(detail.task.status),
        Err(err) => {
            tracing::warn!("event stream of {task_id} stopped: {err}");
            None
        }
    }
}

/// A `task.status` frame: no id, so a client's `Last-Event-ID` stays that
/// of the last stored event it received.
fn status_sse(task_id: &str, status: TaskStatus) -> SseEvent {
    let frame = TaskStatusFrame::new(task_id, status);
    let data = serde_json::to_string(&frame).unwrap_or_default();
    SseEvent::default().event(TaskStatusFrame::EVENT).data(data)
}

/// The stored event's JSON with the attempt number added (`"attempt": n`),
/// so one stream of a best-of-N task can be told apart by attempt.
fn to_sse(event: &StoredEvent) -> SseEvent {
    let data = match event.json.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => {
            format!("{{\"attempt\":{}}}", event.attempt)
        }
        Some(rest) => format!("{{\"attempt\":{},{rest}", event.attempt),
        None => event.json.clone(),
    };
    SseEvent::default()
        .id(event.id.to_string())
        .event(event.kind.clone())
        .data(data)
}
