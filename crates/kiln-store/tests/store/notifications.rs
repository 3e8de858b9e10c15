use std::time::Duration;

use kiln_protocol::{AttemptStatus, Event, EventKind};
use kiln_store::{AttemptRef, AttemptReport, Backend, Change, TaskStatus, Wake};

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

    async fn every_task_status_change_is_notified_in_this_process_and_others(t) {
        let me = t.user("me").await;
        let elsewhere = t.reopen_with_poll_interval(Duration::from_secs(30)).await;
        let task = t.task(&me, 1).await;
        let id = task.task.id.clone();
        let status_changed = Wake::Changed(Change::TaskStatus { task_id: id.clone() });
        let mut here = t.store.subscribe();
        let mut there = elsewhere.subscribe();

        let claimed = t.store.claim_next("w", Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(here.wait_for_task(&id).await, status_changed);
        assert_eq!(t.store.task(&me, &id).await.unwrap().task.status, TaskStatus::Running);

        t.store
            .finish("w", &claimed.attempt, &AttemptReport::new(AttemptStatus::Succeeded))
            .await
            .unwrap();
        assert_eq!(here.wait_for_task(&id).await, status_changed);
        assert_eq!(t.store.task(&me, &id).await.unwrap().task.status, TaskStatus::Succeeded);

        if t.backend == Backend::Postgres {
            // Through NOTIFY, only once each transaction committed.
            assert_eq!(there.wait_for_task(&id).await, status_changed);
            assert_eq!(there.wait_for_task(&id).await, status_changed);
        }
    }

    async fn a_transition_that_keeps_the_task_status_is_not_notified_as_a_status_change(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 2).await;
        let id = task.task.id.clone();
        t.store.claim_next("w", Duration::from_secs(60)).await.unwrap().unwrap();
        let mut sub = t.store.subscribe();
        // The second claim leaves the task `running`.
        let second = t.store.claim_next("w", Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(second.attempt.n, 2);
        let marker = t
            .store
            .append_event(&second.attempt, &Event::new(second.next_seq, EventKind::Warning { message: "x".into() }))
            .await
            .unwrap();
        assert_eq!(
            sub.wait_for_task(&id).await,
            Wake::Changed(Change::Events { task_id: id.clone(), last_id: marker.last_id.unwrap() })
        );
    }
}
