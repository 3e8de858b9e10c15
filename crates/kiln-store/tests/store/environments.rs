use std::collections::BTreeMap;

use kiln_protocol::{CheckSpec, ForgeConfig, ForgeKind, WebhookConfig};
use kiln_store::{NewEnvironment, StoreError};

fn full_environment() -> NewEnvironment {
    NewEnvironment {
        name: "backend".into(),
        repo: "https://git.example/backend.git".into(),
        base_branch: Some("main".into()),
        setup_script: Some("cargo fetch".into()),
        env: BTreeMap::from([("RUST_LOG".into(), "debug".into())]),
        secrets: BTreeMap::from([("CARGO_TOKEN".into(), "s3cret-value".into())]),
        network: true,
        image: Some("localhost/rust:1".into()),
        checks: vec![CheckSpec {
            name: "tests".into(),
            command: "cargo test".into(),
            timeout_secs: Some(600),
        }],
        forge: Some(ForgeConfig {
            kind: ForgeKind::Gitlab,
            api_url: Some("https://gitlab.example/api/v4".into()),
            repo: "team/backend".into(),
            token_secret: "CARGO_TOKEN".into(),
        }),
        webhook: Some(WebhookConfig {
            url: "https://hooks.example/kiln".into(),
            secret: "whsec-0123456789abcdef".into(),
        }),
        budget_usd: Some(2.5),
        team: None,
    }
}

on_both_backends! {
    async fn environment_round_trips_without_its_secret_values(t) {
        let me = t.user("me").await;
        let created = t.store.create_environment(&me, &full_environment()).await.unwrap();
        assert!(created.id.starts_with("env_"));
        assert_eq!(created.owner_token_id, me.token_id);
        assert_eq!(created.base_branch.as_deref(), Some("main"));
        assert_eq!(created.env["RUST_LOG"], "debug");
        assert_eq!(created.secret_names, vec!["CARGO_TOKEN".to_string()]);
        assert!(created.network);
        assert!(!format!("{created:?}").contains("s3cret-value"));

        let by_name = t.store.environment(&me, "backend").await.unwrap();
        let by_id = t.store.environment(&me, &created.id).await.unwrap();
        assert_eq!(by_name, created);
        assert_eq!(by_id, created);
        assert_eq!(t.store.list_environments(&me).await.unwrap(), vec![created.clone()]);

        let secrets = t.store.environment_secrets(&created.id).await.unwrap();
        assert_eq!(secrets["CARGO_TOKEN"], "s3cret-value");

        let full = full_environment();
        assert_eq!(created.checks, full.checks);
        assert_eq!(created.forge, full.forge);
        assert_eq!(created.webhook_url.as_deref(), Some("https://hooks.example/kiln"));
        assert_eq!(created.budget_usd, Some(2.5));
        // The webhook secret is for the server's deliveries, never the view.
        assert!(!format!("{created:?}").contains("whsec-"));
        assert!(!secrets.values().any(|v| v.contains("whsec-")));
        let webhook = t.store.environment_webhook(&created.id).await.unwrap().unwrap();
        assert_eq!(webhook.secret, "whsec-0123456789abcdef");
        assert_eq!(webhook.url, "https://hooks.example/kiln");
    }

    async fn environment_settings_are_checked(t) {
        let me = t.user("me").await;
        let cases: Vec<(NewEnvironment, &str)> = vec![
            (
                NewEnvironment { forge: Some(ForgeConfig { token_secret: "NOPE".into(), ..full_environment().forge.unwrap() }), ..full_environment() },
                "NOPE",
            ),
            (
                NewEnvironment { checks: vec![full_environment().checks[0].clone(); 2], ..full_environment() },
                "two checks are named \"tests\"",
            ),
            (
                NewEnvironment { webhook: Some(WebhookConfig { url: "ftp://x".into(), secret: "0123456789abcdef0".into() }), ..full_environment() },
                "not an http(s) URL",
            ),
            (
                NewEnvironment { webhook: Some(WebhookConfig { url: "https://x".into(), secret: "short".into() }), ..full_environment() },
                "shorter than 16",
            ),
            (NewEnvironment { budget_usd: Some(-1.0), ..full_environment() }, "positive number"),
        ];
        for (new, expected) in cases {
            let err = t.store.create_environment(&me, &new).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
            assert!(err.to_string().contains(expected), "{err} lacks {expected}");
        }
        assert!(t.store.list_environments(&me).await.unwrap().is_empty());
    }

    async fn environment_names_are_unique_per_owner(t) {
        let me = t.user("me").await;
        let other = t.user("other").await;
        t.store.create_environment(&me, &full_environment()).await.unwrap();
        let err = t.store.create_environment(&me, &full_environment()).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("backend"), "{err}");
        // Another owner may use the same name.
        t.store.create_environment(&other, &full_environment()).await.unwrap();
    }

    async fn users_see_only_their_environments_and_admins_all(t) {
        let me = t.user("me").await;
        let other = t.user("other").await;
        let admin = t.admin().await;
        let mine = t.environment(&me, "mine").await;
        let theirs = t.environment(&other, "theirs").await;

        assert_eq!(t.store.list_environments(&me).await.unwrap(), vec![mine.clone()]);
        let err = t.store.environment(&me, &theirs.id).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        assert!(t.store.environment(&me, "theirs").await.is_err());

        let all = t.store.list_environments(&admin).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(t.store.environment(&admin, &theirs.id).await.unwrap(), theirs);
    }

    async fn bad_environment_input_names_the_field(t) {
        let me = t.user("me").await;
        let mut no_repo = full_environment();
        no_repo.repo = " ".into();
        let err = t.store.create_environment(&me, &no_repo).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput { field: "repo", .. }), "{err}");

        let mut bad_var = full_environment();
        bad_var.env.insert("1BAD NAME".into(), "x".into());
        let err = t.store.create_environment(&me, &bad_var).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput { field: "env", .. }), "{err}");

        let mut no_name = full_environment();
        no_name.name = String::new();
        let err = t.store.create_environment(&me, &no_name).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput { field: "name", .. }), "{err}");
    }
}
