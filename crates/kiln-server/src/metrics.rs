//! `/metrics` in the Prometheus text format: the queue from the store, and
//! what this process's workers measured.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kiln_store::QueueStats;

/// Counters the workers of this process update.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    attempts_run: AtomicU64,
    attempt_millis: AtomicU64,
    running_here: AtomicU64,
}

impl Metrics {
    pub(crate) fn attempt_started(&self) {
        self.running_here.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn attempt_ended(&self, took: Duration) {
        self.running_here.fetch_sub(1, Ordering::Relaxed);
        self.attempts_run.fetch_add(1, Ordering::Relaxed);
        let millis = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self.attempt_millis.fetch_add(millis, Ordering::Relaxed);
    }

    pub(crate) fn render(&self, queue: &QueueStats) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, lines: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let states = [
            ("queued", queue.queued),
            ("interrupted", queue.interrupted),
            ("running", queue.running),
            ("succeeded", queue.succeeded),
            ("failed", queue.failed),
            ("cancelled", queue.cancelled),
        ];
        gauge(
            "kiln_queue_depth",
            "Attempts waiting to run (queued + interrupted).",
            "gauge",
            &[(String::new(), queue.depth() as f64)],
        );
        gauge(
            "kiln_attempts",
            "Attempts in the store by state.",
            "gauge",
            &states
                .iter()
                .map(|(state, n)| (format!("{{state=\"{state}\"}}"), *n as f64))
                .collect::<Vec<_>>(),
        );
        gauge(
            "kiln_attempts_running_in_process",
            "Attempts this server's workers run now.",
            "gauge",
            &[(
                String::new(),
                self.running_here.load(Ordering::Relaxed) as f64,
            )],
        );
        gauge(
            "kiln_attempt_duration_seconds",
            "Wall-clock time of the runs this server's workers finished.",
            "summary",
            &[
                (
                    "_sum".into(),
                    self.attempt_millis.load(Ordering::Relaxed) as f64 / 1000.0,
                ),
                (
                    "_count".into(),
                    self.attempts_run.load(Ordering::Relaxed) as f64,
                ),
            ],
        );
        gauge(
            "kiln_tokens_total",
            "Model tokens used by all finished attempts.",
            "counter",
            &[
                ("{kind=\"input\"}".into(), queue.usage.input_tokens as f64),
                (
                    "{kind=\"cached_input\"}".into(),
                    queue.usage.cached_input_tokens as f64,
                ),
                ("{kind=\"output\"}".into(), queue.usage.output_tokens as f64),
            ],
        );
        out
    }
}
