//! Throughput of the store's hot paths on one machine.
//!
//! `cargo run --release -p kiln-store --example store_bench [DATABASE_URL]`
//! (default: a SQLite file in a temp dir). For PostgreSQL, pass a URL of an
//! empty database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use kiln_protocol::{AttemptStatus, Event, EventKind};
use kiln_store::{AttemptRef, AttemptReport, NewEnvironment, NewTask, Store, StoreOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let options = match std::env::args().nth(1) {
        Some(url) => StoreOptions::from_url(&url)?,
        None => StoreOptions::sqlite_in_dir(dir.path()),
    };
    let store = Store::open(options).await?;
    println!("database: {}", store.display_url());
    let me = store.create_token("bench", true).await?.info.principal();
    let env = NewEnvironment {
        name: format!("bench-{}", std::process::id()),
        repo: "/srv/bench".into(),
        ..Default::default()
    };
    let env = store.create_environment(&me, &env).await?;

    // Events appended one per transaction, as a worker streaming deltas would.
    let mut new = NewTask::new(env.id.clone(), "bench");
    new.attempts = 2;
    let task = store.create_task(&me, &new).await?.task;
    let one = AttemptRef::new(task.id.clone(), 1);
    let n = 3_000;
    let start = Instant::now();
    for seq in 1..=n {
        let event = Event::new(
            seq,
            EventKind::ModelDelta {
                text: "token ".into(),
            },
        );
        store.append_event(&one, &event).await?;
    }
    report("append, 1 event per call", n, start.elapsed());

    // The same, from 8 attempts of 8 tasks at once (appends to different
    // tasks do not wait for each other's commits).
    let per_writer = 400;
    let mut writers = Vec::new();
    for _ in 0..8 {
        let attempt = AttemptRef::new(store.create_task(&me, &new).await?.task.id, 1);
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for seq in 1..=per_writer {
                let event = Event::new(
                    seq,
                    EventKind::ModelDelta {
                        text: "token ".into(),
                    },
                );
                store.append_event(&attempt, &event).await?;
            }
            Ok::<_, kiln_store::StoreError>(())
        }));
    }
    let start = Instant::now();
    for writer in writers {
        writer.await??;
    }
    report(
        "append, 1 event per call, 8 tasks at once",
        8 * per_writer,
        start.elapsed(),
    );

    let two = AttemptRef::new(task.id.clone(), 2);
    let start = Instant::now();
    let batch = 50;
    for chunk in 0..(n / batch) {
        let events: Vec<Event> = (1..=batch)
            .map(|i| {
                Event::new(
                    chunk * batch + i,
                    EventKind::ModelDelta {
                        text: "token ".into(),
                    },
                )
            })
            .collect();
        store.append_events(&two, &events).await?;
    }
    report("append, 50 events per call", n, start.elapsed());

    let start = Instant::now();
    let mut cursor = 0;
    let mut read = 0;
    loop {
        let page = store.events(&task.id, None, cursor, 500).await?;
        let Some(last) = page.last() else { break };
        cursor = last.id;
        read += page.len() as u64;
    }
    report("read events, pages of 500", read, start.elapsed());

    // Tasks submitted, claimed and finished by 4 concurrent workers.
    let tasks = 300;
    let start = Instant::now();
    for _ in 0..tasks {
        store
            .create_task(&me, &NewTask::new(env.id.clone(), "bench"))
            .await?;
    }
    report("create task (1 attempt)", tasks, start.elapsed());
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut done = 0u64;
            while let Some(claimed) = store.claim_next(&worker, Duration::from_secs(60)).await? {
                store
                    .heartbeat(&worker, &claimed.attempt, Duration::from_secs(60))
                    .await?;
                store
                    .finish(
                        &worker,
                        &claimed.attempt,
                        &AttemptReport::new(AttemptStatus::Succeeded),
                    )
                    .await?;
                done += 1;
            }
            Ok::<_, kiln_store::StoreError>(done)
        }));
    }
    let mut claimed = 0;
    for worker in workers {
        claimed += worker.await??;
    }
    report(
        "claim + heartbeat + finish, 4 workers",
        claimed,
        start.elapsed(),
    );
    Ok(())
}

fn report(what: &str, count: u64, elapsed: Duration) {
    let per_second = count as f64 / elapsed.as_secs_f64();
    println!(
        "{what:<42} {count:>6} in {:>7.1} ms = {per_second:>8.0}/s",
        elapsed.as_secs_f64() * 1000.0
    );
}
