//! Users, teams, memberships and tokens as admins and users manage them:
//! the owner-only roles, the last owner, disabled users, own tokens, and
//! the audit event each change writes in its transaction.

use kiln_protocol::teams::{NewTeam, NewUser, ServerRole, TeamRole, UserPatch};
use kiln_store::{StoreError, TokenFor};
use serde_json::json;

fn forbidden<T: std::fmt::Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::Forbidden { message }) => message,
        other => panic!("expected forbidden, got {other:?}"),
    }
}

fn conflict<T: std::fmt::Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::Conflict { message }) => message,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

on_both_backends! {
    async fn only_an_owner_makes_admins_and_the_last_owner_stays(t) {
        let owner = t.admin().await;
        assert_eq!(owner.role, ServerRole::Owner);
        let ada = t
            .store
            .create_user(&owner, &NewUser { name: "ada".into(), role: Some(ServerRole::Admin), ..Default::default() })
            .await
            .unwrap();
        assert!(ada.teams.is_empty(), "no personal team for a user an admin makes");
        let ada_token = t.store.issue_token(&owner, "ada", &TokenFor::User("ada".into())).await.unwrap();
        let ada_p = t.store.verify_token(&ada_token.secret).await.unwrap().unwrap();
        assert!(ada_p.admin);

        let message = forbidden(
            t.store
                .create_user(&ada_p, &NewUser { name: "boss".into(), role: Some(ServerRole::Owner), ..Default::default() })
                .await,
        );
        assert!(message.contains("only an owner"), "{message}");
        forbidden(t.store.update_user(&ada_p, "ada", &UserPatch { role: Some(ServerRole::Owner), ..Default::default() }).await);
        forbidden(t.store.update_user(&ada_p, &owner.user_name, &UserPatch { disabled: Some(true), ..Default::default() }).await);
        forbidden(t.store.issue_token(&ada_p, "boss", &TokenFor::NewUser { admin: true }).await);

        let owner_id = owner.user_id.clone().unwrap();
        let message = conflict(t.store.update_user(&owner, &owner_id, &UserPatch { role: Some(ServerRole::Admin), ..Default::default() }).await);
        assert!(message.contains("last owner"), "{message}");
        conflict(t.store.update_user(&owner, &owner_id, &UserPatch { disabled: Some(true), ..Default::default() }).await);
        // With a second owner the first may step down.
        t.store.update_user(&owner, "ada", &UserPatch { role: Some(ServerRole::Owner), ..Default::default() }).await.unwrap();
        let stepped = t.store.update_user(&owner, &owner_id, &UserPatch { role: Some(ServerRole::Admin), ..Default::default() }).await.unwrap();
        assert_eq!(stepped.role, ServerRole::Admin);

        let audit = t.raw_audit().await;
        let actions: Vec<&str> = audit.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(actions, ["user.created", "token.created", "user.updated", "user.updated"], "refusals write nothing");
        assert_eq!(audit[3].1["old_role"], "owner");
        assert_eq!(audit[3].1["new_role"], "admin");
        assert_eq!(audit[3].1["fields"], json!(["role"]));
    }

    async fn disabling_a_user_stops_every_token_until_they_are_enabled(t) {
        let owner = t.admin().await;
        t.store.create_user(&owner, &NewUser { name: "milo".into(), ..Default::default() }).await.unwrap();
        let one = t.store.issue_token(&owner, "one", &TokenFor::User("milo".into())).await.unwrap();
        let milo = t.store.verify_token(&one.secret).await.unwrap().unwrap();
        let two = t.store.issue_token(&milo, "two", &TokenFor::Caller).await.unwrap();
        assert_eq!(two.info.user_id, milo.user_id);

        let disabled = t.store.update_user(&owner, "milo", &UserPatch { disabled: Some(true), ..Default::default() }).await.unwrap();
        assert!(disabled.disabled_at.is_some());
        for secret in [&one.secret, &two.secret] {
            assert_eq!(t.store.verify_token(secret).await.unwrap(), None);
        }
        t.store.update_user(&owner, "milo", &UserPatch { disabled: Some(false), ..Default::default() }).await.unwrap();
        for secret in [&one.secret, &two.secret] {
            assert!(t.store.verify_token(secret).await.unwrap().is_some());
        }
        let actions: Vec<String> = t.raw_audit().await.into_iter().map(|(a, _)| a).collect();
        assert_eq!(actions, ["user.created", "token.created", "token.created", "user.disabled", "user.updated"]);
    }

    async fn a_user_revokes_their_own_tokens_and_no_one_elses(t) {
        let owner = t.admin().await;
        let mara = t.user("mara").await;
        let milo = t.user("milo").await;
        let own = t.store.issue_token(&milo, "ci", &TokenFor::Caller).await.unwrap();
        let listed = t.store.tokens(&milo, None).await.unwrap();
        assert!(listed.iter().all(|tok| tok.user_id == milo.user_id), "{listed:?}");
        assert_eq!(listed.len(), 2);
        let err = t.store.revoke_token_as(&mara, &own.info.id).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        assert!(t.store.verify_token(&own.secret).await.unwrap().is_some());
        forbidden(t.store.tokens(&milo, Some("mara")).await);
        forbidden(t.store.issue_token(&milo, "x", &TokenFor::User("mara".into())).await);
        forbidden(t.store.issue_token(&milo, "x", &TokenFor::Worker).await);
        t.store.revoke_token_as(&milo, &own.info.id).await.unwrap();
        assert_eq!(t.store.verify_token(&own.secret).await.unwrap(), None);
        // An admin revokes anyone's.
        t.store.revoke_token_as(&owner, &mara.token_id).await.unwrap();
        let actions: Vec<String> = t.raw_audit().await.into_iter().map(|(a, _)| a).collect();
        assert_eq!(actions, ["token.created", "token.revoked", "token.revoked"]);
    }

    async fn memberships_are_set_replaced_and_removed_by_admins_only(t) {
        let owner = t.admin().await;
        let mara = t.user("mara").await;
        let team = t.store.create_team(&owner, &NewTeam { name: "payments".into() }).await.unwrap();
        assert!(matches!(
            t.store.create_team(&owner, &NewTeam { name: "payments".into() }).await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            t.store.create_team(&owner, &NewTeam { name: "Pay Ments".into() }).await,
            Err(StoreError::InvalidInput { .. })
        ));
        forbidden(t.store.create_team(&mara, &NewTeam { name: "ops".into() }).await);
        forbidden(t.store.set_member(&mara, "payments", "mara", TeamRole::Maintainer).await);
        let err = t.store.team(&mara, "payments").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "a non-member does not see the team");

        t.store.set_member(&owner, &team.id, "mara", TeamRole::Viewer).await.unwrap();
        let team = t.store.set_member(&owner, "payments", "mara", TeamRole::Maintainer).await.unwrap();
        assert_eq!(team.members.len(), 1);
        assert_eq!(team.members[0].role, TeamRole::Maintainer);
        // A member sees the team (with a principal loaded after joining).
        let fresh = t.store.issue_token(&owner, "m", &TokenFor::User("mara".into())).await.unwrap();
        let mara = t.store.verify_token(&fresh.secret).await.unwrap().unwrap();
        let seen = t.store.team(&mara, "payments").await.unwrap();
        assert_eq!(seen.members, team.members);
        let team = t.store.remove_member(&owner, "payments", "mara").await.unwrap();
        assert!(team.members.is_empty());
        assert!(matches!(
            t.store.remove_member(&owner, "payments", "mara").await,
            Err(StoreError::NotFound { .. })
        ));

        let audit = t.raw_audit().await;
        let actions: Vec<&str> = audit.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(
            actions,
            ["team.created", "team.member_set", "team.member_set", "token.created", "team.member_removed"]
        );
        assert_eq!(audit[1].1["previous_role"], json!(null));
        assert_eq!(audit[2].1["role"], "maintainer");
        assert_eq!(audit[2].1["previous_role"], "viewer");
        assert_eq!(audit[4].1["previous_role"], "maintainer");
    }

    async fn sharing_a_task_is_for_its_author_and_maintainers_and_is_audited(t) {
        let owner = t.admin().await;
        let author = t.user("mara").await;
        let env = t.environment(&author, "calc").await;
        let team_id = env.team_id.clone().unwrap();
        t.store.create_user(&owner, &NewUser { name: "vera".into(), ..Default::default() }).await.unwrap();
        t.store.set_member(&owner, &team_id, "vera", TeamRole::Viewer).await.unwrap();
        let token = t.store.issue_token(&owner, "v", &TokenFor::User("vera".into())).await.unwrap();
        let vera = t.store.verify_token(&token.secret).await.unwrap().unwrap();
        let task = t.store.create_task(&author, &kiln_store::NewTask::new("calc", "x")).await.unwrap();
        let id = task.task.id.clone();
        forbidden(t.store.task(&vera, &id).await);
        forbidden(t.store.share_task(&vera, &id, true).await);
        let shared = t.store.share_task(&author, &id, true).await.unwrap();
        assert!(shared.task.shared);
        assert!(t.store.task(&vera, &id).await.unwrap().task.shared);
        // Again is a no-op, not a second event.
        t.store.share_task(&author, &id, true).await.unwrap();
        t.store.share_task(&author, &id, false).await.unwrap();
        forbidden(t.store.task(&vera, &id).await);
        let actions: Vec<String> = t
            .raw_audit()
            .await
            .into_iter()
            .map(|(a, _)| a)
            .filter(|a| a.starts_with("task."))
            .collect();
        assert_eq!(actions, ["task.created", "task.shared", "task.unshared"]);
    }
}
