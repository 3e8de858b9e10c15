use std::collections::HashSet;
use std::time::Duration;

use kiln_protocol::{AttemptStatus, CheckResult, CitationCheck, Usage};
use kiln_store::{AttemptRef, AttemptReport, AttemptState, DiffStat, StoreError, TaskStatus};

const LEASE: Duration = Duration::from_secs(60);

on_both_backends! {
    async fn claims_are_fifo_by_task_then_attempt(t) {
        let me = t.user("me").await;
        let first = t.task(&me, 2).await.task.id;
        let second = t.task(&me, 1).await.task.id;
        let mut order = Vec::new();
        while let Some(claimed) = t.store.claim_next("w", LEASE).await.unwrap() {
            order.push((claimed.task.id.clone(), claimed.attempt.n));
        }
        assert_eq!(order, vec![(first.clone(), 1), (first, 2), (second, 1)]);
    }

    async fn claim_carries_what_the_worker_needs(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let claimed = t.store.claim_next("worker-7", LEASE).await.unwrap().unwrap();
        assert_eq!(claimed.task.id, task.task.id);
        assert_eq!(claimed.task.prompt, "make the tests pass");
        assert_eq!(claimed.try_number, 1);
        assert!(!claimed.resume);
        assert_eq!(claimed.next_seq, 1);
        assert_eq!(claimed.lease_expires_at, t.store.now() + chrono::Duration::seconds(60));

        let attempt = &t.store.task(&me, &task.task.id).await.unwrap().attempts[0];
        assert_eq!(attempt.status, AttemptState::Running);
        assert_eq!(attempt.worker_id.as_deref(), Some("worker-7"));
        assert_eq!(attempt.started_at, Some(t.store.now()));
        // Nothing else to claim.
        assert_eq!(t.store.claim_next("worker-8", LEASE).await.unwrap(), None);
    }

    async fn concurrent_workers_never_claim_the_same_attempt(t) {
        let me = t.user("me").await;
        let mut expected = HashSet::new();
        for _ in 0..15 {
            let task = t.task(&me, 2).await;
            for n in 1..=2 {
                expected.insert((task.task.id.clone(), n));
            }
        }
        // Two stores, as two machines sharing the database.
        let other_machine = t.reopen().await;
        let mut workers = Vec::new();
        for w in 0..8 {
            let store = if w % 2 == 0 { t.store.clone() } else { other_machine.clone() };
            workers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(claimed) = store.claim_next(&format!("w{w}"), LEASE).await.unwrap() {
                    mine.push((claimed.task.id, claimed.attempt.n));
                }
                mine
            }));
        }
        let mut all = Vec::new();
        for worker in workers {
            all.extend(worker.await.unwrap());
        }
        let unique: HashSet<_> = all.iter().cloned().collect();
        assert_eq!(all.len(), 30, "every attempt claimed exactly once");
        assert_eq!(unique, expected);
        let stats = t.store.queue_stats().await.unwrap();
        assert_eq!((stats.running, stats.depth()), (30, 0));
    }

    async fn finish_records_the_outcome(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        t.clock.advance(Duration::from_secs(5));
        let outcome = AttemptReport {
            status: AttemptStatus::Succeeded,
            reason: None,
            final_message: Some("Fixed it 【F:src/a.rs†L1-L2】".into()),
            diff: Some("diff --git a/src/a.rs b/src/a.rs\n".into()),
            diff_stat: Some(DiffStat { files_changed: 1, insertions: 3, deletions: 2 }),
            usage: Usage { input_tokens: 100, cached_input_tokens: 40, output_tokens: 7 },
            branch: Some(format!("kiln/{}/1", task.task.id)),
            commit_sha: Some("0123abcd".into()),
            citations: vec![
                CitationCheck { citation: "【F:src/a.rs†L1-L2】".into(), valid: true, reason: None },
                CitationCheck { citation: "【t9†L1-L2】".into(), valid: false, reason: Some("no chunk t9".into()) },
            ],
            cost_usd: Some(0.012_345),
            checks: vec![CheckResult {
                name: "tests".into(),
                command: "cargo test".into(),
                passed: true,
                exit_code: Some(0),
                duration_ms: 1200,
                timed_out: false,
                chunk_id: "t4".into(),
                reason: None,
            }],
            history: Vec::new(),
        };
        t.store.finish("w", &claimed.attempt, &outcome).await.unwrap();

        let detail = t.store.task(&me, &task.task.id).await.unwrap();
        let attempt = &detail.attempts[0];
        assert_eq!(attempt.status, AttemptState::Succeeded);
        assert_eq!(attempt.final_message, outcome.final_message);
        assert_eq!(attempt.diff_stat, outcome.diff_stat);
        assert_eq!(attempt.usage, outcome.usage);
        assert_eq!(attempt.branch, outcome.branch);
        assert_eq!(attempt.commit_sha, outcome.commit_sha);
        assert_eq!(attempt.finished_at, Some(t.store.now()));
        assert_eq!(attempt.lease_expires_at, None);
        assert_eq!(attempt.checks, outcome.checks);
        assert_eq!((attempt.citations_valid, attempt.citations_invalid), (1, 1));
        assert_eq!(attempt.cost_usd, Some(0.012_345));
        assert_eq!(detail.cost_usd, Some(0.012_345));
        assert_eq!(detail.task.status, TaskStatus::Succeeded);
        assert_eq!(
            t.store.attempt_diff(&me, &claimed.attempt).await.unwrap(),
            outcome.diff
        );
        let stats = t.store.queue_stats().await.unwrap();
        assert_eq!(stats.succeeded, 1);
        assert_eq!(stats.usage, outcome.usage);
    }

    async fn only_the_lease_holder_may_heartbeat_or_finish(t) {
        let me = t.user("me").await;
        t.task(&me, 1).await;
        let claimed = t.store.claim_next("w1", LEASE).await.unwrap().unwrap();
        let err = t.store.heartbeat("w2", &claimed.attempt, LEASE).await.unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        let err = t
            .store
            .finish("w2", &claimed.attempt, &AttemptReport::new(AttemptStatus::Succeeded))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        t.store
            .finish("w1", &claimed.attempt, &AttemptReport::new(AttemptStatus::Succeeded))
            .await
            .unwrap();
        // Finished: the holder's lease is over too.
        let err = t.store.heartbeat("w1", &claimed.attempt, LEASE).await.unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    }

    async fn heartbeat_extends_the_lease(t) {
        let me = t.user("me").await;
        t.task(&me, 1).await;
        let claimed = t.store.claim_next("w", Duration::from_secs(30)).await.unwrap().unwrap();
        t.clock.advance(Duration::from_secs(20));
        let lease = t.store.heartbeat("w", &claimed.attempt, Duration::from_secs(30)).await.unwrap();
        assert_eq!(lease.expires_at, t.store.now() + chrono::Duration::seconds(30));
        assert!(!lease.cancel_requested);
        t.clock.advance(Duration::from_secs(20));
        // 40 s after the claim, but only 20 s after the heartbeat: not lost.
        let report = t.store.recover(kiln_store::RecoverScope::ExpiredLeases, 3).await.unwrap();
        assert_eq!(report, kiln_store::RecoveryReport::default());
    }

    async fn cancel_stops_waiting_attempts_and_flags_running_ones(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 3).await;
        let id = task.task.id.clone();
        let running = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        let mut changes = t.store.subscribe();

        let outcome = t.store.cancel_task(&me, &id).await.unwrap();
        assert_eq!(outcome.cancelled, vec![2, 3]);
        assert_eq!(outcome.cancel_requested, vec![1]);
        assert_eq!(
            changes.wait_for(|c| matches!(c, kiln_store::Change::Cancel { .. })).await,
            kiln_store::Wake::Changed(kiln_store::Change::Cancel { task_id: id.clone() })
        );

        let detail = t.store.task(&me, &id).await.unwrap();
        let states: Vec<_> = detail.attempts.iter().map(|a| a.status).collect();
        assert_eq!(states, vec![AttemptState::Running, AttemptState::Cancelled, AttemptState::Cancelled]);
        assert!(detail.attempts[0].cancel_requested);
        assert_eq!(detail.task.status, TaskStatus::Running);
        // Cancelled attempts leave the queue; their logs say why.
        assert_eq!(t.store.claim_next("w2", LEASE).await.unwrap(), None);
        let log = t.store.events(&id, Some(2), 0, 10).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].kind, "attempt.finished");

        // The worker learns it on its heartbeat and finishes as cancelled.
        assert!(t.store.heartbeat("w", &running.attempt, LEASE).await.unwrap().cancel_requested);
        assert!(t.store.cancel_requested(&running.attempt).await.unwrap());
        t.store
            .finish("w", &running.attempt, &AttemptReport::new(AttemptStatus::Cancelled))
            .await
            .unwrap();
        assert_eq!(t.store.task(&me, &id).await.unwrap().task.status, TaskStatus::Cancelled);
    }

    async fn users_cannot_cancel_or_read_others_tasks(t) {
        let me = t.user("me").await;
        let other = t.user("other").await;
        let task = t.task(&me, 1).await;
        let err = t.store.cancel_task(&other, &task.task.id).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        let err = t
            .store
            .attempt_diff(&other, &AttemptRef::new(task.task.id.clone(), 1))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        assert_eq!(t.store.task(&me, &task.task.id).await.unwrap().task.status, TaskStatus::Queued);
    }

    async fn queue_stats_count_attempts_by_state(t) {
        let me = t.user("me").await;
        t.task(&me, 3).await;
        t.task(&me, 1).await;
        let a = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        t.store.finish("w", &a.attempt, &AttemptReport::new(AttemptStatus::Failed)).await.unwrap();
        let stats = t.store.queue_stats().await.unwrap();
        assert_eq!((stats.queued, stats.running, stats.failed, stats.depth()), (2, 1, 1, 2));
    }
}
