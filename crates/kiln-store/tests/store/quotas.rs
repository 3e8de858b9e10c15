use std::time::Duration;

use chrono::TimeZone;
use kiln_protocol::teams::{Quota, QuotaScope};
use kiln_protocol::AttemptStatus;
use kiln_store::{AttemptReport, Change, StoreError, TaskStatus, Wake};

use crate::support::TestStore;

const LEASE: Duration = Duration::from_secs(60);

fn concurrency(n: u32) -> Quota {
    Quota {
        max_concurrent_attempts: Some(n),
        monthly_budget_usd: None,
    }
}

fn budget(usd: f64) -> Quota {
    Quota {
        max_concurrent_attempts: None,
        monthly_budget_usd: Some(usd),
    }
}

/// The wait reason of attempt `n` of `task_id`, as the API shows it.
async fn wait_reason(t: &TestStore, task_id: &str, n: u32) -> Option<String> {
    let admin = t.admin().await;
    let detail = t.store.task(&admin, task_id).await.unwrap();
    detail.attempts[(n - 1) as usize].wait_reason.clone()
}

/// Claims and finishes one attempt, reporting `cost_usd`.
async fn run_one_costing(t: &TestStore, cost_usd: f64) -> String {
    let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
    let mut report = AttemptReport::new(AttemptStatus::Succeeded);
    report.cost_usd = Some(cost_usd);
    t.store
        .finish("w", &claimed.attempt, &report)
        .await
        .unwrap();
    claimed.task.id
}

on_both_backends! {
    async fn a_team_at_its_concurrency_quota_waits_while_others_run_in_fifo_order(t) {
        let admin = t.admin().await;
        let milo = t.user("milo").await;
        let ana = t.user("ana").await;
        t.store.set_team_quota(&admin, "milo", &concurrency(1)).await.unwrap();
        let milos = t.task(&milo, 2).await.task.id;
        let anas = t.task(&ana, 2).await.task.id;

        let first = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        assert_eq!((first.task.id.as_str(), first.attempt.n), (milos.as_str(), 1));
        // milo's second attempt is passed over; ana's run in FIFO order.
        let second = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        assert_eq!((second.task.id.as_str(), second.attempt.n), (anas.as_str(), 1));
        let third = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        assert_eq!((third.task.id.as_str(), third.attempt.n), (anas.as_str(), 2));
        assert_eq!(t.store.claim_next("w", LEASE).await.unwrap(), None);
        assert_eq!(
            wait_reason(&t, &milos, 2).await.as_deref(),
            Some("waiting for a slot: team milo runs 1 of its 1 concurrent attempts (quota)")
        );
        assert_eq!(wait_reason(&t, &anas, 1).await, None);

        // The slot frees: the waiting attempt starts, its reason cleared.
        t.store
            .finish("w", &first.attempt, &AttemptReport::new(AttemptStatus::Succeeded))
            .await
            .unwrap();
        let next = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        assert_eq!((next.task.id.as_str(), next.attempt.n), (milos.as_str(), 2));
        assert_eq!(wait_reason(&t, &milos, 2).await, None);
    }

    async fn a_user_at_their_concurrency_quota_waits_and_the_task_stays_queued(t) {
        let admin = t.admin().await;
        let milo = t.user("milo").await;
        let status = t.store.set_user_quota(&admin, "milo", &concurrency(1)).await.unwrap();
        assert_eq!(status.scope, QuotaScope::User);
        assert_eq!(status.quota, concurrency(1));
        let one = t.task(&milo, 1).await.task.id;
        let two = t.task(&milo, 1).await.task.id;
        let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        assert_eq!(claimed.task.id, one);
        assert_eq!(t.store.claim_next("w", LEASE).await.unwrap(), None);
        assert_eq!(
            wait_reason(&t, &two, 1).await.as_deref(),
            Some("waiting for a slot: user milo runs 1 of their 1 concurrent attempts (quota)")
        );
        let waiting = t.store.task(&milo, &two).await.unwrap();
        assert_eq!(waiting.task.status, TaskStatus::Queued);
        let usage = t.store.quota(&milo, QuotaScope::User, "milo").await.unwrap().usage;
        assert_eq!(usage.running_attempts, 1);
    }

    async fn a_budget_counts_only_this_months_finished_attempts(t) {
        let admin = t.admin().await;
        let milo = t.user("milo").await;
        // 2030-01-20: January's spend is $6.
        t.clock.set(chrono::Utc.with_ymd_and_hms(2030, 1, 20, 12, 0, 0).unwrap());
        t.task(&milo, 1).await;
        run_one_costing(&t, 6.0).await;
        t.store.set_team_quota(&admin, "milo", &budget(5.0)).await.unwrap();
        let waiting = t.task(&milo, 1).await.task.id;
        assert_eq!(t.store.claim_next("w", LEASE).await.unwrap(), None);
        let reason = wait_reason(&t, &waiting, 1).await.unwrap();
        assert!(
            reason.starts_with("waiting: team milo spent $6.00 of a $5.00 monthly budget (quota)"),
            "{reason}"
        );
        assert!(reason.contains("kiln quota set --team milo --monthly-budget-usd N"), "{reason}");
        let january = t.store.quota(&admin, QuotaScope::Team, "milo").await.unwrap();
        assert_eq!(january.usage.spent_this_month_usd, 6.0);
        assert_eq!(
            january.usage.month_start,
            chrono::Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
        );

        // February (UTC): last month's spend does not count.
        t.clock.set(chrono::Utc.with_ymd_and_hms(2030, 2, 1, 0, 0, 0).unwrap());
        let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        assert_eq!(claimed.task.id, waiting);
        let february = t.store.quota(&admin, QuotaScope::Team, "milo").await.unwrap();
        assert_eq!(february.usage.spent_this_month_usd, 0.0);
    }

    async fn raising_a_quota_wakes_the_queue_and_releases_waiting_attempts(t) {
        let admin = t.admin().await;
        let milo = t.user("milo").await;
        t.store.set_team_quota(&admin, "milo", &concurrency(1)).await.unwrap();
        let task = t.task(&milo, 2).await.task.id;
        t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        assert_eq!(t.store.claim_next("w", LEASE).await.unwrap(), None);
        assert!(wait_reason(&t, &task, 2).await.is_some());

        let mut subscription = t.store.subscribe();
        let status = t.store.set_team_quota(&admin, "milo", &concurrency(2)).await.unwrap();
        assert_eq!(status.usage.running_attempts, 1);
        assert_eq!(subscription.wait_for_queue().await, Wake::Changed(Change::Queue));
        assert_eq!(wait_reason(&t, &task, 2).await, None);
        let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        assert_eq!((claimed.task.id.as_str(), claimed.attempt.n), (task.as_str(), 2));

        // Removing every limit goes back to the plain claim.
        t.store.set_team_quota(&admin, "milo", &Quota::default()).await.unwrap();
        let status = t.store.quota(&admin, QuotaScope::Team, "milo").await.unwrap();
        assert_eq!(status.quota, Quota::default());
    }

    async fn finishing_an_attempt_wakes_the_queue(t) {
        let milo = t.user("milo").await;
        t.task(&milo, 1).await;
        let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        let mut subscription = t.store.subscribe();
        t.store
            .finish("w", &claimed.attempt, &AttemptReport::new(AttemptStatus::Failed))
            .await
            .unwrap();
        assert_eq!(subscription.wait_for_queue().await, Wake::Changed(Change::Queue));
    }

    async fn cancelling_a_waiting_attempt_clears_its_wait_reason(t) {
        let admin = t.admin().await;
        let milo = t.user("milo").await;
        t.store.set_user_quota(&admin, "milo", &concurrency(1)).await.unwrap();
        let task = t.task(&milo, 2).await.task.id;
        t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        assert_eq!(t.store.claim_next("w", LEASE).await.unwrap(), None);
        assert!(wait_reason(&t, &task, 2).await.is_some());
        t.store.cancel_task(&milo, &task).await.unwrap();
        assert_eq!(wait_reason(&t, &task, 2).await, None);
    }

    async fn only_admins_set_quotas_and_only_members_read_them(t) {
        let admin = t.admin().await;
        let milo = t.user("milo").await;
        let ana = t.user("ana").await;
        let err = t.store.set_team_quota(&milo, "milo", &concurrency(5)).await.unwrap_err();
        assert!(matches!(err, StoreError::Forbidden { .. }), "{err}");
        // Another user's team: not revealed.
        let err = t.store.set_team_quota(&milo, "ana", &concurrency(5)).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        let err = t.store.quota(&milo, QuotaScope::User, "ana").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        // Nothing changed on a refusal.
        let status = t.store.quota(&ana, QuotaScope::Team, "ana").await.unwrap();
        assert_eq!(status.quota, Quota::default());
        // A member reads their team's quota, by id as well as by name.
        let by_id = t.store.quota(&milo, QuotaScope::Team, &milo.teams[0].team_id).await.unwrap();
        assert_eq!(by_id.name, "milo");
        let err = t.store.set_team_quota(&admin, "nobody", &concurrency(1)).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        // Refusals left no trace; a change leaves one, with old and new values.
        assert!(t.raw_audit_of("quota.set").await.is_empty());
        t.store.set_user_quota(&admin, "milo", &concurrency(2)).await.unwrap();
        t.store.set_user_quota(&admin, &milo.user_id.clone().unwrap(), &budget(3.5)).await.unwrap();
        let audited = t.raw_audit_of("quota.set").await;
        assert_eq!(audited.len(), 2, "{audited:?}");
        let (kind, id, details) = &audited[1];
        assert_eq!((kind.as_str(), Some(id.as_str())), ("user", milo.user_id.as_deref()));
        let details: serde_json::Value = serde_json::from_str(details).unwrap();
        assert_eq!(details["scope"], "user");
        assert_eq!(details["name"], "milo");
        assert_eq!(details["old"]["max_concurrent_attempts"], 2);
        assert_eq!(details["new"]["max_concurrent_attempts"], serde_json::Value::Null);
        assert_eq!(details["new"]["monthly_budget_usd"], 3.5);
    }

    async fn invalid_quotas_are_refused(t) {
        let admin = t.admin().await;
        t.user("milo").await;
        for bad in [
            concurrency(0),
            budget(0.0),
            budget(-1.0),
            budget(f64::NAN),
            budget(f64::INFINITY),
            budget(1e12),
        ] {
            let err = t.store.set_team_quota(&admin, "milo", &bad).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidInput { .. }), "{bad:?}: {err}");
        }
        let status = t.store.quota(&admin, QuotaScope::Team, "milo").await.unwrap();
        assert_eq!(status.quota, Quota::default());
    }

    async fn concurrent_claimers_never_exceed_a_limit_of_one(t) {
        let admin = t.admin().await;
        let milo = t.user("milo").await;
        t.store.set_team_quota(&admin, "milo", &concurrency(1)).await.unwrap();
        for _ in 0..6 {
            t.task(&milo, 2).await;
        }
        // Two stores, as two servers sharing the database.
        let other_machine = t.reopen().await;
        let mut claimers = Vec::new();
        for w in 0..8 {
            let store = if w % 2 == 0 { t.store.clone() } else { other_machine.clone() };
            claimers.push(tokio::spawn(async move {
                let mut claimed = 0;
                while store.claim_next(&format!("w{w}"), LEASE).await.unwrap().is_some() {
                    claimed += 1;
                }
                claimed
            }));
        }
        let mut total = 0;
        for claimer in claimers {
            total += claimer.await.unwrap();
        }
        assert_eq!(total, 1, "a limit of 1 lets exactly one attempt run");
        let stats = t.store.queue_stats().await.unwrap();
        assert_eq!((stats.running, stats.depth()), (1, 11));
    }
}
