//! The bubblewrap backend: user, pid, mount, ipc, uts and (in the agent
//! phase) network namespaces, a filesystem built from nothing up, seccomp,
//! and the cgroups of the common runner.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::common::{self, SandboxCommon};
use crate::environment::{base_environment, layered};
use crate::filesystem::{self, FilesystemView, GeneratedFiles, HostFacts, Mount, Phase};
use crate::runner::SpawnSpec;
use crate::seccomp::CompiledFilters;
use crate::slirp;
use crate::{ExecOutcome, ExecRequest, OutputChunk, Sandbox, SandboxError, SandboxPolicy};

/// The uid and gid commands run as inside the user namespace.
const SANDBOX_UID: &str = "1000";

/// One command and the phase it runs in.
struct PhaseCommand<'a> {
    phase: Phase,
    view: &'a FilesystemView,
    cwd: &'a Path,
    argv: &'a [String],
    env: BTreeMap<String, String>,
    timeout: std::time::Duration,
}

pub(crate) struct BwrapSandbox {
    common: SandboxCommon,
    bwrap: PathBuf,
    host: HostFacts,
    home_inside: PathBuf,
    agent_view: FilesystemView,
    setup_view: FilesystemView,
    filters: CompiledFilters,
    /// Private device nodes bound over the host's (kiln running as root).
    devices: Option<PathBuf>,
    /// slirp4netns, when installed: networked phases then get a private
    /// namespace with NAT instead of the host's network namespace.
    slirp: Option<PathBuf>,
}

impl BwrapSandbox {
    pub fn new(policy: SandboxPolicy) -> Result<Self, SandboxError> {
        let bwrap = find_bwrap()?;
        check_bwrap_works(&bwrap)?;
        let filters = CompiledFilters::build()?;
        let common = SandboxCommon::new(policy)?;
        let host = HostFacts::current();
        let home_inside = filesystem::sandbox_home(&host);
        let (passwd, group) = filesystem::account_files(&home_inside);
        let slirp = slirp::find_slirp4netns();
        let devices = crate::devices::private_nodes(&common.state.path().join("dev"))?;
        let generated = GeneratedFiles {
            passwd: common.state.write_file("passwd", &passwd)?,
            group: common.state.write_file("group", &group)?,
            resolv_conf: common.state.write_file("resolv.conf", slirp::RESOLV_CONF)?,
            home: common.state.home(),
            tmp: common.state.tmp(),
        };
        // Setup gets its own $HOME and /tmp: what it leaves there
        // (credentials, tokens) must not reach the agent phase.
        let setup_generated = GeneratedFiles {
            home: common.state.setup_home(),
            tmp: common.state.setup_tmp(),
            ..generated.clone()
        };
        let policy = &common.policy;
        let agent_view = filesystem::build_view(
            policy,
            Phase::agent(policy, slirp.is_some()),
            &common.workspace,
            &host,
            &generated,
        );
        let setup_view = filesystem::build_view(
            policy,
            Phase::setup(slirp.is_some()),
            &common.workspace,
            &host,
            &setup_generated,
        );
        Ok(BwrapSandbox {
            common,
            bwrap,
            host,
            home_inside,
            agent_view,
            setup_view,
            filters,
            devices,
            slirp,
        })
    }

    fn environment(&self, view: &FilesystemView) -> BTreeMap<String, String> {
        let home = self.home_inside.to_string_lossy();
        base_environment(
            |k| std::env::var(k).ok(),
            &home,
            "kiln",
            &view.toolchain_env,
        )
    }

    fn spawn_spec(
        &self,
        phase: Phase,
        view: &FilesystemView,
        cwd: &Path,
        argv: &[String],
        env: BTreeMap<String, String>,
        slirp_ends: Option<(OwnedFd, OwnedFd)>,
    ) -> Result<SpawnSpec, SandboxError> {
        let seccomp_fds = self.filters.to_memfds()?;
        let seccomp_raw = crate::seccomp::raw_fds(&seccomp_fds);
        let mut fds = seccomp_fds;
        let mut args = namespace_args(phase.network && !phase.user_mode_network);
        if let Some((info_write, block_read)) = slirp_ends {
            args.extend([
                "--info-fd".into(),
                info_write.as_raw_fd().to_string(),
                "--block-fd".into(),
                block_read.as_raw_fd().to_string(),
            ]);
            fds.push(info_write);
            fds.push(block_read);
        }
        args.extend(mount_args(&view.mounts, self.devices.as_deref()));
        args.push("--chdir".into());
        args.push(cwd.to_string_lossy().into_owned());
        for fd in seccomp_raw {
            args.push("--add-seccomp-fd".into());
            args.push(fd.to_string());
        }
        args.push("--".into());
        args.extend(argv.iter().cloned());
        Ok(SpawnSpec {
            program: self.bwrap.to_string_lossy().into_owned(),
            args,
            env,
            cwd: PathBuf::from("/"),
            rlimits: Vec::new(),
            inherit_fds: fds,
            abort_hook: None,
        })
    }

    /// Spawn and run one command of `phase`, attaching slirp4netns to its
    /// network namespace first when the phase uses user-mode networking.
    async fn run_phase(
        &self,
        command: PhaseCommand<'_>,
        output: Option<mpsc::Sender<OutputChunk>>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        let PhaseCommand {
            phase,
            view,
            cwd,
            argv,
            env,
            timeout,
        } = command;
        let slirp = self.slirp.clone().filter(|_| phase.user_mode_network);
        let Some(slirp) = slirp else {
            let spec = self.spawn_spec(phase, view, cwd, argv, env, None)?;
            return self.common.run(spec, timeout, output, cancel).await;
        };
        let pipes = slirp::SlirpPipes::new()?;
        let spec = self.spawn_spec(
            phase,
            view,
            cwd,
            argv,
            env,
            Some((pipes.child_info_write, pipes.child_block_read)),
        )?;
        let done = CancellationToken::new();
        // Stops slirp4netns when the command is over, or its future dropped.
        let _stop_network = done.clone().drop_guard();
        tokio::spawn(slirp::attach(
            slirp,
            pipes.info_read,
            pipes.block_write,
            done.clone(),
        ));
        self.common.run(spec, timeout, output, cancel).await
    }
}

#[async_trait::async_trait]
impl Sandbox for BwrapSandbox {
    async fn exec(
        &self,
        request: ExecRequest,
        output: Option<mpsc::Sender<OutputChunk>>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        let cwd = self.common.checked_cwd(&request)?;
        let env = layered(
            self.environment(&self.agent_view),
            [&self.common.policy.env, &request.env],
        );
        let command = PhaseCommand {
            phase: Phase::agent(&self.common.policy, self.slirp.is_some()),
            view: &self.agent_view,
            cwd: &cwd,
            argv: &request.argv,
            env,
            timeout: request.timeout,
        };
        let outcome = self.run_phase(command, output, cancel).await?;
        Ok(with_shell_exec_status(outcome))
    }

    async fn run_setup(
        &self,
        script: &str,
        secrets: &BTreeMap<String, String>,
        output: Option<mpsc::Sender<OutputChunk>>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError> {
        let env = layered(
            self.environment(&self.setup_view),
            [&self.common.policy.env],
        );
        let env = common::with_secrets(env, secrets);
        let argv = common::setup_argv(script, common::has_bash(self.host.path.as_deref()));
        let workspace = self.common.workspace.clone();
        let command = PhaseCommand {
            phase: Phase::setup(self.slirp.is_some()),
            view: &self.setup_view,
            cwd: &workspace,
            argv: &argv,
            env,
            timeout: self.common.policy.limits.setup_timeout,
        };
        let scratch = self.common.state.begin_setup()?;
        let outcome = self.run_phase(command, output, cancel).await?;
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
        format!(
            "bwrap: network {}, workspace {} {}, private home and /tmp ({}), seccomp on; {}",
            match (policy.network, self.slirp.is_some()) {
                (false, _) => "off (loopback only)",
                (true, true) => "on through slirp4netns (host loopback unreachable)",
                (true, false) => "on (the host's network namespace)",
            },
            self.common.workspace.display(),
            if policy.read_only {
                "read-only"
            } else {
                "read-write"
            },
            self.common.state.describe_private_cap(),
            self.common.limit_plan.describe()
        )
    }
}

/// bubblewrap exits with 1 when it cannot exec the command; report what a
/// shell would (127 not found, 126 not executable) so that callers and
/// models read it the usual way.
fn with_shell_exec_status(mut outcome: ExecOutcome) -> ExecOutcome {
    if outcome.exit_code == Some(1) && outcome.output.starts_with("bwrap: execvp ") {
        let first_line = outcome.output.lines().next().unwrap_or_default();
        outcome.exit_code = Some(if first_line.ends_with("No such file or directory") {
            127
        } else {
            126
        });
    }
    outcome
}

fn namespace_args(network: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--unshare-user",
        "--uid",
        SANDBOX_UID,
        "--gid",
        SANDBOX_UID,
        "--disable-userns",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "kiln",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !network {
        args.push("--unshare-net".into());
    }
    args
}

fn mount_args(mounts: &[Mount], private_devices: Option<&Path>) -> Vec<String> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut args: Vec<String> = Vec::new();
    for mount in mounts {
        match mount {
            Mount::ReadOnly { src, dst } => args.extend(["--ro-bind".into(), s(src), s(dst)]),
            Mount::Writable { src, dst } => args.extend(["--bind".into(), s(src), s(dst)]),
            Mount::Symlink { target, link } => {
                args.extend(["--symlink".into(), s(target), s(link)])
            }
            Mount::HideFile(path) => args.extend(["--ro-bind".into(), "/dev/null".into(), s(path)]),
            Mount::HideDir(path) => {
                args.extend(["--tmpfs".into(), s(path), "--remount-ro".into(), s(path)])
            }
        }
    }
    args.extend(["--dev".into(), "/dev".into()]);
    if let Some(dir) = private_devices {
        // Over bubblewrap's binds of the host's nodes, which the sandbox's
        // user (the host's root here) could otherwise chmod for the whole
        // machine.
        for (name, _, _) in crate::devices::DEVICE_NODES {
            args.extend([
                "--dev-bind".into(),
                s(&dir.join(name)),
                format!("/dev/{name}"),
            ]);
        }
    }
    args.extend(proc_args());
    // The root itself is a tmpfs bubblewrap made; without this the command
    // could create files next to /usr.
    args.extend(["--remount-ro".into(), "/".into()]);
    args
}

/// A fresh `/proc` for the pid namespace, with the kernel-wide knobs in it
/// made read-only or hidden. This matters when kiln runs as root: the
/// sandbox user then maps to the host's uid 0, and sysctls under
/// `/proc/sys` check only that uid, not capabilities.
fn proc_args() -> Vec<String> {
    let mut args: Vec<String> = vec!["--proc".into(), "/proc".into()];
    for dir in ["/proc/sys", "/proc/fs", "/proc/irq", "/proc/bus"] {
        if Path::new(dir).is_dir() {
            args.extend(["--ro-bind".into(), dir.into(), dir.into()]);
        }
    }
    for file in [
        "/proc/sysrq-trigger",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/sched_debug",
    ] {
        if Path::new(file).exists() {
            args.extend(["--ro-bind".into(), "/dev/null".into(), file.into()]);
        }
    }
    for dir in ["/proc/acpi", "/proc/scsi", "/proc/asound"] {
        if Path::new(dir).is_dir() {
            args.extend([
                "--tmpfs".into(),
                dir.into(),
                "--remount-ro".into(),
                dir.into(),
            ]);
        }
    }
    args
}

fn find_bwrap() -> Result<PathBuf, SandboxError> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("bwrap"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| SandboxError::BackendUnavailable {
            backend: "bwrap",
            reason: "bubblewrap (bwrap) is not installed".into(),
            fix: "install it (`apt-get install bubblewrap`, `dnf install bubblewrap`) or run without isolation with `--sandbox none`".into(),
        })
}

/// Run a minimal sandbox once per process to see that this kernel lets
/// bubblewrap create the namespaces kiln uses.
fn check_bwrap_works(bwrap: &Path) -> Result<(), SandboxError> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = RESULT.get_or_init(|| {
        let mut args = namespace_args(false);
        args.extend(mount_args(
            &[Mount::ReadOnly {
                src: "/".into(),
                dst: "/".into(),
            }],
            None,
        ));
        args.extend(["--".into(), "true".into()]);
        let out = std::process::Command::new(bwrap)
            .args(&args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .map_err(|e| format!("could not run {}: {e}", bwrap.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    });
    result.clone().map_err(|reason| SandboxError::BackendUnavailable {
        backend: "bwrap",
        reason: format!("bubblewrap cannot create namespaces here: {reason}"),
        fix: "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu), or run without isolation with `--sandbox none`".into(),
    })
}
