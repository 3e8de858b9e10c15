//! The scripted OpenAI-compatible HTTP server: real TCP, real SSE, one scripted
//! turn per request, every request recorded.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::render::{answer_delay, render, Answer, ReplyContext, StreamPlan, WireApi};
use crate::script::{Script, Turn};

/// One request the server received, kept for assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path without the query string, e.g. `/v1/responses`.
    pub path: String,
    pub query: Option<String>,
    /// Header names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub body: Value,
    pub body_text: String,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Which wire API the request addressed, if any.
    pub fn wire_api(&self) -> Option<WireApi> {
        wire_api_for_path(&self.path)
    }
}

/// A running scripted model server, stopped when dropped.
///
/// Turns are consumed in order, one per request to either endpoint; once the
/// script is exhausted every request gets a 500 JSON error saying so, so a test
/// that makes one request too many fails loudly instead of hanging. A request
/// whose user messages contain a [`crate::Route`]'s marker is answered from that
/// route's own turns instead (exhausting it is the same loud error).
pub struct ScriptedServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    state: Mutex<ScriptState>,
    /// Woken on every recorded request, for [`ScriptedServer::wait_for_requests`].
    request_arrived: tokio::sync::Notify,
    /// Woken by [`ScriptedServer::release`], for turns held on a gate.
    gate_opened: tokio::sync::Notify,
    started_at: u64,
}

struct ScriptState {
    remaining: VecDeque<Turn>,
    routes: Vec<RouteState>,
    served: usize,
    requests: Vec<RecordedRequest>,
    /// Gates released so far (see [`Turn::Held`]).
    released: std::collections::HashSet<String>,
}

struct RouteState {
    marker: String,
    remaining: VecDeque<Turn>,
    served: usize,
}

impl ScriptState {
    /// Takes the next turn for a request whose user messages read `user_text`:
    /// from the first route whose marker occurs there, else from the default turns.
    /// The error names what ran out.
    fn take_turn(&mut self, user_text: &str) -> Result<(Turn, usize), String> {
        let route = self
            .routes
            .iter_mut()
            .find(|route| user_text.contains(&route.marker));
        let turn = match route {
            Some(route) => match route.remaining.pop_front() {
                Some(turn) => {
                    route.served += 1;
                    turn
                }
                None => {
                    return Err(format!(
                        "kiln-testkit: route {:?} exhausted after {} turns",
                        route.marker, route.served
                    ))
                }
            },
            None => match self.remaining.pop_front() {
                Some(turn) => turn,
                None => {
                    let default_served =
                        self.served - self.routes.iter().map(|r| r.served).sum::<usize>();
                    return Err(format!(
                        "kiln-testkit: script exhausted after {default_served} turns"
                    ));
                }
            },
        };
        // Counted across all routes, so call ids and request ids stay unique.
        self.served += 1;
        Ok((turn, self.served))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ScriptState> {
        // A panic while holding the lock cannot leave the state half-written
        // (every critical section is a single push or pop), so a poisoned lock
        // is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ScriptedServer {
    /// Starts a server on `127.0.0.1` at a free port.
    ///
    /// # Panics
    /// When no loopback port can be bound; test support has no better answer.
    pub async fn start(script: Script) -> ScriptedServer {
        match ScriptedServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), script).await {
            Ok(server) => server,
            Err(error) => panic!("kiln-testkit: cannot bind a loopback port: {error}"),
        }
    }

    /// Starts a server on `addr` (port 0 picks a free one).
    pub async fn bind(addr: SocketAddr, script: Script) -> std::io::Result<ScriptedServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(ScriptState {
                remaining: script.turns.into(),
                routes: script
                    .routes
                    .into_iter()
                    .map(|route| RouteState {
                        marker: route.marker,
                        remaining: route.turns.into(),
                        served: 0,
                    })
                    .collect(),
                served: 0,
                requests: Vec::new(),
                released: std::collections::HashSet::new(),
            }),
            request_arrived: tokio::sync::Notify::new(),
            gate_opened: tokio::sync::Notify::new(),
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs()),
        });
        let router = Router::new()
            .route("/v1/responses", post(answer))
            .route("/responses", post(answer))
            .route("/v1/chat/completions", post(answer))
            .route("/chat/completions", post(answer))
            .route("/v1/models", get(list_models))
            .route("/models", get(list_models))
            .fallback(unknown_route)
            .with_state(Arc::clone(&shared));
        // Without TCP_NODELAY a streamed answer's second small write waits
        // for the client's delayed ACK (40 ms on Linux) once the connection
        // has left quick-ACK mode: every turn after the first few would pay it.
        let listener = listener.tap_io(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!("kiln-testkit: cannot set TCP_NODELAY: {error}");
            }
        });
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!("kiln-testkit server stopped: {error}");
            }
        });
        Ok(ScriptedServer { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT/v1`, what a provider's `base_url` should be.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in order (including ones that got errors).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// How many scripted turns have been handed out.
    pub fn turns_served(&self) -> usize {
        self.shared.lock().served
    }

    /// How many scripted turns are left, routes included.
    pub fn turns_remaining(&self) -> usize {
        let state = self.shared.lock();
        state.remaining.len()
            + state
                .routes
                .iter()
                .map(|route| route.remaining.len())
                .sum::<usize>()
    }

    /// Waits until at least `count` requests have arrived, or `timeout` passes
    /// (then says how many came), for tests whose client runs in the background.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before checking, so a request arriving in
            // between still wakes us.
            let arrived = self.shared.request_arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let received = self.shared.lock().requests.len();
            if received >= count {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(format!(
                    "kiln-testkit: {received} of {count} expected requests arrived within {timeout:?}"
                ));
            }
        }
    }

    /// Opens `gate`: turns held on it (see [`Turn::held`]) answer now, and
    /// later ones answer at once.
    pub fn release(&self, gate: &str) {
        self.shared.lock().released.insert(gate.to_string());
        self.shared.gate_opened.notify_waiters();
    }

    /// Appends a turn to the end of the default turns.
    pub fn push_turn(&self, turn: Turn) {
        self.shared.lock().remaining.push_back(turn);
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn wire_api_for_path(path: &str) -> Option<WireApi> {
    match path.strip_prefix("/v1").unwrap_or(path) {
        "/responses" => Some(WireApi::Responses),
        "/chat/completions" => Some(WireApi::Chat),
        _ => None,
    }
}

fn record(method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> RecordedRequest {
    let body_text = String::from_utf8_lossy(body).into_owned();
    RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: serde_json::from_str(&body_text).unwrap_or(Value::Null),
        body_text,
    }
}

/// The text of every user message in a request, in either wire format
/// (Responses `input`, Chat Completions `messages`), joined by newlines: what
/// route markers are looked for in.
fn user_message_text(body: &Value) -> String {
    let mut texts: Vec<&str> = Vec::new();
    if let Some(input) = body.get("input").and_then(Value::as_str) {
        texts.push(input);
    }
    let messages = ["input", "messages"]
        .iter()
        .filter_map(|key| body.get(key).and_then(Value::as_array))
        .flatten()
        .filter(|message| message.get("role").and_then(Value::as_str) == Some("user"));
    for message in messages {
        match message.get("content") {
            Some(Value::String(text)) => texts.push(text),
            Some(Value::Array(parts)) => texts.extend(
                parts
                    .iter()
                    .filter_map(|part| part.get("text").and_then(Value::as_str)),
            ),
            _ => {}
        }
    }
    texts.join("\n")
}

fn json_error(status: StatusCode, message: String) -> Response {
    let body = json!({"error": {"message": message, "type": "kiln_testkit", "code": null}});
    (status, axum::Json(body)).into_response()
}

/// What `kiln doctor` asks to see that the endpoint answers and the key is
/// accepted: one model, the scripted one. Recorded like every request, so a
/// test can check the credentials that came with it.
async fn list_models(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared
        .lock()
        .requests
        .push(record(&method, &uri, &headers, &body));
    shared.request_arrived.notify_waiters();
    axum::Json(serde_json::json!({
        "object": "list",
        "data": [{"id": "kiln-testkit", "object": "model", "owned_by": "kiln-testkit"}]
    }))
    .into_response()
}

async fn unknown_route(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared
        .lock()
        .requests
        .push(record(&method, &uri, &headers, &body));
    shared.request_arrived.notify_waiters();
    json_error(
        StatusCode::NOT_FOUND,
        format!(
            "kiln-testkit serves POST /v1/responses and POST /v1/chat/completions, not {method} {}",
            uri.path()
        ),
    )
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = record(&method, &uri, &headers, &body);
    let user_text = user_message_text(&request.body);
    let wire = wire_api_for_path(&request.path).unwrap_or(WireApi::Responses);
    let model = request
        .body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("scripted-model")
        .to_string();
    // Recording and taking the turn under one lock keeps the n-th recorded
    // request paired with the n-th turn even when requests race.
    let next = {
        let mut state = shared.lock();
        state.requests.push(request);
        state.take_turn(&user_text)
    };
    shared.request_arrived.notify_waiters();
    let (turn, turn_number) = match next {
        Ok(next) => next,
        Err(message) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, message),
    };
    let ctx = ReplyContext {
        turn_number,
        model,
        created_at: shared.started_at,
        request_bytes: body.len(),
    };
    for gate in crate::render::held_gates(&turn) {
        loop {
            // Register interest before checking, so a release in between
            // still wakes us.
            let opened = shared.gate_opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if shared.lock().released.contains(gate) {
                break;
            }
            opened.await;
        }
    }
    let delay = answer_delay(&turn);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match render(&turn, wire, &ctx) {
        Answer::Http {
            status,
            headers,
            body,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (status, body).into_response();
            for (name, value) in headers {
                if let Ok(value) = value.parse() {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        Answer::Stream(plan) => stream_response(plan, turn_number),
    }
}

fn stream_response(plan: StreamPlan, turn_number: usize) -> Response {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(write_frames(plan, sender));
    let mut response = Body::from_stream(ReceiverStream::new(receiver)).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = format!("req_kiln_{turn_number}").parse() {
        headers.insert("x-request-id", value);
    }
    response
}

/// Writes the frames with the plan's pacing. Returns early when the client hung up.
async fn write_frames(plan: StreamPlan, sender: mpsc::Sender<Result<Bytes, Infallible>>) {
    let frame_count = plan
        .cut_after
        .map_or(plan.frames.len(), |cut| cut.min(plan.frames.len()));
    for (index, frame) in plan.frames.iter().take(frame_count).enumerate() {
        if let Some((at, duration)) = plan.stall {
            if at == index {
                tokio::time::sleep(duration).await;
            }
        }
        if index > 0 && !plan.delay_between_frames.is_zero() {
            tokio::time::sleep(plan.delay_between_frames).await;
        }
        let bytes = Bytes::from(frame.clone());
        let pieces: Vec<Bytes> = match plan.chunk_bytes {
            Some(size) => (0..bytes.len())
                .step_by(size)
                .map(|start| bytes.slice(start..(start + size).min(bytes.len())))
                .collect(),
            None => vec![bytes],
        };
        for piece in pieces {
            if sender.send(Ok(piece)).await.is_err() {
                return;
            }
            if plan.chunk_bytes.is_some() {
                // Let the connection task write this piece on its own before the next.
                tokio::task::yield_now().await;
            }
        }
    }
    if let Some((at, duration)) = plan.stall {
        if at >= frame_count {
            tokio::time::sleep(duration).await;
        }
    }
}
