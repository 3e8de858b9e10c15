//! Nothing committed is lost when the process dies.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::{Event, EventKind};
use kiln_store::{
    AttemptRef, AttemptState, ManualClock, NewEnvironment, NewTask, RecoverScope, Store,
    StoreOptions, TaskQuery,
};

const CHILD_DIR: &str = "KILN_STORE_CRASH_TEST_DIR";

on_both_backends! {
    async fn dropping_the_store_without_closing_keeps_every_write(t) {
        let admin = t.admin().await;
        let task = t.task(&admin, 2).await;
        let attempt = AttemptRef::new(task.task.id.clone(), 1);
        let events: Vec<Event> = (1..=50)
            .map(|i| Event::new(i, EventKind::Warning { message: format!("e{i}") }))
            .collect();
        t.store.append_events(&attempt, &events).await.unwrap();
        t.store.enqueue_message(&admin, &task.task.id, Some(2), "hello").await.unwrap();
        t.restart().await;
        let reopened = &t.store;
        let detail = reopened.task(&admin, &task.task.id).await.unwrap();
        assert_eq!(detail, task);
        let stored = reopened.events(&task.task.id, None, 0, 1000).await.unwrap();
        assert_eq!(stored.len(), 50);
        let taken = reopened.take_undelivered(&AttemptRef::new(task.task.id.clone(), 2)).await.unwrap();
        assert_eq!(taken[0].text, "hello");
    }

    async fn opening_twice_runs_migrations_once(t) {
        let me = t.user("me").await;
        t.task(&me, 1).await;
        let again = t.reopen().await;
        again.ping().await.unwrap();
        let page = again.list_tasks(&me, &TaskQuery::default()).await.unwrap();
        assert_eq!(page.tasks.len(), 1);
    }
}

/// The child half of `sqlite_survives_kill_9_mid_write`: writes, reports
/// each committed event on stdout, and kills itself while still writing.
async fn crash_while_writing(dir: &str) -> ! {
    let clock = ManualClock::at_epoch_2030();
    let store = Store::open(StoreOptions::sqlite_in_dir(dir).clock(Arc::new(clock)))
        .await
        .unwrap();
    let token = store.create_token("admin", true).await.unwrap();
    let admin = store.verify_token(&token.secret).await.unwrap().unwrap();
    let env = NewEnvironment {
        name: "app".into(),
        repo: "/srv/app".into(),
        ..Default::default()
    };
    store.create_environment(&admin, &env).await.unwrap();
    let mut new = NewTask::new("app", "crash test");
    new.attempts = 2;
    let task = store.create_task(&admin, &new).await.unwrap();
    let claimed = store
        .claim_next("w", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    println!("\nKILN-TASK {} {}", task.task.id, admin.token_id);
    // Writers in flight when the process dies: one attempt's events.
    let writer = store.clone();
    let attempt = claimed.attempt.clone();
    tokio::spawn(async move {
        for seq in 1.. {
            let event = Event::new(
                seq,
                EventKind::Warning {
                    message: format!("e{seq}"),
                },
            );
            writer.append_event(&attempt, &event).await.unwrap();
            println!("KILN-COMMITTED {seq}");
            if seq == 200 {
                // SAFETY: sending SIGKILL to ourselves; nothing runs after it.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
        }
    });
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_survives_kill_9_mid_write() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        crash_while_writing(&dir).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "durability::sqlite_survives_kill_9_mid_write",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut task_line = None;
    let mut last_committed = 0u64;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some((_, rest)) = line.split_once("KILN-TASK ") {
            task_line = Some(rest.to_string());
        } else if let Some((_, seq)) = line.split_once("KILN-COMMITTED ") {
            last_committed = seq.parse().unwrap();
        }
    }
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the child must die by SIGKILL"
    );
    let task_line = task_line.expect("the child created a task");
    let (task_id, admin_id) = task_line.split_once(' ').unwrap();
    assert!(
        last_committed >= 1,
        "the child committed events before dying"
    );

    let store = Store::open(StoreOptions::sqlite_in_dir(dir.path()))
        .await
        .unwrap();
    let admin = kiln_store::Principal {
        token_id: admin_id.into(),
        name: "admin".into(),
        admin: true,
        worker: false,
        ..Default::default()
    };
    let detail = store.task(&admin, task_id).await.unwrap();
    assert_eq!(detail.task.prompt, "crash test");
    assert_eq!(detail.attempts[0].status, AttemptState::Running);
    let events = store.events(task_id, Some(1), 0, 10_000).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(
        seqs.len() as u64 >= last_committed,
        "{} events stored, {last_committed} reported committed",
        seqs.len()
    );
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gaps, in order"
    );

    // The restarted server takes the attempt back.
    let report = store.recover(RecoverScope::AllRunning, 3).await.unwrap();
    assert_eq!(report.requeued, vec![AttemptRef::new(task_id, 1)]);
}
