//! Shared set-up for the sandbox's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_sandbox::{Backend, ExecOutcome, ExecRequest, Sandbox, SandboxPolicy};
use tokio_util::sync::CancellationToken;

pub struct Fixture {
    pub root: tempfile::TempDir,
    pub workspace: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let workspace = root.path().join("workspace");
        std::fs::create_dir(&workspace).unwrap();
        Fixture { root, workspace }
    }

    pub fn policy(&self, backend: Backend) -> SandboxPolicy {
        let mut policy = SandboxPolicy::for_workspace(&self.workspace);
        policy.backend = backend;
        policy.state_dir = Some(self.root.path().join("state"));
        policy
    }

    pub fn sandbox(&self, backend: Backend) -> Arc<dyn Sandbox> {
        kiln_sandbox::create(self.policy(backend)).unwrap()
    }

    pub fn write(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.workspace.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }
}

pub async fn sh(sandbox: &Arc<dyn Sandbox>, dir: &Path, script: &str) -> ExecOutcome {
    sh_with_timeout(sandbox, dir, script, Duration::from_secs(60)).await
}

pub async fn sh_with_timeout(
    sandbox: &Arc<dyn Sandbox>,
    dir: &Path,
    script: &str,
    timeout: Duration,
) -> ExecOutcome {
    let request = ExecRequest::shell(script, dir).with_timeout(timeout);
    sandbox
        .exec(request, None, CancellationToken::new())
        .await
        .unwrap()
}

/// Poll `condition` until it holds or `limit` passes; true if it held.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if condition() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn process_alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; only count processes that can run.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
            !matches!(state, Some('Z') | Some('X'))
        }
        Err(_) => false,
    }
}

/// This machine's address on its default route (no packet is sent).
pub fn host_address() -> String {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .connect("192.0.2.1:9")
        .expect("a default route: the network tests need a non-loopback address");
    socket.local_addr().unwrap().ip().to_string()
}
