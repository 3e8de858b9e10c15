//! Drives a wire-API decoder over a response's SSE events, producing the
//! [`ModelStream`] callers consume.

use std::collections::VecDeque;

use crate::sse::SseEvent;
use crate::transport::SseEvents;
use crate::{ModelError, ModelEvent, ModelStream};

/// Turns one wire API's SSE events into [`ModelEvent`]s.
pub(crate) trait StreamDecoder: Send + 'static {
    /// Handles one event, appending what it produced to `out`. Returns `true`
    /// when the turn is complete (nothing more will be read).
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<ModelEvent>)
        -> Result<bool, ModelError>;

    /// The body ended before `on_event` reported completion: either finish the
    /// turn (appending to `out`) or say why it is incomplete.
    fn on_end(&mut self, out: &mut Vec<ModelEvent>) -> Result<(), ModelError>;
}

struct Driver<D> {
    events: SseEvents,
    decoder: D,
    pending: VecDeque<Result<ModelEvent, ModelError>>,
    scratch: Vec<ModelEvent>,
    finished: bool,
}

impl<D: StreamDecoder> Driver<D> {
    /// Advances until there is something to hand out, or nothing more will come.
    async fn next(&mut self) -> Option<Result<ModelEvent, ModelError>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.finished {
                return None;
            }
            let outcome = match self.events.next().await {
                Some(Ok(event)) => self.decoder.on_event(&event, &mut self.scratch),
                Some(Err(error)) => Err(error),
                None => self.decoder.on_end(&mut self.scratch).map(|()| true),
            };
            self.pending.extend(self.scratch.drain(..).map(Ok));
            match outcome {
                Ok(done) => self.finished = done,
                Err(error) => {
                    self.pending.push_back(Err(error));
                    self.finished = true;
                }
            }
        }
    }
}

/// A stream that ends after the first error or after `Completed`.
pub(crate) fn model_stream<D: StreamDecoder>(events: SseEvents, decoder: D) -> ModelStream {
    let driver = Driver {
        events,
        decoder,
        pending: VecDeque::new(),
        scratch: Vec::new(),
        finished: false,
    };
    Box::pin(futures::stream::unfold(driver, |mut driver| async move {
        let item = driver.next().await?;
        Some((item, driver))
    }))
}
