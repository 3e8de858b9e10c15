//! The worker protocol's HTTP client: the worker token's claim, and the
//! lease token's heartbeat, event upload and finish for one attempt.
//!
//! Requests that fail on the way (no connection, a 5xx, a 429) are sent
//! again with backoff. Every lease call is refused locally once the lease is
//! lost: after a 409 (or 401/404: the lease token no longer names a held
//! lease) nothing more about the attempt leaves this process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::worker::{
    AttemptAddress, ClaimRequest, EventBatch, EventBatchReply, FinishRequest, HeartbeatReply,
    WorkerClaim,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::WorkerError;

/// How long the server may hold a claim open; it caps this itself (30 s).
pub const DEFAULT_CLAIM_WAIT_SECS: u32 = 25;

/// Time a lease call gets before it counts as failed on the way.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits between tries of a request that failed on the way.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// Sends in all, the first one included.
    pub tries: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(3),
            tries: 6,
        }
    }
}

impl Backoff {
    fn delay(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(16));
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// The server, as the worker token sees it.
#[derive(Clone)]
pub struct ServerClient {
    http: reqwest::Client,
    base: String,
    token: String,
    backoff: Backoff,
}

impl std::fmt::Debug for ServerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ServerClient {
    /// A client for the kiln server at `server` (`http://` or `https://`,
    /// without a path), authenticating with the worker token `token`.
    pub fn new(server: &str, token: &str) -> Result<Self, WorkerError> {
        let base = validate_server(server)?;
        let token = token.trim();
        if token.is_empty() {
            return Err(WorkerError::MissingToken);
        }
        let http = reqwest::Client::builder()
            // A redirect would carry the worker's tokens to another place.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|err| WorkerError::InvalidServer {
                server: server.to_string(),
                problem: format!("cannot build an HTTP client: {err}"),
            })?;
        Ok(ServerClient {
            http,
            base,
            token: token.to_string(),
            backoff: Backoff::default(),
        })
    }

    /// The same client with other waits between tries.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The server's URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Asks for an attempt, waiting up to `request.wait_secs` on the server
    /// for one to come: `None` when nothing came.
    ///
    /// Sent once (the caller's loop tries again): a claim whose answer was
    /// lost is an attempt this worker never hears of, whose lease expires.
    pub async fn claim(&self, request: &ClaimRequest) -> Result<Option<WorkerClaim>, WorkerError> {
        let what = "the claim";
        let url = format!("{}/api/worker/claim", self.base);
        let timeout = Duration::from_secs(u64::from(request.wait_secs) + 15);
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .timeout(timeout)
            .json(request)
            .send()
            .await
            .map_err(|err| unreachable(&self.base, what, &err))?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(WorkerError::Unauthorized {
                server: self.base.clone(),
                status: status.as_u16(),
                message: error_message(response).await,
            });
        }
        let claim: WorkerClaim = read_answer(&self.base, what, response).await?;
        validate_claim(&self.base, &claim)?;
        Ok(Some(claim))
    }

    /// The calls about `claim`'s attempt, with its lease token.
    pub fn lease(&self, claim: &WorkerClaim) -> LeaseClient {
        LeaseClient {
            http: self.http.clone(),
            base: self.base.clone(),
            address: claim.attempt.clone(),
            lease_token: claim.lease_token.clone(),
            backoff: self.backoff,
            lost: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The calls about one claimed attempt. Clones share the lease's state: once
/// one of them learns the lease is lost, none sends anything more.
#[derive(Clone)]
pub struct LeaseClient {
    http: reqwest::Client,
    base: String,
    address: AttemptAddress,
    lease_token: String,
    backoff: Backoff,
    lost: Arc<AtomicBool>,
}

impl std::fmt::Debug for LeaseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseClient")
            .field("base", &self.base)
            .field("address", &self.address)
            .field("lost", &self.lease_lost())
            .finish_non_exhaustive()
    }
}

impl LeaseClient {
    pub fn address(&self) -> &AttemptAddress {
        &self.address
    }

    /// The lease token (the attempt's git and model credential).
    pub fn lease_token(&self) -> &str {
        &self.lease_token
    }

    /// `{server}/api/worker/attempts/{task}/{n}` followed by `suffix`.
    pub fn attempt_url(&self, suffix: &str) -> String {
        format!(
            "{}/api/worker/attempts/{}/{}{suffix}",
            self.base, self.address.task_id, self.address.n
        )
    }

    /// The lease is gone (or given up): nothing more is sent.
    pub fn lease_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Stop writing about the attempt from now on, as if the lease were
    /// lost: for an attempt this worker abandons so that the server's
    /// sweeper hands it to another worker, with a log that ends where this
    /// worker's part ended.
    pub fn give_up(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    /// Renews the lease; says whether the user cancelled and what they wrote.
    pub async fn heartbeat(&self) -> Result<HeartbeatReply, WorkerError> {
        let response = self.post("the heartbeat", "/heartbeat", &()).await?;
        read_answer(&self.base, "the heartbeat", response).await
    }

    /// Uploads `batch`, which continues the attempt's log.
    pub async fn events(&self, batch: &EventBatch) -> Result<EventBatchReply, WorkerError> {
        let response = self.post("an event batch", "/events", batch).await?;
        read_answer(&self.base, "an event batch", response).await
    }

    /// Reports the attempt's end; the lease ends with it.
    pub async fn finish(&self, request: &FinishRequest) -> Result<(), WorkerError> {
        self.post("the finish", "/finish", request).await?;
        // Nothing may be written after the end, whatever else still runs.
        self.give_up();
        Ok(())
    }

    /// POSTs `body`, trying again after failures on the way.
    async fn post(
        &self,
        what: &'static str,
        suffix: &str,
        body: &impl serde::Serialize,
    ) -> Result<reqwest::Response, WorkerError> {
        let url = self.attempt_url(suffix);
        let mut retry = 0;
        loop {
            if self.lease_lost() {
                return Err(self.lost_error());
            }
            let sent = self
                .http
                .post(&url)
                .bearer_auth(&self.lease_token)
                .timeout(CALL_TIMEOUT)
                .json(body)
                .send()
                .await;
            let error = match sent {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    if matches!(
                        status,
                        StatusCode::CONFLICT | StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND
                    ) {
                        // The lease token names no lease of this attempt any
                        // more: another worker holds it, or it ended.
                        self.give_up();
                        return Err(self.lost_error());
                    }
                    WorkerError::Refused {
                        server: self.base.clone(),
                        what,
                        status: status.as_u16(),
                        message: error_message(response).await,
                    }
                }
                Err(err) => unreachable(&self.base, what, &err),
            };
            retry += 1;
            if !error.is_transient() || retry >= self.backoff.tries {
                return Err(error);
            }
            tracing::debug!("{error}; trying again");
            tokio::time::sleep(self.backoff.delay(retry - 1)).await;
        }
    }

    fn lost_error(&self) -> WorkerError {
        WorkerError::LeaseLost {
            address: self.address.clone(),
        }
    }
}

fn validate_server(server: &str) -> Result<String, WorkerError> {
    let invalid = |problem: &str| WorkerError::InvalidServer {
        server: server.to_string(),
        problem: problem.to_string(),
    };
    let base = server.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(base).map_err(|err| invalid(&err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("only http:// and https:// servers are supported"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "put no credentials in the URL (the worker token goes in KILN_TOKEN)",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a server URL has no query or fragment"));
    }
    Ok(base.to_string())
}

/// A claim's names end up in URLs and directory names: refuse anything
/// but plain ids, whoever answered.
fn validate_claim(server: &str, claim: &WorkerClaim) -> Result<(), WorkerError> {
    let bad = |detail: String| WorkerError::BadAnswer {
        server: server.to_string(),
        what: "the claim",
        detail,
    };
    let id = &claim.attempt.task_id;
    let plain = |text: &str| {
        !text.is_empty()
            && text.len() <= 128
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !plain(id) {
        return Err(bad(format!("task id {id:?} is not a plain id")));
    }
    if claim.lease_token.trim().is_empty() {
        return Err(bad("the lease token is empty".into()));
    }
    let expected = format!("kiln/{id}/{}", claim.attempt.n);
    if claim.repository.branch != expected {
        return Err(bad(format!(
            "the branch {:?} is not the attempt's ({expected})",
            claim.repository.branch
        )));
    }
    let git_path = format!("/api/worker/attempts/{id}/{}/git", claim.attempt.n);
    if claim.repository.git_path != git_path {
        return Err(bad(format!(
            "the repository path {:?} is not the attempt's ({git_path})",
            claim.repository.git_path
        )));
    }
    let base = &claim.repository.base_commit;
    if !matches!(base.len(), 40 | 64) || !base.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(format!("the base commit {base:?} is not a commit id")));
    }
    if claim.repository.mirror_key.trim().is_empty() {
        return Err(bad("the mirror key is empty".into()));
    }
    Ok(())
}

fn unreachable(server: &str, what: &'static str, err: &reqwest::Error) -> WorkerError {
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    WorkerError::Unreachable {
        server: server.to_string(),
        what,
        detail,
    }
}

async fn read_answer<T: DeserializeOwned>(
    server: &str,
    what: &'static str,
    response: reqwest::Response,
) -> Result<T, WorkerError> {
    let status = response.status();
    if !status.is_success() {
        return Err(WorkerError::Refused {
            server: server.to_string(),
            what,
            status: status.as_u16(),
            message: error_message(response).await,
        });
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|err| unreachable(server, what, &err))?;
    serde_json::from_slice(&bytes).map_err(|err| WorkerError::BadAnswer {
        server: server.to_string(),
        what,
        detail: err.to_string(),
    })
}

/// The server's `{"error": {"message"}}`, else the start of its body.
async fn error_message(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.chars().take(300).collect())
}
