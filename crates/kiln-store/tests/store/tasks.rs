use std::collections::HashSet;
use std::time::Duration;

use kiln_protocol::{AttemptStatus, Mode};
use kiln_store::{AttemptReport, AttemptState, NewTask, StoreError, TaskQuery, TaskStatus};

on_both_backends! {
    async fn new_task_is_queued_with_all_its_attempts(t) {
        let me = t.user("me").await;
        let env = t.environment(&me, "app").await;
        let mut new = NewTask::new("app", "explain utils::merge");
        new.mode = Mode::Ask;
        new.attempts = 3;
        new.model = Some("gpt-test".into());
        new.base_ref = Some("v1.2".into());
        let detail = t.store.create_task(&me, &new).await.unwrap();

        assert!(detail.task.id.starts_with("t_"));
        assert_eq!(detail.task.environment_id, env.id);
        assert_eq!(detail.task.mode, Mode::Ask);
        assert_eq!(detail.task.status, TaskStatus::Queued);
        assert_eq!(detail.task.model.as_deref(), Some("gpt-test"));
        assert_eq!(detail.task.base_ref.as_deref(), Some("v1.2"));
        assert_eq!(detail.task.created_at, t.clock_now());
        let numbers: Vec<u32> = detail.attempts.iter().map(|a| a.n).collect();
        assert_eq!(numbers, vec![1, 2, 3]);
        assert!(detail.attempts.iter().all(|a| a.status == AttemptState::Queued && a.tries == 0));
        assert_eq!(t.store.task(&me, &detail.task.id).await.unwrap(), detail);
    }

    async fn attempts_outside_one_to_eight_are_refused(t) {
        let me = t.user("me").await;
        t.environment(&me, "app").await;
        for attempts in [0, 9] {
            let mut new = NewTask::new("app", "x");
            new.attempts = attempts;
            let err = t.store.create_task(&me, &new).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidInput { field: "attempts", .. }), "{err}");
        }
        let err = t.store.create_task(&me, &NewTask::new("app", "  ")).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput { field: "prompt", .. }), "{err}");
        let err = t.store.create_task(&me, &NewTask::new("nope", "x")).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    }

    async fn tasks_of_other_users_are_invisible_but_admins_see_them(t) {
        let me = t.user("me").await;
        let other = t.user("other").await;
        let admin = t.admin().await;
        let mine = t.task(&me, 1).await;
        let err = t.store.task(&other, &mine.task.id).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        assert_eq!(t.store.task(&admin, &mine.task.id).await.unwrap().task.id, mine.task.id);
        // Nor may they use my environment.
        let err = t
            .store
            .create_task(&other, &NewTask::new(mine.task.environment_id.clone(), "x"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    }

    async fn task_status_follows_its_attempts(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 3).await;
        let id = task.task.id.clone();
        let status = |d: kiln_store::TaskDetail| d.task.status;
        let lease = Duration::from_secs(60);

        let a1 = t.store.claim_next("w", lease).await.unwrap().unwrap().attempt;
        assert_eq!(status(t.store.task(&me, &id).await.unwrap()), TaskStatus::Running);
        t.store.finish("w", &a1, &AttemptReport::new(AttemptStatus::Failed)).await.unwrap();
        // Two attempts still wait: the task is still in progress.
        assert_eq!(status(t.store.task(&me, &id).await.unwrap()), TaskStatus::Running);

        let a2 = t.store.claim_next("w", lease).await.unwrap().unwrap().attempt;
        let a3 = t.store.claim_next("w", lease).await.unwrap().unwrap().attempt;
        t.store.finish("w", &a2, &AttemptReport::new(AttemptStatus::Cancelled)).await.unwrap();
        assert_eq!(status(t.store.task(&me, &id).await.unwrap()), TaskStatus::Running);
        t.store.finish("w", &a3, &AttemptReport::new(AttemptStatus::Succeeded)).await.unwrap();
        // One success makes the best-of-N task a success.
        assert_eq!(status(t.store.task(&me, &id).await.unwrap()), TaskStatus::Succeeded);
    }

    async fn failed_and_cancelled_attempts_make_a_cancelled_task(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 2).await;
        let lease = Duration::from_secs(60);
        let a1 = t.store.claim_next("w", lease).await.unwrap().unwrap().attempt;
        t.store.finish("w", &a1, &AttemptReport::new(AttemptStatus::Failed)).await.unwrap();
        t.store.cancel_task(&me, &task.task.id).await.unwrap();
        let detail = t.store.task(&me, &task.task.id).await.unwrap();
        assert_eq!(detail.task.status, TaskStatus::Cancelled);

        let only_failed = t.task(&me, 1).await;
        let a = t.store.claim_next("w", lease).await.unwrap().unwrap().attempt;
        t.store.finish("w", &a, &AttemptReport::new(AttemptStatus::Failed)).await.unwrap();
        let detail = t.store.task(&me, &only_failed.task.id).await.unwrap();
        assert_eq!(detail.task.status, TaskStatus::Failed);
    }

    async fn listing_pages_through_every_task_newest_first(t) {
        let me = t.user("me").await;
        let mut created = Vec::new();
        for _ in 0..7 {
            created.push(t.task(&me, 1).await.task.id);
        }
        created.reverse();
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = t
                .store
                .list_tasks(&me, &TaskQuery { status: None, limit: Some(3), cursor: cursor.clone(), scope: None })
                .await
                .unwrap();
            pages += 1;
            seen.extend(page.tasks.iter().map(|t| t.id.clone()));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, created);
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7);
    }

    async fn a_task_created_between_pages_does_not_shift_the_next_page(t) {
        let me = t.user("me").await;
        let first = t.task(&me, 1).await.task.id;
        let second = t.task(&me, 1).await.task.id;
        let page = t
            .store
            .list_tasks(&me, &TaskQuery { limit: Some(1), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(page.tasks[0].id, second);
        t.task(&me, 1).await;
        let next = t
            .store
            .list_tasks(&me, &TaskQuery { limit: Some(1), cursor: page.next_cursor, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(next.tasks[0].id, first);
        assert_eq!(next.next_cursor, None);
    }

    async fn listing_filters_by_status_and_owner(t) {
        let me = t.user("me").await;
        let other = t.user("other").await;
        let admin = t.admin().await;
        let running = t.task(&me, 1).await.task.id;
        let queued = t.task(&me, 1).await.task.id;
        let theirs = t.task(&other, 1).await.task.id;
        let claimed = t.store.claim_next("w", Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(claimed.task.id, running);

        let ids = |page: kiln_store::TaskPage| page.tasks.into_iter().map(|t| t.id).collect::<Vec<_>>();
        let only = |status| TaskQuery { status: Some(status), ..Default::default() };
        assert_eq!(ids(t.store.list_tasks(&me, &only(TaskStatus::Running)).await.unwrap()), vec![running.clone()]);
        assert_eq!(ids(t.store.list_tasks(&me, &only(TaskStatus::Queued)).await.unwrap()), vec![queued.clone()]);
        assert_eq!(
            ids(t.store.list_tasks(&me, &TaskQuery::default()).await.unwrap()),
            vec![queued.clone(), running.clone()]
        );
        assert_eq!(
            ids(t.store.list_tasks(&admin, &TaskQuery::default()).await.unwrap()),
            vec![theirs, queued, running]
        );
    }

    async fn bad_cursor_and_limit_are_refused(t) {
        let me = t.user("me").await;
        let bad_cursor = TaskQuery { cursor: Some("'; DROP TABLE tasks; --".into()), ..Default::default() };
        let err = t.store.list_tasks(&me, &bad_cursor).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput { field: "cursor", .. }), "{err}");
        for limit in [0, 201] {
            let err = t
                .store
                .list_tasks(&me, &TaskQuery { limit: Some(limit), ..Default::default() })
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::InvalidInput { field: "limit", .. }), "{err}");
        }
    }
}

impl crate::support::TestStore {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use kiln_store::Clock;
        self.clock.now()
    }
}

on_both_backends! {
    async fn concurrent_finishes_leave_the_right_task_status(t) {
        let me = t.user("me").await;
        for winner in [Some(5u32), None] {
            let task = t.task(&me, 8).await;
            let mut claimed = Vec::new();
            while let Some(c) = t.store.claim_next("w", Duration::from_secs(60)).await.unwrap() {
                claimed.push(c.attempt);
            }
            assert_eq!(claimed.len(), 8);
            let mut finishers = Vec::new();
            for attempt in claimed {
                let store = t.store.clone();
                let status = if Some(attempt.n) == winner {
                    AttemptStatus::Succeeded
                } else {
                    AttemptStatus::Failed
                };
                finishers.push(tokio::spawn(async move {
                    store.finish("w", &attempt, &AttemptReport::new(status)).await.unwrap();
                }));
            }
            for finisher in finishers {
                finisher.await.unwrap();
            }
            let expected = if winner.is_some() { TaskStatus::Succeeded } else { TaskStatus::Failed };
            assert_eq!(t.store.task(&me, &task.task.id).await.unwrap().task.status, expected);
        }
    }

    async fn cancel_racing_claims_leaves_no_attempt_unaccounted(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 8).await;
        let id = task.task.id.clone();
        let mut claimers = Vec::new();
        for w in 0..4 {
            let store = t.store.clone();
            claimers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(c) = store.claim_next(&format!("w{w}"), Duration::from_secs(60)).await.unwrap() {
                    mine.push(c.attempt.n);
                }
                mine
            }));
        }
        let canceller = {
            let store = t.store.clone();
            let (me, id) = (me.clone(), id.clone());
            tokio::spawn(async move { store.cancel_task(&me, &id).await.unwrap() })
        };
        let mut claimed: Vec<u32> = Vec::new();
        for claimer in claimers {
            claimed.extend(claimer.await.unwrap());
        }
        let outcome = canceller.await.unwrap();
        claimed.sort_unstable();

        let detail = t.store.task(&me, &id).await.unwrap();
        for attempt in &detail.attempts {
            match attempt.status {
                AttemptState::Running => assert!(claimed.contains(&attempt.n)),
                AttemptState::Cancelled => assert!(!claimed.contains(&attempt.n)),
                other => panic!("attempt {} is {other:?}", attempt.n),
            }
        }
        // Everything claimed before the cancel was asked to stop; nothing
        // claimed after it (the cancel left nothing waiting).
        let mut requested = outcome.cancel_requested.clone();
        requested.sort_unstable();
        let mut all = outcome.cancelled.clone();
        all.extend(&outcome.cancel_requested);
        all.sort_unstable();
        assert_eq!(all, (1..=8).collect::<Vec<_>>());
        assert_eq!(requested, claimed);
    }
}
