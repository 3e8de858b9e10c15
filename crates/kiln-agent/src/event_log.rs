//! Numbering events, redacting secrets from them and fanning them out to
//! every sink.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use kiln_protocol::{Event, EventKind, EventSink};

use crate::redact::{Redactor, StreamRedactor};

/// The attempt's event log: gives each event the next sequence number,
/// redacts the attempt's secrets from it (see [`Redactor`]) and hands it to
/// every sink, in order. Sinks (a JSONL writer, a terminal renderer, a store,
/// a live stream) see events in `seq` order even when several tasks emit, and
/// never see a secret value the log was told about.
pub struct EventLog {
    next_seq: Mutex<u64>,
    sinks: Vec<Arc<dyn EventSink>>,
    redactor: RwLock<Arc<Redactor>>,
}

impl EventLog {
    /// A log whose first event gets `next_seq` (1 for a fresh log; the last
    /// `seq` + 1 when continuing a resumed one).
    pub fn new(next_seq: u64, sinks: Vec<Arc<dyn EventSink>>) -> Self {
        EventLog {
            next_seq: Mutex::new(next_seq),
            sinks,
            redactor: RwLock::new(Arc::new(Redactor::default())),
        }
    }

    /// This log, redacting with `redactor` from the first event on.
    pub fn with_redactor(self, redactor: Redactor) -> Self {
        self.set_redactor(redactor);
        self
    }

    /// Redact with `redactor` from the next event on: for callers that learn
    /// the secrets after the log started (the server reads an environment's
    /// secrets just before its setup script runs).
    pub fn set_redactor(&self, redactor: Redactor) {
        let mut current = self
            .redactor
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = Arc::new(redactor);
    }

    /// The redactor in effect, for text that leaves the attempt by another
    /// way than an event (a stored diff, a commit message).
    pub fn redactor(&self) -> Arc<Redactor> {
        self.redactor
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// `text` with the attempt's secrets redacted.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.redactor().redact(text) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(redacted) => Cow::Owned(redacted),
        }
    }

    /// A redactor for text emitted in pieces (command output), which finds a
    /// secret split between two pieces; see [`StreamRedactor`].
    pub fn stream_redactor(&self) -> StreamRedactor {
        self.redactor().stream()
    }

    /// Redact and number `kind`, deliver it to every sink and return it.
    ///
    /// Sinks run while the log is locked (that is what keeps them in order),
    /// so a sink must not emit into the same log. Each event is redacted on
    /// its own: a secret split between two `exec.output` or `model.delta`
    /// events is found only by their emitter's [`stream_redactor`](Self::stream_redactor).
    pub fn emit(&self, kind: EventKind) -> Event {
        let kind = self.redactor().redact_event(kind);
        // The lock is held while the sinks run so that every sink receives
        // events in sequence order.
        let mut next = lock(&self.next_seq);
        let event = Event::new(*next, kind);
        *next += 1;
        for sink in &self.sinks {
            sink.emit(&event);
        }
        event
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        *lock(&self.next_seq)
    }
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("next_seq", &self.next_seq())
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

/// A sink that keeps every event in memory (tests, short-lived tools).
#[derive(Debug, Default)]
pub struct MemorySink {
    events: Mutex<Vec<Event>>,
}

impl MemorySink {
    pub fn new() -> Arc<Self> {
        Arc::new(MemorySink::default())
    }

    /// A copy of the events received so far.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }
}

impl EventSink for MemorySink {
    fn emit(&self, event: &Event) {
        lock(&self.events).push(event.clone());
    }
}

/// Lock a mutex, recovering the data if a sink panicked while holding it: the
/// counter and the event list stay consistent whatever a sink did.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_from_next_seq_and_reach_every_sink() {
        let first = MemorySink::new();
        let second = MemorySink::new();
        let log = EventLog::new(41, vec![first.clone(), second.clone()]);
        let a = log.emit(EventKind::Warning {
            message: "a".into(),
        });
        let b = log.emit(EventKind::Warning {
            message: "b".into(),
        });
        assert_eq!((a.seq, b.seq), (41, 42));
        assert_eq!(log.next_seq(), 43);
        assert_eq!(first.events(), vec![a.clone(), b.clone()]);
        assert_eq!(second.events(), vec![a, b]);
    }

    #[test]
    fn every_sink_gets_events_with_secrets_redacted() {
        let sink = MemorySink::new();
        let log = EventLog::new(1, vec![sink.clone()]);
        log.emit(EventKind::Warning {
            message: "before: hunter2-secret".into(),
        });
        log.set_redactor(Redactor::new([("PASSWORD", "hunter2-secret")]));
        log.emit(EventKind::Warning {
            message: "after: hunter2-secret".into(),
        });
        let messages: Vec<String> = sink
            .events()
            .into_iter()
            .map(|e| match e.kind {
                EventKind::Warning { message } => message,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            messages,
            vec!["before: hunter2-secret", "after: [REDACTED:PASSWORD]"]
        );
        assert_eq!(log.redact("x hunter2-secret"), "x [REDACTED:PASSWORD]");
    }

    #[test]
    fn concurrent_emitters_get_distinct_ordered_numbers() {
        let sink = MemorySink::new();
        let log = Arc::new(EventLog::new(1, vec![sink.clone()]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        log.emit(EventKind::Warning {
                            message: String::new(),
                        });
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let seqs: Vec<u64> = sink.events().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=400).collect::<Vec<u64>>());
    }
}
