//! Running one measured child process: wall time, peak memory of its whole
//! process tree, its stdout lines with the moment each arrived, and a hard
//! timeout so a stuck tool can never hang the benchmark.
//!
//! Memory is measured two ways, because neither alone is the truth:
//! - `tree_peak_rss`: every 10 ms a sampler sums the resident set (statm) of
//!   the child and all its descendants, found through
//!   `/proc/PID/task/TID/children`. This is what the machine actually had to
//!   hold at once; shared pages (libc, the binary's text) count once per
//!   process, and a process living less than 10 ms can be missed.
//! - `max_single_rss`: `ru_maxrss` from `wait4` for the child, which Linux
//!   defines as the largest peak of the child or any descendant it reaped: the
//!   biggest single process, exact, but blind to processes running side by side.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often the memory sampler walks the process tree.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// One stdout line and when the harness read it, counted from the spawn.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Duration,
    pub text: String,
}

#[derive(Debug)]
pub struct Measured {
    pub wall: Duration,
    /// `Some(code)` when the process exited, `None` when a signal ended it.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub tree_peak_rss_bytes: u64,
    pub max_single_rss_bytes: u64,
    pub stdout: Vec<Line>,
}

impl Measured {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }

    /// The first stdout line containing every one of `needles`.
    pub fn first_line_with(&self, needles: &[&str]) -> Option<&Line> {
        self.stdout
            .iter()
            .find(|line| needles.iter().all(|n| line.text.contains(n)))
    }
}

/// Run `command` to completion (or until `timeout`, when its whole process
/// group is killed). Stdin is closed; stderr goes to `stderr_file`.
pub fn run_measured(
    command: Command,
    stderr_file: &Path,
    timeout: Duration,
    sample_memory: bool,
) -> Result<Measured> {
    run_measured_with_stdin(command, None, stderr_file, timeout, sample_memory)
}

/// [`run_measured`] with stdin read from `stdin_file` (closed when `None`).
pub fn run_measured_with_stdin(
    mut command: Command,
    stdin_file: Option<&Path>,
    stderr_file: &Path,
    timeout: Duration,
    sample_memory: bool,
) -> Result<Measured> {
    let stderr = File::create(stderr_file)
        .with_context(|| format!("cannot create {}", stderr_file.display()))?;
    let stdin = match stdin_file {
        Some(path) => Stdio::from(
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(stderr)
        // Its own process group, so a timeout kills the tools it started too.
        .process_group(0);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {:?}", command.get_program()))?;
    let pid = child.id() as libc::pid_t;

    let stdout = child.stdout.take().context("stdout was piped")?;
    let reader = thread::spawn(move || {
        let mut lines = Vec::new();
        for text in BufReader::new(stdout).lines() {
            match text {
                Ok(text) => lines.push(Line {
                    at: started.elapsed(),
                    text,
                }),
                Err(_) => break,
            }
        }
        lines
    });

    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = sample_memory.then(|| {
        let done = done.clone();
        let peak = peak.clone();
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(tree_rss_bytes(pid), Ordering::Relaxed);
                thread::sleep(SAMPLE_EVERY);
            }
        })
    });

    let (finished_tx, finished_rx) = mpsc::channel::<()>();
    let timed_out = Arc::new(Mutex::new(false));
    let watchdog = {
        let timed_out = timed_out.clone();
        thread::spawn(move || {
            if finished_rx.recv_timeout(timeout).is_err() {
                if let Ok(mut flag) = timed_out.lock() {
                    *flag = true;
                }
                // SAFETY: kill(2) on our own child's process group; no memory involved.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        })
    };

    let mut status = 0;
    // SAFETY: rusage is plain old data, fully written by wait4 on success.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child; `child` is never waited through std afterwards.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = finished_tx.send(());
    if waited != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    // Whatever the child left running in its group (a daemon, a stuck helper)
    // must not outlive the measurement or hold its stdout open.
    // SAFETY: kill(2) on our own child's process group.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = watchdog.join();
    if let Some(sampler) = sampler {
        let _ = sampler.join();
    }
    let stdout = reader.join().unwrap_or_default();
    drop(child);

    let exit_code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let timed_out = timed_out.lock().map(|flag| *flag).unwrap_or(false);
    Ok(Measured {
        wall,
        exit_code,
        timed_out,
        tree_peak_rss_bytes: peak.load(Ordering::Relaxed),
        // ru_maxrss is in kilobytes on Linux.
        max_single_rss_bytes: usage.ru_maxrss.max(0) as u64 * 1024,
        stdout,
    })
}

/// Resident bytes of `root` and every descendant right now (0 once it is gone).
pub fn tree_rss_bytes(root: libc::pid_t) -> u64 {
    let page = page_size();
    let mut total = 0;
    let mut pending = vec![root];
    while let Some(pid) = pending.pop() {
        if let Ok(statm) = std::fs::read_to_string(format!("/proc/{pid}/statm")) {
            let resident_pages: u64 = statm
                .split_whitespace()
                .nth(1)
                .and_then(|field| field.parse().ok())
                .unwrap_or(0);
            total += resident_pages * page;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children = task.path().join("children");
            if let Ok(list) = std::fs::read_to_string(children) {
                pending.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<libc::pid_t>().ok()),
                );
            }
        }
    }
    total
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

#[cfg(test)]
#[path = "process_tests.rs"]
mod tests;
