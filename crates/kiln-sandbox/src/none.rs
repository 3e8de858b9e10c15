//! The `none` backend: commands run as plain child processes of kiln.
//!
//! Nothing is isolated: the command sees the whole filesystem, the network
//! and kiln's user. What still applies: a clean environment from the
//! allow-list (so kiln's API keys do not leak by accident), limits through
//! cgroups or rlimits, timeouts, and killing the process group and cgroup.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::common::{self, SandboxCommon};
use crate::environment::{base_environment, layered};
use crate::runner::SpawnSpec;
use crate::{ExecOutcome, ExecRequest, OutputChunk, Sandbox, SandboxError, SandboxPolicy};

pub(crate) struct UnsandboxedRunner {
    common: SandboxCommon,
}

impl UnsandboxedRunner {
    pub fn new(policy: SandboxPolicy) -> Result<Self, SandboxError> {
        tracing::warn!(
            workspace = %policy.workspace.display(),
            "sandbox backend `none`: commands run WITHOUT isolation, with full access to this machine"
        );
        Ok(UnsandboxedRunner {
            common: SandboxCommon::new(policy)?,
        })
    }

    fn environment(&self) -> BTreeMap<String, String> {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
        let user = std::env::var("USER").unwrap_or_else(|_| "kiln".into());
        let mut toolchain = BTreeMap::new();
        for key in ["RUSTUP_HOME", "CARGO_HOME", "PYENV_ROOT", "NVM_DIR"] {
            if let Ok(value) = std::env::var(key) {
                toolchain.insert(key.to_string(), value);
            }
        }
        base_environment(|k| std::env::var(k).ok(), &home, &user, &toolchain)
    }

    fn spec(&self, argv: &[String], cwd: PathBuf, env: BTreeMap<String, String>) -> SpawnSpec {
        SpawnSpec {
            program: argv[0].clone(),
            args: argv[1..].to_vec(),
            env,
            cwd,
            rlimits: Vec::new(),
            inherit_fds: Vec::new(),
            abort_hook: None,
        }
    }
}

#[async_trait::async_trait]
impl Sandbox for UnsandboxedRunner {
    async fn exec(
        &self,
        request: ExecRequest,
        output: Option<mpsc::Sender<OutputChunk>>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        let cwd = self.common.checked_cwd(&request)?;
        let env = layered(self.environment(), [&self.common.policy.env, &request.env]);
        let spec = self.spec(&request.argv, cwd, env);
        match self.common.run(spec, request.timeout, output, cancel).await {
            Err(SandboxError::Spawn { program, source }) => Ok(not_started(&program, &source)),
            other => other,
        }
    }

    async fn run_setup(
        &self,
        script: &str,
        secrets: &BTreeMap<String, String>,
        output: Option<mpsc::Sender<OutputChunk>>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        let env = layered(self.environment(), [&self.common.policy.env]);
        let env = common::with_secrets(env, secrets);
        let argv = common::setup_argv(
            script,
            common::has_bash(std::env::var("PATH").ok().as_deref()),
        );
        let spec = self.spec(&argv, self.common.workspace.clone(), env);
        let timeout = self.common.policy.limits.setup_timeout;
        self.common.run(spec, timeout, output, cancel).await
    }

    fn policy(&self) -> &SandboxPolicy {
        &self.common.policy
    }

    fn shutdown(&self) {
        self.common.shutdown();
    }

    fn describe(&self) -> String {
        format!(
            "none: NO ISOLATION — commands see the whole machine and the network; {}",
            self.common.limit_plan.describe()
        )
    }
}

/// What a shell reports when it cannot start a program: 127 when it does
/// not exist, 126 otherwise; the same statuses the bwrap backend gives.
fn not_started(program: &str, error: &std::io::Error) -> ExecOutcome {
    let output = format!("kiln: {program}: {error}\n");
    ExecOutcome {
        exit_code: Some(if error.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        }),
        total_bytes: output.len() as u64,
        output,
        ..ExecOutcome::default()
    }
}
