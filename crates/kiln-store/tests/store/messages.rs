use std::time::Duration;

use kiln_protocol::{AttemptStatus, Event, EventKind};
use kiln_store::{AttemptRef, AttemptReport, AttemptState, StoreError, TaskStatus};

const LEASE: Duration = Duration::from_secs(60);

on_both_backends! {
    async fn messages_to_a_running_attempt_are_taken_once_in_order(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        let id = task.task.id.clone();
        t.store.enqueue_message(&me, &id, Some(1), "also fix the docs").await.unwrap();
        t.store.enqueue_message(&me, &id, Some(1), "and keep it short").await.unwrap();

        let taken = t.store.take_undelivered(&claimed.attempt).await.unwrap();
        let texts: Vec<&str> = taken.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, vec!["also fix the docs", "and keep it short"]);
        assert!(taken.iter().all(|m| m.delivered_at.is_some()));
        assert!(t.store.take_undelivered(&claimed.attempt).await.unwrap().is_empty());
        // Still running, not reopened.
        let detail = t.store.task(&me, &id).await.unwrap();
        assert_eq!(detail.attempts[0].status, AttemptState::Running);
        assert_eq!(t.store.messages(&me, &id).await.unwrap().len(), 2);
    }

    async fn message_to_all_attempts_reaches_each_of_them(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 3).await;
        let id = task.task.id.clone();
        let sent = t.store.enqueue_message(&me, &id, None, "use the new API").await.unwrap();
        assert_eq!(sent.iter().map(|m| m.attempt).collect::<Vec<_>>(), vec![1, 2, 3]);
        for n in 1..=3 {
            let taken = t.store.take_undelivered(&AttemptRef::new(id.clone(), n)).await.unwrap();
            assert_eq!(taken.len(), 1, "attempt {n}");
            assert_eq!(taken[0].text, "use the new API");
        }
    }

    async fn follow_up_reopens_a_finished_attempt_to_resume_it(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 2).await;
        let id = task.task.id.clone();
        for _ in 0..2 {
            let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
            let event = Event::new(claimed.next_seq, EventKind::Warning { message: "done".into() });
            t.store.append_event(&claimed.attempt, &event).await.unwrap();
            t.store
                .finish("w", &claimed.attempt, &AttemptReport::new(AttemptStatus::Succeeded))
                .await
                .unwrap();
        }
        assert_eq!(t.store.task(&me, &id).await.unwrap().task.status, TaskStatus::Succeeded);

        t.store.enqueue_message(&me, &id, Some(2), "now add a test").await.unwrap();
        let detail = t.store.task(&me, &id).await.unwrap();
        assert_eq!(detail.attempts[1].status, AttemptState::Queued);
        assert_eq!(detail.attempts[0].status, AttemptState::Succeeded);
        assert_eq!(detail.task.status, TaskStatus::Running);

        let resumed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        assert_eq!(resumed.attempt, AttemptRef::new(id.clone(), 2));
        assert!(resumed.resume);
        // seq 1 the worker's warning, 2 the store's task.ranked at the finish.
        assert_eq!(resumed.next_seq, 3, "the log continues");
        let taken = t.store.take_undelivered(&resumed.attempt).await.unwrap();
        assert_eq!(taken[0].text, "now add a test");
    }

    async fn bad_messages_are_refused(t) {
        let me = t.user("me").await;
        let other = t.user("other").await;
        let task = t.task(&me, 1).await;
        let id = task.task.id.clone();
        let err = t.store.enqueue_message(&me, &id, Some(2), "x").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        let err = t.store.enqueue_message(&me, &id, None, " \n").await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput { field: "text", .. }), "{err}");
        let err = t.store.enqueue_message(&other, &id, None, "hi").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        let huge = "x".repeat(kiln_store::MAX_MESSAGE_BYTES + 1);
        let err = t.store.enqueue_message(&me, &id, None, &huge).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput { field: "text", .. }), "{err}");
    }
}
