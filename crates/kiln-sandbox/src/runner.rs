//! Running one prepared process: limits joined before exec, output pumped
//! into a bounded capture and the caller's channel, timeouts and
//! cancellation killing the whole process tree. Every backend ends here.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_protocol::ExecStream;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::capture::OutputCapture;
use crate::cgroup::{CommandCgroups, Rlimit};
use crate::policy::Limits;
use crate::{ExecOutcome, OutputChunk, SandboxError};

/// Read size per pipe; also the largest chunk sent to the caller.
const READ_BUFFER: usize = 64 << 10;
/// How long output may keep arriving after the command's process is gone
/// (from grandchildren that kept the pipe), before kiln stops reading.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// A process ready to start.
pub(crate) struct SpawnSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Host-side working directory of the spawned process.
    pub cwd: PathBuf,
    pub rlimits: Vec<Rlimit>,
    /// Descriptors the child inherits (seccomp programs for bwrap).
    pub inherit_fds: Vec<OwnedFd>,
    /// Extra work to stop the command when kiln aborts it (timeout,
    /// cancellation, drop), for backends whose command does not live in the
    /// spawned process' tree (a container under podman's monitor).
    pub abort_hook: Option<AbortHook>,
}

pub(crate) type AbortHook = Arc<dyn Fn() + Send + Sync>;

/// When and why the command must stop.
pub(crate) struct Deadline {
    pub at: Option<Instant>,
    /// "timeout 10s" or "overall deadline 30m".
    pub label: String,
}

impl Deadline {
    /// The earlier of the command's timeout and the sandbox's overall deadline.
    pub fn for_command(timeout: Duration, overall: Option<(Instant, Duration)>) -> Deadline {
        let own = Instant::now().checked_add(timeout);
        let own_label = format!("timeout {}", format_duration(timeout));
        match (own, overall) {
            (Some(own_at), Some((overall_at, total))) if overall_at < own_at => Deadline {
                at: Some(overall_at),
                label: format!("overall deadline {}", format_duration(total)),
            },
            (None, Some((overall_at, total))) => Deadline {
                at: Some(overall_at),
                label: format!("overall deadline {}", format_duration(total)),
            },
            (at, _) => Deadline {
                at,
                label: own_label,
            },
        }
    }
}

pub(crate) fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 && secs < 10 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs >= 3600 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

enum Ending {
    Exited(std::process::ExitStatus),
    Deadline,
    Cancelled,
}

/// Kills the process group and the cgroups, also when the caller drops
/// the exec future half-way.
struct TreeKiller<'a> {
    pgid: i32,
    cgroups: Option<&'a CommandCgroups>,
    abort_hook: Option<AbortHook>,
    armed: bool,
}

impl TreeKiller<'_> {
    /// Stop a command that is still running: the backend's own hook first,
    /// then the process tree.
    fn abort(&self) {
        if let Some(hook) = &self.abort_hook {
            hook();
        }
        self.kill();
    }

    fn kill(&self) {
        if self.pgid > 0 {
            // SAFETY: killpg on the group this runner created for the child;
            // ESRCH (group gone) is harmless.
            unsafe {
                libc::killpg(self.pgid, libc::SIGKILL);
            }
        }
        if let Some(cgroups) = self.cgroups {
            cgroups.kill_all();
        }
    }
}

impl Drop for TreeKiller<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.abort();
        }
    }
}

/// Start `spec` and see it through to the end.
pub(crate) async fn run(
    spec: SpawnSpec,
    cgroups: Option<&CommandCgroups>,
    limits: &Limits,
    spill_path: PathBuf,
    deadline: Deadline,
    output: Option<mpsc::Sender<OutputChunk>>,
    cancel: CancellationToken,
) -> Result<ExecOutcome, SandboxError> {
    let started = Instant::now();
    let mut child = spawn(&spec, cgroups)?;
    // Our copies of inherited descriptors are no longer needed.
    drop(spec.inherit_fds);
    let pgid = child.id().map(|id| id as i32).unwrap_or(0);
    let mut killer = TreeKiller {
        pgid,
        cgroups,
        abort_hook: spec.abort_hook.clone(),
        armed: true,
    };

    let mut capture = OutputCapture::new(
        limits.output_head_bytes,
        limits.output_tail_bytes,
        spill_path,
        limits.output_spill_bytes,
    );
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let ending = {
        let pump = pump_output(&mut capture, stdout, stderr, output.as_ref());
        tokio::pin!(pump);
        let mut pump_done = false;
        let waiting = wait_for_end(&mut child, &deadline, &cancel, &killer);
        tokio::pin!(waiting);
        let ending = loop {
            tokio::select! {
                _ = &mut pump, if !pump_done => pump_done = true,
                ending = &mut waiting => break ending,
            }
        };
        // The command is gone; whatever it left behind (daemonised
        // children holding the pipes) goes too, so the pipes reach EOF.
        killer.kill();
        if !pump_done {
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut pump).await;
        }
        ending
    };
    if let Some(cgroups) = cgroups {
        cgroups.wait_empty(Duration::from_secs(2)).await;
    }
    killer.armed = false;

    let captured = capture.finish();
    let mut outcome = ExecOutcome {
        duration: started.elapsed(),
        total_bytes: captured.total_bytes,
        omitted_bytes: captured.omitted_bytes,
        output: captured.text,
        spill_file: captured.spill_file,
        ..ExecOutcome::default()
    };
    let hits = cgroups.map(|c| c.limits_reached()).unwrap_or_default();
    outcome.limits_reached.extend(hits.memory.clone());
    outcome.limits_reached.extend(hits.processes.clone());
    match ending? {
        Ending::Exited(status) => {
            outcome.exit_code = exit_code_of(status);
            let signal_killed =
                outcome.exit_code.is_none() || outcome.exit_code == Some(128 + libc::SIGKILL);
            if signal_killed {
                outcome.killed_by = hits.memory;
            }
        }
        Ending::Deadline => {
            outcome.timed_out = true;
            outcome.killed_by = Some(deadline.label.clone());
            outcome.limits_reached.push(deadline.label);
        }
        Ending::Cancelled => {
            outcome.cancelled = true;
            outcome.killed_by = Some("cancelled".into());
        }
    }
    Ok(outcome)
}

fn exit_code_of(status: std::process::ExitStatus) -> Option<i32> {
    status.code()
}

async fn wait_for_end(
    child: &mut Child,
    deadline: &Deadline,
    cancel: &CancellationToken,
    killer: &TreeKiller<'_>,
) -> Result<Ending, SandboxError> {
    let sleep = async {
        match deadline.at {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    let wait_error = |e| SandboxError::io("waiting for the command", "child", e);
    tokio::select! {
        status = child.wait() => Ok(Ending::Exited(status.map_err(wait_error)?)),
        _ = sleep => {
            killer.abort();
            child.wait().await.map_err(wait_error)?;
            Ok(Ending::Deadline)
        }
        _ = cancel.cancelled() => {
            killer.abort();
            child.wait().await.map_err(wait_error)?;
            Ok(Ending::Cancelled)
        }
    }
}

/// Read both pipes until EOF, in arrival order, into `capture` and `output`.
async fn pump_output(
    capture: &mut OutputCapture,
    mut stdout: Option<ChildStdout>,
    mut stderr: Option<ChildStderr>,
    output: Option<&mpsc::Sender<OutputChunk>>,
) {
    // Buffers reused for every read: printing gigabytes costs two buffers.
    let mut out_buf = vec![0u8; READ_BUFFER];
    let mut err_buf = vec![0u8; READ_BUFFER];
    let mut output = output;
    while stdout.is_some() || stderr.is_some() {
        let (stream, read) = tokio::select! {
            r = read_some(&mut stdout, &mut out_buf), if stdout.is_some() => (ExecStream::Stdout, r),
            r = read_some(&mut stderr, &mut err_buf), if stderr.is_some() => (ExecStream::Stderr, r),
        };
        let n = match read {
            Ok(n) if n > 0 => n,
            _ => {
                match stream {
                    ExecStream::Stdout => stdout = None,
                    ExecStream::Stderr => stderr = None,
                }
                continue;
            }
        };
        let data = match stream {
            ExecStream::Stdout => &out_buf[..n],
            ExecStream::Stderr => &err_buf[..n],
        };
        let offset = capture.total();
        capture.push(data);
        if let Some(sender) = output {
            let chunk = OutputChunk {
                stream,
                data: bytes::Bytes::copy_from_slice(data),
                offset,
            };
            // A receiver that went away stops the streaming, not the command.
            if sender.send(chunk).await.is_err() {
                output = None;
            }
        }
    }
}

async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match pipe {
        Some(reader) => reader.read(buf).await,
        None => std::future::pending().await,
    }
}

fn spawn(spec: &SpawnSpec, cgroups: Option<&CommandCgroups>) -> Result<Child, SandboxError> {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);

    let procs_files: Vec<CString> = cgroups.map(|c| c.procs_files()).unwrap_or_default();
    let rlimits = spec.rlimits.clone();
    let inherit: Vec<i32> = crate::seccomp::raw_fds(&spec.inherit_fds);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (open, write, close, setrlimit, fcntl) on data
    // prepared above; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for path in &procs_files {
                join_cgroup(path)?;
            }
            for limit in &rlimits {
                let value = libc::rlimit {
                    rlim_cur: limit.value,
                    rlim_max: limit.value,
                };
                if libc::setrlimit(limit.resource, &value) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for fd in &inherit {
                let flags = libc::fcntl(*fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(*fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn().map_err(|source| SandboxError::Spawn {
        program: spec.program.clone(),
        source,
    })
}

/// Write "0" (meaning: the writing process) into a `cgroup.procs` file.
/// Runs between fork and exec: raw syscalls only.
fn join_cgroup(path: &CString) -> std::io::Result<()> {
    // SAFETY: path is a valid NUL-terminated string; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: writing one byte from a static buffer to the fd opened above.
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let result = if written == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    };
    // SAFETY: fd is owned here and closed exactly once.
    unsafe {
        libc::close(fd);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn the_earlier_deadline_wins_and_names_itself() {
        let soon = Instant::now() + Duration::from_secs(5);
        let d = Deadline::for_command(
            Duration::from_secs(60),
            Some((soon, Duration::from_secs(1800))),
        );
        assert_eq!(d.label, "overall deadline 30m");
        let d = Deadline::for_command(
            Duration::from_secs(1),
            Some((soon, Duration::from_secs(1800))),
        );
        assert_eq!(d.label, "timeout 1s");
    }
}
