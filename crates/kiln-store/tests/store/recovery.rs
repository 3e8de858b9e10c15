use std::time::Duration;

use kiln_protocol::{AttemptStatus, Event, EventKind};
use kiln_store::{AttemptReport, AttemptState, RecoverScope, StoreError, TaskStatus};

const LEASE: Duration = Duration::from_secs(30);

fn warning(seq: u64, text: &str) -> Event {
    Event::new(
        seq,
        EventKind::Warning {
            message: text.into(),
        },
    )
}

on_both_backends! {
    async fn expired_lease_requeues_the_attempt_and_keeps_its_events(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let id = task.task.id.clone();
        let claimed = t.store.claim_next("w1", LEASE).await.unwrap().unwrap();
        t.store.append_event(&claimed.attempt, &warning(1, "working")).await.unwrap();

        // Not yet expired: nothing to recover.
        t.clock.advance(Duration::from_secs(29));
        assert!(t.store.recover(RecoverScope::ExpiredLeases, 3).await.unwrap().requeued.is_empty());

        t.clock.advance(Duration::from_secs(2));
        let report = t.store.recover(RecoverScope::ExpiredLeases, 3).await.unwrap();
        assert_eq!(report.requeued, vec![claimed.attempt.clone()]);
        let detail = t.store.task(&me, &id).await.unwrap();
        assert_eq!(detail.attempts[0].status, AttemptState::Interrupted);
        assert!(detail.attempts[0].reason.as_deref().unwrap().contains("w1"));
        assert_eq!(detail.task.status, TaskStatus::Running);

        let log = t.store.events(&id, None, 0, 100).await.unwrap();
        assert_eq!(log.len(), 2, "the worker's event is kept and a notice added");
        let kept = log[0].event().unwrap();
        assert_eq!((kept.seq, kept.kind), (1, warning(1, "working").kind));
        assert_eq!(log[1].seq, 2);

        // The lost worker may not touch it any more.
        let err = t.store.heartbeat("w1", &claimed.attempt, LEASE).await.unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");

        // Another worker runs it again; its log continues after the notice.
        let again = t.store.claim_next("w2", LEASE).await.unwrap().unwrap();
        assert_eq!(again.attempt, claimed.attempt);
        assert_eq!(again.try_number, 2);
        assert_eq!(again.next_seq, 3);
        let err = t
            .store
            .finish("w1", &claimed.attempt, &AttemptReport::new(AttemptStatus::Succeeded))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        t.store
            .finish("w2", &again.attempt, &AttemptReport::new(AttemptStatus::Succeeded))
            .await
            .unwrap();
        assert_eq!(t.store.task(&me, &id).await.unwrap().task.status, TaskStatus::Succeeded);
    }

    async fn attempt_interrupted_max_tries_times_fails(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        for try_number in 1..=3 {
            let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
            assert_eq!(claimed.try_number, try_number);
            t.clock.advance(LEASE + Duration::from_secs(1));
            t.store.recover(RecoverScope::ExpiredLeases, 3).await.unwrap();
        }
        let detail = t.store.task(&me, &task.task.id).await.unwrap();
        assert_eq!(detail.attempts[0].status, AttemptState::Failed);
        assert_eq!(detail.attempts[0].reason.as_deref(), Some("interrupted 3 times"));
        assert_eq!(detail.task.status, TaskStatus::Failed);
        assert_eq!(t.store.claim_next("w", LEASE).await.unwrap(), None);
        let log = t.store.events(&task.task.id, Some(1), 0, 100).await.unwrap();
        let kinds: Vec<EventKind> =
            log.iter().rev().take(2).map(|e| e.event().unwrap().kind).collect();
        // The finish, then the ranking it changed.
        assert!(matches!(kinds[0], EventKind::TaskRanked { .. }), "{kinds:?}");
        assert!(matches!(kinds[1], EventKind::AttemptFinished { status: AttemptStatus::Failed, .. }));
    }

    async fn server_restart_recovers_every_running_attempt(t) {
        let me = t.user("me").await;
        t.task(&me, 2).await;
        t.task(&me, 1).await;
        let a = t.store.claim_next("w1", LEASE).await.unwrap().unwrap();
        let b = t.store.claim_next("w2", LEASE).await.unwrap().unwrap();
        // The server dies; a new one starts on the same database.
        t.restart().await;
        let restarted = &t.store;
        let report = restarted.recover(RecoverScope::AllRunning, 3).await.unwrap();
        assert_eq!(report.requeued, vec![a.attempt.clone(), b.attempt.clone()]);
        let order: Vec<_> = [
            restarted.claim_next("w3", LEASE).await.unwrap().unwrap().attempt,
            restarted.claim_next("w3", LEASE).await.unwrap().unwrap().attempt,
        ]
        .into();
        assert_eq!(order, vec![a.attempt, b.attempt], "recovered attempts keep their place in line");
    }

    async fn restarted_worker_recovers_only_its_own_attempts(t) {
        let me = t.user("me").await;
        t.task(&me, 2).await;
        let mine = t.store.claim_next("w1", LEASE).await.unwrap().unwrap();
        let theirs = t.store.claim_next("w2", LEASE).await.unwrap().unwrap();
        let report = t.store.recover(RecoverScope::Worker("w1"), 3).await.unwrap();
        assert_eq!(report.requeued, vec![mine.attempt]);
        t.store.heartbeat("w2", &theirs.attempt, LEASE).await.unwrap();
    }

    async fn lost_attempt_whose_cancel_was_requested_ends_cancelled(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        t.store.cancel_task(&me, &task.task.id).await.unwrap();
        t.clock.advance(LEASE * 2);
        let report = t.store.recover(RecoverScope::ExpiredLeases, 3).await.unwrap();
        assert_eq!(report.cancelled, vec![claimed.attempt]);
        assert_eq!(t.store.task(&me, &task.task.id).await.unwrap().task.status, TaskStatus::Cancelled);
        assert_eq!(t.store.claim_next("w", LEASE).await.unwrap(), None);
    }
}
