//! Resource limits through cgroups (v2, else v1), with rlimits as the last resort.
//!
//! Each command gets its own cgroup, created under kiln's own cgroup so that
//! a delegated subtree (systemd `Delegate=yes`, a container's namespace) is
//! enough. The child joins it between fork and exec, so not one instruction
//! of the command runs outside its limits; afterwards the cgroup tells which
//! limit was hit (`oom_kill`, `pids.events`) and lets kiln kill every process
//! in it, including ones that left the process group.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::policy::Limits;
use crate::size::format_bytes;
use crate::SandboxError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

/// Where the per-command cgroups for one controller are created.
#[derive(Debug, Clone)]
struct ControllerHome {
    version: Version,
    parent: PathBuf,
}

/// How each limit of a policy is enforced on this machine, decided once per sandbox.
#[derive(Debug, Clone, Default)]
pub(crate) struct LimitPlan {
    memory: Option<ControllerHome>,
    pids: Option<ControllerHome>,
    cpu: Option<ControllerHome>,
    limits: Limits,
}

/// Where kiln can create cgroups for each controller on this machine.
#[derive(Debug, Default)]
struct ControllerHomes {
    memory: Option<ControllerHome>,
    pids: Option<ControllerHome>,
    cpu: Option<ControllerHome>,
}

impl ControllerHomes {
    fn probe() -> ControllerHomes {
        let (Ok(own), Ok(mountinfo)) = (
            fs::read_to_string("/proc/self/cgroup"),
            fs::read_to_string("/proc/self/mountinfo"),
        ) else {
            return ControllerHomes::default();
        };
        let mounts = parse_cgroup_mounts(&mountinfo);
        let v2_home = find_v2_home(&own, &mounts);
        let home = |controller: Controller| {
            v2_home
                .as_ref()
                .filter(|dir| v2_offers(dir, controller))
                .map(|dir| ControllerHome {
                    version: Version::V2,
                    parent: dir.clone(),
                })
                .or_else(|| find_v1_home(&own, &mounts, controller))
        };
        ControllerHomes {
            memory: home(Controller::Memory),
            pids: home(Controller::Pids),
            cpu: home(Controller::Cpu),
        }
    }
}

/// Where this machine lets kiln create cgroups, probed once per process.
fn homes() -> &'static ControllerHomes {
    // The hierarchy does not change while kiln runs, and probing it
    // (mkdir + rmdir of a memory cgroup) costs milliseconds.
    static HOMES: OnceLock<ControllerHomes> = OnceLock::new();
    HOMES.get_or_init(ControllerHomes::probe)
}

/// For each limit kiln can set (memory, processes, cpu), the cgroup version
/// that would enforce it here, or `None` when kiln would fall back to an
/// rlimit (or, for cpu, to nothing).
pub(crate) fn controller_versions() -> [(&'static str, Option<&'static str>); 3] {
    let homes = homes();
    let version = |home: &Option<ControllerHome>| {
        home.as_ref().map(|home| match home.version {
            Version::V2 => "cgroup v2",
            Version::V1 => "cgroup v1",
        })
    };
    [
        (Controller::Memory.name(), version(&homes.memory)),
        (Controller::Pids.name(), version(&homes.pids)),
        (Controller::Cpu.name(), version(&homes.cpu)),
    ]
}

/// An rlimit applied in the child before exec.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rlimit {
    pub resource: libc::__rlimit_resource_t,
    pub value: u64,
}

impl LimitPlan {
    /// Find, for each limit the policy sets, a cgroup hierarchy kiln can
    /// create cgroups in; limits with none fall back to rlimits.
    pub fn discover(limits: &Limits) -> LimitPlan {
        // The hierarchy does not change while kiln runs, and probing it
        // (mkdir + rmdir of a memory cgroup) costs milliseconds: once per process.
        let homes = homes();
        LimitPlan {
            memory: homes
                .memory
                .clone()
                .filter(|_| limits.memory_bytes.is_some()),
            pids: homes
                .pids
                .clone()
                .filter(|_| limits.max_processes.is_some()),
            cpu: homes.cpu.clone().filter(|_| limits.cpu_cores.is_some()),
            limits: limits.clone(),
        }
    }

    /// For people: "memory 4 GiB (cgroup v1), processes 1024 (cgroup v1), cpu unlimited".
    pub fn describe(&self) -> String {
        let how = |home: &Option<ControllerHome>, fallback: &str| match home {
            Some(h) if h.version == Version::V2 => "cgroup v2".to_string(),
            Some(_) => "cgroup v1".to_string(),
            None => fallback.to_string(),
        };
        let memory = match self.limits.memory_bytes {
            Some(b) => format!(
                "memory {} ({})",
                format_bytes(b),
                how(&self.memory, "rlimit")
            ),
            None => "memory unlimited".into(),
        };
        let pids = match self.limits.max_processes {
            Some(n) => format!("processes {n} ({})", how(&self.pids, "rlimit, per user")),
            None => "processes unlimited".into(),
        };
        let cpu = match self.limits.cpu_cores {
            Some(c) => format!(
                "cpu {c} cores ({})",
                how(&self.cpu, "not enforced: no cgroup")
            ),
            None => "cpu unlimited".into(),
        };
        format!("{memory}, {pids}, {cpu}")
    }

    /// rlimits for the limits no cgroup enforces, plus no core dumps.
    pub fn rlimits(&self) -> Vec<Rlimit> {
        let mut out = vec![Rlimit {
            resource: libc::RLIMIT_CORE,
            value: 0,
        }];
        if let (Some(bytes), None) = (self.limits.memory_bytes, &self.memory) {
            // RLIMIT_DATA rather than RLIMIT_AS: runtimes that reserve large
            // address ranges up front (Go, the JVM, V8) would fail under AS.
            out.push(Rlimit {
                resource: libc::RLIMIT_DATA,
                value: bytes,
            });
        }
        if let (Some(n), None) = (self.limits.max_processes, &self.pids) {
            out.push(Rlimit {
                resource: libc::RLIMIT_NPROC,
                value: n,
            });
        }
        out
    }

    /// Create the cgroups for one command, limits written, ready to join.
    pub fn create_for_command(&self) -> Result<CommandCgroups, SandboxError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| {
            for home in [&self.memory, &self.pids, &self.cpu].into_iter().flatten() {
                remove_stale_cgroups(&home.parent);
            }
        });
        // The pid alone is not unique: a kiln process that died (kill -9)
        // leaves its cgroups behind, and a later process may get its pid.
        let name = format!(
            "kiln-{}-{:x}-{}",
            std::process::id(),
            process_nonce(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut groups = CommandCgroups {
            dirs: Vec::new(),
            limits: self.limits.clone(),
        };
        let homes = [
            (Controller::Memory, &self.memory),
            (Controller::Pids, &self.pids),
            (Controller::Cpu, &self.cpu),
        ];
        for (controller, home) in homes {
            let Some(home) = home else { continue };
            let dir = home.parent.join(&name);
            // v2 keeps all controllers in one directory.
            if !groups.dirs.iter().any(|g| g.dir == dir) {
                fs::create_dir(&dir)
                    .map_err(|e| SandboxError::io("creating the command's cgroup", &dir, e))?;
                groups.dirs.push(CgroupDir {
                    dir: dir.clone(),
                    version: home.version,
                    controllers: Vec::new(),
                });
            }
            if let Some(group) = groups.dirs.iter_mut().find(|g| g.dir == dir) {
                group.controllers.push(controller);
            }
            self.write_limit(controller, home.version, &dir)?;
        }
        Ok(groups)
    }

    fn write_limit(
        &self,
        controller: Controller,
        version: Version,
        dir: &Path,
    ) -> Result<(), SandboxError> {
        let write = |file: &str, value: String| {
            let path = dir.join(file);
            fs::write(&path, value)
                .map_err(|e| SandboxError::io("writing a cgroup limit", &path, e))
        };
        match (controller, version) {
            (Controller::Memory, Version::V1) => {
                if let Some(bytes) = self.limits.memory_bytes {
                    write("memory.limit_in_bytes", bytes.to_string())?;
                    // Without swap accounting this file is absent; the limit
                    // above then already covers everything.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        let _ = fs::write(memsw, bytes.to_string());
                    }
                }
            }
            (Controller::Memory, Version::V2) => {
                if let Some(bytes) = self.limits.memory_bytes {
                    write("memory.max", bytes.to_string())?;
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        let _ = fs::write(swap, "0");
                    }
                }
            }
            (Controller::Pids, _) => {
                if let Some(n) = self.limits.max_processes {
                    write("pids.max", n.to_string())?;
                }
            }
            (Controller::Cpu, Version::V1) => {
                if let Some(cores) = self.limits.cpu_cores {
                    let period = 100_000u64;
                    write("cpu.cfs_period_us", period.to_string())?;
                    write(
                        "cpu.cfs_quota_us",
                        ((cores * period as f64) as u64).max(1000).to_string(),
                    )?;
                }
            }
            (Controller::Cpu, Version::V2) => {
                if let Some(cores) = self.limits.cpu_cores {
                    let period = 100_000u64;
                    let quota = ((cores * period as f64) as u64).max(1000);
                    write("cpu.max", format!("{quota} {period}"))?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct CgroupDir {
    dir: PathBuf,
    version: Version,
    controllers: Vec<Controller>,
}

/// The cgroups of one running command; removed when dropped.
#[derive(Debug)]
pub(crate) struct CommandCgroups {
    dirs: Vec<CgroupDir>,
    limits: Limits,
}

impl CommandCgroups {
    /// `cgroup.procs` of each cgroup, for the child to write itself into
    /// before exec (allocated here because the child may not allocate).
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|g| CString::new(g.dir.join("cgroup.procs").as_os_str().as_bytes()).ok())
            .collect()
    }

    fn pids(&self) -> Vec<i32> {
        let Some(first) = self.dirs.first() else {
            return Vec::new();
        };
        fs::read_to_string(first.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pids().is_empty()
    }

    /// SIGKILL every process in the cgroups. Repeats while new ones appear
    /// (a fork bomb racing the kill), for a bounded number of rounds.
    pub fn kill_all(&self) {
        for group in &self.dirs {
            let kill_file = group.dir.join("cgroup.kill");
            if group.version == Version::V2 && fs::write(&kill_file, "1").is_ok() {
                return;
            }
        }
        for _ in 0..100 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: plain kill(2) on a pid read from our own cgroup.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }

    /// Wait (bounded) until the cgroups hold no process, killing stragglers.
    pub async fn wait_empty(&self, limit: Duration) {
        let start = Instant::now();
        while !self.is_empty() && start.elapsed() < limit {
            self.kill_all();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn read_counter(&self, controller: Controller, v1_file: &str, v2_file: &str, key: &str) -> u64 {
        let Some(group) = self
            .dirs
            .iter()
            .find(|g| g.controllers.contains(&controller))
        else {
            return 0;
        };
        let file = match group.version {
            Version::V1 => v1_file,
            Version::V2 => v2_file,
        };
        let text = fs::read_to_string(group.dir.join(file)).unwrap_or_default();
        text.lines()
            .filter_map(|line| line.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Limits hit so far, described for people.
    pub fn limits_reached(&self) -> LimitHits {
        let oom = self.read_counter(
            Controller::Memory,
            "memory.oom_control",
            "memory.events",
            "oom_kill",
        );
        let pids = self.read_counter(Controller::Pids, "pids.events", "pids.events", "max");
        LimitHits {
            memory: (oom > 0).then(|| self.limits.describe_memory()).flatten(),
            processes: (pids > 0)
                .then(|| self.limits.describe_processes())
                .flatten(),
        }
    }

    fn remove_dirs(&self) -> bool {
        let mut all = true;
        for group in &self.dirs {
            if group.dir.exists() && fs::remove_dir(&group.dir).is_err() {
                all = false;
            }
        }
        all
    }
}

/// Which limits a command ran into.
#[derive(Debug, Default)]
pub(crate) struct LimitHits {
    pub memory: Option<String>,
    pub processes: Option<String>,
}

impl Drop for CommandCgroups {
    fn drop(&mut self) {
        self.kill_all();
        if self.remove_dirs() {
            return;
        }
        // Killed processes take a moment to leave the cgroup; remove it
        // from a short-lived thread instead of blocking the caller.
        let dirs: Vec<PathBuf> = self.dirs.iter().map(|g| g.dir.clone()).collect();
        let _ = std::thread::Builder::new()
            .name("kiln-cgroup-cleanup".into())
            .spawn(move || {
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(10) {
                    if dirs
                        .iter()
                        .all(|d| !d.exists() || fs::remove_dir(d).is_ok())
                    {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
    }
}

/// A cgroup filesystem from `/proc/self/mountinfo`.
#[derive(Debug)]
struct CgroupMount {
    version: Version,
    /// Path inside the hierarchy that is mounted (usually `/`).
    root: String,
    mount_point: PathBuf,
    /// v1 controllers bound to this hierarchy.
    controllers: Vec<String>,
}

fn parse_cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let version = match right[0] {
            "cgroup2" => Version::V2,
            "cgroup" => Version::V1,
            _ => continue,
        };
        mounts.push(CgroupMount {
            version,
            root: unescape_mountinfo(left[3]),
            mount_point: PathBuf::from(unescape_mountinfo(left[4])),
            controllers: right[2].split(',').map(str::to_string).collect(),
        });
    }
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Join a cgroup path from /proc/self/cgroup onto the place its hierarchy is mounted.
fn locate(mount: &CgroupMount, own_path: &str) -> Option<PathBuf> {
    let relative = if mount.root == "/" {
        own_path.trim_start_matches('/')
    } else {
        own_path
            .strip_prefix(mount.root.as_str())?
            .trim_start_matches('/')
    };
    Some(mount.mount_point.join(relative))
}

fn find_v2_home(own: &str, mounts: &[CgroupMount]) -> Option<PathBuf> {
    let own_path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mount = mounts.iter().find(|m| m.version == Version::V2)?;
    let dir = locate(mount, own_path)?;
    probe_writable(&dir).then_some(dir)
}

/// Whether a child of `dir` gets `controller`: it must be enabled in the
/// parent's `cgroup.subtree_control`, which v2 refuses while the parent
/// holds processes of its own ("no internal processes"). In a delegated
/// cgroup (systemd `Delegate=yes`) where kiln is the only process, kiln
/// moves itself into a `kiln-supervisor` leaf first, as container engines do.
fn v2_offers(dir: &Path, controller: Controller) -> bool {
    let enabled = |dir: &Path| {
        fs::read_to_string(dir.join("cgroup.subtree_control"))
            .map(|s| s.split_whitespace().any(|c| c == controller.name()))
            .unwrap_or(false)
    };
    if enabled(dir) {
        return true;
    }
    let available = fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().any(|c| c == controller.name()))
        .unwrap_or(false);
    if !available {
        return false;
    }
    let enable = || {
        fs::write(
            dir.join("cgroup.subtree_control"),
            format!("+{}", controller.name()),
        )
        .is_ok()
    };
    if enable() {
        return enabled(dir);
    }
    move_self_into_leaf(dir) && enable() && enabled(dir)
}

/// Move kiln out of `dir` into `dir/kiln-supervisor`, when kiln is the only
/// process there (moving anyone else's processes is not kiln's business).
fn move_self_into_leaf(dir: &Path) -> bool {
    let own_pid = std::process::id().to_string();
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let only_kiln = procs.lines().all(|line| line.trim() == own_pid);
    if !only_kiln || procs.trim().is_empty() {
        return false;
    }
    let leaf = dir.join("kiln-supervisor");
    if let Err(e) = fs::create_dir(&leaf) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return false;
        }
    }
    fs::write(leaf.join("cgroup.procs"), &own_pid).is_ok()
}

fn find_v1_home(
    own: &str,
    mounts: &[CgroupMount],
    controller: Controller,
) -> Option<ControllerHome> {
    let mount = mounts.iter().find(|m| {
        m.version == Version::V1 && m.controllers.iter().any(|c| c == controller.name())
    })?;
    let own_path = own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        controllers
            .split(',')
            .any(|c| c == controller.name())
            .then_some(path)
    })?;
    let dir = locate(mount, own_path)?;
    probe_writable(&dir).then_some(ControllerHome {
        version: Version::V1,
        parent: dir,
    })
}

/// Can kiln create (and remove) a child cgroup here?
fn probe_writable(dir: &Path) -> bool {
    let probe = dir.join(format!("kiln-probe-{}", std::process::id()));
    match fs::create_dir(&probe) {
        Ok(()) => {
            let _ = fs::remove_dir(&probe);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => fs::remove_dir(&probe).is_ok(),
        Err(_) => false,
    }
}

/// A value fixed for this process's lifetime and different for the next
/// process that reuses its pid: the time it was first asked for.
fn process_nonce() -> u64 {
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NONCE.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    })
}

/// Remove `kiln-PID-…` cgroups under `parent` whose kiln process is gone and
/// that hold no process: what a killed kiln left behind. Best effort; a
/// cgroup still in use is left alone (rmdir refuses it anyway).
fn remove_stale_cgroups(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("kiln-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let owner_alive = Path::new(&format!("/proc/{pid}")).exists();
        let empty = fs::read_to_string(entry.path().join("cgroup.procs"))
            .map(|procs| procs.trim().is_empty())
            .unwrap_or(false);
        if !owner_alive && empty {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /tmp/with\\040space rw - tmpfs tmpfs rw";

    #[test]
    fn mountinfo_yields_v1_and_v2_hierarchies() {
        let mounts = parse_cgroup_mounts(HYBRID);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[1].controllers, vec!["rw", "memory"]);
        assert_eq!(mounts[3].version, Version::V2);
        assert_eq!(
            mounts[3].mount_point,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn own_cgroup_path_is_joined_under_the_mount() {
        let mounts = parse_cgroup_mounts(HYBRID);
        let dir = locate(&mounts[1], "/process_api/abc").unwrap();
        assert_eq!(dir, PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"));
        let nested = CgroupMount {
            version: Version::V2,
            root: "/outer".into(),
            mount_point: "/sys/fs/cgroup".into(),
            controllers: vec![],
        };
        assert_eq!(
            locate(&nested, "/outer/inner").unwrap(),
            PathBuf::from("/sys/fs/cgroup/inner")
        );
        assert!(locate(&nested, "/elsewhere").is_none());
    }
}
