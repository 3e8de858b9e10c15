use std::time::Duration;

use kiln_protocol::{AttemptStatus, CheckResult, CitationCheck, DiffStat, EventKind};
use kiln_store::{AttemptReport, AttemptState, StoreError};

const LEASE: Duration = Duration::from_secs(60);

fn passing_check() -> CheckResult {
    CheckResult {
        name: "tests".into(),
        command: "make test".into(),
        passed: true,
        exit_code: Some(0),
        duration_ms: 40,
        timed_out: false,
        chunk_id: "t7".into(),
        reason: None,
    }
}

fn citation(valid: bool) -> CitationCheck {
    CitationCheck {
        citation: "【F:src/a.rs†L1-L2】".into(),
        valid,
        reason: (!valid).then(|| "line 2 is past the end of src/a.rs".to_string()),
    }
}

fn diff(insertions: u64, deletions: u64) -> Option<DiffStat> {
    Some(DiffStat {
        files_changed: 1,
        insertions,
        deletions,
    })
}

/// Finishes the next queued attempt with `report`; returns its number.
async fn finish_next(t: &crate::support::TestStore, report: AttemptReport) -> u32 {
    let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
    t.store
        .finish("w", &claimed.attempt, &report)
        .await
        .unwrap();
    claimed.attempt.n
}

/// The `task.ranked` events of an attempt's log, as attempt-number orders.
async fn ranked_in_log(t: &crate::support::TestStore, task_id: &str, n: u32) -> Vec<Vec<u32>> {
    t.store
        .events(task_id, Some(n), 0, 1000)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| match e.event().unwrap().kind {
            EventKind::TaskRanked { ranking, .. } => {
                Some(ranking.iter().map(|r| r.attempt).collect())
            }
            _ => None,
        })
        .collect()
}

on_both_backends! {
    async fn three_attempts_rank_by_checks_then_citations_then_diff(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 3).await;
        let id = task.task.id.clone();

        let mut failed = AttemptReport::failed(AttemptStatus::Failed, "the model gave up");
        failed.diff_stat = diff(1, 0);
        assert_eq!(finish_next(&t, failed).await, 1);

        let mut verified = AttemptReport::new(AttemptStatus::Succeeded);
        verified.checks = vec![passing_check()];
        verified.citations = vec![citation(true), citation(true)];
        verified.diff_stat = diff(30, 4);
        assert_eq!(finish_next(&t, verified).await, 2);

        let mut miscited = AttemptReport::new(AttemptStatus::Succeeded);
        miscited.citations = vec![citation(true), citation(false)];
        miscited.diff_stat = diff(2, 1);
        miscited.cost_usd = Some(0.01);
        assert_eq!(finish_next(&t, miscited).await, 3);

        let detail = t.store.task(&me, &id).await.unwrap();
        let order: Vec<u32> = detail.ranking.iter().map(|e| e.attempt).collect();
        assert_eq!(order, [2, 3, 1]);
        let ranks: Vec<Option<u32>> = detail.attempts.iter().map(|a| a.rank).collect();
        assert_eq!(ranks, [Some(3), Some(1), Some(2)]);
        assert_eq!(detail.attempts[1].citations_valid, 2);
        assert_eq!(detail.attempts[2].citations_invalid, 1);
        assert_eq!(
            detail.ranking[0].reasons,
            ["succeeded", "checks passed (1/1)", "2 of 2 citations valid", "diff +30 -4 in 1 file", "cost unknown"]
        );
        assert_eq!(detail.ranking[1].reasons[2], "1 of 2 citations invalid");
        assert_eq!(detail.ranking[1].reasons[4], "cost $0.0100");

        // Each finish announced the ranking as it stood, in its own log.
        assert_eq!(ranked_in_log(&t, &id, 1).await, vec![vec![1]]);
        assert_eq!(ranked_in_log(&t, &id, 2).await, vec![vec![2, 1]]);
        assert_eq!(ranked_in_log(&t, &id, 3).await, vec![vec![2, 3, 1]]);
    }

    async fn an_unfinished_attempt_has_no_rank(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 2).await;
        finish_next(&t, AttemptReport::new(AttemptStatus::Succeeded)).await;
        let _running = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        let detail = t.store.task(&me, &task.task.id).await.unwrap();
        assert_eq!(detail.ranking.len(), 1);
        assert_eq!(detail.attempts[0].rank, Some(1));
        assert_eq!(detail.attempts[1].status, AttemptState::Running);
        assert_eq!(detail.attempts[1].rank, None);
    }

    async fn a_preferred_attempt_ranks_first_until_the_mark_is_cleared(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 2).await;
        let id = task.task.id.clone();
        finish_next(&t, AttemptReport::new(AttemptStatus::Succeeded)).await;
        finish_next(&t, AttemptReport::failed(AttemptStatus::Failed, "no")).await;

        let detail = t.store.prefer_attempt(&me, &id, Some(2)).await.unwrap();
        assert_eq!(detail.task.preferred_attempt, Some(2));
        assert_eq!(detail.ranking[0].attempt, 2);
        assert!(detail.ranking[0].preferred);
        assert_eq!(detail.ranking[0].reasons[0], "preferred by a user");
        assert_eq!(t.store.task(&me, &id).await.unwrap(), detail);
        assert_eq!(ranked_in_log(&t, &id, 2).await, vec![vec![1, 2], vec![2, 1]]);

        // Marking it again changes nothing and announces nothing.
        t.store.prefer_attempt(&me, &id, Some(2)).await.unwrap();
        assert_eq!(ranked_in_log(&t, &id, 2).await.len(), 2);

        let cleared = t.store.prefer_attempt(&me, &id, None).await.unwrap();
        assert_eq!(cleared.task.preferred_attempt, None);
        assert_eq!(cleared.ranking[0].attempt, 1);
        assert!(cleared.ranking.iter().all(|e| !e.preferred));
        // Clearing is announced in the new best attempt's log.
        assert_eq!(ranked_in_log(&t, &id, 1).await, vec![vec![1], vec![1, 2]]);
    }

    async fn only_a_finished_attempt_of_ones_own_task_can_be_preferred(t) {
        let me = t.user("me").await;
        let other = t.user("other").await;
        let admin = t.admin().await;
        let task = t.task(&me, 2).await;
        let id = task.task.id.clone();
        finish_next(&t, AttemptReport::new(AttemptStatus::Succeeded)).await;

        let err = t.store.prefer_attempt(&me, &id, Some(2)).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("only a finished attempt"), "{err}");
        let err = t.store.prefer_attempt(&me, &id, Some(3)).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput { field: "attempt", .. }), "{err}");
        let err = t.store.prefer_attempt(&other, &id, Some(1)).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        assert_eq!(t.store.task(&me, &id).await.unwrap().task.preferred_attempt, None);

        let detail = t.store.prefer_attempt(&admin, &id, Some(1)).await.unwrap();
        assert_eq!(detail.task.preferred_attempt, Some(1));
    }

    async fn cancelling_queued_attempts_ranks_them(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 2).await;
        let id = task.task.id.clone();
        t.store.cancel_task(&me, &id).await.unwrap();
        let detail = t.store.task(&me, &id).await.unwrap();
        let order: Vec<u32> = detail.ranking.iter().map(|e| e.attempt).collect();
        assert_eq!(order, [1, 2]);
        assert_eq!(ranked_in_log(&t, &id, 2).await, vec![vec![1, 2]]);
    }
}
