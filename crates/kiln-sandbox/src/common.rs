//! What every backend shares: the state directory, the limit plan, the
//! overall deadline, request checks, and handing a spawn to the runner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cgroup::{CommandCgroups, LimitPlan};
use crate::runner::{self, Deadline, SpawnSpec};
use crate::state_dir::StateDir;
use crate::{ExecOutcome, ExecRequest, OutputChunk, SandboxError, SandboxPolicy};

pub(crate) struct SandboxCommon {
    pub policy: SandboxPolicy,
    /// The workspace with symlinks resolved: the path mounted and checked against.
    pub workspace: PathBuf,
    pub state: StateDir,
    pub limit_plan: LimitPlan,
    created: Instant,
    /// Cancelled by [`crate::Sandbox::shutdown`]; every command's own
    /// cancellation token is a child of it.
    shutdown: CancellationToken,
}

impl SandboxCommon {
    pub fn new(policy: SandboxPolicy) -> Result<Self, SandboxError> {
        let workspace = std::fs::canonicalize(&policy.workspace)
            .map_err(|e| SandboxError::io("resolving the workspace", &policy.workspace, e))?;
        // Unsandboxed commands use the real $HOME and /tmp: no tmpfs to cap.
        let private_cap = match policy.backend {
            crate::Backend::None => None,
            _ => policy.limits.home_and_tmp_bytes,
        };
        let state = StateDir::create(policy.state_dir.as_deref(), private_cap)?;
        let limit_plan = LimitPlan::discover(&policy.limits);
        Ok(SandboxCommon {
            policy,
            workspace,
            state,
            limit_plan,
            created: Instant::now(),
            shutdown: CancellationToken::new(),
        })
    }

    /// The request's working directory, resolved, if it lies in the workspace.
    pub fn checked_cwd(&self, request: &ExecRequest) -> Result<PathBuf, SandboxError> {
        if request.argv.is_empty() || request.argv[0].is_empty() {
            return Err(SandboxError::InvalidRequest("the command is empty".into()));
        }
        let cwd = if request.cwd.as_os_str().is_empty() {
            self.workspace.clone()
        } else if request.cwd.is_relative() {
            self.workspace.join(&request.cwd)
        } else {
            request.cwd.clone()
        };
        let resolved = std::fs::canonicalize(&cwd).map_err(|e| {
            SandboxError::InvalidRequest(format!(
                "working directory {} does not exist ({e}); use a directory inside the workspace {}",
                cwd.display(),
                self.workspace.display()
            ))
        })?;
        if !resolved.starts_with(&self.workspace) {
            return Err(SandboxError::InvalidRequest(format!(
                "working directory {} lies outside the workspace {}",
                cwd.display(),
                self.workspace.display()
            )));
        }
        Ok(resolved)
    }

    /// When everything this sandbox runs must end, if the policy says so.
    pub fn overall_deadline(&self) -> Option<(Instant, std::time::Duration)> {
        let total = self.policy.limits.overall_deadline?;
        Some((self.created.checked_add(total)?, total))
    }

    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Run `spec` in fresh per-command cgroups, to the end.
    pub async fn run(
        &self,
        mut spec: SpawnSpec,
        timeout: std::time::Duration,
        output: Option<mpsc::Sender<OutputChunk>>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        let cgroups = self.limit_plan.create_for_command()?;
        spec.rlimits = self.limit_plan.rlimits();
        self.run_with(spec, Some(&cgroups), timeout, output, cancel)
            .await
    }

    /// Run `spec` without kiln's own cgroups and rlimits, for backends that
    /// apply the limits themselves (a container runtime).
    pub async fn run_self_limited(
        &self,
        spec: SpawnSpec,
        timeout: std::time::Duration,
        output: Option<mpsc::Sender<OutputChunk>>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        self.run_with(spec, None, timeout, output, cancel).await
    }

    async fn run_with(
        &self,
        spec: SpawnSpec,
        cgroups: Option<&CommandCgroups>,
        timeout: std::time::Duration,
        output: Option<mpsc::Sender<OutputChunk>>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        let cancel = link_tokens(&cancel, &self.shutdown);
        // Cancelling the linked token when this command is over (or its
        // future dropped) ends the forwarding task; the caller's token and
        // the sandbox's are untouched.
        let _end_forwarding = cancel.clone().drop_guard();
        let deadline = Deadline::for_command(timeout, self.overall_deadline());
        runner::run(
            spec,
            cgroups,
            &self.policy.limits,
            self.state.next_spill_path(),
            deadline,
            output,
            cancel,
        )
        .await
    }
}

/// The setup script as a command: bash when the sandbox has it, else sh;
/// `-e` so that the first failing step fails the setup.
pub(crate) fn setup_argv(script: &str, has_bash: bool) -> Vec<String> {
    let shell = if has_bash { "bash" } else { "sh" };
    vec![shell.into(), "-e".into(), "-c".into(), script.into()]
}

pub(crate) fn has_bash(path_var: Option<&str>) -> bool {
    let path = path_var.unwrap_or("/usr/bin:/bin");
    std::env::split_paths(path).any(|dir| Path::new(&dir).join("bash").is_file())
}

/// Secrets for the setup phase only, on top of the command environment.
pub(crate) fn with_secrets(
    mut env: BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    for (key, value) in secrets {
        env.insert(key.clone(), value.clone());
    }
    env
}

/// A token cancelled when either `a` or `b` is.
fn link_tokens(a: &CancellationToken, b: &CancellationToken) -> CancellationToken {
    let linked = b.child_token();
    if a.is_cancelled() {
        linked.cancel();
        return linked;
    }
    let (a, forward) = (a.clone(), linked.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = a.cancelled() => forward.cancel(),
            _ = forward.cancelled() => {}
        }
    });
    linked
}
