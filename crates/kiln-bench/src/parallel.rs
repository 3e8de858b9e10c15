//! Parallel attempts: N tasks posted at once to a real `kiln serve` (the
//! release binary, bubblewrap sandboxes, SQLite in its data directory) with N
//! workers and an instant scripted model; repeated `--runs` times, each burst
//! on a fresh server after one warm-up task.
//!
//! Every task's prompt carries its own marker (`[parallel-task-007]`), and the
//! model server's script has one route per marker, so each attempt gets its
//! own two-turn conversation however the requests interleave: turn 1 runs
//! `sleep 5` through the shell (so that all attempts overlap), turn 2
//! is a final message naming the task. An attempt counts as done only when it
//! succeeded with exactly that message after its command exited 0.
//!
//! Measured: attempts per minute (N over the time from the first POST until
//! every task's event stream ended), the time from sending a task's POST to
//! its first `exec.begin` arriving over SSE (p50, p99), the server's peak
//! memory (VmHWM of the `kiln serve` process; the sampled sum over its process
//! tree), and its CPU time per attempt. Timings pool every burst's attempts;
//! per-burst figures are medians over the bursts.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use kiln_protocol::api::TaskStreamItem;
use kiln_protocol::sse::SseParser;
use kiln_protocol::{AttemptStatus, Event, EventKind};
use kiln_testkit::{Script, Turn};
use serde_json::{json, Value};

use crate::bench::Bench;
use crate::report::{median, Row, Target};
use crate::repos::fresh_git_copy;
use crate::serve_process::{Memory, ServeProcess};
use crate::session::{mb, ms, RunDir};
use crate::tools::Tool;

/// What every attempt's first command runs: long enough that the first
/// attempt is still in its command when the last one starts, so the server
/// holds N sandboxes at once. Attempts start one after another (50 took
/// 3.2 s here, load 3), so 2 s left only about 34 of 50 running together.
const COMMAND: &str = "sleep 5";
/// The admin token registered through `KILN_ADMIN_TOKEN` (24+ characters).
const ADMIN_TOKEN: &str = "kiln-bench-admin-token-0123456789";
/// How long one task may take from its POST to the end of its event stream.
const TASK_TIMEOUT: Duration = Duration::from_secs(300);
/// The target: this many attempts at once without failures.
const TARGET_TASKS: usize = 50;

/// `bench.runs` times: post `tasks` tasks at once to a fresh `kiln serve`
/// with as many workers and measure them. Failed attempts go to
/// `bench.failures` and out of the timings.
pub fn run(bench: &mut Bench, tasks: usize) -> Result<Vec<Row>> {
    let name = format!("parallel ({tasks} attempts via kiln serve)");
    let mut bursts = Vec::with_capacity(bench.runs);
    for round in 0..bench.runs {
        eprintln!(
            "  parallel burst {}/{}: {tasks} tasks",
            round + 1,
            bench.runs
        );
        let burst = one_burst(bench, tasks)?;
        for outcome in &burst.outcomes {
            if let Some(reason) = &outcome.failure {
                let reason = format!("{}: {reason}", marker(outcome.index));
                bench.fail(&name, Tool::Kiln, round, reason);
            }
        }
        bursts.push(burst);
    }
    Ok(rows(&name, tasks, &bursts))
}

/// One fresh server (data directory, mirror, model server) and one burst.
fn one_burst(bench: &Bench, tasks: usize) -> Result<Burst> {
    let dir = RunDir::fresh(&bench.work, "parallel")?;
    let repo = dir.root.join("repo");
    fresh_git_copy(
        &bench.workspace.join("crates/kiln-testkit/fixtures/calc-py"),
        &repo,
    )?;
    let script_path = dir.root.join("script.json");
    std::fs::write(&script_path, serde_json::to_string(&task_script(tasks))?)?;
    let model = bench.tools.start_server(&script_path)?;
    let mut server =
        ServeProcess::start(&bench.tools.kiln, &dir, &model.base_url, ADMIN_TOKEN, tasks)?;

    let measured = measure(&server, &repo, tasks);
    let memory = server.stop_sampling();
    let exited_early = server.has_exited();
    let status = server.stop();
    drop(model);
    let mut burst = match (measured, exited_early) {
        (Ok(burst), false) => burst,
        (result, true) => bail!(
            "kiln serve exited during the run ({}){}; stderr: {}",
            status.map_or("status unknown".into(), |s| s.to_string()),
            result
                .err()
                .map_or(String::new(), |err| format!(": {err:#}")),
            dir.stderr_tail()
        ),
        (Err(err), false) => {
            return Err(err.context(format!("kiln serve stderr: {}", dir.stderr_tail())))
        }
    };
    burst.memory = Some(memory);
    if !bench.keep {
        dir.remove();
    }
    Ok(burst)
}

/// Everything one burst produced.
struct Burst {
    outcomes: Vec<TaskOutcome>,
    /// From the first POST until every task's event stream had ended.
    wall: Duration,
    /// CPU time of the server and its reaped children during the burst.
    cpu: Option<Duration>,
    /// Filled in once the server has stopped.
    memory: Option<Memory>,
}

/// What one task did, as the harness saw it.
#[derive(Debug, Default)]
struct TaskOutcome {
    index: usize,
    /// POST sent → first `exec.begin` read from the event stream.
    first_command: Option<Duration>,
    /// POST sent → the `ts` the server stamped on that `exec.begin`.
    first_command_stamped: Option<Duration>,
    /// `attempt.started` to `attempt.finished`, as the server stamped them.
    running: Option<(DateTime<Utc>, DateTime<Utc>)>,
    failure: Option<String>,
}

fn measure(server: &ServeProcess, repo: &Path, tasks: usize) -> Result<Burst> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client = reqwest::Client::builder()
        // The server is on loopback: a proxy from the environment must not
        // carry (or refuse) these requests.
        .no_proxy()
        .build()
        .context("cannot build the HTTP client")?;
    let url = server.url.clone();
    runtime.block_on(async move {
        let environment = json!({"name": "calc", "repo": repo.display().to_string()});
        let (status, body) = post(&client, &url, "/api/environments", &environment).await?;
        if status != 201 {
            bail!("POST /api/environments answered {status}: {body}");
        }
        // One task alone first: it clones the mirror, and a setup that cannot
        // work stops here with its reason instead of as N identical failures.
        let warmup = follow_task(client.clone(), url.clone(), WARMUP).await;
        if let Some(reason) = warmup.failure {
            bail!("the warm-up task failed, so the burst would too: {reason}");
        }

        let cpu_before = server.cpu_time();
        let started = Instant::now();
        let mut running = tokio::task::JoinSet::new();
        for index in 0..tasks {
            running.spawn(follow_task(client.clone(), url.clone(), index));
        }
        let mut outcomes = Vec::with_capacity(tasks);
        while let Some(joined) = running.join_next().await {
            outcomes.push(joined.context("a task's client panicked")?);
        }
        let wall = started.elapsed();
        let cpu = match (cpu_before, server.cpu_time()) {
            (Some(before), Some(after)) => after.checked_sub(before),
            _ => None,
        };
        outcomes.sort_by_key(|outcome| outcome.index);
        Ok(Burst {
            outcomes,
            wall,
            cpu,
            memory: None,
        })
    })
}

/// The index of the warm-up task, outside the burst's 0..N.
const WARMUP: usize = usize::MAX;

/// The marker that routes task `index`'s model requests to its conversation.
/// Brackets keep one marker from containing another (`-001]` vs `-0010]`).
pub(crate) fn marker(index: usize) -> String {
    if index == WARMUP {
        "[parallel-warmup]".to_string()
    } else {
        format!("[parallel-task-{index:03}]")
    }
}

/// The final message task `index`'s conversation ends with.
pub(crate) fn final_message(index: usize) -> String {
    format!("{} ran its command", marker(index))
}

/// One route per task (and one for the warm-up): the command, then the answer.
pub(crate) fn task_script(tasks: usize) -> Script {
    std::iter::once(WARMUP)
        .chain(0..tasks)
        .fold(Script::new(Vec::new()), |script, index| {
            script.with_route(
                marker(index),
                vec![Turn::shell(COMMAND), Turn::message(final_message(index))],
            )
        })
}

/// Post task `index`, read its event stream to the end and judge it.
async fn follow_task(client: reqwest::Client, url: String, index: usize) -> TaskOutcome {
    let mut outcome = TaskOutcome {
        index,
        ..TaskOutcome::default()
    };
    let mut seen = SeenEvents::default();
    let followed = tokio::time::timeout(
        TASK_TIMEOUT,
        follow_events(&client, &url, index, &mut outcome, &mut seen),
    )
    .await;
    let reason = match followed {
        Err(_) => Some(format!(
            "not finished {TASK_TIMEOUT:?} after its POST; last event: {}",
            seen.last.as_deref().unwrap_or("none")
        )),
        Ok(Err(err)) => Some(format!("{err:#}")),
        Ok(Ok(())) => judge(index, &seen),
    };
    outcome.failure = reason;
    outcome.running = seen.started.zip(seen.finished_at);
    outcome
}

/// The events of one task that decide whether it did its job.
#[derive(Debug, Default)]
pub(crate) struct SeenEvents {
    pub last: Option<String>,
    pub started: Option<DateTime<Utc>>,
    pub first_command: Option<DateTime<Utc>>,
    pub command_exit: Option<Option<i32>>,
    pub finished: Option<(AttemptStatus, Option<String>, Option<String>)>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl SeenEvents {
    /// Records `event`; true when it is the task's first `exec.begin`.
    pub(crate) fn record(&mut self, event: &Event) -> bool {
        let mut first_command = false;
        match &event.kind {
            EventKind::AttemptStarted { .. } => self.started = self.started.or(Some(event.ts)),
            EventKind::ExecBegin { .. } if self.first_command.is_none() => {
                self.first_command = Some(event.ts);
                first_command = true;
            }
            EventKind::ExecEnd { exit_code, .. } => {
                self.command_exit.get_or_insert(*exit_code);
            }
            EventKind::AttemptFinished {
                status,
                reason,
                final_message,
                ..
            } => {
                self.finished = Some((*status, reason.clone(), final_message.clone()));
                self.finished_at = Some(event.ts);
            }
            _ => {}
        }
        first_command
    }
}

/// Why task `index` did not do its job, or `None` when it did.
pub(crate) fn judge(index: usize, seen: &SeenEvents) -> Option<String> {
    let expected = final_message(index);
    match (&seen.finished, seen.command_exit) {
        (None, _) => Some(format!(
            "the event stream ended without attempt.finished; last event: {}",
            seen.last.as_deref().unwrap_or("none")
        )),
        (Some((status, reason, _)), _) if *status != AttemptStatus::Succeeded => Some(format!(
            "attempt {status:?}: {}",
            reason.as_deref().unwrap_or("no reason given")
        )),
        (Some(_), None) => Some(format!("succeeded without running `{COMMAND}`")),
        (Some(_), Some(code)) if code != Some(0) => {
            Some(format!("`{COMMAND}` exited with {code:?}"))
        }
        (Some((_, _, message)), _) if message.as_deref() != Some(expected.as_str()) => Some(
            format!("final message {message:?}, expected {expected:?} (another task's turns?)"),
        ),
        _ => None,
    }
}

async fn follow_events(
    client: &reqwest::Client,
    url: &str,
    index: usize,
    outcome: &mut TaskOutcome,
    seen: &mut SeenEvents,
) -> Result<()> {
    let posted = Instant::now();
    let posted_at = Utc::now();
    let body = json!({
        "environment": "calc",
        "prompt": format!("{} run the command you are given", marker(index)),
    });
    let (status, task) = post(client, url, "/api/tasks", &body).await?;
    if status != 201 {
        bail!("POST /api/tasks answered {status}: {task}");
    }
    let id = task["id"]
        .as_str()
        .with_context(|| format!("POST /api/tasks answered without an id: {task}"))?;
    let mut response = client
        .get(format!("{url}/api/tasks/{id}/events"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .with_context(|| format!("GET the events of task {id}"))?;
    if response.status() != 200 {
        bail!("GET /api/tasks/{id}/events answered {}", response.status());
    }
    let mut parser = SseParser::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("reading the events of task {id}"))?
    {
        for frame in parser
            .feed(&chunk)
            .with_context(|| format!("reading the events of task {id}"))?
        {
            let item = TaskStreamItem::from_frame(&frame)
                .with_context(|| format!("task {id} sent a frame kiln-bench cannot read"))?;
            // Task statuses only tell the stream is about to end.
            let TaskStreamItem::Event { event, .. } = item else {
                continue;
            };
            seen.last = Some(frame.event);
            if seen.record(&event.event) {
                outcome.first_command = Some(posted.elapsed());
                outcome.first_command_stamped = (event.event.ts - posted_at).to_std().ok();
            }
        }
    }
    Ok(())
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    path: &str,
    body: &Value,
) -> Result<(u16, Value)> {
    let response = client
        .post(format!("{url}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {path}"))?;
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .with_context(|| format!("POST {path}"))?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// The value at quantile `q` (0..=1) by nearest rank: the smallest sample
/// with at least `q` of all samples at or below it.
pub(crate) fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median time between consecutive instants (in any order), in ms.
pub(crate) fn median_gap_ms(instants: impl Iterator<Item = DateTime<Utc>>) -> Option<f64> {
    let mut sorted: Vec<DateTime<Utc>> = instants.collect();
    sorted.sort();
    let gaps: Vec<f64> = sorted
        .windows(2)
        .map(|pair| (pair[1] - pair[0]).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3)
        .collect();
    median(&gaps)
}

/// The most intervals `[start, end)` that hold at one instant.
pub(crate) fn max_overlap<T: Ord + Copy>(intervals: &[(T, T)]) -> usize {
    // Ends sort before starts at the same instant: touching intervals do not overlap.
    let mut edges: Vec<(T, i32)> = intervals
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    edges.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        open += step;
        most = most.max(open);
    }
    most.max(0) as usize
}

fn rows(name: &str, tasks: usize, bursts: &[Burst]) -> Vec<Row> {
    let ok = || {
        bursts
            .iter()
            .flat_map(|burst| &burst.outcomes)
            .filter(|outcome| outcome.failure.is_none())
    };
    let failed = bursts.len() * tasks - ok().count();
    // Every burst's samples together: the p99 of R x N attempts.
    let arrival: Vec<f64> = ok().filter_map(|o| o.first_command).map(ms).collect();
    let stamped: Vec<f64> = ok()
        .filter_map(|o| o.first_command_stamped)
        .map(ms)
        .collect();
    // One figure per burst, then their median.
    let per_burst = |figure: &dyn Fn(&Burst) -> Option<f64>| -> Option<f64> {
        median(&bursts.iter().filter_map(figure).collect::<Vec<_>>())
    };
    let running = |burst: &Burst| -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        burst.outcomes.iter().filter_map(|o| o.running).collect()
    };
    let per_minute = per_burst(&|burst| {
        let done = burst
            .outcomes
            .iter()
            .filter(|o| o.failure.is_none())
            .count();
        Some(done as f64 / burst.wall.as_secs_f64().max(1e-9) * 60.0)
    });
    let wall = per_burst(&|burst| Some(burst.wall.as_secs_f64()));
    let overlap = per_burst(&|burst| Some(max_overlap(&running(burst)) as f64));
    let gap = per_burst(&|burst| median_gap_ms(running(burst).into_iter().map(|(start, _)| start)));
    let memory = |pick: fn(&Memory) -> Option<u64>| {
        per_burst(&|burst| burst.memory.as_ref().and_then(pick).map(mb))
    };
    let cpu = per_burst(&|burst| burst.cpu.map(|cpu| ms(cpu) / tasks as f64));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runs = bursts.len();
    let stamped_note = |value: Option<f64>| {
        value.map_or(String::new(), |v| {
            format!("; {v:.0} ms by the ts the server stamped on it")
        })
    };
    let mut throughput = Row::new(name, "attempts per minute", "attempts/min")
        .kiln(per_minute)
        .note(format!(
            "median of {runs} bursts; each: {tasks} tasks posted at once to a fresh server with {tasks} workers, {cpus} cores, \
             every attempt runs `{COMMAND}` then answers; all done in {} s; at most {} running at once; failed: {failed}",
            wall.map_or("-".into(), |w| format!("{w:.1}")),
            overlap.map_or("-".into(), |o| format!("{o:.0}")),
        ));
    throughput.target = Some(Target {
        text: format!("{TARGET_TASKS} at once on 2 cores, none failed"),
        met: (tasks >= TARGET_TASKS).then_some(failed == 0),
    });
    vec![
        throughput,
        Row::new(name, "task to first command, p50", "ms")
            .kiln(median(&arrival))
            .note(format!(
                "POST sent to the first exec.begin read from the task's SSE stream{}",
                stamped_note(median(&stamped))
            )),
        Row::new(name, "task to first command, p99", "ms")
            .kiln(percentile(&arrival, 0.99))
            .note(format!(
                "nearest rank of {} samples from {runs} bursts{}; attempts started {} apart (median gap between consecutive attempt.started)",
                arrival.len(),
                stamped_note(percentile(&stamped, 0.99)),
                gap.map_or("-".to_string(), |gap| format!("{gap:.0} ms"))
            )),
        Row::new(name, "peak RSS, kiln serve process", "MB")
            .kiln(memory(|m| m.server_hwm_bytes))
            .note("VmHWM of the server process over its life (start-up, warm-up task, burst); median of bursts"),
        Row::new(name, "peak RSS, server process tree", "MB")
            .kiln(memory(|m| Some(m.tree_peak_bytes)))
            .note("kiln serve + its git, bwrap and command processes, summed every 10 ms; model server excluded; median of bursts"),
        Row::new(name, "CPU time per attempt", "ms")
            .kiln(cpu)
            .note("user + system of kiln serve and its reaped children (git, bwrap, commands) over a burst / tasks; median of bursts"),
    ]
}

#[cfg(test)]
#[path = "parallel_tests.rs"]
mod tests;
