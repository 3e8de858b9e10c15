//! Network for the setup phase without the host's network namespace.
//!
//! With `slirp4netns` installed, the setup phase gets its own network
//! namespace like the agent phase, plus a user-mode NAT into it: the
//! internet is reachable, the host's loopback services (a database on
//! 127.0.0.1, abstract unix sockets) are not. bubblewrap reports the
//! sandbox's pid on `--info-fd` and waits on `--block-fd` until kiln has
//! attached slirp4netns and the route is up.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::SandboxError;

/// slirp4netns' built-in DNS forwarder inside the namespace.
pub(crate) const RESOLV_CONF: &str = "nameserver 10.0.2.3\n";
/// How long the namespace may take to get its network before the setup
/// script runs anyway (and finds no network).
const ATTACH_LIMIT: Duration = Duration::from_secs(10);

pub(crate) fn find_slirp4netns() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("slirp4netns"))
        .find(|candidate| candidate.is_file())
}

/// The descriptors for one sandboxed process: the child's ends go to
/// bubblewrap, the parent's ends to [`attach`].
pub(crate) struct SlirpPipes {
    pub child_info_write: OwnedFd,
    pub child_block_read: OwnedFd,
    pub info_read: OwnedFd,
    pub block_write: OwnedFd,
}

impl SlirpPipes {
    pub fn new() -> Result<SlirpPipes, SandboxError> {
        let (info_read, child_info_write) = pipe()?;
        let (child_block_read, block_write) = pipe()?;
        Ok(SlirpPipes {
            child_info_write,
            child_block_read,
            info_read,
            block_write,
        })
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array on success; checked below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::io(
            "creating a pipe for slirp4netns",
            "pipe",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: both descriptors were just created and are owned only here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Wait for bubblewrap to report the sandbox's pid, attach slirp4netns to
/// its network namespace, wait for the route, then let the command start.
/// slirp4netns runs until `done` is cancelled.
pub(crate) async fn attach(
    slirp: PathBuf,
    info_read: OwnedFd,
    block_write: OwnedFd,
    done: CancellationToken,
) {
    let pid = match tokio::task::spawn_blocking(move || read_child_pid(info_read)).await {
        Ok(Some(pid)) => pid,
        // bubblewrap failed before starting the sandbox; it reports why.
        _ => return,
    };
    let deadline = Instant::now() + ATTACH_LIMIT;
    // slirp4netns can only enter the namespace once bubblewrap has written
    // the user namespace's uid map and moved the child into its own network
    // namespace.
    let uid_map = PathBuf::from(format!("/proc/{pid}/uid_map"));
    let child_net = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let own_net = std::fs::read_link("/proc/self/ns/net").ok();
    while (std::fs::read_to_string(&uid_map).map_or(true, |m| m.trim().is_empty())
        || std::fs::read_link(&child_net).ok() == own_net)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let route = PathBuf::from(format!("/proc/{pid}/net/route"));
    let mut running = None;
    let mut last_words = String::new();
    // Even then, setns may still be refused while bubblewrap finishes setting
    // up the child (seen as `setns(CLONE_NEWNET): Operation not permitted`):
    // a slirp4netns that exits early is started again until the deadline.
    while Instant::now() < deadline {
        let mut child = match tokio::process::Command::new(&slirp)
            // Addressed by pid, slirp4netns was refused setns (EPERM) for
            // good in about one start in ten while bubblewrap set the child
            // up; addressed by the namespace file it attached every time
            // (0 of 40). The wait above guarantees the file is already the
            // child's own namespace, never the host's.
            .args([
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                "--netns-type=path",
            ])
            .arg(&child_net)
            .arg("tap0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(err) => {
                last_words = format!("could not start {}: {err}", slirp.display());
                break;
            }
        };
        while !has_default_route(&route)
            && Instant::now() < deadline
            && matches!(child.try_wait(), Ok(None))
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if has_default_route(&route) {
            running = Some(child);
            break;
        }
        let _ = child.start_kill();
        last_words = match child.wait_with_output().await {
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(err) => err.to_string(),
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if running.is_none() {
        tracing::warn!(
            slirp4netns = %last_words,
            "slirp4netns did not bring the network up; the setup script runs without it"
        );
    }
    let mut block = std::fs::File::from(block_write);
    let _ = block.write_all(b"1");
    drop(block);
    done.cancelled().await;
    if let Some(child) = running.as_mut() {
        let _ = child.kill().await;
    }
}

fn read_child_pid(info_read: OwnedFd) -> Option<u32> {
    let mut file = std::fs::File::from(info_read);
    let mut info = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        info.extend_from_slice(&buf[..n]);
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&info) {
            return value.get("child-pid")?.as_u64().map(|p| p as u32);
        }
    }
    serde_json::from_slice::<serde_json::Value>(&info)
        .ok()?
        .get("child-pid")?
        .as_u64()
        .map(|p| p as u32)
}

/// `/proc/PID/net/route` lists a default route (destination 00000000) once
/// slirp4netns has configured the interface.
fn has_default_route(route: &Path) -> bool {
    std::fs::read_to_string(route)
        .map(|table| {
            table
                .lines()
                .skip(1)
                .any(|line| line.split_whitespace().nth(1) == Some("00000000"))
        })
        .unwrap_or(false)
}
