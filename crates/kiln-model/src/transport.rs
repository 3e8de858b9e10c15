//! The HTTP side shared by both wire APIs: authentication and extra headers,
//! retries before a stream starts, error answers turned into [`ModelError`]s,
//! and the response body turned into SSE events under an idle timeout.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;

use crate::retry::parse_retry_after;
use crate::sse::{SseEvent, SseParser};
use crate::{ModelError, ProviderConfig, RequestRetry, RetryNotices};

/// Bound on connection setup, so an unroutable address fails instead of hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest error body quoted to the user.
const MAX_ERROR_MESSAGE_CHARS: usize = 2000;

pub(crate) struct Transport {
    config: ProviderConfig,
    http: reqwest::Client,
    base_url: String,
}

impl Transport {
    /// Validates `config`, resolves its key from the environment and prepares the client.
    pub fn new(config: &ProviderConfig) -> Result<Self, ModelError> {
        let config = config.clone().clamped();
        let base_url = config.api_root()?;
        let headers = config.request_headers(|name| std::env::var(name).ok())?;
        let parsed = reqwest::Url::parse(&base_url)
            .map_err(|error| config.invalid(format!("base_url '{base_url}': {error}")))?;

        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(30));
        // A local server (Ollama, llama.cpp…) is never behind the user's
        // HTTP(S)_PROXY, and sending loopback traffic there fails confusingly.
        if is_loopback(&parsed) {
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|error| config.invalid(format!("cannot build an HTTP client: {error}")))?;
        Ok(Transport {
            config,
            http,
            base_url,
        })
    }

    /// How a whole turn whose stream broke is tried again, for either wire API.
    pub fn turn_retry(&self) -> crate::TurnRetry {
        crate::TurnRetry {
            max_retries: self.config.stream_max_retries,
            policy: self.config.retry,
        }
    }

    pub fn provider(&self) -> &str {
        &self.config.name
    }

    /// POSTs `body` to `{base_url}/{endpoint}` and returns the event stream,
    /// retrying connection failures, idle waits for the answer and retryable
    /// statuses up to `request_max_retries` times.
    pub async fn open(
        &self,
        endpoint: &str,
        body: &Value,
        on_retry: &RetryNotices<'_>,
    ) -> Result<SseEvents, ModelError> {
        let url = format!("{}/{endpoint}", self.base_url);
        let mut retry = 0;
        loop {
            let error = match self.send_once(&url, body).await {
                Ok(response) => {
                    return Ok(SseEvents::new(
                        self.provider().to_string(),
                        response,
                        self.config.stream_idle_timeout,
                    ))
                }
                Err(error) => error,
            };
            if !error.is_retryable() || retry >= self.config.request_max_retries {
                return Err(error);
            }
            let delay = self.config.retry.delay_after(retry, &error);
            tracing::warn!(
                provider = %self.provider(),
                retry = retry + 1,
                of = self.config.request_max_retries,
                delay_ms = delay.as_millis() as u64,
                "model request failed, retrying: {error}"
            );
            on_retry(&RequestRetry {
                retry: retry + 1,
                of: self.config.request_max_retries,
                delay,
                error: error.to_string(),
            });
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }

    async fn send_once(&self, url: &str, body: &Value) -> Result<reqwest::Response, ModelError> {
        let request = self
            .http
            .post(url)
            .query(&self.config.query_params)
            .json(body);
        let sent = tokio::time::timeout(self.config.stream_idle_timeout, request.send()).await;
        let response = match sent {
            Err(_) => {
                return Err(ModelError::IdleTimeout {
                    provider: self.provider().to_string(),
                    timeout: self.config.stream_idle_timeout,
                })
            }
            Ok(Err(error)) => {
                return Err(ModelError::Unreachable {
                    provider: self.provider().to_string(),
                    url: url.to_string(),
                    detail: error_chain(&error),
                })
            }
            Ok(Ok(response)) => response,
        };
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.http_error(response).await)
    }

    async fn http_error(&self, response: reqwest::Response) -> ModelError {
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        let retry_after = parse_retry_after(header("retry-after-ms"), header("retry-after"));
        // The body of an error answer gets the same patience as a stream.
        let body = tokio::time::timeout(self.config.stream_idle_timeout, response.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let (message, code) = describe_error_body(&body);
        let message = if message.is_empty() {
            "(empty body)".to_string()
        } else {
            message
        };
        ModelError::Http {
            provider: self.provider().to_string(),
            status: status.as_u16(),
            hint: self.hint_for(status, code.as_deref()),
            message,
            code,
            retry_after,
        }
    }

    fn hint_for(&self, status: StatusCode, code: Option<&str>) -> Option<String> {
        let provider = &self.config.name;
        match status.as_u16() {
            401 | 403 => Some(match &self.config.env_key {
                Some(variable) => format!("check {variable}"),
                None => format!(
                    "the provider wants a key: set env_key in [model_providers.{provider}] to the variable holding it"
                ),
            }),
            404 => Some(format!(
                "check base_url ({}) and the model name; wire_api is '{}'",
                self.base_url, self.config.wire_api
            )),
            429 if code == Some("insufficient_quota") => Some("the account is out of quota".to_string()),
            _ => None,
        }
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// The message and code of an error body in any of the shapes servers use:
/// OpenAI `{"error": {"message", "code"|"type"}}`, Ollama `{"error": "…"}`,
/// `{"message": "…"}`, FastAPI `{"detail": …}`; anything else is quoted as text.
pub(crate) fn describe_error_body(body: &str) -> (String, Option<String>) {
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    if let Ok(json) = serde_json::from_str::<Value>(body) {
        let error = json.get("error");
        let message = error
            .and_then(|error| error.get("message"))
            .map(text)
            .or_else(|| error.filter(|error| error.is_string()).map(text))
            .or_else(|| json.get("message").map(text))
            .or_else(|| json.get("detail").map(text));
        let code = error
            .and_then(|error| error.get("code").filter(|code| !code.is_null()))
            .or_else(|| {
                error
                    .and_then(|error| error.get("type"))
                    .filter(|kind| !kind.is_null())
            })
            .map(text);
        if let Some(message) = message {
            return (truncate(message.trim()), code);
        }
    }
    (truncate(body.trim()), None)
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The causes of an error, which is where reqwest says "Connection refused".
/// reqwest's own outer message repeats the URL and hyper adds wrappers such
/// as "client error (Connect)"; both are left out when causes follow.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut causes = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    let mut parts: Vec<String> = causes
        .into_iter()
        .filter(|cause| !cause.starts_with("client error ("))
        .collect();
    if parts.is_empty() {
        return error.to_string();
    }
    // Keep a cause only when the next one does not already say it.
    parts.dedup_by(|later, earlier| earlier.contains(later.as_str()));
    parts.join(": ")
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The SSE events of one response body, read with an idle timeout.
///
/// A server that ignores `stream: true` and answers one JSON document
/// (`content-type: application/json`) yields that document as a single event,
/// which both decoders understand.
pub(crate) struct SseEvents {
    provider: String,
    body: ByteStream,
    parser: SseParser,
    /// `Some` while collecting a whole-JSON answer instead of parsing SSE.
    json_body: Option<Vec<u8>>,
    ready: VecDeque<SseEvent>,
    scratch: Vec<SseEvent>,
    idle_timeout: Duration,
    ended: bool,
}

impl SseEvents {
    fn new(provider: String, response: reqwest::Response, idle_timeout: Duration) -> Self {
        let is_json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.trim_start().starts_with("application/json"));
        SseEvents {
            provider,
            json_body: is_json.then(Vec::new),
            body: Box::pin(response.bytes_stream()),
            parser: SseParser::new(),
            ready: VecDeque::new(),
            scratch: Vec::new(),
            idle_timeout,
            ended: false,
        }
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The next event; `None` at the end of the body; an error when the body
    /// breaks or stays silent past the idle timeout (after which it yields `None`).
    pub async fn next(&mut self) -> Option<Result<SseEvent, ModelError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout(self.idle_timeout, self.body.next()).await {
                Err(_) => {
                    self.ended = true;
                    return Some(Err(ModelError::IdleTimeout {
                        provider: self.provider.clone(),
                        timeout: self.idle_timeout,
                    }));
                }
                Ok(Some(Ok(chunk))) => match &mut self.json_body {
                    Some(json) => json.extend_from_slice(&chunk),
                    None => self.parser.feed(&chunk, &mut self.scratch),
                },
                Ok(Some(Err(error))) => {
                    self.ended = true;
                    return Some(Err(ModelError::StreamDisconnected {
                        provider: self.provider.clone(),
                        detail: error_chain(&error),
                    }));
                }
                Ok(None) => {
                    self.ended = true;
                    match self.json_body.take() {
                        Some(json) => self.scratch.push(SseEvent {
                            event: None,
                            data: String::from_utf8_lossy(&json).into_owned(),
                        }),
                        None => self.parser.finish(&mut self.scratch),
                    }
                }
            }
            self.ready.extend(self.scratch.drain(..));
        }
    }
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
