use std::time::Duration;

use kiln_protocol::{Event, EventKind};
use kiln_store::{AttemptRef, Backend, Change, Wake};

on_both_backends! {
    async fn new_task_wakes_queue_waiters(t) {
        let me = t.user("me").await;
        let mut sub = t.store.subscribe();
        t.task(&me, 1).await;
        assert_eq!(sub.wait_for_queue().await, Wake::Changed(Change::Queue));
    }

    async fn appended_events_wake_their_task_stream(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let id = task.task.id.clone();
        let mut sub = t.store.subscribe();
        let appended = t
            .store
            .append_event(&AttemptRef::new(id.clone(), 1), &Event::new(1, EventKind::Warning { message: "x".into() }))
            .await
            .unwrap();
        assert_eq!(
            sub.wait_for_events(&id).await,
            Wake::Changed(Change::Events { task_id: id.clone(), last_id: appended.last_id.unwrap() })
        );
    }

    async fn another_process_sees_changes_through_notify_or_the_poll(t) {
        let me = t.user("me").await;
        let poll = match t.backend {
            Backend::Postgres => Duration::from_secs(30),
            Backend::Sqlite => Duration::from_millis(100),
        };
        let elsewhere = t.reopen_with_poll_interval(poll).await;
        let mut sub = elsewhere.subscribe();
        t.task(&me, 1).await;
        let woke = sub.wait_for_queue().await;
        match t.backend {
            // PostgreSQL delivers it through LISTEN/NOTIFY.
            Backend::Postgres => assert_eq!(woke, Wake::Changed(Change::Queue)),
            // SQLite has no cross-process channel: the safety-net poll fires.
            Backend::Sqlite => assert_eq!(woke, Wake::PollInterval),
        }
        assert!(elsewhere.claim_next("w", Duration::from_secs(60)).await.unwrap().is_some());
    }
}
