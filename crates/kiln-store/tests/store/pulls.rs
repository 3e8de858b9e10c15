use std::time::Duration;

use kiln_protocol::{AttemptStatus, EventKind, ForgeKind};
use kiln_store::{AttemptRef, AttemptReport, OpenedPullRequest, StoreError};

fn opened(attempt: &AttemptRef, number: u64) -> OpenedPullRequest {
    OpenedPullRequest {
        attempt: attempt.clone(),
        forge: ForgeKind::Gitlab,
        number,
        url: format!("https://gitlab.example/acme/app/-/merge_requests/{number}"),
        branch: format!("kiln/{}", attempt.task_id),
        draft: false,
    }
}

fn pr_events(events: &[kiln_store::StoredEvent]) -> Vec<(u32, bool)> {
    events
        .iter()
        .filter_map(|e| match e.event().unwrap().kind {
            EventKind::PrOpened { updated, .. } => Some((e.attempt, updated)),
            _ => None,
        })
        .collect()
}

on_both_backends! {
    async fn a_task_keeps_one_pull_request_which_later_pushes_update(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 2).await;
        let id = task.task.id.clone();
        let lease = Duration::from_secs(60);
        let a1 = t.store.claim_next("w", lease).await.unwrap().unwrap().attempt;
        let a2 = t.store.claim_next("w", lease).await.unwrap().unwrap().attempt;
        t.store.finish("w", &a1, &AttemptReport::new(AttemptStatus::Succeeded)).await.unwrap();
        t.store.finish("w", &a2, &AttemptReport::new(AttemptStatus::Succeeded)).await.unwrap();
        assert_eq!(t.store.task(&me, &id).await.unwrap().pull_request, None);

        let (first, updated) = t.store.record_pull_request(&me, &opened(&a1, 7)).await.unwrap();
        assert!(!updated);
        assert_eq!(first.opened_by, me.user_id);
        assert_eq!((first.attempt, first.number, first.forge), (1, 7, ForgeKind::Gitlab));
        assert_eq!(first.created_at, first.updated_at);
        t.clock.advance(Duration::from_secs(5));

        // Another attempt proposed later (by the server, refreshing it after a
        // follow-up): the same row, now pointing at it, still opened by me.
        let server = kiln_store::server_actor();
        let (second, updated) = t.store.record_pull_request(&server, &opened(&a2, 7)).await.unwrap();
        assert!(updated);
        assert_eq!(second.opened_by, me.user_id);
        assert_eq!(second.attempt, 2);
        assert_eq!(second.created_at, first.created_at);
        assert!(second.updated_at > first.updated_at);
        let detail = t.store.task(&me, &id).await.unwrap();
        assert_eq!(detail.pull_request, Some(second.clone()));
        assert_eq!(t.store.pull_request(&id).await.unwrap(), Some(second));

        let events = t.store.events(&id, None, 0, 100).await.unwrap();
        assert_eq!(pr_events(&events), vec![(1, false), (2, true)]);
    }

    async fn a_running_attempt_cannot_be_proposed(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let lease = Duration::from_secs(60);
        let a1 = t.store.claim_next("w", lease).await.unwrap().unwrap().attempt;
        let err = t.store.record_pull_request(&me, &opened(&a1, 1)).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("running"), "{err}");
        assert_eq!(t.store.pull_request(&task.task.id).await.unwrap(), None);
        let missing = AttemptRef::new(task.task.id.clone(), 9);
        let err = t.store.record_pull_request(&me, &opened(&missing, 1)).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    }
}
