//! Numbering events and fanning them out to every sink.

use std::sync::{Arc, Mutex, MutexGuard};

use kiln_protocol::{Event, EventKind, EventSink};

/// The attempt's event log: gives each event the next sequence number and
/// hands it to every sink, in order. Sinks (a JSONL writer, a terminal
/// renderer, a store) see events in `seq` order even when several tasks emit.
pub struct EventLog {
    next_seq: Mutex<u64>,
    sinks: Vec<Arc<dyn EventSink>>,
}

impl EventLog {
    /// A log whose first event gets `next_seq` (1 for a fresh log; the last
    /// `seq` + 1 when continuing a resumed one).
    pub fn new(next_seq: u64, sinks: Vec<Arc<dyn EventSink>>) -> Self {
        EventLog {
            next_seq: Mutex::new(next_seq),
            sinks,
        }
    }

    /// Number `kind`, deliver it to every sink and return it.
    ///
    /// Sinks run while the log is locked (that is what keeps them in order),
    /// so a sink must not emit into the same log.
    pub fn emit(&self, kind: EventKind) -> Event {
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
