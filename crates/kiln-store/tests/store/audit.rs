//! The audit trail: what each change records, who it names, the filters
//! and pages of `audit_events`, the export, and the append-only guarantee.

use std::time::Duration;

use kiln_protocol::teams::{AuditEvent, AuditQuery};
use kiln_protocol::{AttemptStatus, ForgeKind};
use kiln_store::{
    AttemptReport, Clock, NewEnvironment, NewTask, OpenedPullRequest, Principal, StoreError,
};

const LEASE: Duration = Duration::from_secs(60);

/// Every event, oldest first (through pages of the listing).
async fn all_events(
    t: &crate::support::TestStore,
    admin: &Principal,
    query: &AuditQuery,
) -> Vec<AuditEvent> {
    let mut query = query.clone();
    query.limit = Some(1000);
    let mut events = t.store.audit_events(admin, &query).await.unwrap().events;
    events.reverse();
    events
}

fn actions(events: &[AuditEvent]) -> Vec<&str> {
    events.iter().map(|e| e.action.as_str()).collect()
}

on_both_backends! {
    async fn each_change_records_one_event_naming_its_actor_target_and_team(t) {
        let admin = t.admin().await;
        let alice = t.user("alice").await;
        let env = t
            .store
            .create_environment(
                &alice,
                &NewEnvironment {
                    name: "calc".into(),
                    repo: "/srv/git/calc".into(),
                    secrets: [("API_KEY".to_string(), "sk-very-secret-value".to_string())].into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut new = NewTask::new(env.id.clone(), "fix the parser");
        new.attempts = 2;
        let task = t.store.create_task(&alice, &new).await.unwrap();
        let id = task.task.id.clone();
        let a1 = t.store.claim_next("w", LEASE).await.unwrap().unwrap().attempt;
        t.store.finish("w", &a1, &AttemptReport::new(AttemptStatus::Succeeded)).await.unwrap();
        t.store.prefer_attempt(&alice, &id, Some(1)).await.unwrap();
        let opened = OpenedPullRequest {
            attempt: a1.clone(),
            forge: ForgeKind::Github,
            number: 3,
            url: "https://github.example/acme/calc/pull/3".into(),
            branch: format!("kiln/{id}"),
            draft: false,
        };
        t.store.record_pull_request(&alice, &opened).await.unwrap();
        let sent = t
            .store
            .enqueue_message(&alice, &id, Some(1), "also handle the empty input please")
            .await
            .unwrap();
        t.store.cancel_task(&alice, &id).await.unwrap();
        // Cancelling again changes nothing, so it records nothing.
        t.store.cancel_task(&alice, &id).await.unwrap();
        let token = t.store.create_token_by(&admin, "ci", false).await.unwrap();
        t.store.revoke_token_by(&admin, &token.info.id).await.unwrap();
        t.store.revoke_token_by(&admin, &token.info.id).await.unwrap();

        let events = all_events(&t, &admin, &AuditQuery::default()).await;
        // The first two are the tokens of admin and alice (created by the store
        // directly: the server is their actor).
        assert_eq!(
            actions(&events),
            [
                "token.created", "token.created", "environment.created", "task.created",
                "task.preferred", "pr.opened", "task.replied", "task.cancelled",
                "token.created", "token.revoked",
            ]
        );
        assert_eq!(events[0].actor.user_name, "kiln");
        assert_eq!(events[0].actor.user_id, None);
        assert_eq!(events[0].actor.token_id, None);
        assert_eq!(events[1].target.id.as_deref(), Some(alice.token_id.as_str()));
        for event in &events[2..8] {
            assert_eq!(event.actor.user_id, alice.user_id, "{event:?}");
            assert_eq!(event.actor.user_name, "alice");
            assert_eq!(event.actor.token_id.as_deref(), Some(alice.token_id.as_str()));
            assert_eq!(event.team_id, env.team_id, "{event:?}");
        }
        assert_eq!(events[2].target.kind, "environment");
        assert_eq!(events[2].target.id.as_deref(), Some(env.id.as_str()));
        for event in &events[3..8] {
            assert_eq!(event.target.kind, "task");
            assert_eq!(event.target.id.as_deref(), Some(id.as_str()));
        }
        assert_eq!(events[4].details["attempt"], 1);
        assert_eq!(events[5].details["number"], 3);
        assert_eq!(events[5].details["updated"], false);
        assert_eq!(events[6].details["length"], 34);
        assert_eq!(events[6].details["message_ids"][0], sent[0].id);
        assert_eq!(events[7].details["cancelled"], serde_json::json!([1, 2]));
        for event in &events[8..10] {
            assert_eq!(event.actor.user_id, admin.user_id);
            assert_eq!(event.target.id.as_deref(), Some(token.info.id.as_str()));
        }
        assert_eq!(events[8].details["name"], "ci");

        let trail = serde_json::to_string(&events).unwrap();
        for secret in ["sk-very-secret-value", token.secret.as_str(), "empty input"] {
            assert!(!trail.contains(secret), "{secret:?} is in the trail: {trail}");
        }
        assert!(trail.contains("API_KEY"), "secret names are recorded: {trail}");
    }

    async fn the_trail_filters_by_actor_action_team_target_and_time(t) {
        let admin = t.admin().await;
        let alice = t.user("alice").await;
        let bob = t.user("bob").await;
        let start = t.clock.now();
        t.clock.advance(Duration::from_secs(60));
        let alice_task = t.task(&alice, 1).await;
        t.clock.advance(Duration::from_secs(60));
        let middle = t.clock.now();
        let bob_task = t.task(&bob, 1).await;
        t.store.cancel_task(&bob, &bob_task.task.id).await.unwrap();
        t.clock.advance(Duration::from_secs(60));
        let end = t.clock.now();
        t.store.cancel_task(&alice, &alice_task.task.id).await.unwrap();

        let q = |f: fn(&mut AuditQuery)| {
            let mut query = AuditQuery::default();
            f(&mut query);
            query
        };
        let none = AuditQuery::default;
        let by_name = all_events(&t, &admin, &AuditQuery { actor: Some("bob".into()), ..none() }).await;
        assert_eq!(actions(&by_name), ["environment.created", "task.created", "task.cancelled"]);
        let by_id = all_events(&t, &admin, &AuditQuery { actor: bob.user_id.clone(), ..none() }).await;
        assert_eq!(by_id, by_name);

        let tasks = all_events(&t, &admin, &q(|q| q.action = Some("task.".into()))).await;
        assert_eq!(
            actions(&tasks),
            ["task.created", "task.created", "task.cancelled", "task.cancelled"]
        );
        let cancels = all_events(&t, &admin, &q(|q| q.action = Some("task.cancelled".into()))).await;
        assert_eq!(cancels.len(), 2);
        // `_` in a prefix is itself, not a LIKE wildcard.
        assert!(all_events(&t, &admin, &q(|q| q.action = Some("tas_.".into()))).await.is_empty());
        assert!(all_events(&t, &admin, &q(|q| q.action = Some("tas.".into()))).await.is_empty());

        let team_name = bob.teams[0].team_name.clone();
        let team_id = bob.teams[0].team_id.clone();
        let by_team = all_events(&t, &admin, &AuditQuery { team: Some(team_name), ..none() }).await;
        assert_eq!(by_team, by_name);
        let by_team_id = all_events(&t, &admin, &AuditQuery { team: Some(team_id), ..none() }).await;
        assert_eq!(by_team_id, by_name);

        let target = alice_task.task.id.clone();
        let by_target = all_events(&t, &admin, &AuditQuery { target: Some(target), ..none() }).await;
        assert_eq!(actions(&by_target), ["task.created", "task.cancelled"]);

        let window = AuditQuery { since: Some(middle), until: Some(end), ..none() };
        assert_eq!(
            actions(&all_events(&t, &admin, &window).await),
            ["environment.created", "task.created", "task.cancelled"]
        );
        let before = AuditQuery { until: Some(start + chrono::Duration::milliseconds(1)), ..none() };
        assert_eq!(actions(&all_events(&t, &admin, &before).await), ["token.created"; 3]);
    }

    async fn pages_are_newest_first_and_meet_without_gaps_or_repeats(t) {
        let admin = t.admin().await;
        for n in 0..7 {
            t.store.create_token_by(&admin, &format!("t{n}"), false).await.unwrap();
        }
        let everything = t.store.audit_events(&admin, &AuditQuery::default()).await.unwrap();
        assert_eq!(everything.next_cursor, None);
        assert_eq!(everything.events.len(), 8);
        assert!(everything.events.windows(2).all(|w| w[0].id > w[1].id));

        let mut paged = Vec::new();
        let mut cursor = None;
        loop {
            let query = AuditQuery { limit: Some(3), cursor: cursor.clone(), ..Default::default() };
            let page = t.store.audit_events(&admin, &query).await.unwrap();
            assert!(page.events.len() <= 3);
            paged.extend(page.events);
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
            // An event appended between pages does not shift the next one.
            t.store.create_token_by(&admin, "meanwhile", false).await.unwrap();
        }
        assert_eq!(paged, everything.events);

        for (query, field) in [
            (AuditQuery { limit: Some(0), ..Default::default() }, "limit"),
            (AuditQuery { limit: Some(1001), ..Default::default() }, "limit"),
            (AuditQuery { cursor: Some("t_abc".into()), ..Default::default() }, "cursor"),
            (AuditQuery { action: Some("task.%".into()), ..Default::default() }, "action"),
            (AuditQuery { action: Some("'; DROP".into()), ..Default::default() }, "action"),
        ] {
            let err = t.store.audit_events(&admin, &query).await.unwrap_err();
            assert!(
                matches!(&err, StoreError::InvalidInput { field: f, .. } if *f == field),
                "{query:?}: {err}"
            );
        }
    }

    async fn only_admins_read_or_export_the_trail(t) {
        let alice = t.user("alice").await;
        let err = t.store.audit_events(&alice, &AuditQuery::default()).await.unwrap_err();
        assert!(matches!(err, StoreError::Forbidden { .. }), "{err}");
        assert!(err.to_string().contains("admin"), "{err}");
        let err = t.store.audit_export(&alice, &AuditQuery::default()).await.unwrap_err();
        assert!(matches!(err, StoreError::Forbidden { .. }), "{err}");
    }

    async fn an_export_reads_in_batches_oldest_first_up_to_where_it_started(t) {
        let admin = t.admin().await;
        // 2500 events written past the store (the triggers allow inserts), and
        // the counter moved past them, as 2500 real changes would leave it.
        t.raw_execute(
            "INSERT INTO audit_events (id, ts, actor_name, action, target_kind, target_id, details)
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500)
             SELECT 1000 + i, 1000 * i, 'someone', 'task.created', 'task', 'task-' || i, '{}'
             FROM n",
        )
        .await
        .unwrap();
        t.raw_execute("UPDATE counters SET value = 3500 WHERE name = 'audit_id'").await.unwrap();

        let mut export = t.store.audit_export(&admin, &AuditQuery::default()).await.unwrap();
        let first = export.next_batch().await.unwrap().unwrap();
        assert_eq!(first.len(), 1000);
        // Appended after the export started: left for the next export.
        t.store.create_token_by(&admin, "late", false).await.unwrap();
        let mut ids: Vec<i64> = first.iter().map(|e| e.id).collect();
        let mut batches = 1;
        while let Some(batch) = export.next_batch().await.unwrap() {
            assert!(batch.len() <= 1000);
            ids.extend(batch.iter().map(|e| e.id));
            batches += 1;
        }
        assert_eq!(batches, 3);
        assert_eq!(ids.len(), 2501, "the admin's token.created and the 2500");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first");
        assert_eq!(ids[0], 1);
        assert_eq!(*ids.last().unwrap(), 3500);
        assert!(export.next_batch().await.unwrap().is_none());

        let filtered = AuditQuery { target: Some("task-2042".into()), ..Default::default() };
        let mut export = t.store.audit_export(&admin, &filtered).await.unwrap();
        let only = export.next_batch().await.unwrap().unwrap();
        assert_eq!(only.iter().map(|e| e.id).collect::<Vec<_>>(), [3042]);
        assert!(export.next_batch().await.unwrap().is_none());
    }

    async fn the_database_refuses_to_change_or_delete_audit_events(t) {
        let admin = t.admin().await;
        t.store.create_token_by(&admin, "evidence", false).await.unwrap();
        let before = t.store.audit_events(&admin, &AuditQuery::default()).await.unwrap();

        let attacks = [
            "UPDATE audit_events SET actor_name = 'someone else'",
            "UPDATE audit_events SET details = '{}' WHERE action = 'token.created'",
            "DELETE FROM audit_events",
            "DELETE FROM audit_events WHERE id = 1",
        ];
        for sql in attacks {
            let err = t.raw_execute(sql).await.unwrap_err();
            assert!(err.contains("append-only"), "{sql}: {err}");
        }
        if t.backend == kiln_store::Backend::Postgres {
            let err = t.raw_execute("TRUNCATE audit_events").await.unwrap_err();
            assert!(err.contains("append-only"), "TRUNCATE: {err}");
        }
        let after = t.store.audit_events(&admin, &AuditQuery::default()).await.unwrap();
        assert_eq!(after, before);
    }
}
