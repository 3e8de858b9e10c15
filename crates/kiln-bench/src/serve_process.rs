//! A `kiln serve` process for the parallel benchmark: started on a free
//! port with its own home and data directory, its memory sampled over its
//! process tree, its CPU time and peak memory read from `/proc`, and stopped
//! so that nothing it started outlives it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::tree_rss_bytes;
use crate::session::RunDir;

/// How long `kiln serve` may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the memory sampler walks the server's process tree.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// The server's memory over the run.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub server_hwm_bytes: Option<u64>,
    pub tree_peak_bytes: u64,
}

/// A running `kiln serve` on a free port, with its own home and data
/// directory, and a sampler summing its process tree's memory.
pub struct ServeProcess {
    child: Child,
    pub url: String,
    sampling: Arc<AtomicBool>,
    tree_peak: Arc<AtomicU64>,
    sampler: Option<thread::JoinHandle<()>>,
    /// Set by [`ServeProcess::stop`], which reaps the child: Drop must then
    /// leave its (possibly reused) pid alone.
    stopped: bool,
}

impl ServeProcess {
    /// `kiln serve` with `workers` in-process workers, or with none
    /// (`--no-local-workers`) when `local_workers` is false.
    pub fn start(
        kiln: &Path,
        dir: &RunDir,
        model_url: &str,
        admin_token: &str,
        workers: usize,
        local_workers: bool,
    ) -> Result<Self> {
        let home = dir.home();
        let data: PathBuf = dir.root.join("data");
        std::fs::create_dir_all(&home)?;
        let stderr = std::fs::File::create(dir.stderr())?;
        let mut child = Command::new(kiln)
            .args(["serve", "--addr", "127.0.0.1:0", "--max-parallel"])
            .arg(workers.to_string())
            .arg("--data-dir")
            .arg(&data)
            // One client on loopback watches every task of the burst: its
            // event streams and connections are one per task, beyond the
            // per-token and per-address caps a shared server defaults to.
            .arg("--max-streams-per-token")
            .arg((workers * 2).max(16).to_string())
            .arg("--max-connections-per-ip")
            .arg((workers * 4).max(64).to_string())
            .args((!local_workers).then_some("--no-local-workers"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("KILN_HOME", &home)
            .env("OPENAI_BASE_URL", model_url)
            .env("OPENAI_API_KEY", "bench-dummy-key")
            .env("KILN_ADMIN_TOKEN", admin_token)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // Its own process group, so stopping it reaches every sandbox it started.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {} serve", kiln.display()))?;
        let stdout = child.stdout.take().context("stdout was piped")?;
        let (url_tx, url_rx) = mpsc::channel();
        // Reads the address, then keeps draining so the server never blocks on stdout.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    let _ = url_tx.send(url.to_string());
                }
            }
        });
        let url = match url_rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => url,
            Err(err) => {
                kill_group(&mut child);
                let why = match err {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("did not listen within {START_TIMEOUT:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => "exited before listening".to_string(),
                };
                bail!("kiln serve {why}; stderr: {}", dir.stderr_tail());
            }
        };
        let pid = child.id() as libc::pid_t;
        let sampling = Arc::new(AtomicBool::new(true));
        let tree_peak = Arc::new(AtomicU64::new(0));
        let sampler = {
            let sampling = sampling.clone();
            let tree_peak = tree_peak.clone();
            thread::spawn(move || {
                while sampling.load(Ordering::Relaxed) {
                    tree_peak.fetch_max(tree_rss_bytes(pid), Ordering::Relaxed);
                    thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        Ok(ServeProcess {
            child,
            url,
            sampling,
            tree_peak,
            sampler: Some(sampler),
            stopped: false,
        })
    }

    fn proc_file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.child.id())).ok()
    }

    /// User + system time of the server and its reaped children so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        let ticks = cpu_ticks_from_stat(&self.proc_file("stat")?)?;
        // SAFETY: sysconf has no memory effects.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
    }

    /// Stops the sampler; the server's own peak and the tree's sampled peak.
    pub fn stop_sampling(&mut self) -> Memory {
        self.sampling.store(false, Ordering::Relaxed);
        if let Some(sampler) = self.sampler.take() {
            let _ = sampler.join();
        }
        Memory {
            server_hwm_bytes: self
                .proc_file("status")
                .and_then(|status| status_kib(&status, "VmHWM"))
                .map(|kib| kib * 1024),
            tree_peak_bytes: self.tree_peak.load(Ordering::Relaxed),
        }
    }

    /// Whether the server has exited. It is not reaped, so its pid (and
    /// process group id) stay reserved until [`ServeProcess::stop`].
    pub fn has_exited(&self) -> bool {
        has_exited_unreaped(&self.child)
    }

    /// SIGTERM, up to 30 s for a clean exit, then SIGKILL to the group
    /// (whatever the server left running); its exit status.
    pub fn stop(mut self) -> Option<std::process::ExitStatus> {
        self.stopped = true;
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own unreaped child; no memory involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && !has_exited_unreaped(&self.child) {
            thread::sleep(Duration::from_millis(20));
        }
        kill_group(&mut self.child)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.sampling.store(false, Ordering::Relaxed);
        if !self.stopped {
            kill_group(&mut self.child);
        }
    }
}

/// `kiln worker` processes running attempts for one `kiln serve`; killed
/// (with whatever they started) when dropped.
pub struct WorkerProcesses {
    children: Vec<Child>,
}

impl WorkerProcesses {
    /// `count` workers for the server at `url`, each with its worker token
    /// from `tokens`, its own data directory under `dir`, and `max_parallel` slots.
    pub fn start(
        kiln: &Path,
        dir: &RunDir,
        url: &str,
        tokens: &[String],
        max_parallel: usize,
    ) -> Result<Self> {
        let mut children = Vec::with_capacity(tokens.len());
        for (i, token) in tokens.iter().enumerate() {
            let name = format!("bench-worker-{i}");
            let data = dir.root.join(&name);
            let home = dir.root.join(format!("{name}-home"));
            std::fs::create_dir_all(&home)?;
            let stderr = std::fs::File::create(dir.root.join(format!("{name}.stderr")))?;
            let child = Command::new(kiln)
                .args(["worker", "--server", url, "--name", &name, "--max-parallel"])
                .arg(max_parallel.to_string())
                .arg("--data-dir")
                .arg(&data)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", &home)
                .env("KILN_HOME", &home)
                .env("KILN_TOKEN", token)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .process_group(0)
                .spawn()
                .with_context(|| format!("cannot start {} worker", kiln.display()))?;
            children.push(child);
        }
        Ok(WorkerProcesses { children })
    }

    /// User + system time of the workers and their reaped children so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        let mut ticks = 0;
        for child in &self.children {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).ok()?;
            ticks += cpu_ticks_from_stat(&stat)?;
        }
        // SAFETY: sysconf has no memory effects.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
    }
}

impl Drop for WorkerProcesses {
    fn drop(&mut self) {
        for child in &mut self.children {
            kill_group(child);
        }
    }
}

/// Whether `child` has exited, without reaping it (`waitid` with `WNOWAIT`).
fn has_exited_unreaped(child: &Child) -> bool {
    // SAFETY: siginfo_t is plain old data; waitid fills it or leaves it zeroed.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with a valid siginfo_t to write into.
    let waited = unsafe {
        libc::waitid(
            libc::P_PID,
            child.id(),
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is valid to read for a SIGCHLD siginfo, and 0 when none was filled.
    waited == 0 && unsafe { info.si_pid() } != 0
}

/// SIGKILL to the child's process group, then reap the child. The child must
/// not have been reaped yet: its unreaped pid keeps the group id from reuse.
fn kill_group(child: &mut Child) -> Option<std::process::ExitStatus> {
    // SAFETY: kill(2) on our own (unreaped) child's process group.
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    child.wait().ok()
}

/// utime + stime + cutime + cstime (clock ticks) from `/proc/PID/stat`.
pub(crate) fn cpu_ticks_from_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces;
    // fields 14-17 are the 12th to 15th after its closing parenthesis.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = fields.get(11..15)?;
    ticks.iter().map(|field| field.parse::<u64>().ok()).sum()
}

/// The kB value of `key` in `/proc/PID/status` (`VmHWM:   12345 kB`).
pub(crate) fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

#[cfg(test)]
#[path = "serve_process_tests.rs"]
mod tests;
