//! A database an older kiln wrote, before users and teams (schema version
//! 4: the migration files 0001-0004 applied by sqlx itself, rows inserted
//! as that kiln did), opened by today's store: every token works as it
//! did, each became a user with a personal team, the oldest live admin
//! token's user is the owner, and each user sees exactly what their token
//! saw before and nothing of anyone else's.

use std::collections::BTreeMap;
use std::str::FromStr;

use kiln_protocol::teams::{ServerRole, TeamRole};
use kiln_store::{Backend, NewEnvironment, Principal, Store, TaskQuery};
use sha2::{Digest, Sha256};
use sqlx::Connection;

use crate::support::{empty_database, open_url};

const BEFORE_TEAMS: [&str; 4] = [
    "0001_initial.sql",
    "0002_repo_credential.sql",
    "0003_workers.sql",
    "0004_evidence_delivery.sql",
];

fn sha256_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Applies migrations 1 to 4 with sqlx's own migrator (so the versions and
/// checksums recorded are what a kiln of that time recorded), then `rows`.
async fn database_at_version_4(backend: Backend, url: &str, rows: &str) {
    let files = tempfile::tempdir().unwrap();
    for name in BEFORE_TEAMS {
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(name);
        std::fs::copy(source, files.path().join(name)).unwrap();
    }
    let migrator = sqlx::migrate::Migrator::new(files.path()).await.unwrap();
    assert_eq!(migrator.iter().count(), 4);
    match backend {
        Backend::Sqlite => {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .unwrap()
                .create_if_missing(true)
                .foreign_keys(true);
            let mut db = sqlx::SqliteConnection::connect_with(&options)
                .await
                .unwrap();
            migrator.run(&mut db).await.unwrap();
            sqlx::raw_sql(rows).execute(&mut db).await.unwrap();
            db.close().await.unwrap();
        }
        Backend::Postgres => {
            let mut db = sqlx::PgConnection::connect(url).await.unwrap();
            migrator.run(&mut db).await.unwrap();
            sqlx::raw_sql(rows).execute(&mut db).await.unwrap();
            db.close().await.unwrap();
        }
    }
}

async fn who(store: &Store, secret: &str) -> Principal {
    store
        .verify_token(secret)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("token {secret} no longer works"))
}

async fn environment_ids(store: &Store, who: &Principal) -> Vec<String> {
    let mut ids: Vec<String> = store
        .list_environments(who)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    ids.sort();
    ids
}

async fn task_ids(store: &Store, who: &Principal) -> Vec<String> {
    let query = TaskQuery {
        limit: Some(100),
        ..TaskQuery::default()
    };
    let mut ids: Vec<String> = store
        .list_tasks(who, &query)
        .await
        .unwrap()
        .tasks
        .into_iter()
        .map(|t| t.id)
        .collect();
    ids.sort();
    ids
}

on_both_backends! {
    async fn a_database_from_before_teams_keeps_every_token_and_who_sees_what(t) {
        // Sealed secrets exactly as the store writes them (the sealing did
        // not change with teams), bound to the environment ids reused below.
        let donor = t.admin().await;
        let sealed_env = t
            .store
            .create_environment(
                &donor,
                &NewEnvironment {
                    name: "app".into(),
                    repo: "/srv/git/app".into(),
                    secrets: BTreeMap::from([("API_KEY".to_string(), "s3cret".to_string())]),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let alice_env = sealed_env.id.clone();
        let alice_secrets = t.raw_secrets(&alice_env).await;
        let bob_env = t.environment(&donor, "bob-app").await.id;
        let carol_env = t.environment(&donor, "carol-old").await.id;
        let no_secrets = t.raw_secrets(&bob_env).await;

        let (url, _dir) = empty_database(t.backend).await;
        let day = 1_800_000_000_000_i64;
        let token = |id: &str, name: &str, secret: &str, admin: bool, worker: bool, revoked: bool| {
            format!(
                "INSERT INTO tokens (id, name, secret_sha256, admin, worker, created_at, revoked_at)
                 VALUES ('{id}', '{name}', '{}', {admin}, {worker}, {day}, {});\n",
                sha256_hex(secret),
                if revoked { (day + 5).to_string() } else { "NULL".into() },
            )
        };
        let environment = |id: &str, owner: &str, name: &str, secrets: &str| {
            format!(
                "INSERT INTO environments (id, owner_token_id, name, repo, env_json, secrets_json,
                    network, created_at)
                 VALUES ('{id}', '{owner}', '{name}', '/srv/git/{name}', '{{}}', '{secrets}',
                    FALSE, {day});\n"
            )
        };
        let task = |id: &str, owner: &str, env: &str| {
            format!(
                "INSERT INTO tasks (id, owner_token_id, environment_id, prompt, mode,
                    attempt_count, status, created_at, updated_at)
                 VALUES ('{id}', '{owner}', '{env}', 'fix it', 'code', 1, 'succeeded', {day},
                    {day});
                 INSERT INTO attempts (task_id, n, status, finished_at)
                 VALUES ('{id}', 1, 'succeeded', {day});\n"
            )
        };
        let mut rows = String::new();
        // The oldest admin token was revoked: the owner is the oldest live one.
        rows += &token("tok_00gone", "ops-old", "s-gone", true, false, true);
        rows += &token("tok_01ops", "ops", "s-ops", true, false, false);
        rows += &token("tok_02alice", "alice", "s-alice", false, false, false);
        rows += &token("tok_03bob", "Bob Smith", "s-bob", false, false, false);
        rows += &token("tok_04carol", "carol", "s-carol", false, false, true);
        rows += &token("tok_05worker", "w1", "s-worker", false, true, false);
        // Another person who named their token alice too.
        rows += &token("tok_06alice", "alice", "s-alice2", false, false, false);
        rows += &token("tok_07ops", "ops2", "s-ops2", true, false, false);
        rows += &environment(&alice_env, "tok_02alice", "app", &alice_secrets);
        // The same name as alice's: names were unique per token.
        rows += &environment(&bob_env, "tok_03bob", "app", &no_secrets);
        rows += &environment(&carol_env, "tok_04carol", "old", &no_secrets);
        rows += &task("t_0001alice", "tok_02alice", &alice_env);
        rows += &task("t_0002bob", "tok_03bob", &bob_env);
        rows += &task("t_0003carol", "tok_04carol", &carol_env);
        database_at_version_4(t.backend, &url, &rows).await;

        let store = open_url(&url, &t.clock).await;

        // Every live token works; revoked ones stay revoked.
        let ops = who(&store, "s-ops").await;
        let ops2 = who(&store, "s-ops2").await;
        let alice = who(&store, "s-alice").await;
        let alice2 = who(&store, "s-alice2").await;
        let bob = who(&store, "s-bob").await;
        let worker = who(&store, "s-worker").await;
        for gone in ["s-gone", "s-carol"] {
            assert_eq!(store.verify_token(gone).await.unwrap(), None, "{gone}");
        }
        assert_eq!((ops.role, ops.admin), (ServerRole::Owner, true));
        assert_eq!((ops2.role, ops2.admin), (ServerRole::Admin, true));
        assert!(worker.worker && worker.user_id.is_none());
        // Each is a user of their own with a personal team they maintain.
        for (p, name) in [
            (&ops, "ops"),
            (&ops2, "ops2"),
            (&alice, "alice"),
            (&alice2, "alice-2"),
            (&bob, "bob-smith"),
        ] {
            assert_eq!(p.user_name, name);
            assert_eq!(p.teams.len(), 1, "{name}: {:?}", p.teams);
            assert_eq!(p.teams[0].team_name, name);
            assert_eq!(p.teams[0].role, TeamRole::Maintainer);
        }
        for (p, role) in [(&alice, ServerRole::User), (&alice2, ServerRole::User), (&bob, ServerRole::User)] {
            assert_eq!((p.role, p.admin), (role, false));
        }

        // Each sees exactly what their token saw, nobody else's.
        assert_eq!(environment_ids(&store, &alice).await, [alice_env.as_str()]);
        assert_eq!(environment_ids(&store, &bob).await, [bob_env.as_str()]);
        assert!(environment_ids(&store, &alice2).await.is_empty());
        assert_eq!(environment_ids(&store, &ops).await.len(), 3);
        assert_eq!(task_ids(&store, &alice).await, ["t_0001alice"]);
        assert_eq!(task_ids(&store, &bob).await, ["t_0002bob"]);
        assert!(task_ids(&store, &alice2).await.is_empty());
        assert_eq!(task_ids(&store, &ops).await.len(), 3);
        for (p, other) in [(&alice, "t_0002bob"), (&alice2, "t_0001alice"), (&bob, "t_0003carol")] {
            let err = store.task(p, other).await.unwrap_err();
            assert!(matches!(err, kiln_store::StoreError::NotFound { .. }), "{err}");
        }
        // A task keeps its author even when their token was revoked.
        let carols = store.task(&ops, "t_0003carol").await.unwrap();
        let users = store.users(&ops).await.unwrap();
        let carol = users.iter().find(|u| u.name == "carol").unwrap();
        assert_eq!(carols.task.user_id.as_deref(), Some(carol.id.as_str()));
        assert_eq!(carols.task.team_id.as_deref(), Some(carol.teams[0].team_id.as_str()));
        // The old per-token environment name resolves in the user's team.
        let detail = store
            .create_task(&alice, &kiln_store::NewTask::new("app", "again"))
            .await
            .unwrap();
        assert_eq!(detail.task.environment_id, alice_env);
        // Secrets still open.
        let secrets = store.environment_secrets(&alice_env).await.unwrap();
        assert_eq!(secrets.get("API_KEY").map(String::as_str), Some("s3cret"));

        // Opening again migrates nothing twice.
        drop(store);
        let store = open_url(&url, &t.clock).await;
        let again = store.users(&ops).await.unwrap();
        assert_eq!(again.len(), users.len());
        assert_eq!(users.len(), 7, "{users:?}");
        assert_eq!(store.teams(&ops).await.unwrap().len(), 7);
    }
}
