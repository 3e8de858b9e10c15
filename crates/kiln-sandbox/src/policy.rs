//! What a sandbox lets its commands see and do.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::size::format_bytes;
use crate::SandboxError;

/// Which isolation mechanism runs commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// bubblewrap namespaces (default on Linux).
    #[default]
    Bwrap,
    /// An OCI container through podman, for environments that name an image
    /// ([`SandboxPolicy::image`]).
    Podman,
    /// No isolation at all; only when asked for explicitly.
    None,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Bwrap => "bwrap",
            Backend::Podman => "podman",
            Backend::None => "none",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = SandboxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bwrap" | "bubblewrap" => Ok(Backend::Bwrap),
            "podman" => Ok(Backend::Podman),
            "none" => Ok(Backend::None),
            other => Err(SandboxError::InvalidPolicy(format!(
                "unknown sandbox backend {other:?}; expected bwrap, podman or none"
            ))),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Resource limits for each command of a sandbox.
///
/// Memory, processes and CPU are enforced through cgroup v2 where the
/// controllers are delegated to kiln, cgroup v1 otherwise, and rlimits as the
/// last resort (see [`crate::Sandbox::describe`] for what was used).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Memory of all of a command's processes together.
    pub memory_bytes: Option<u64>,
    /// Processes (and threads) alive at once.
    pub max_processes: Option<u64>,
    /// CPU time per wall-clock second, in cores (1.5 = one and a half cores).
    pub cpu_cores: Option<f64>,
    /// Wall-clock limit on everything the sandbox runs, counted from
    /// [`crate::create`]; commands still running when it passes are killed.
    pub overall_deadline: Option<Duration>,
    /// Wall-clock limit for the setup script ([`crate::Sandbox::run_setup`]).
    pub setup_timeout: Duration,
    /// Size cap of the sandbox's private `$HOME` and `/tmp` together (a
    /// tmpfs, whose pages also count against the memory limit of the
    /// command that writes them); writing past it fails with ENOSPC. Needs a
    /// kiln that may mount (root, or `kiln serve` in its own namespaces);
    /// elsewhere they are plain directories, and `describe()` says so.
    pub home_and_tmp_bytes: Option<u64>,
    /// Output kept in memory from the start of a command.
    pub output_head_bytes: usize,
    /// Output kept in memory from the end of a command.
    pub output_tail_bytes: usize,
    /// Output between head and tail written to a spill file, at most this
    /// much; the rest is only counted.
    pub output_spill_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: Some(4 << 30),
            max_processes: Some(1024),
            cpu_cores: None,
            overall_deadline: None,
            setup_timeout: Duration::from_secs(30 * 60),
            home_and_tmp_bytes: Some(2 << 30),
            output_head_bytes: 64 << 10,
            output_tail_bytes: 64 << 10,
            output_spill_bytes: 256 << 20,
        }
    }
}

impl Limits {
    pub(crate) fn describe_memory(&self) -> Option<String> {
        self.memory_bytes
            .map(|b| format!("memory limit {}", format_bytes(b)))
    }

    pub(crate) fn describe_processes(&self) -> Option<String> {
        self.max_processes.map(|n| format!("process limit {n}"))
    }
}

/// What a sandbox lets its commands see and do.
#[derive(Debug, Clone)]
pub struct SandboxPolicy {
    pub backend: Backend,
    /// The workspace (repository checkout). Mounted at the same path inside.
    pub workspace: PathBuf,
    /// Read-only workspace (Ask mode).
    pub read_only: bool,
    /// Network access (setup phase, or an environment that enables it).
    pub network: bool,
    /// Variables for every command, on top of the allow-listed base environment.
    pub env: BTreeMap<String, String>,
    /// Extra host paths visible read-only at the same path (toolchains kept
    /// outside `PATH`, shared caches).
    pub extra_read_only: Vec<PathBuf>,
    /// Extra host paths visible read-write at the same path.
    pub extra_writable: Vec<PathBuf>,
    /// Expose the directories on kiln's own `PATH` read-only (and the
    /// toolchain roots they belong to, such as `~/.rustup` or `~/.pyenv`), so
    /// toolchains installed in a home directory keep working.
    pub expose_path_dirs: bool,
    pub limits: Limits,
    /// OCI image for [`Backend::Podman`].
    pub image: Option<String>,
    /// Directories under `$HOME` (relative paths such as `.cargo/registry`
    /// or `.npm`) that the setup phase fills and the agent phase keeps.
    /// Setup runs with its own `$HOME` and `/tmp`; everything else it left
    /// there (`~/.git-credentials`, `~/.npmrc`, `/tmp/token`) is deleted
    /// when it ends. Empty by default.
    pub setup_caches: Vec<PathBuf>,
    /// Where the sandbox keeps its private home, `/tmp` and spilled output;
    /// a fresh temporary directory when `None`. Deleted on teardown either way.
    pub state_dir: Option<PathBuf>,
}

impl SandboxPolicy {
    /// The default agent-phase policy for a workspace: bubblewrap, workspace
    /// writable, no network, default limits.
    pub fn for_workspace(workspace: impl Into<PathBuf>) -> Self {
        SandboxPolicy {
            backend: Backend::Bwrap,
            workspace: workspace.into(),
            read_only: false,
            network: false,
            env: BTreeMap::new(),
            extra_read_only: Vec::new(),
            extra_writable: Vec::new(),
            expose_path_dirs: true,
            limits: Limits::default(),
            image: None,
            setup_caches: Vec::new(),
            state_dir: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), SandboxError> {
        if !self.workspace.is_absolute() {
            return Err(SandboxError::InvalidPolicy(format!(
                "workspace {} is not an absolute path",
                self.workspace.display()
            )));
        }
        if !self.workspace.is_dir() {
            return Err(SandboxError::InvalidPolicy(format!(
                "workspace {} is not a directory; create it or pass an existing one",
                self.workspace.display()
            )));
        }
        for path in self.extra_read_only.iter().chain(&self.extra_writable) {
            if !path.is_absolute() || !path.exists() {
                return Err(SandboxError::InvalidPolicy(format!(
                    "extra sandbox path {} must be an existing absolute path",
                    path.display()
                )));
            }
        }
        for cache in &self.setup_caches {
            let plain = cache
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain || cache.as_os_str().is_empty() {
                return Err(SandboxError::InvalidPolicy(format!(
                    "setup cache {} must be a path relative to $HOME without `..`, such as .cargo/registry",
                    cache.display()
                )));
            }
        }
        if self.limits.memory_bytes == Some(0)
            || self.limits.max_processes == Some(0)
            || self.limits.home_and_tmp_bytes == Some(0)
        {
            return Err(SandboxError::InvalidPolicy(
                "memory, process and home/tmp size limits must be above zero (use None for no limit)".into(),
            ));
        }
        if let Some(cores) = self.limits.cpu_cores {
            if !(cores > 0.0 && cores.is_finite()) {
                return Err(SandboxError::InvalidPolicy(format!(
                    "cpu limit {cores} must be a positive number of cores"
                )));
            }
        }
        if self.backend == Backend::Podman && self.image.is_none() {
            return Err(SandboxError::InvalidPolicy(
                "the podman backend needs an image (SandboxPolicy::image; `--image` on the command line)".into(),
            ));
        }
        Ok(())
    }
}
