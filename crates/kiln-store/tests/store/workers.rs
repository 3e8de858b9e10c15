use std::time::Duration;

use kiln_protocol::worker::WorkerIdentity;
use kiln_protocol::{AttemptStatus, Event, EventKind};
use kiln_store::{AttemptReport, AttemptState, RecoverScope, StoreError};

const LEASE: Duration = Duration::from_secs(60);

fn identity(name: &str) -> WorkerIdentity {
    WorkerIdentity {
        name: name.into(),
        version: "0.test".into(),
    }
}

fn warning(seq: u64, text: &str) -> Event {
    Event::new(
        seq,
        EventKind::Warning {
            message: text.into(),
        },
    )
}

on_both_backends! {
    async fn a_server_restart_leaves_remote_workers_their_attempts(t) {
        let me = t.user("me").await;
        t.task(&me, 2).await;
        let worker = t.store.create_worker_token("w").await.unwrap().info.principal();
        let remote = t.store.claim_for_worker(&worker, &identity("box1"), LEASE).await.unwrap().unwrap();
        let local = t.store.claim_next("serve-0", LEASE).await.unwrap().unwrap();
        // The server restarts; the worker on the other machine goes on.
        t.restart().await;
        let report = t.store.recover(RecoverScope::AllRunning, 3).await.unwrap();
        assert_eq!(report.requeued, vec![local.attempt.clone()], "only the server's own");
        let holder = t.store.verify_lease(&remote.lease_token, &remote.claimed.attempt).await.unwrap();
        assert_eq!(holder.worker_id, remote.worker_id, "the remote lease still holds");
    }

    async fn worker_tokens_say_so_and_are_listed(t) {
        let created = t.store.create_worker_token("build-box").await.unwrap();
        assert!(created.info.worker && !created.info.admin);
        let me = t.store.verify_token(&created.secret).await.unwrap().unwrap();
        assert!(me.worker && !me.admin);
        let user = t.user("someone").await;
        assert!(!user.worker);
        let listed = t.store.list_tokens().await.unwrap();
        let flags: Vec<(String, bool)> = listed.iter().map(|t| (t.name.clone(), t.worker)).collect();
        assert!(flags.contains(&("build-box".into(), true)));
        assert!(flags.contains(&("someone".into(), false)));
    }

    async fn only_worker_tokens_claim_and_names_are_checked(t) {
        let user = t.user("me").await;
        t.task(&user, 1).await;
        let refused = t.store.claim_for_worker(&user, &identity("w1"), LEASE).await.unwrap_err();
        assert!(matches!(refused, StoreError::InvalidInput { field: "token", .. }), "{refused}");
        let worker = t.store.create_worker_token("w").await.unwrap().info.principal();
        for bad in ["", "a b", "x|y", "../up", &"n".repeat(65)] {
            let err = t.store.claim_for_worker(&worker, &identity(bad), LEASE).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidInput { field: "worker.name", .. }), "{bad}: {err}");
        }
        // Nothing was claimed by the refused calls.
        assert_eq!(t.store.queue_stats().await.unwrap().queued, 1);
    }

    async fn a_remote_claim_hands_out_a_lease_token_for_that_attempt_only(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 2).await;
        let worker = t.store.create_worker_token("w").await.unwrap().info.principal();
        let a = t.store.claim_for_worker(&worker, &identity("box1"), LEASE).await.unwrap().unwrap();
        let b = t.store.claim_for_worker(&worker, &identity("box1"), LEASE).await.unwrap().unwrap();
        assert_eq!(a.claimed.task.id, task.task.id);
        assert_eq!((a.claimed.attempt.n, b.claimed.attempt.n), (1, 2));
        assert_eq!(a.worker_id, format!("remote:{}:box1", worker.token_id));
        assert_ne!(a.lease_token, b.lease_token);
        // 32 random bytes in base64url.
        assert_eq!(a.lease_token.len(), 43);
        assert!(a.lease_token.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));

        let holder = t.store.verify_lease(&a.lease_token, &a.claimed.attempt).await.unwrap();
        assert_eq!(holder.attempt, a.claimed.attempt);
        assert_eq!(holder.worker_id, a.worker_id);
        // A's token on B's attempt: as if B did not exist.
        let err = t.store.verify_lease(&a.lease_token, &b.claimed.attempt).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        let err = t.store.verify_lease("made-up", &a.claimed.attempt).await.unwrap_err();
        assert!(matches!(err, StoreError::UnknownLease), "{err}");
        // The worker token's own secret is no lease token either.
        let attempt = &t.store.task(&me, &task.task.id).await.unwrap().attempts[0];
        assert_eq!(attempt.worker_id.as_deref(), Some(a.worker_id.as_str()));
        assert_eq!(attempt.status, AttemptState::Running);
    }

    async fn an_expired_and_reclaimed_attempt_refuses_the_old_lease_token(t) {
        let me = t.user("me").await;
        t.task(&me, 1).await;
        let worker = t.store.create_worker_token("w").await.unwrap().info.principal();
        let first = t.store.claim_for_worker(&worker, &identity("box1"), LEASE).await.unwrap().unwrap();
        let old = t.store.verify_lease(&first.lease_token, &first.claimed.attempt).await.unwrap();
        t.store.append_leased_events(&old, &[warning(1, "before")]).await.unwrap();

        t.clock.advance(LEASE + Duration::from_secs(1));
        // Expired, not yet taken back: the lease is already lost.
        let err = t.store.verify_lease(&first.lease_token, &first.claimed.attempt).await.unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        let report = t.store.recover(RecoverScope::ExpiredLeases, 3).await.unwrap();
        assert_eq!(report.requeued, vec![first.claimed.attempt.clone()]);
        // The same worker (name) claims it again: a new token, the log goes on.
        let second = t.store.claim_for_worker(&worker, &identity("box1"), LEASE).await.unwrap().unwrap();
        assert_eq!(second.claimed.attempt, first.claimed.attempt);
        assert_eq!(second.claimed.try_number, 2);
        assert_eq!(second.claimed.next_seq, 3, "the earlier event and the recovery notice are kept");

        let err = t.store.verify_lease(&first.lease_token, &first.claimed.attempt).await.unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        // A holder checked before the re-claim is fenced in every write too.
        let err = t.store.heartbeat_lease(&old, LEASE).await.unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        let err = t.store.append_leased_events(&old, &[warning(3, "late")]).await.unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        let err = t
            .store
            .finish_leased(&old, &AttemptReport::new(AttemptStatus::Succeeded))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");

        let current = t.store.verify_lease(&second.lease_token, &second.claimed.attempt).await.unwrap();
        assert_eq!(t.store.append_leased_events(&current, &[warning(3, "now")]).await.unwrap(), 4);
        let log = t.store.events(&first.claimed.task.id, None, 0, 100).await.unwrap();
        let texts: Vec<String> = log.iter().map(|e| e.json.clone()).collect();
        assert_eq!(log.len(), 3);
        assert!(!texts.iter().any(|t| t.contains("late")), "{texts:?}");
    }

    async fn an_in_process_claim_ends_a_remote_lease_token(t) {
        let me = t.user("me").await;
        t.task(&me, 1).await;
        let worker = t.store.create_worker_token("w").await.unwrap().info.principal();
        let remote = t.store.claim_for_worker(&worker, &identity("box1"), LEASE).await.unwrap().unwrap();
        t.clock.advance(LEASE + Duration::from_secs(1));
        t.store.recover(RecoverScope::ExpiredLeases, 3).await.unwrap();
        let local = t.store.claim_next("serve-0", LEASE).await.unwrap().unwrap();
        assert_eq!(local.attempt, remote.claimed.attempt);
        let err = t.store.verify_lease(&remote.lease_token, &remote.claimed.attempt).await.unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    }

    async fn a_revoked_worker_token_ends_its_lease_tokens(t) {
        let me = t.user("me").await;
        t.task(&me, 1).await;
        let created = t.store.create_worker_token("w").await.unwrap();
        let worker = created.info.principal();
        let claim = t.store.claim_for_worker(&worker, &identity("box1"), LEASE).await.unwrap().unwrap();
        t.store.revoke_token(&worker.token_id).await.unwrap();
        let err = t.store.verify_lease(&claim.lease_token, &claim.claimed.attempt).await.unwrap_err();
        assert!(matches!(err, StoreError::UnknownLease), "{err}");
    }

    async fn events_must_continue_the_log_and_retries_are_idempotent(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let worker = t.store.create_worker_token("w").await.unwrap().info.principal();
        let claim = t.store.claim_for_worker(&worker, &identity("box1"), LEASE).await.unwrap().unwrap();
        let holder = t.store.verify_lease(&claim.lease_token, &claim.claimed.attempt).await.unwrap();
        assert_eq!(claim.claimed.next_seq, 1);

        let gap = t.store.append_leased_events(&holder, &[warning(2, "skips 1")]).await.unwrap_err();
        assert!(matches!(gap, StoreError::Conflict { .. }), "{gap}");
        assert!(gap.to_string().contains("next seq is 1"), "{gap}");
        let holes = t
            .store
            .append_leased_events(&holder, &[warning(1, "a"), warning(3, "c")])
            .await
            .unwrap_err();
        assert!(matches!(holes, StoreError::InvalidInput { field: "events", .. }), "{holes}");

        let batch = [warning(1, "a"), warning(2, "b")];
        assert_eq!(t.store.append_leased_events(&holder, &batch).await.unwrap(), 3);
        // The reply was lost: the worker sends the batch again, with one more.
        let retry = [warning(1, "a"), warning(2, "b"), warning(3, "c")];
        assert_eq!(t.store.append_leased_events(&holder, &retry).await.unwrap(), 4);
        assert_eq!(t.store.append_leased_events(&holder, &[]).await.unwrap(), 4);
        let log = t.store.events(&task.task.id, None, 0, 100).await.unwrap();
        let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    async fn heartbeats_renew_and_deliver_messages_and_the_cancel_flag(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let worker = t.store.create_worker_token("w").await.unwrap().info.principal();
        let claim = t.store.claim_for_worker(&worker, &identity("box1"), LEASE).await.unwrap().unwrap();
        let holder = t.store.verify_lease(&claim.lease_token, &claim.claimed.attempt).await.unwrap();
        t.store.enqueue_message(&me, &task.task.id, Some(1), "use the other API").await.unwrap();
        t.clock.advance(Duration::from_secs(50));
        let (lease, messages) = t.store.heartbeat_lease(&holder, LEASE).await.unwrap();
        assert_eq!(lease.expires_at, t.store.now() + chrono::Duration::seconds(60));
        assert!(!lease.cancel_requested);
        assert_eq!(messages, vec!["use the other API".to_string()]);
        // Renewed: 50 s later the lease still holds, and messages came once.
        t.clock.advance(Duration::from_secs(50));
        t.store.cancel_task(&me, &task.task.id).await.unwrap();
        let (lease, messages) = t.store.heartbeat_lease(&holder, LEASE).await.unwrap();
        assert!(lease.cancel_requested);
        assert!(messages.is_empty());
    }

    async fn finish_through_the_lease_records_the_report_and_ends_it(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 1).await;
        let worker = t.store.create_worker_token("w").await.unwrap().info.principal();
        let claim = t.store.claim_for_worker(&worker, &identity("box1"), LEASE).await.unwrap().unwrap();
        let holder = t.store.verify_lease(&claim.lease_token, &claim.claimed.attempt).await.unwrap();
        let mut report = AttemptReport::new(AttemptStatus::Succeeded);
        report.diff = Some("diff --git a/x b/x\n".into());
        report.branch = Some(format!("kiln/{}/1", task.task.id));
        t.store.finish_leased(&holder, &report).await.unwrap();
        let attempt = &t.store.task(&me, &task.task.id).await.unwrap().attempts[0];
        assert_eq!(attempt.status, AttemptState::Succeeded);
        let err = t.store.finish_leased(&holder, &report).await.unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        let err = t.store.verify_lease(&claim.lease_token, &claim.claimed.attempt).await.unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    }

    async fn the_base_commit_of_the_latest_fresh_run_is_kept(t) {
        let me = t.user("me").await;
        t.task(&me, 1).await;
        let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        assert_eq!(t.store.base_commit(&claimed.attempt).await.unwrap(), None);
        t.store.set_base_commit(&claimed.attempt, "aaa").await.unwrap();
        assert_eq!(t.store.base_commit(&claimed.attempt).await.unwrap().as_deref(), Some("aaa"));
        // A rerun from a fresh checkout starts from the base as it is then.
        t.store.set_base_commit(&claimed.attempt, "bbb").await.unwrap();
        assert_eq!(t.store.base_commit(&claimed.attempt).await.unwrap().as_deref(), Some("bbb"));
        let missing = kiln_store::AttemptRef::new("t_missing", 1);
        let err = t.store.set_base_commit(&missing, "ccc").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    }

    async fn workers_are_listed_with_the_attempts_they_hold(t) {
        let me = t.user("me").await;
        let task = t.task(&me, 2).await;
        let worker = t.store.create_worker_token("w").await.unwrap().info.principal();
        let idle = t.store.create_worker_token("w2").await.unwrap().info.principal();
        assert_eq!(t.store.list_workers().await.unwrap(), vec![]);
        let claim = t.store.claim_for_worker(&worker, &identity("box1"), LEASE).await.unwrap().unwrap();
        t.store.claim_next("serve-0", LEASE).await.unwrap().unwrap();
        t.clock.advance(Duration::from_secs(3));
        assert!(t.store.claim_for_worker(&idle, &identity("box2"), LEASE).await.unwrap().is_none());
        let workers = t.store.list_workers().await.unwrap();
        assert_eq!(workers.len(), 2, "{workers:?}");
        let box1 = workers.iter().find(|w| w.name == "box1").unwrap();
        assert_eq!(box1.token_id, worker.token_id);
        assert_eq!(box1.version, "0.test");
        assert_eq!(box1.running.len(), 1);
        assert_eq!(box1.running[0].task_id, task.task.id);
        assert_eq!(box1.running[0].n, claim.claimed.attempt.n);
        let box2 = workers.iter().find(|w| w.name == "box2").unwrap();
        assert!(box2.running.is_empty());
        assert_eq!(box2.last_contact, t.store.now());
        assert!(box1.last_contact < box2.last_contact);
    }
}
