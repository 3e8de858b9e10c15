use std::time::Duration;

use kiln_protocol::{AttemptStatus, WebhookConfig};
use kiln_store::{
    AttemptReport, NewEnvironment, NewTask, StoreError, WebhookTry, WEBHOOK_PR_OPENED,
};
use serde_json::Value;

const LEASE: Duration = Duration::from_secs(60);
const HOLD: Duration = Duration::from_secs(30);
const SECRET: &str = "whsec-0123456789abcdef";

/// An environment of `owner` with a webhook (and a secret of its own).
async fn hooked_environment(
    t: &crate::support::TestStore,
    owner: &kiln_store::Principal,
) -> String {
    let new = NewEnvironment {
        name: "hooked".into(),
        repo: "https://git.example/app.git".into(),
        secrets: [("DEPLOY_KEY".to_string(), "deploy-key-value".to_string())].into(),
        webhook: Some(WebhookConfig {
            url: "https://hooks.example/kiln".into(),
            secret: SECRET.into(),
        }),
        ..Default::default()
    };
    t.store.create_environment(owner, &new).await.unwrap().id
}

on_both_backends! {
    async fn recording_a_pull_request_queues_its_pr_opened_delivery_with_it(t) {
        let me = t.user("me").await;
        let env = hooked_environment(&t, &me).await;
        let task = t.store.create_task(&me, &NewTask::new(env.clone(), "fix it")).await.unwrap();
        let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        t.store.finish("w", &claimed.attempt, &AttemptReport::new(AttemptStatus::Succeeded)).await.unwrap();
        let opened = kiln_store::OpenedPullRequest {
            attempt: claimed.attempt.clone(),
            forge: kiln_protocol::ForgeKind::Github,
            number: 12,
            url: "https://github.example/acme/app/pull/12".into(),
            branch: format!("kiln/{}", task.task.id),
            draft: true,
        };
        t.store.record_pull_request(&me, &opened).await.unwrap();
        t.store.record_pull_request(&me, &opened).await.unwrap();

        let listed = t.store.webhook_deliveries(&me, &env, 50).await.unwrap();
        let events: Vec<&str> = listed.iter().map(|d| d.event.as_str()).collect();
        assert_eq!(events, [WEBHOOK_PR_OPENED, WEBHOOK_PR_OPENED, "task.finished", "attempt.finished"]);
        let due = t.store.claim_webhook_deliveries(10, HOLD).await.unwrap();
        let bodies: Vec<Value> = due
            .iter()
            .map(|d| serde_json::from_str::<Value>(&d.body).unwrap())
            .filter(|b| b["event"] == WEBHOOK_PR_OPENED)
            .collect();
        assert_eq!(bodies.len(), 2);
        assert_eq!(bodies[0]["data"]["pull_request"]["number"], 12);
        assert_eq!(bodies[0]["data"]["pull_request"]["url"], "https://github.example/acme/app/pull/12");
        assert_eq!(bodies[0]["data"]["updated"], false);
        assert_eq!(bodies[1]["data"]["updated"], true);
    }

    async fn finishing_queues_attempt_and_task_deliveries_with_the_finish(t) {
        let me = t.user("me").await;
        let env = hooked_environment(&t, &me).await;
        let mut new = NewTask::new(env.clone(), "fix it");
        new.attempts = 2;
        let task = t.store.create_task(&me, &new).await.unwrap();
        let id = task.task.id.clone();

        let first = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        let mut report = AttemptReport::new(AttemptStatus::Succeeded);
        report.final_message = Some("fixed".into());
        t.store.finish("w", &first.attempt, &report).await.unwrap();
        let listed = t.store.webhook_deliveries(&me, &env, 50).await.unwrap();
        assert_eq!(listed.len(), 1, "the task is not finished yet: {listed:?}");
        assert_eq!(listed[0].event, "attempt.finished");

        let second = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        t.store.finish("w", &second.attempt, &AttemptReport::failed(AttemptStatus::Failed, "no")).await.unwrap();
        let listed = t.store.webhook_deliveries(&me, &env, 50).await.unwrap();
        let events: Vec<&str> = listed.iter().map(|d| d.event.as_str()).collect();
        assert_eq!(events, ["task.finished", "attempt.finished", "attempt.finished"]);
        assert!(listed.iter().all(|d| d.status == "pending" && d.tries == 0));
        assert!(listed.iter().all(|d| d.url == "https://hooks.example/kiln"));
        assert!(listed.iter().all(|d| d.task_id.as_deref() == Some(id.as_str())));

        let due = t.store.claim_webhook_deliveries(10, HOLD).await.unwrap();
        assert_eq!(due.len(), 3);
        let bodies: Vec<Value> = due.iter().map(|d| serde_json::from_str(&d.body).unwrap()).collect();
        assert_eq!(bodies[0]["event"], "attempt.finished");
        assert_eq!(bodies[0]["delivery_id"], due[0].id);
        assert_eq!(bodies[0]["task_id"], id.as_str());
        assert_eq!(bodies[0]["environment_id"], env.as_str());
        assert_eq!(bodies[0]["data"]["attempt"]["n"], 1);
        assert_eq!(bodies[0]["data"]["attempt"]["final_message"], "fixed");
        assert_eq!(bodies[0]["data"]["ranking"][0]["attempt"], 1);
        assert_eq!(bodies[2]["event"], "task.finished");
        assert_eq!(bodies[2]["data"]["status"], "succeeded");
        assert_eq!(bodies[2]["data"]["attempts"].as_array().unwrap().len(), 2);
        assert_eq!(bodies[2]["data"]["ranking"][0]["attempt"], 1);
        for delivery in &due {
            assert!(!delivery.body.contains(SECRET), "{}", delivery.body);
            assert!(!delivery.body.contains("deploy-key-value"), "{}", delivery.body);
        }
    }

    async fn an_environment_without_a_webhook_queues_nothing(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        t.store.finish("w", &claimed.attempt, &AttemptReport::new(AttemptStatus::Succeeded)).await.unwrap();
        assert!(t.store.claim_webhook_deliveries(10, HOLD).await.unwrap().is_empty());
        let queued = t
            .store
            .enqueue_webhook(&task.task.environment_id, &task.task.id, WEBHOOK_PR_OPENED, serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(queued, None);
    }

    async fn a_delivery_is_retried_when_due_then_delivered_or_given_up(t) {
        let me = t.user("me").await;
        let env = hooked_environment(&t, &me).await;
        let task = t.store.create_task(&me, &NewTask::new(env.clone(), "x")).await.unwrap();
        let pr = t
            .store
            .enqueue_webhook(&env, &task.task.id, WEBHOOK_PR_OPENED, serde_json::json!({"number": 7}))
            .await
            .unwrap()
            .unwrap();
        let gone = t
            .store
            .enqueue_webhook(&env, &task.task.id, WEBHOOK_PR_OPENED, serde_json::json!({"number": 8}))
            .await
            .unwrap()
            .unwrap();

        let due = t.store.claim_webhook_deliveries(10, HOLD).await.unwrap();
        assert_eq!(due.iter().map(|d| d.id).collect::<Vec<_>>(), [pr, gone]);
        assert_eq!(due[0].tries, 0);
        // Held: a second claimer (another server) gets nothing meanwhile.
        assert!(t.store.claim_webhook_deliveries(10, HOLD).await.unwrap().is_empty());

        let retry = WebhookTry {
            delivered: false,
            response_code: Some(500),
            error: Some("the receiver answered 500".into()),
            retry_in: Some(Duration::from_secs(10)),
        };
        t.store.record_webhook_try(pr, &retry).await.unwrap();
        let give_up = WebhookTry { retry_in: None, response_code: None, error: Some("connection refused".into()), ..retry.clone() };
        t.store.record_webhook_try(gone, &give_up).await.unwrap();
        let err = t.store.record_webhook_try(gone, &give_up).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");

        t.clock.advance(Duration::from_secs(9));
        assert!(t.store.claim_webhook_deliveries(10, HOLD).await.unwrap().is_empty());
        t.clock.advance(Duration::from_secs(1));
        let again = t.store.claim_webhook_deliveries(10, HOLD).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id, again[0].tries), (pr, 1));
        let ok = WebhookTry { delivered: true, response_code: Some(204), error: None, retry_in: None };
        t.store.record_webhook_try(pr, &ok).await.unwrap();

        let listed = t.store.webhook_deliveries(&me, &env, 50).await.unwrap();
        let fates: Vec<(i64, &str, u32, Option<u16>)> = listed
            .iter()
            .map(|d| (d.id, d.status.as_str(), d.tries, d.response_code))
            .collect();
        assert_eq!(fates, [(gone, "failed", 1, None), (pr, "delivered", 2, Some(204))]);
        assert_eq!(listed[0].error.as_deref(), Some("connection refused"));
        assert_eq!(listed[1].error, None);
        assert_eq!(listed[1].last_try_at, Some(kiln_store::Clock::now(&t.clock)));
        assert!(t.store.claim_webhook_deliveries(10, HOLD).await.unwrap().is_empty());
    }

    async fn an_unrecorded_claim_comes_back_after_its_hold(t) {
        let me = t.user("me").await;
        let env = hooked_environment(&t, &me).await;
        let task = t.store.create_task(&me, &NewTask::new(env.clone(), "x")).await.unwrap();
        let id = t.store.enqueue_webhook(&env, &task.task.id, WEBHOOK_PR_OPENED, serde_json::json!({})).await.unwrap().unwrap();
        assert_eq!(t.store.claim_webhook_deliveries(10, HOLD).await.unwrap().len(), 1);
        t.clock.advance(HOLD);
        let again = t.store.claim_webhook_deliveries(10, HOLD).await.unwrap();
        assert_eq!(again.iter().map(|d| d.id).collect::<Vec<_>>(), [id]);
    }

    async fn only_the_owner_or_an_admin_lists_deliveries(t) {
        let me = t.user("me").await;
        let other = t.user("other").await;
        let admin = t.admin().await;
        let env = hooked_environment(&t, &me).await;
        let task = t.store.create_task(&me, &NewTask::new(env.clone(), "x")).await.unwrap();
        t.store.enqueue_webhook(&env, &task.task.id, WEBHOOK_PR_OPENED, serde_json::json!({})).await.unwrap();
        let err = t.store.webhook_deliveries(&other, &env, 50).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        assert_eq!(t.store.webhook_deliveries(&admin, &env, 50).await.unwrap().len(), 1);
        let err = t.store.webhook_deliveries(&me, &env, 0).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput { field: "limit", .. }), "{err}");
    }
}
