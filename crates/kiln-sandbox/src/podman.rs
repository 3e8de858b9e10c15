//! The podman backend, for environments that name an OCI image.
//!
//! Each command is one container of the image: root filesystem read-only,
//! the workspace mounted at its own path (read-only in Ask mode), the
//! sandbox's private home at `/home/kiln` and `/tmp`, no capabilities,
//! `no_new_privs`, podman's default seccomp profile, `--network none` in the
//! agent phase, and the policy's limits as container limits. Output is the
//! attached container's stdout and stderr, through the common runner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::common::{self, SandboxCommon};
use crate::environment::{base_environment, layered};
use crate::filesystem::Phase;
use crate::runner::SpawnSpec;
use crate::{ExecOutcome, ExecRequest, OutputChunk, Sandbox, SandboxError, SandboxPolicy};

/// `PATH` inside the image: the host's would name directories it lacks.
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const CONTAINER_HOME: &str = "/home/kiln";
/// Open files per process; podman needs an explicit value on some hosts.
const NOFILE: u64 = 65536;

/// One command to run as a container.
struct ContainerCommand<'a> {
    phase: Phase,
    cwd: &'a Path,
    argv: &'a [String],
    env: BTreeMap<String, String>,
    timeout: std::time::Duration,
    /// The host directories mounted as the container's home and `/tmp`.
    home: PathBuf,
    tmp: PathBuf,
}

pub(crate) struct PodmanSandbox {
    common: SandboxCommon,
    podman: PathBuf,
    /// `runc` where installed: podman's default crun refuses hybrid cgroup hosts.
    runtime: Option<PathBuf>,
    image: String,
}

impl PodmanSandbox {
    pub fn new(policy: SandboxPolicy) -> Result<Self, SandboxError> {
        let podman = find_program("podman").ok_or_else(|| SandboxError::BackendUnavailable {
            backend: "podman",
            reason: "podman is not installed".into(),
            fix: "install it (`apt-get install podman runc`) or use the default bwrap backend"
                .into(),
        })?;
        let image = policy.image.clone().ok_or_else(|| {
            SandboxError::InvalidPolicy(
                "the podman backend needs an image (SandboxPolicy::image; `--image` on the command line)".into(),
            )
        })?;
        let exists = std::process::Command::new(&podman)
            .args(["image", "exists", &image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| SandboxError::Spawn {
                program: podman.to_string_lossy().into_owned(),
                source,
            })?;
        if !exists.success() {
            return Err(SandboxError::BackendUnavailable {
                backend: "podman",
                reason: format!("image {image:?} is not in podman's local storage"),
                fix: "build or load it first (`podman build`, `podman load`, or `podman import ROOTFS.tar NAME`); kiln never pulls images".into(),
            });
        }
        // podman's -v splits on ':'; such a path cannot be mounted faithfully.
        let mounted = std::iter::once(&policy.workspace)
            .chain(&policy.extra_read_only)
            .chain(&policy.extra_writable);
        for path in mounted {
            if path.to_string_lossy().contains(':') {
                return Err(SandboxError::InvalidPolicy(format!(
                    "{} contains ':', which podman volume mounts cannot express; rename it or use the bwrap backend",
                    path.display()
                )));
            }
        }
        let runtime = ["/usr/sbin/runc", "/usr/bin/runc"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| find_program("runc"));
        Ok(PodmanSandbox {
            common: SandboxCommon::new(policy)?,
            podman,
            runtime,
            image,
        })
    }

    fn environment(&self) -> BTreeMap<String, String> {
        let mut env = base_environment(
            |k| std::env::var(k).ok(),
            CONTAINER_HOME,
            "kiln",
            &BTreeMap::new(),
        );
        env.insert("PATH".into(), CONTAINER_PATH.into());
        env
    }

    fn run_args(&self, name: &str, command: &ContainerCommand<'_>) -> Vec<String> {
        let ContainerCommand {
            phase,
            cwd,
            env,
            home,
            tmp,
            ..
        } = command;
        let policy = &self.common.policy;
        let limits = &policy.limits;
        let mut args: Vec<String> = vec!["run".into(), "--name".into(), name.into()];
        if let Some(runtime) = &self.runtime {
            args.extend(["--runtime".into(), runtime.to_string_lossy().into_owned()]);
        }
        if !phase.network {
            args.extend(["--network".into(), "none".into()]);
        }
        args.extend(
            [
                "--read-only",
                "--cap-drop",
                "all",
                "--security-opt",
                "no-new-privileges",
                "--hostname",
                "kiln",
                // Output goes to kiln through the attached pipes; a log copy
                // in podman's storage would grow with whatever is printed.
                "--log-driver",
                "none",
                "--ulimit",
                "core=0:0",
            ]
            .map(String::from),
        );
        // The runtime cannot raise a limit past kiln's own hard limit.
        let nofile = NOFILE.min(hard_limit(libc::RLIMIT_NOFILE));
        args.extend(["--ulimit".into(), format!("nofile={nofile}:{nofile}")]);
        let nproc = limits
            .max_processes
            .unwrap_or(NOFILE)
            .min(hard_limit(libc::RLIMIT_NPROC));
        args.extend(["--ulimit".into(), format!("nproc={nproc}:{nproc}")]);
        if let Some(n) = limits.max_processes {
            args.extend(["--pids-limit".into(), n.to_string()]);
        }
        if let Some(bytes) = limits.memory_bytes {
            // Same value for memory+swap: no swapping past the limit.
            args.extend([
                "--memory".into(),
                bytes.to_string(),
                "--memory-swap".into(),
                bytes.to_string(),
            ]);
        }
        if let Some(cores) = limits.cpu_cores {
            args.extend(["--cpus".into(), cores.to_string()]);
        }
        let workspace = self.common.workspace.to_string_lossy().into_owned();
        let ro = if phase.read_only { ":ro" } else { "" };
        args.extend(["-v".into(), format!("{workspace}:{workspace}{ro}")]);
        args.extend(["-v".into(), format!("{}:{CONTAINER_HOME}", home.display())]);
        args.extend(["-v".into(), format!("{}:/tmp", tmp.display())]);
        for path in &policy.extra_read_only {
            args.extend(["-v".into(), format!("{0}:{0}:ro", path.display())]);
        }
        for path in &policy.extra_writable {
            args.extend(["-v".into(), format!("{0}:{0}", path.display())]);
        }
        args.extend(["--workdir".into(), cwd.to_string_lossy().into_owned()]);
        for (key, value) in env {
            args.extend(["--env".into(), format!("{key}={value}")]);
        }
        args.push(self.image.clone());
        args
    }

    async fn run_container(
        &self,
        command: ContainerCommand<'_>,
        output: Option<mpsc::Sender<OutputChunk>>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "kiln-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut args = self.run_args(&name, &command);
        args.extend(command.argv.iter().cloned());
        let timeout = command.timeout;
        let podman = self.podman.clone();
        let kill_name = name.clone();
        // Killing `podman run` leaves the container running under conmon;
        // the container itself must be killed. Runs on timeout or
        // cancellation only, and blocks for the ~100 ms podman takes.
        let abort_hook = Arc::new(move || {
            let _ = std::process::Command::new(&podman)
                .args(["kill", "--signal", "KILL", &kill_name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        });
        let spec = SpawnSpec {
            program: self.podman.to_string_lossy().into_owned(),
            args,
            // podman itself needs no secrets; the container's environment
            // is passed with --env above.
            env: BTreeMap::from([("PATH".to_string(), CONTAINER_PATH.to_string())]),
            cwd: PathBuf::from("/"),
            rlimits: Vec::new(),
            inherit_fds: Vec::new(),
            abort_hook: Some(abort_hook),
        };
        let result = self
            .common
            .run_self_limited(spec, timeout, output, cancel)
            .await;
        let oom_killed = self
            .podman_output(&["inspect", "--format", "{{.State.OOMKilled}}", &name])
            .await;
        self.podman_output(&["rm", "--force", &name]).await;
        let mut outcome = result?;
        if let (Some(memory), None) = (self.common.policy.limits.memory_bytes, &outcome.killed_by) {
            let label = format!("memory limit {}", crate::format_bytes(memory));
            if oom_killed.trim() == "true" {
                outcome.limits_reached.push(label.clone());
                outcome.killed_by = Some(label);
            } else if outcome.exit_code == Some(128 + libc::SIGKILL) {
                // runc on cgroup v1 hosts often records no OOM event; a
                // SIGKILL kiln did not send is then most likely the limit.
                outcome.killed_by = Some(format!(
                    "SIGKILL, most likely the {label} (the container runtime recorded no OOM event)"
                ));
            }
        }
        Ok(outcome)
    }

    async fn podman_output(&self, args: &[&str]) -> String {
        let out = tokio::process::Command::new(&self.podman)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .await;
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl Sandbox for PodmanSandbox {
    async fn exec(
        &self,
        request: ExecRequest,
        output: Option<mpsc::Sender<OutputChunk>>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        let cwd = self.common.checked_cwd(&request)?;
        let env = layered(self.environment(), [&self.common.policy.env, &request.env]);
        let command = ContainerCommand {
            phase: Phase::agent(&self.common.policy, false),
            cwd: &cwd,
            argv: &request.argv,
            env,
            timeout: request.timeout,
            home: self.common.state.home(),
            tmp: self.common.state.tmp(),
        };
        self.run_container(command, output, cancel).await
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
        // Whether the image has bash is unknown from outside; sh -e is everywhere.
        let argv = common::setup_argv(script, false);
        let workspace = self.common.workspace.clone();
        let timeout = self.common.policy.limits.setup_timeout;
        // Setup's own home and /tmp, as in the bwrap backend.
        let scratch = self.common.state.begin_setup()?;
        let command = ContainerCommand {
            phase: Phase::setup(false),
            cwd: &workspace,
            argv: &argv,
            env,
            timeout,
            home: scratch.home.clone(),
            tmp: scratch.tmp.clone(),
        };
        let outcome = self.run_container(command, output, cancel).await?;
        self.common
            .state
            .carry_over(&self.common.policy.setup_caches)?;
        drop(scratch);
        Ok(outcome)
    }

    fn policy(&self) -> &SandboxPolicy {
        &self.common.policy
    }

    fn shutdown(&self) {
        self.common.shutdown();
    }

    fn describe(&self) -> String {
        let policy = &self.common.policy;
        let limits = &policy.limits;
        let memory = limits
            .memory_bytes
            .map(|b| format!("memory {}", crate::format_bytes(b)))
            .unwrap_or_else(|| "memory unlimited".into());
        let processes = limits
            .max_processes
            .map(|n| format!("processes {n}"))
            .unwrap_or_else(|| "processes unlimited".into());
        let cpu = limits
            .cpu_cores
            .map(|c| format!("cpu {c} cores"))
            .unwrap_or_else(|| "cpu unlimited".into());
        format!(
            "podman (image {}, runtime {}): network {}, workspace {} {}, private home and /tmp; {memory}, {processes}, {cpu} (container limits)",
            self.image,
            self.runtime
                .as_ref()
                .map(|r| r.display().to_string())
                .unwrap_or_else(|| "default".into()),
            if policy.network { "on" } else { "none" },
            self.common.workspace.display(),
            if policy.read_only { "read-only" } else { "read-write" },
        )
    }
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut value = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct passed by pointer.
    if unsafe { libc::getrlimit(resource, &mut value) } == 0 {
        value.rlim_max
    } else {
        1024
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
