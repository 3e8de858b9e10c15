//! The worker's side of the protocol against a small fake of `kiln serve`
//! (real HTTP): claims, event upload, heartbeats, lost leases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use kiln_agent::EventLog;
use kiln_protocol::worker::{
    AttemptAddress, ClaimRequest, ClaimedLimits, ClaimedRepository, ClaimedSandbox, EventBatch,
    EventBatchReply, HeartbeatReply, WorkerClaim, WorkerIdentity,
};
use kiln_protocol::{EventKind, EventSink, Mode};
use kiln_worker::{Backoff, Heartbeats, ServerClient, UploadEnd, Uploader, WorkerError};
use tokio_util::sync::CancellationToken;

const WORKER_TOKEN: &str = "worker-token";
const LEASE_TOKEN: &str = "lease-token-of-T1";

/// What the fake answers and what it received.
#[derive(Default)]
struct Fake {
    /// Claim answer: `None` = 204.
    claim: Option<WorkerClaim>,
    /// Status codes to answer the next event batches with, before accepting.
    event_failures: Vec<StatusCode>,
    /// Answer every lease call with 409 from now on.
    lease_lost: bool,
    heartbeat_replies: Vec<HeartbeatReply>,
    /// Every request: (path, authorization header).
    requests: Vec<(String, String)>,
    /// Stored events' seqs, in order; and each accepted batch's size.
    stored: Vec<u64>,
    batches: Vec<usize>,
}

type Shared = Arc<Mutex<Fake>>;

async fn start(fake: Fake) -> (String, Shared) {
    let shared = Arc::new(Mutex::new(fake));
    let app = Router::new()
        .route("/api/worker/claim", post(claim))
        .route("/api/worker/attempts/{task}/{n}/heartbeat", post(heartbeat))
        .route("/api/worker/attempts/{task}/{n}/events", post(events))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), shared)
}

fn record(fake: &Shared, path: String, headers: &HeaderMap) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    fake.lock().unwrap().requests.push((path, auth));
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": "x", "message": message}})),
    )
        .into_response()
}

async fn claim(
    State(fake): State<Shared>,
    headers: HeaderMap,
    Json(_request): Json<ClaimRequest>,
) -> Response {
    record(&fake, "/api/worker/claim".into(), &headers);
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {WORKER_TOKEN}"))
    {
        return error(StatusCode::FORBIDDEN, "only worker tokens claim attempts");
    }
    match fake.lock().unwrap().claim.clone() {
        Some(claim) => Json(claim).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

fn lease_check(fake: &Shared, headers: &HeaderMap) -> Option<Response> {
    let state = fake.lock().unwrap();
    if state.lease_lost {
        return Some(error(StatusCode::CONFLICT, "lease lost"));
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {LEASE_TOKEN}"))
    {
        return Some(error(StatusCode::NOT_FOUND, "no such lease"));
    }
    None
}

async fn heartbeat(
    State(fake): State<Shared>,
    Path((task, n)): Path<(String, u32)>,
    headers: HeaderMap,
) -> Response {
    record(&fake, format!("/{task}/{n}/heartbeat"), &headers);
    if let Some(refused) = lease_check(&fake, &headers) {
        return refused;
    }
    let mut state = fake.lock().unwrap();
    let reply = if state.heartbeat_replies.is_empty() {
        HeartbeatReply {
            lease_secs: 1,
            cancel_requested: false,
            messages: Vec::new(),
        }
    } else {
        state.heartbeat_replies.remove(0)
    };
    Json(reply).into_response()
}

async fn events(
    State(fake): State<Shared>,
    Path((task, n)): Path<(String, u32)>,
    headers: HeaderMap,
    Json(batch): Json<EventBatch>,
) -> Response {
    record(&fake, format!("/{task}/{n}/events"), &headers);
    if let Some(refused) = lease_check(&fake, &headers) {
        return refused;
    }
    let mut state = fake.lock().unwrap();
    if !state.event_failures.is_empty() {
        let status = state.event_failures.remove(0);
        return error(status, "try again");
    }
    // As the server does: repeated seqs are accepted once, a gap is refused.
    let mut next = state.stored.last().map_or(1, |s| s + 1);
    for event in &batch.events {
        if event.seq < next {
            continue;
        }
        if event.seq > next {
            return error(StatusCode::BAD_REQUEST, "gap");
        }
        state.stored.push(event.seq);
        next += 1;
    }
    state.batches.push(batch.events.len());
    Json(EventBatchReply { next_seq: next }).into_response()
}

fn a_claim() -> WorkerClaim {
    WorkerClaim {
        attempt: AttemptAddress {
            task_id: "T1".into(),
            n: 1,
        },
        lease_token: LEASE_TOKEN.into(),
        lease_secs: 1,
        try_number: 1,
        next_seq: 1,
        mode: Mode::Code,
        model: "m".into(),
        wire_api: "chat".into(),
        prompt: "fix it".into(),
        resume: false,
        history: Vec::new(),
        repository: ClaimedRepository {
            git_path: "/api/worker/attempts/T1/1/git".into(),
            base_commit: "0".repeat(40),
            branch: "kiln/T1/1".into(),
            mirror_key: "repo".into(),
        },
        sandbox: ClaimedSandbox {
            network: false,
            env: BTreeMap::new(),
            image: None,
        },
        setup: None,
        limits: ClaimedLimits {
            max_turns: 5,
            max_total_tokens: None,
            max_cost_usd: None,
            price: None,
            wall_clock_secs: None,
            command_timeout_secs: 10,
            max_command_timeout_secs: 10,
            context_window: 100_000,
            check_fix_turns: None,
            check_timeout_secs: None,
        },
        checks: Vec::new(),
    }
}

fn request() -> ClaimRequest {
    ClaimRequest {
        worker: WorkerIdentity {
            name: "w".into(),
            version: "0".into(),
        },
        wait_secs: 0,
    }
}

fn quick() -> Backoff {
    Backoff {
        first: Duration::from_millis(5),
        max: Duration::from_millis(20),
        tries: 4,
    }
}

/// Waits for `token` (a guard against a hang, not a timing assertion).
async fn cancelled(token: &CancellationToken) {
    tokio::time::timeout(Duration::from_secs(20), token.cancelled())
        .await
        .expect("the attempt was never cancelled");
}

#[tokio::test]
async fn a_token_that_is_not_a_worker_token_cannot_claim_and_is_told_what_to_do() {
    let (server, _fake) = start(Fake::default()).await;
    let client = ServerClient::new(&server, "a-user-token").unwrap();
    let err = client.claim(&request()).await.unwrap_err();
    assert!(
        matches!(err, WorkerError::Unauthorized { status: 403, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("kiln token create --worker"), "{message}");
    assert!(message.contains(&server), "{message}");
}

#[tokio::test]
async fn a_claim_is_none_when_nothing_came_and_the_attempt_when_one_did() {
    let (server, fake) = start(Fake::default()).await;
    let client = ServerClient::new(&server, WORKER_TOKEN).unwrap();
    assert_eq!(client.claim(&request()).await.unwrap(), None);
    fake.lock().unwrap().claim = Some(a_claim());
    assert_eq!(client.claim(&request()).await.unwrap(), Some(a_claim()));
}

#[tokio::test]
async fn a_claim_whose_names_would_escape_the_attempt_is_refused() {
    let mut hostile = a_claim();
    hostile.attempt.task_id = "../../etc".into();
    hostile.repository.branch = "kiln/../../etc/1".into();
    hostile.repository.git_path = "/api/worker/attempts/../../etc/1/git".into();
    let (server, _fake) = start(Fake {
        claim: Some(hostile),
        ..Fake::default()
    })
    .await;
    let client = ServerClient::new(&server, WORKER_TOKEN).unwrap();
    let err = client.claim(&request()).await.unwrap_err();
    assert!(matches!(err, WorkerError::BadAnswer { .. }), "{err:?}");

    let mut other_branch = a_claim();
    other_branch.repository.branch = "main".into();
    let (server, _fake) = start(Fake {
        claim: Some(other_branch),
        ..Fake::default()
    })
    .await;
    let client = ServerClient::new(&server, WORKER_TOKEN).unwrap();
    let err = client.claim(&request()).await.unwrap_err();
    assert!(err.to_string().contains("not the attempt's"), "{err}");
}

#[tokio::test]
async fn a_server_url_with_credentials_or_another_scheme_is_refused() {
    for url in [
        "ftp://kiln.example",
        "http://user:pw@kiln.example",
        "not a url",
    ] {
        let err = ServerClient::new(url, WORKER_TOKEN).unwrap_err();
        assert!(
            matches!(err, WorkerError::InvalidServer { .. }),
            "{url}: {err:?}"
        );
    }
    assert!(matches!(
        ServerClient::new("http://kiln.example", " ").unwrap_err(),
        WorkerError::MissingToken
    ));
}

#[tokio::test]
async fn events_reach_the_server_in_order_in_batches_before_the_upload_finishes() {
    let (server, fake) = start(Fake::default()).await;
    let client = ServerClient::new(&server, WORKER_TOKEN).unwrap();
    let lease = client.lease(&a_claim());
    let cancel = CancellationToken::new();
    let (sink, uploader) = Uploader::start(lease, cancel.clone());
    let log = EventLog::new(1, vec![Arc::new(sink) as Arc<dyn EventSink>]);
    let total = kiln_worker::MAX_BATCH as u64 * 2 + 7;
    for i in 0..total {
        log.emit(EventKind::Warning {
            message: format!("event {i}"),
        });
    }
    assert_eq!(uploader.finish().await, UploadEnd::Delivered);
    let state = fake.lock().unwrap();
    assert_eq!(state.stored, (1..=total).collect::<Vec<u64>>());
    assert!(state.batches.len() >= 3, "{:?}", state.batches);
    assert!(state.batches.iter().all(|&n| n <= kiln_worker::MAX_BATCH));
    assert!(state
        .requests
        .iter()
        .all(|(_, auth)| auth == &format!("Bearer {LEASE_TOKEN}")));
    assert!(!cancel.is_cancelled());
}

#[tokio::test]
async fn a_batch_the_server_did_not_take_is_sent_again_without_gap_or_duplicate() {
    let (server, fake) = start(Fake {
        event_failures: vec![
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::SERVICE_UNAVAILABLE,
        ],
        ..Fake::default()
    })
    .await;
    let client = ServerClient::new(&server, WORKER_TOKEN)
        .unwrap()
        .with_backoff(quick());
    let (sink, uploader) = Uploader::start(client.lease(&a_claim()), CancellationToken::new());
    let log = EventLog::new(1, vec![Arc::new(sink) as Arc<dyn EventSink>]);
    for i in 0..50 {
        log.emit(EventKind::Warning {
            message: format!("event {i}"),
        });
    }
    assert_eq!(uploader.finish().await, UploadEnd::Delivered);
    assert_eq!(fake.lock().unwrap().stored, (1..=50).collect::<Vec<u64>>());
}

#[tokio::test]
async fn after_the_lease_is_lost_nothing_more_is_sent_and_the_attempt_stops() {
    let (server, fake) = start(Fake::default()).await;
    let client = ServerClient::new(&server, WORKER_TOKEN).unwrap();
    let lease = client.lease(&a_claim());
    let cancel = CancellationToken::new();
    let (sink, uploader) = Uploader::start(lease.clone(), cancel.clone());
    let log = EventLog::new(1, vec![Arc::new(sink) as Arc<dyn EventSink>]);
    fake.lock().unwrap().lease_lost = true;
    log.emit(EventKind::Warning {
        message: "first".into(),
    });
    cancelled(&cancel).await;
    let sent = fake.lock().unwrap().requests.len();
    for _ in 0..10 {
        log.emit(EventKind::Warning {
            message: "after".into(),
        });
    }
    assert_eq!(uploader.finish().await, UploadEnd::LeaseLost);
    assert!(matches!(
        lease.heartbeat().await,
        Err(WorkerError::LeaseLost { .. })
    ));
    let state = fake.lock().unwrap();
    assert_eq!(state.requests.len(), sent, "{:?}", state.requests);
    assert!(state.stored.is_empty());
}

#[tokio::test]
async fn a_heartbeat_brings_the_users_cancel_and_messages_in_order() {
    let messages: Vec<String> = (0..100).map(|i| format!("message {i}")).collect();
    let (server, _fake) = start(Fake {
        heartbeat_replies: vec![
            HeartbeatReply {
                lease_secs: 1,
                cancel_requested: false,
                messages: messages.clone(),
            },
            HeartbeatReply {
                lease_secs: 1,
                cancel_requested: true,
                messages: Vec::new(),
            },
        ],
        ..Fake::default()
    })
    .await;
    let client = ServerClient::new(&server, WORKER_TOKEN).unwrap();
    let cancel = CancellationToken::new();
    let (heartbeats, mut steering) = Heartbeats::start(
        client.lease(&a_claim()),
        Duration::from_millis(300),
        cancel.clone(),
    );
    // More messages than the steering channel holds: none is lost, none
    // blocks the heartbeat that brings the cancel.
    let mut got = Vec::new();
    while got.len() < messages.len() {
        let text = tokio::time::timeout(Duration::from_secs(20), steering.recv())
            .await
            .expect("messages stopped coming")
            .expect("the channel closed");
        got.push(text);
    }
    assert_eq!(got, messages);
    cancelled(&cancel).await;
    assert!(!heartbeats.lease_lost());
    assert_eq!(heartbeats.received(), messages);
    heartbeats.stop().await;
}

#[tokio::test]
async fn a_heartbeat_answered_409_cancels_the_attempt_and_marks_the_lease_lost() {
    let (server, fake) = start(Fake {
        lease_lost: true,
        ..Fake::default()
    })
    .await;
    let client = ServerClient::new(&server, WORKER_TOKEN).unwrap();
    let lease = client.lease(&a_claim());
    let cancel = CancellationToken::new();
    let (heartbeats, _steering) =
        Heartbeats::start(lease.clone(), Duration::from_millis(300), cancel.clone());
    cancelled(&cancel).await;
    // The flag is set before the cancel.
    assert!(heartbeats.lease_lost());
    assert!(lease.lease_lost());
    heartbeats.stop().await;
    assert_eq!(fake.lock().unwrap().requests.len(), 1);
}

#[tokio::test]
async fn a_server_gone_for_a_whole_lease_counts_as_a_lost_lease() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = ServerClient::new(&server, WORKER_TOKEN)
        .unwrap()
        .with_backoff(quick());
    let lease = client.lease(&a_claim());
    let cancel = CancellationToken::new();
    let (heartbeats, _steering) =
        Heartbeats::start(lease.clone(), Duration::from_millis(300), cancel.clone());
    cancelled(&cancel).await;
    assert!(heartbeats.lease_lost());
    assert!(lease.lease_lost(), "nothing more may be sent");
    heartbeats.stop().await;
}

#[tokio::test]
async fn a_worker_whose_token_the_server_refuses_stops_with_the_reason() {
    let (server, fake) = start(Fake::default()).await;
    let data = tempfile::tempdir().unwrap();
    let mut policy = kiln_sandbox::SandboxPolicy::for_workspace(data.path());
    policy.backend = kiln_sandbox::Backend::None;
    let agent = kiln_agent::AgentConfig::new("m", Mode::Code, data.path());
    let mut config =
        kiln_worker::WorkerConfig::new(&server, "revoked", "w", data.path(), agent, policy);
    config.max_parallel = 3;
    let stopped = tokio::time::timeout(
        Duration::from_secs(20),
        kiln_worker::run(config, CancellationToken::new()),
    )
    .await
    .expect("the worker stops by itself");
    let err = stopped.unwrap_err();
    assert!(matches!(err, WorkerError::Unauthorized { .. }), "{err:?}");
    // No slot asked twice.
    let asked = fake.lock().unwrap().requests.len();
    assert!((1..=3).contains(&asked), "{asked} claims");
}
