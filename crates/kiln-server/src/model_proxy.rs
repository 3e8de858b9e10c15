//! The server's model provider, streamed through to remote workers
//! (`/api/worker/attempts/{task}/{n}/model/...`).
//!
//! A worker never holds the provider's key: its kiln-model client talks to
//! the server with the attempt's lease token, and [`forward`] sends the
//! request body on, byte for byte, with the headers kiln-model itself would
//! send ([`ProviderConfig::request_headers`]: the server's key, the
//! provider's extra headers). Nothing of the worker's request but its body
//! goes on, its `Authorization` least of all, and the request must name the
//! attempt's model. The answer (status, content type, retry hints, body)
//! streams back as it arrives; an error answer is read whole first and the
//! key is cut out of it, in case a provider quotes it.

// The worker routes are the callers; until they are wired, only the tests are.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use kiln_model::{ProviderConfig, WireApi};

use crate::error::{ErrorBody, ErrorDetail};

/// Longest error answer of the provider read to redact and pass on.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The response headers that mean something to kiln-model's client: what
/// the body is, and when to retry.
const PASSED_HEADERS: &[&str] = &[
    "content-type",
    "retry-after",
    "retry-after-ms",
    "x-request-id",
];

/// Which of the provider's endpoints a worker calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModelRoute {
    /// `POST {base_url}/responses`.
    Responses,
    /// `POST {base_url}/chat/completions`.
    ChatCompletions,
}

impl ModelRoute {
    fn endpoint(self) -> &'static str {
        match self {
            ModelRoute::Responses => "responses",
            ModelRoute::ChatCompletions => "chat/completions",
        }
    }

    fn wire_api(self) -> WireApi {
        match self {
            ModelRoute::Responses => WireApi::Responses,
            ModelRoute::ChatCompletions => WireApi::Chat,
        }
    }
}

/// Forward `body` (JSON) to the provider, after checking its `"model"`
/// equals `model`; stream status, content type and body back as they
/// arrive.
pub(crate) async fn forward(
    http: &reqwest::Client,
    provider: &ProviderConfig,
    route: ModelRoute,
    model: &str,
    body: Bytes,
) -> Response {
    if route.wire_api() != provider.wire_api {
        return refused(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "the server's model provider speaks the {} API: send the request to model/{}",
                provider.wire_api,
                match provider.wire_api {
                    WireApi::Responses => ModelRoute::Responses.endpoint(),
                    WireApi::Chat => ModelRoute::ChatCompletions.endpoint(),
                }
            ),
        );
    }
    if let Err(message) = check_model(&body, model) {
        return refused(StatusCode::BAD_REQUEST, "bad_request", message);
    }
    let lookup = |name: &str| std::env::var(name).ok();
    let (root, mut headers) = match provider
        .api_root()
        .and_then(|root| Ok((root, provider.request_headers(lookup)?)))
    {
        Ok(prepared) => prepared,
        Err(error) => {
            // Names the variable or the setting, never the key.
            tracing::error!("the model pass-through cannot reach its provider: {error}");
            return refused(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!(
                    "the server's model provider {} is not usable: {error}; the server's \
                     administrator fixes its configuration",
                    provider.name
                ),
            );
        }
    };
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("kiln/", env!("CARGO_PKG_VERSION"))),
    );
    let key = provider.resolve_api_key(lookup).ok().flatten();
    let request = http
        .post(format!("{root}/{}", route.endpoint()))
        .query(&provider.query_params)
        .headers(headers)
        .body(body);
    let waited = tokio::time::timeout(wait_for_answer(provider), request.send()).await;
    let answer = match waited {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => {
            return unreachable(provider, &error_chain(&error.without_url()));
        }
        Err(_) => {
            return refused(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                format!(
                    "the server's model provider {} did not answer within {} s",
                    provider.name,
                    wait_for_answer(provider).as_secs()
                ),
            )
        }
    };
    let status = answer.status();
    let mut response = Response::builder().status(status.as_u16());
    for name in PASSED_HEADERS {
        if let Some(value) = answer.headers().get(*name) {
            response = response.header(HeaderName::from_static(name), value.clone());
        }
    }
    let body = if status.is_success() {
        Body::from_stream(answer.bytes_stream())
    } else {
        Body::from(redacted_error_body(answer, key.as_deref()).await)
    };
    response.body(body).unwrap_or_else(|error| {
        refused(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            format!("the provider's answer could not be passed on: {error}"),
        )
    })
}

/// The request's `"model"` must be the attempt's: a lease pays for one
/// attempt's model, not whichever the worker would rather use.
fn check_model(body: &[u8], model: &str) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<serde_json::Value>,
    }
    let named: Named = serde_json::from_slice(body)
        .map_err(|error| format!("the request body is not a JSON object: {error}"))?;
    match named.model {
        Some(serde_json::Value::String(asked)) if asked == model => Ok(()),
        Some(serde_json::Value::String(asked)) => Err(format!(
            "this attempt runs model {model:?}, not {asked:?}: send \"model\": {model:?}"
        )),
        _ => Err(format!(
            "the request names no \"model\": send \"model\": {model:?}"
        )),
    }
}

/// How long the provider may take to start answering: the provider's idle
/// timeout, as kiln-model's own client allows.
fn wait_for_answer(provider: &ProviderConfig) -> Duration {
    provider.stream_idle_timeout
}

/// The provider's error answer, cut at [`MAX_ERROR_BODY`], with the key
/// replaced wherever it appears.
async fn redacted_error_body(answer: reqwest::Response, key: Option<&str>) -> Bytes {
    let mut body = Vec::new();
    let mut stream = answer.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = MAX_ERROR_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    let Some(key) = key.filter(|key| !key.is_empty()) else {
        return Bytes::from(body);
    };
    let text = String::from_utf8_lossy(&body);
    if !text.contains(key) {
        return Bytes::from(body);
    }
    Bytes::from(text.replace(key, "[redacted]"))
}

fn unreachable(provider: &ProviderConfig, detail: &str) -> Response {
    tracing::warn!(
        provider = %provider.name,
        "the model pass-through could not reach the provider: {detail}"
    );
    refused(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        format!(
            "the server could not reach its model provider {} ({detail}); the request was not \
             sent, try again or ask the server's administrator",
            provider.name
        ),
    )
}

/// reqwest's error and its causes, the way kiln-model reports them.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn refused(status: StatusCode, code: &'static str, message: String) -> Response {
    (
        status,
        axum::Json(ErrorBody {
            error: ErrorDetail { code, message },
        }),
    )
        .into_response()
}

#[cfg(test)]
#[path = "model_proxy_tests.rs"]
mod tests;
