//! Exponential backoff with jitter, shared by the request retries inside the
//! client and the whole-turn retries the agent loop performs.

use std::time::Duration;

use crate::ModelError;

/// The shape of the waits between tries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The wait before the first retry.
    pub initial_delay: Duration,
    /// No computed wait exceeds this.
    pub max_delay: Duration,
    /// Each wait is scaled by a random factor in `1 ± jitter` so that many
    /// clients rejected together do not come back together.
    pub jitter: f64,
    /// The longest server-requested wait (`retry-after`) that is honoured as is;
    /// longer requests are capped to it.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
            jitter: 0.1,
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy that retries at once; for tests and for callers that pace themselves.
    pub fn immediate() -> Self {
        RetryPolicy {
            initial_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            jitter: 0.0,
            max_retry_after: Duration::from_secs(60),
        }
    }

    /// The wait before retry number `retry` (0 for the first retry):
    /// `initial_delay · 2^retry`, capped at `max_delay`, with jitter.
    pub fn delay_for(&self, retry: u32) -> Duration {
        let base = self
            .initial_delay
            .saturating_mul(2u32.saturating_pow(retry.min(30)))
            .min(self.max_delay);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 || base.is_zero() {
            return base;
        }
        let factor = 1.0 + rand::random_range(-jitter..=jitter);
        base.mul_f64(factor).min(self.max_delay)
    }

    /// The wait before retry number `retry` after `error`: the server's
    /// `retry-after` when it sent one (capped at `max_retry_after`), else
    /// [`delay_for`](Self::delay_for).
    pub fn delay_after(&self, retry: u32, error: &ModelError) -> Duration {
        match error.retry_after() {
            Some(wait) => wait.min(self.max_retry_after),
            None => self.delay_for(retry),
        }
    }
}

/// How a caller retries a whole turn whose stream failed with a retryable error
/// (the client itself only retries before a stream starts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnRetry {
    /// Retries after the first try; `stream_max_retries` of the provider.
    pub max_retries: u32,
    pub policy: RetryPolicy,
}

impl Default for TurnRetry {
    fn default() -> Self {
        TurnRetry {
            max_retries: crate::config::DEFAULT_STREAM_MAX_RETRIES,
            policy: RetryPolicy::default(),
        }
    }
}

impl TurnRetry {
    /// The wait before retry number `retry` (0 for the first) after `error`, or
    /// `None` when the error is not retryable or the retries are used up.
    pub fn delay_before_retry(&self, retry: u32, error: &ModelError) -> Option<Duration> {
        (error.is_retryable() && retry < self.max_retries)
            .then(|| self.policy.delay_after(retry, error))
    }
}

/// Reads the server's requested wait: `retry-after-ms` (milliseconds, as
/// OpenAI sends) wins over `retry-after` (seconds; HTTP dates are ignored).
pub(crate) fn parse_retry_after(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
) -> Option<Duration> {
    let millis = retry_after_ms
        .and_then(|value| value.trim().parse::<f64>().ok())
        .filter(|value| value.is_finite() && *value >= 0.0)
        .map(|value| Duration::from_secs_f64(value / 1000.0));
    millis.or_else(|| {
        retry_after
            .and_then(|value| value.trim().parse::<f64>().ok())
            .filter(|value| value.is_finite() && *value >= 0.0 && *value < 1e9)
            .map(Duration::from_secs_f64)
    })
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
