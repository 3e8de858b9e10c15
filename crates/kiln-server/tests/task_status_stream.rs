//! `GET /api/tasks/{id}/events` tells of each task status change as it
//! happens. No worker pool runs here: the test moves the task through the
//! store itself, and the store's safety-net poll is an hour, so a frame that
//! arrives at all was sent because of the change notification.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kiln_protocol::api::{NewEnvironment, NewTask, TaskStatus, TaskStatusFrame, TaskStreamItem};
use kiln_protocol::sse::SseParser;
use kiln_protocol::{AttemptStatus, Event, EventKind, Usage};
use kiln_server::{Server, ServerConfig};
use kiln_store::{AttemptReport, Store, StoreOptions};

const ADMIN: &str = "kiln-test-admin-token-0123456789";
/// A deadline for a frame the server must send; not a measure of speed.
const DEADLINE: Duration = Duration::from_secs(30);

struct Stream {
    response: reqwest::Response,
    parser: SseParser,
    ready: std::collections::VecDeque<TaskStreamItem>,
}

impl Stream {
    async fn open(url: &str, task_id: &str, query: &str) -> Stream {
        let response = reqwest::Client::new()
            .get(format!("{url}/api/tasks/{task_id}/events{query}"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        Stream {
            response,
            parser: SseParser::new(),
            ready: Default::default(),
        }
    }

    /// The next frame, or `None` once the server ended the stream.
    async fn next(&mut self) -> Option<TaskStreamItem> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            let chunk = tokio::time::timeout(DEADLINE, self.response.chunk())
                .await
                .expect("a frame or the end of the stream before the deadline")
                .unwrap()?;
            for frame in self.parser.feed(&chunk).unwrap() {
                self.ready
                    .push_back(TaskStreamItem::from_frame(&frame).unwrap());
            }
        }
    }
}

fn status(task_id: &str, status: TaskStatus) -> Option<TaskStreamItem> {
    Some(TaskStreamItem::Status(TaskStatusFrame::new(
        task_id, status,
    )))
}

/// A server (API only, no workers) over a store with an hour-long poll.
async fn api_only(dir: &std::path::Path) -> (Store, String) {
    let store =
        Store::open(StoreOptions::sqlite_in_dir(dir).poll_interval(Duration::from_secs(3600)))
            .await
            .unwrap();
    store.ensure_admin_token(Some(ADMIN)).await.unwrap();
    let provider = kiln_model::ProviderConfig::builtin("ollama").unwrap();
    let agent = kiln_agent::AgentConfig::new("m", kiln_protocol::Mode::Code, dir);
    let sandbox = kiln_sandbox::SandboxPolicy::for_workspace(dir);
    let server = Server::new(
        store.clone(),
        ServerConfig::new(dir, provider, agent, sandbox),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = server.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (store, url)
}

#[tokio::test]
async fn the_stream_sends_each_status_change_in_order_and_ends_after_the_final_one() {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = api_only(dir.path()).await;
    let admin = store.verify_token(ADMIN).await.unwrap().unwrap();
    let env = NewEnvironment {
        name: "app".into(),
        repo: "/srv/git/app".into(),
        ..Default::default()
    };
    store.create_environment(&admin, &env).await.unwrap();
    let task = store
        .create_task(&admin, &NewTask::new("app", "fix the flaky test"))
        .await
        .unwrap();
    let id = task.task.id.clone();

    let mut stream = Stream::open(&url, &id, "").await;
    assert_eq!(stream.next().await, status(&id, TaskStatus::Queued));

    let claimed = store
        .claim_next("w1", Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stream.next().await, status(&id, TaskStatus::Running));

    let finished = Event::new(
        claimed.next_seq,
        EventKind::AttemptFinished {
            status: AttemptStatus::Succeeded,
            reason: None,
            final_message: Some("done".into()),
            usage: Usage::default(),
            cost_usd: None,
        },
    );
    store
        .append_event(&claimed.attempt, &finished)
        .await
        .unwrap();
    store
        .finish(
            "w1",
            &claimed.attempt,
            &AttemptReport::new(AttemptStatus::Succeeded),
        )
        .await
        .unwrap();
    match stream.next().await {
        Some(TaskStreamItem::Event { event, .. }) => {
            assert_eq!(event.attempt, 1);
            assert_eq!(event.event, finished);
        }
        other => panic!("expected attempt.finished, got {other:?}"),
    }
    // The finish changed the ranking, in the same transaction.
    match stream.next().await {
        Some(TaskStreamItem::Event { event, .. }) => {
            assert!(
                matches!(event.event.kind, EventKind::TaskRanked { .. }),
                "{event:?}"
            );
        }
        other => panic!("expected task.ranked, got {other:?}"),
    }
    assert_eq!(stream.next().await, status(&id, TaskStatus::Succeeded));
    assert_eq!(
        stream.next().await,
        None,
        "the stream ends on the final status"
    );

    // A stream opened on the finished task replays the log and ends with
    // the status too, and a resumed one sends the status after no events.
    let mut replay = Stream::open(&url, &id, "").await;
    for _ in ["attempt.finished", "task.ranked"] {
        assert!(matches!(
            replay.next().await,
            Some(TaskStreamItem::Event { .. })
        ));
    }
    assert_eq!(replay.next().await, status(&id, TaskStatus::Succeeded));
    assert_eq!(replay.next().await, None);
    let mut resumed = Stream::open(&url, &id, "?after=1000").await;
    assert_eq!(resumed.next().await, status(&id, TaskStatus::Succeeded));
    assert_eq!(resumed.next().await, None);
}

#[tokio::test]
async fn a_stream_that_does_not_follow_ends_with_the_current_status() {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = api_only(dir.path()).await;
    let admin = store.verify_token(ADMIN).await.unwrap().unwrap();
    let env = NewEnvironment {
        name: "app".into(),
        repo: "/srv/git/app".into(),
        ..Default::default()
    };
    store.create_environment(&admin, &env).await.unwrap();
    let task = store
        .create_task(&admin, &NewTask::new("app", "fix it"))
        .await
        .unwrap();
    let id = task.task.id.clone();
    let mut stream = Stream::open(&url, &id, "?follow=false").await;
    assert_eq!(stream.next().await, status(&id, TaskStatus::Queued));
    assert_eq!(stream.next().await, None);
}
