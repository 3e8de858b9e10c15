//! What can go wrong talking to a model provider, phrased for the user, and
//! which failures are worth retrying.

use std::time::Duration;

/// A failure of one model turn. The `Display` text names the provider, what
/// happened and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The provider needs a key from an environment variable that is not set.
    #[error(
        "model provider '{provider}' needs an API key: set the environment variable {env_key}{}",
        instructions.as_deref().map(|text| format!(" ({text})")).unwrap_or_default()
    )]
    MissingApiKey {
        provider: String,
        env_key: String,
        instructions: Option<String>,
    },

    /// The provider configuration cannot work (bad URL, bad header value…).
    #[error("model provider '{provider}' is misconfigured: {problem}")]
    InvalidConfig { provider: String, problem: String },

    /// No HTTP answer at all: connection refused, DNS failure, TLS failure, timeout.
    #[error(
        "could not reach model provider '{provider}' at {url}: {detail} — is the server running and is base_url right?"
    )]
    Unreachable {
        provider: String,
        url: String,
        detail: String,
    },

    /// The provider answered with a non-success HTTP status.
    #[error(
        "model provider '{provider}' answered {status}{}: {message}{}",
        reason_phrase(*status),
        hint.as_deref().map(|hint| format!(" — {hint}")).unwrap_or_default()
    )]
    Http {
        provider: String,
        status: u16,
        /// The server's explanation (`error.message` of a JSON body, else the body).
        message: String,
        /// The server's error code (`error.code` or `error.type`), when it sent one.
        code: Option<String>,
        /// How long the server asked us to wait (`retry-after-ms` / `retry-after`).
        retry_after: Option<Duration>,
        /// What the user can do about it.
        hint: Option<String>,
    },

    /// The provider reported a failure inside the stream (`response.failed`,
    /// an `error` event, or an `error` object in a chat chunk).
    #[error("model provider '{provider}' reported an error: {message}")]
    Provider {
        provider: String,
        message: String,
        code: Option<String>,
        retryable: bool,
    },

    /// The stream ended (or broke) before the provider said the turn was complete.
    #[error("model provider '{provider}': stream disconnected before completion: {detail}")]
    StreamDisconnected { provider: String, detail: String },

    /// Nothing arrived for longer than the idle timeout.
    #[error(
        "model provider '{provider}' sent nothing for {}s; gave up on the stream (raise stream_idle_timeout_ms for slow local models)",
        timeout.as_secs_f64()
    )]
    IdleTimeout { provider: String, timeout: Duration },

    /// The stream carried something that is not the wire format it claims to be.
    #[error("model provider '{provider}' sent a malformed stream: {detail}")]
    InvalidStream { provider: String, detail: String },

    #[error("{0}")]
    Other(String),
}

/// Error codes OpenAI-compatible servers use for conditions that pass with time.
const TRANSIENT_CODES: &[&str] = &[
    "rate_limit_exceeded",
    "server_error",
    "server_is_overloaded",
    "slow_down",
    "overloaded_error",
];

/// " Unauthorized" for 401: the canonical phrase with a leading space, or nothing.
fn reason_phrase(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .map(|reason| format!(" {reason}"))
        .unwrap_or_default()
}

impl ModelError {
    /// Whether trying the same turn again may succeed: connection failures,
    /// 408/409/429 (but not an exhausted quota) and 5xx answers, dropped or
    /// idle streams, and in-stream errors with a transient code.
    pub fn is_retryable(&self) -> bool {
        match self {
            ModelError::Unreachable { .. }
            | ModelError::StreamDisconnected { .. }
            | ModelError::IdleTimeout { .. } => true,
            ModelError::Http { status, code, .. } => {
                let out_of_quota = code.as_deref() == Some("insufficient_quota");
                !out_of_quota && matches!(status, 408 | 409 | 429 | 500..=599)
            }
            ModelError::Provider { retryable, .. } => *retryable,
            ModelError::MissingApiKey { .. }
            | ModelError::InvalidConfig { .. }
            | ModelError::InvalidStream { .. }
            | ModelError::Other(_) => false,
        }
    }

    /// The wait the server asked for before the next try, if it named one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ModelError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the request was too long for the model's context window, so the
    /// caller should compact the history rather than retry as is.
    pub fn is_context_window_exceeded(&self) -> bool {
        let (code, message) = match self {
            ModelError::Http { code, message, .. } | ModelError::Provider { code, message, .. } => {
                (code.as_deref(), message.as_str())
            }
            _ => return false,
        };
        if code == Some("context_length_exceeded") {
            return true;
        }
        let message = message.to_ascii_lowercase();
        [
            "context length",
            "context window",
            "maximum context",
            "too many tokens",
        ]
        .iter()
        .any(|needle| message.contains(needle))
    }

    /// Whether an in-stream error code names a transient condition.
    pub(crate) fn is_transient_code(code: Option<&str>) -> bool {
        code.is_some_and(|code| TRANSIENT_CODES.contains(&code))
    }
}
