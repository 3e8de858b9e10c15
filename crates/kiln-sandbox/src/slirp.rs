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
    // slirp4netns can only enter the namespace once bubblewrap has written
    // the user namespace's uid map.
    let uid_map = PathBuf::from(format!("/proc/{pid}/uid_map"));
    let start = Instant::now();
    while std::fs::read_to_string(&uid_map).map_or(true, |m| m.trim().is_empty())
        && start.elapsed() < ATTACH_LIMIT
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut child = match tokio::process::Command::new(&slirp)
        .args(["--configure", "--mtu=65520", "--disable-host-loopback"])
        .arg(pid.to_string())
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => Some(child),
        Err(err) => {
            tracing::warn!(%err, "could not start slirp4netns; the setup script runs without network");
            None
        }
    };
    if child.is_some() {
        let route = PathBuf::from(format!("/proc/{pid}/net/route"));
        let start = Instant::now();
        while !has_default_route(&route) && start.elapsed() < ATTACH_LIMIT {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !has_default_route(&route) {
            tracing::warn!(
                "slirp4netns did not bring the network up; the setup script runs without it"
            );
        }
    }
    let mut block = std::fs::File::from(block_write);
    let _ = block.write_all(b"1");
    drop(block);
    done.cancelled().await;
    if let Some(child) = child.as_mut() {
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
