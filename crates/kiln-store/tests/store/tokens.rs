use kiln_store::{AdminBootstrap, StoreError};

on_both_backends! {
    async fn created_token_verifies_and_revoked_one_does_not(t) {
        let created = t.store.create_token("ci bot", false).await.unwrap();
        let principal = t.store.verify_token(&created.secret).await.unwrap().unwrap();
        assert_eq!(principal.token_id, created.info.id);
        assert_eq!(principal.name, "ci bot");
        assert!(!principal.admin);

        let revoked = t.store.revoke_token(&created.info.id).await.unwrap();
        assert!(revoked.revoked_at.is_some());
        assert_eq!(t.store.verify_token(&created.secret).await.unwrap(), None);
        // Revoking twice is fine and keeps the first revocation time.
        let again = t.store.revoke_token(&created.info.id).await.unwrap();
        assert_eq!(again.revoked_at, revoked.revoked_at);
    }

    async fn unknown_and_almost_right_secrets_are_rejected(t) {
        let created = t.store.create_token("me", false).await.unwrap();
        assert_eq!(t.store.verify_token("kiln_nope").await.unwrap(), None);
        assert_eq!(t.store.verify_token("").await.unwrap(), None);
        let mut almost = created.secret.clone();
        almost.pop();
        assert_eq!(t.store.verify_token(&almost).await.unwrap(), None);
    }

    async fn listing_shows_tokens_without_secrets(t) {
        let a = t.store.create_token("a", true).await.unwrap();
        let b = t.store.create_token("b", false).await.unwrap();
        let listed = t.store.list_tokens().await.unwrap();
        assert_eq!(listed, vec![a.info.clone(), b.info.clone()]);
        let shown = format!("{listed:?}");
        assert!(!shown.contains(&a.secret) && !shown.contains(&b.secret));
    }

    async fn revoking_an_unknown_token_is_not_found(t) {
        let err = t.store.revoke_token("tok_missing").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    }

    async fn first_start_creates_one_admin_token(t) {
        let AdminBootstrap::Created(first) = t.store.ensure_admin_token(None).await.unwrap() else {
            panic!("a fresh store must create an admin token");
        };
        assert!(first.info.admin);
        let principal = t.store.verify_token(&first.secret).await.unwrap().unwrap();
        assert!(principal.admin);
        // Second start: nothing new to print.
        assert_eq!(t.store.ensure_admin_token(None).await.unwrap(), AdminBootstrap::Present);
        assert_eq!(t.store.list_tokens().await.unwrap().len(), 1);

        // With the only admin revoked, the next start makes a new one.
        t.store.revoke_token(&first.info.id).await.unwrap();
        assert!(matches!(
            t.store.ensure_admin_token(None).await.unwrap(),
            AdminBootstrap::Created(_)
        ));
    }

    async fn servers_starting_together_create_one_admin_token_between_them(t) {
        let others = [t.reopen().await, t.reopen().await, t.reopen().await];
        let (a, b, c, d) = tokio::join!(
            t.store.ensure_admin_token(None),
            others[0].ensure_admin_token(None),
            others[1].ensure_admin_token(None),
            others[2].ensure_admin_token(None),
        );
        let outcomes = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
        let created = outcomes
            .iter()
            .filter(|o| matches!(o, AdminBootstrap::Created(_)))
            .count();
        assert_eq!(created, 1, "{outcomes:?}");
        assert_eq!(t.store.list_tokens().await.unwrap().len(), 1);
    }

    async fn admin_token_from_the_environment_is_registered_once(t) {
        let secret = "automation-secret-0123456789abcdef";
        let AdminBootstrap::Registered(info) =
            t.store.ensure_admin_token(Some(secret)).await.unwrap()
        else {
            panic!("the secret must be registered");
        };
        assert!(info.admin);
        assert!(t.store.verify_token(secret).await.unwrap().unwrap().admin);
        assert_eq!(
            t.store.ensure_admin_token(Some(secret)).await.unwrap(),
            AdminBootstrap::Present
        );
        assert_eq!(t.store.list_tokens().await.unwrap().len(), 1);

        t.store.revoke_token(&info.id).await.unwrap();
        let err = t.store.ensure_admin_token(Some(secret)).await.unwrap_err();
        assert!(err.to_string().contains("revoked"), "{err}");
    }

    async fn short_admin_token_from_the_environment_is_refused(t) {
        let err = t.store.ensure_admin_token(Some("hunter2")).await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains("KILN_ADMIN_TOKEN"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(t.store.list_tokens().await.unwrap().is_empty());
    }
}
