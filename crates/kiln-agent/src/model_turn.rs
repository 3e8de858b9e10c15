//! One model turn: stream the answer, with retries for transient failures.

use std::sync::Arc;

use futures::StreamExt;
use kiln_model::{ModelClient, ModelError, ModelEvent, ModelRequest};
use kiln_protocol::{EventKind, Item, Usage};
use tokio_util::sync::CancellationToken;

use crate::EventLog;

/// A completed turn: the items the model produced and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TurnOutput {
    pub(crate) items: Vec<Item>,
    pub(crate) usage: Usage,
}

/// Why a turn did not complete.
#[derive(Debug)]
pub(crate) enum TurnFailure {
    /// The stop token fired (cancellation or the wall clock).
    Stopped,
    /// The request does not fit the model's context window.
    ContextWindowExceeded(String),
    /// The provider failed and retrying did not help (or cannot).
    Failed(String),
}

/// What went wrong with one try.
enum TryError {
    Stopped,
    /// The request never got a stream. The client has already retried it
    /// (`request_max_retries`); retrying the turn too would multiply the waits
    /// on a dead server.
    NotStarted(ModelError),
    /// The stream broke after it started.
    Model(ModelError),
    /// The stream ended without the completion event.
    Incomplete,
}

pub(crate) struct TurnRunner<'a> {
    pub(crate) model: &'a Arc<dyn ModelClient>,
    pub(crate) events: &'a EventLog,
    pub(crate) stop: &'a CancellationToken,
}

impl TurnRunner<'_> {
    /// Run `request` to completion, retrying transient failures with backoff
    /// and a warning each time. With `live`, text deltas are emitted as
    /// `model.delta` events while they stream.
    pub(crate) async fn run(
        &self,
        request: &ModelRequest,
        live: bool,
    ) -> Result<TurnOutput, TurnFailure> {
        // The provider's own setting: how often a broken stream is tried again.
        let retry = self.model.turn_retry();
        let mut retries = 0;
        loop {
            let (problem, wait) = match self.try_once(request, live).await {
                Ok(output) => return Ok(output),
                Err(TryError::Stopped) => return Err(TurnFailure::Stopped),
                Err(TryError::Incomplete) => (
                    "the response stream ended before the model finished".to_string(),
                    (retries < retry.max_retries).then(|| retry.policy.delay_for(retries)),
                ),
                Err(TryError::Model(err) | TryError::NotStarted(err))
                    if err.is_context_window_exceeded() =>
                {
                    return Err(TurnFailure::ContextWindowExceeded(err.to_string()))
                }
                Err(TryError::NotStarted(err)) => {
                    return Err(TurnFailure::Failed(format!("model request failed: {err}")))
                }
                Err(TryError::Model(err)) if !err.is_retryable() => {
                    return Err(TurnFailure::Failed(format!("model request failed: {err}")))
                }
                Err(TryError::Model(err)) => {
                    let wait = retry.delay_before_retry(retries, &err);
                    (err.to_string(), wait)
                }
            };
            let Some(wait) = wait else {
                return Err(TurnFailure::Failed(format!(
                    "model request failed after {retries} retries: {problem}"
                )));
            };
            retries += 1;
            self.events.emit(EventKind::Warning {
                message: format!(
                    "model turn failed ({problem}); retrying in {:.1}s (retry {retries} of {})",
                    wait.as_secs_f64(),
                    retry.max_retries
                ),
            });
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.stop.cancelled() => return Err(TurnFailure::Stopped),
            }
        }
    }

    async fn try_once(&self, request: &ModelRequest, live: bool) -> Result<TurnOutput, TryError> {
        // Retries of a request that never streamed happen inside the client;
        // they still belong in the log.
        let report_retry = |retry: &kiln_model::RequestRetry| {
            self.events.emit(EventKind::Warning {
                message: format!(
                    "model request failed ({}); sending it again in {:.1}s (retry {} of {})",
                    retry.error,
                    retry.delay.as_secs_f64(),
                    retry.retry,
                    retry.of
                ),
            });
        };
        let mut stream = tokio::select! {
            started = self.model.stream_reporting_retries(request, &report_retry) => {
                started.map_err(TryError::NotStarted)?
            }
            () = self.stop.cancelled() => return Err(TryError::Stopped),
        };
        let mut items = Vec::new();
        // A secret the model writes may arrive split between two deltas.
        let mut deltas = self.events.stream_redactor();
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                () = self.stop.cancelled() => return Err(TryError::Stopped),
            };
            match next {
                Some(Ok(ModelEvent::TextDelta(text))) => {
                    if live && !text.is_empty() {
                        let text = deltas.push(&text);
                        if !text.is_empty() {
                            self.events.emit(EventKind::ModelDelta { text });
                        }
                    }
                }
                Some(Ok(ModelEvent::ItemDone(item))) => {
                    let rest = deltas.finish();
                    if live && !rest.is_empty() {
                        self.events.emit(EventKind::ModelDelta { text: rest });
                    }
                    items.push(item);
                }
                Some(Ok(ModelEvent::Completed { usage })) => {
                    let rest = deltas.finish();
                    if live && !rest.is_empty() {
                        self.events.emit(EventKind::ModelDelta { text: rest });
                    }
                    return Ok(TurnOutput { items, usage });
                }
                Some(Err(err)) => return Err(TryError::Model(err)),
                None => return Err(TryError::Incomplete),
            }
        }
    }
}
