//! The podman backend, for environments that name an OCI image.

use std::collections::BTreeMap;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{ExecOutcome, ExecRequest, OutputChunk, Sandbox, SandboxError, SandboxPolicy};

pub(crate) struct PodmanSandbox {
    policy: SandboxPolicy,
}

impl PodmanSandbox {
    pub fn new(policy: SandboxPolicy) -> Result<Self, SandboxError> {
        let _ = policy;
        Err(SandboxError::BackendUnavailable {
            backend: "podman",
            reason: "the podman backend is not implemented yet".into(),
            fix: "use --sandbox bwrap".into(),
        })
    }
}

#[async_trait::async_trait]
impl Sandbox for PodmanSandbox {
    async fn exec(
        &self,
        _request: ExecRequest,
        _output: Option<mpsc::Sender<OutputChunk>>,
        _cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        Err(SandboxError::Other("podman backend not implemented".into()))
    }

    async fn run_setup(
        &self,
        _script: &str,
        _secrets: &BTreeMap<String, String>,
        _output: Option<mpsc::Sender<OutputChunk>>,
        _cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        Err(SandboxError::Other("podman backend not implemented".into()))
    }

    fn policy(&self) -> &SandboxPolicy {
        &self.policy
    }

    fn describe(&self) -> String {
        "podman".into()
    }
}
