use crate::*;

mod migrations {
    #[test]
    fn every_migration_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let embedded: Vec<String> = crate::db::MIGRATIONS
            .iter()
            .map(|(version, description, _)| format!("{version:04}_{description}.sql"))
            .collect();
        assert_eq!(files, embedded);
    }

    #[test]
    fn backend_sections_run_only_on_their_backend_and_older_files_stay_byte_identical() {
        use crate::db::{migration_for, Backend, MIGRATIONS};
        let sql = "CREATE TABLE a (x TEXT);\n-- kiln:sqlite-only\nSQLITE ONLY;\n-- kiln:end\n\
                   -- kiln:postgres-only\nPG ONLY;\n-- kiln:end\nSHARED;\n";
        let sqlite = migration_for(Box::leak(sql.to_string().into_boxed_str()), Backend::Sqlite);
        assert!(sqlite.contains("SQLITE ONLY;") && !sqlite.contains("PG ONLY;"));
        assert!(sqlite.contains("CREATE TABLE a") && sqlite.contains("SHARED;"));
        let pg = migration_for(
            Box::leak(sql.to_string().into_boxed_str()),
            Backend::Postgres,
        );
        assert!(pg.contains("PG ONLY;") && !pg.contains("SQLITE ONLY;") && pg.contains("SHARED;"));
        // Databases keep each applied migration's checksum: files without
        // markers must reach sqlx exactly as written.
        for (version, _, text) in MIGRATIONS
            .iter()
            .filter(|(_, _, t)| !t.contains("-- kiln:"))
        {
            for backend in [Backend::Sqlite, Backend::Postgres] {
                assert_eq!(migration_for(text, backend), *text, "migration {version}");
            }
        }
    }
}

/// The server drives the store from spawned tasks and axum handlers: every
/// operation's future must be `Send`. This only has to compile.
#[allow(dead_code)]
fn operations_are_send(store: &Store, who: &Principal, attempt: &AttemptRef) {
    fn send<T: Send>(_: T) {}
    let env = NewEnvironment::default();
    let task = NewTask::new("e", "p");
    let outcome = AttemptReport::new(kiln_protocol::AttemptStatus::Failed);
    let lease = std::time::Duration::from_secs(1);
    send(Store::open(StoreOptions::sqlite_in_dir("/tmp")));
    send(store.create_token("n", false));
    send(store.verify_token("s"));
    send(store.list_tokens());
    send(store.revoke_token("t"));
    send(store.ensure_admin_token(None));
    send(store.create_environment(who, &env));
    send(store.list_environments(who));
    send(store.environment(who, "e"));
    send(store.environment_secrets("e"));
    send(store.environment_repo_credential("e"));
    send(store.create_task(who, &task));
    send(store.task(who, "t"));
    send(store.list_tasks(who, &TaskQuery::default()));
    send(store.attempt_diff(who, attempt));
    send(store.claim_next("w", lease));
    send(store.heartbeat("w", attempt, lease));
    send(store.finish("w", attempt, &outcome));
    send(store.cancel_task(who, "t"));
    send(store.cancel_requested(attempt));
    send(store.recover(RecoverScope::AllRunning, 3));
    send(store.queue_stats());
    send(store.append_events(attempt, &[]));
    send(store.events("t", None, 0, 1));
    send(store.enqueue_message(who, "t", None, "x"));
    send(store.take_undelivered(attempt));
    send(store.messages(who, "t"));
    send(store.subscribe().wait_for_queue());
    send(store.ping());
    send(store.close());
}

mod api_shapes {
    use super::*;

    #[test]
    fn minimal_task_request_gets_the_defaults() {
        let new: NewTask =
            serde_json::from_str(r#"{"environment":"app","prompt":"fix it"}"#).unwrap();
        assert_eq!(new, NewTask::new("app", "fix it"));
        let ask: NewTask = serde_json::from_str(
            r#"{"environment":"app","prompt":"why?","mode":"ask","attempts":3}"#,
        )
        .unwrap();
        assert_eq!((ask.mode, ask.attempts), (kiln_protocol::Mode::Ask, 3));
    }

    #[test]
    fn minimal_environment_request_has_network_off() {
        let new: NewEnvironment =
            serde_json::from_str(r#"{"name":"app","repo":"/srv/app"}"#).unwrap();
        assert!(!new.network);
        assert!(new.secrets.is_empty() && new.base_branch.is_none());
    }

    #[test]
    fn task_query_reads_status_names() {
        let query: TaskQuery = serde_json::from_str(r#"{"status":"running","limit":5}"#).unwrap();
        assert_eq!(query.status, Some(TaskStatus::Running));
        assert_eq!(query.limit, Some(5));
        assert_eq!(query.cursor, None);
    }
}
