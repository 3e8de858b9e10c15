//! A sandbox's private files on the host: its `$HOME`, its `/tmp`, the
//! setup phase's own `$HOME` and `/tmp`, spilled output and the generated
//! account files. Only kiln's user can enter it (0700); deleted with the
//! sandbox.
//!
//! `$HOME` and `/tmp` (and setup's pair) live in one directory, `private`,
//! which kiln mounts as a size-limited tmpfs where it may mount
//! ([`crate::Limits::home_and_tmp_bytes`]): a command that fills them gets
//! ENOSPC instead of filling the host's disk.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::SandboxError;

const PRIVATE_MODE: u32 = 0o700;

#[derive(Debug)]
pub(crate) struct StateDir {
    dir: tempfile::TempDir,
    next_spill: AtomicU64,
    /// The size cap of the private tmpfs, when kiln could mount one.
    private_cap: Option<u64>,
}

impl StateDir {
    /// A fresh directory inside `parent` (the system temp dir when `None`),
    /// with `$HOME` and `/tmp` on a tmpfs of `private_bytes` when given and
    /// this process may mount.
    pub fn create(parent: Option<&Path>, private_bytes: Option<u64>) -> Result<Self, SandboxError> {
        let parent = parent
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent)
            .map_err(|e| SandboxError::io("creating the sandbox state directory", &parent, e))?;
        sweep_once(&parent);
        let dir = tempfile::Builder::new()
            .prefix("kiln-sandbox-")
            .permissions(std::fs::Permissions::from_mode(PRIVATE_MODE))
            .tempdir_in(&parent)
            .map_err(|e| SandboxError::io("creating the sandbox state directory", &parent, e))?;
        let mut state = StateDir {
            dir,
            next_spill: AtomicU64::new(0),
            private_cap: None,
        };
        for sub in ["private", "output"] {
            state.create_private_dir(&state.dir.path().join(sub))?;
        }
        if let Some(owner) = Owner::current() {
            state.write_file(OWNER_FILE, &owner.to_line())?;
        }
        if let Some(bytes) = private_bytes {
            if mount_private_tmpfs(&state.private(), bytes) {
                state.private_cap = Some(bytes);
            }
        }
        for sub in ["home", "tmp"] {
            state.create_private_dir(&state.private().join(sub))?;
        }
        Ok(state)
    }

    fn create_private_dir(&self, path: &Path) -> Result<(), SandboxError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(PRIVATE_MODE)
            .create(path)
            .map_err(|e| SandboxError::io("creating the sandbox state directory", path, e))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn private(&self) -> PathBuf {
        self.dir.path().join("private")
    }

    /// "at most 2 GiB together", or why there is no cap, for `describe()`.
    pub fn describe_private_cap(&self) -> String {
        match self.private_cap {
            Some(bytes) => format!("at most {} together", crate::format_bytes(bytes)),
            None => "size not limited".into(),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.private().join("home")
    }

    pub fn tmp(&self) -> PathBuf {
        self.private().join("tmp")
    }

    /// The setup phase's own `$HOME`, discarded when setup ends.
    pub fn setup_home(&self) -> PathBuf {
        self.private().join("setup-home")
    }

    /// The setup phase's own `/tmp`, discarded when setup ends.
    pub fn setup_tmp(&self) -> PathBuf {
        self.private().join("setup-tmp")
    }

    /// Fresh, empty setup `$HOME` and `/tmp` for one run of the setup
    /// script; dropping the guard deletes them, however setup ended.
    pub fn begin_setup(&self) -> Result<SetupScratch, SandboxError> {
        let scratch = SetupScratch {
            home: self.setup_home(),
            tmp: self.setup_tmp(),
        };
        scratch.remove();
        self.create_private_dir(&scratch.home)?;
        self.create_private_dir(&scratch.tmp)?;
        Ok(scratch)
    }

    /// Move the declared caches (paths relative to `$HOME`) from setup's
    /// `$HOME` into the agent phase's, replacing what was there.
    ///
    /// Setup's files are the setup script's, which a hostile repository may
    /// have written: no path component on either side may be a symlink, so
    /// that kiln's own rename never follows one out of the state directory.
    pub fn carry_over(&self, caches: &[PathBuf]) -> Result<(), SandboxError> {
        let (from, to) = (self.setup_home(), self.home());
        for cache in caches {
            let Some(source) = real_path_under(&from, cache) else {
                continue;
            };
            let Some(parent) = cache.parent() else {
                continue;
            };
            let destination_parent = to.join(parent);
            make_real_dirs(&to, parent)?;
            if real_path_under(&to, parent).is_none() {
                continue;
            }
            let destination = destination_parent.join(cache.file_name().unwrap_or_default());
            match std::fs::symlink_metadata(&destination) {
                Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&destination),
                Ok(_) => std::fs::remove_file(&destination),
                Err(_) => Ok(()),
            }
            .map_err(|e| SandboxError::io("replacing a setup cache", &destination, e))?;
            std::fs::rename(&source, &destination)
                .map_err(|e| SandboxError::io("keeping a setup cache", &source, e))?;
        }
        Ok(())
    }

    /// A new, unused path for one command's spilled output.
    pub fn next_spill_path(&self) -> PathBuf {
        let n = self.next_spill.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join("output").join(format!("exec-{n}.log"))
    }

    /// Write a generated file (e.g. `passwd`) and return its path.
    pub fn write_file(&self, name: &str, contents: &str) -> Result<PathBuf, SandboxError> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents)
            .map_err(|e| SandboxError::io("writing a sandbox file", &path, e))?;
        Ok(path)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if self.private_cap.is_some() {
            unmount_private(self.dir.path());
        }
        remove_state_dir(self.dir.path());
    }
}

/// Lazily: a command still holding a file open must not keep the tmpfs
/// (and its memory) alive past the sandbox.
fn unmount_private(state_dir: &Path) {
    let _ = nix::mount::umount2(&state_dir.join("private"), nix::mount::MntFlags::MNT_DETACH);
}

/// A sandboxed command may leave directories its own user cannot enter
/// (chmod 000); when kiln is not root a plain removal then fails half-way.
/// Open them up and try once more.
fn remove_state_dir(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_err() {
        open_up(dir);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Names the process a state directory belongs to, so that a later kiln can
/// tell the directories of a killed one (which could not delete its own).
const OWNER_FILE: &str = "owner";

/// A process, by pid and start time (a pid alone may have been reused), and
/// the pid namespace both mean something in.
#[derive(Debug, PartialEq, Eq)]
struct Owner {
    pid: u32,
    start_ticks: u64,
    pid_namespace: String,
}

impl Owner {
    fn current() -> Option<Owner> {
        let pid = std::process::id();
        Some(Owner {
            pid,
            start_ticks: start_ticks(pid)?,
            pid_namespace: pid_namespace()?,
        })
    }

    fn to_line(&self) -> String {
        format!("{} {} {}\n", self.pid, self.start_ticks, self.pid_namespace)
    }

    fn parse(line: &str) -> Option<Owner> {
        let mut fields = line.split_whitespace();
        let pid = fields.next()?.parse().ok()?;
        let start_ticks = fields.next()?.parse().ok()?;
        let pid_namespace = fields.next()?.to_string();
        Some(Owner {
            pid,
            start_ticks,
            pid_namespace,
        })
    }

    /// Known to have ended: its pid names another process (or none) in
    /// the pid namespace it was written in, which is this one. The owner of
    /// a directory written in another pid namespace (a container sharing
    /// the directory) cannot be checked and counts as alive.
    fn gone(&self) -> bool {
        pid_namespace().is_some_and(|ns| ns == self.pid_namespace)
            && start_ticks(self.pid) != Some(self.start_ticks)
    }
}

/// This process' pid namespace, as `pid:[INODE]`.
fn pid_namespace() -> Option<String> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(link.to_string_lossy().into_owned())
}

/// When the process started, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it do not.
    let after_name = stat.rsplit_once(") ")?.1;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Delete, once per process and parent directory, the state directories
/// that processes which no longer run left in `parent` (kiln killed before
/// it could delete them). Only directories of this user that name their
/// owner are considered: a directory being created right now has no owner
/// file yet and is left alone.
fn sweep_once(parent: &Path) {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static SWEPT: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let first_time = SWEPT
        .lock()
        .map(|mut swept| swept.insert(parent.to_path_buf()))
        .unwrap_or(false);
    if first_time {
        sweep(parent);
    }
}

fn sweep(parent: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("kiln-sandbox-")
        {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != me {
            continue;
        }
        let owner = std::fs::read_to_string(path.join(OWNER_FILE))
            .ok()
            .and_then(|line| Owner::parse(&line));
        if owner.is_some_and(|owner| owner.gone()) {
            tracing::info!(dir = %path.display(), "deleting the state directory of a sandbox whose kiln is gone");
            unmount_private(&path);
            remove_state_dir(&path);
        }
    }
}

/// Setup's private `$HOME` and `/tmp` for one run; deleted on drop.
pub(crate) struct SetupScratch {
    pub home: PathBuf,
    pub tmp: PathBuf,
}

impl SetupScratch {
    fn remove(&self) {
        for dir in [&self.home, &self.tmp] {
            if std::fs::remove_dir_all(dir).is_err() && dir.exists() {
                open_up(dir);
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

impl Drop for SetupScratch {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Mount a tmpfs of `bytes` at `dir`; false when this process may not
/// mount (an ordinary user outside a user namespace of its own).
fn mount_private_tmpfs(dir: &Path, bytes: u64) -> bool {
    use nix::mount::{mount, MsFlags};
    let options = format!("size={bytes},mode=700");
    mount(
        Some("kiln-sandbox"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .is_ok()
}

/// `base/relative` if every component of `relative` is a plain name and
/// every prefix of it under `base` exists and is not a symlink.
fn real_path_under(base: &Path, relative: &Path) -> Option<PathBuf> {
    let mut path = base.to_path_buf();
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return None;
        };
        path.push(name);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if meta.file_type().is_symlink() {
            return None;
        }
    }
    Some(path)
}

/// Create the directories of `relative` under `base`, refusing symlinks.
fn make_real_dirs(base: &Path, relative: &Path) -> Result<(), SandboxError> {
    let mut path = base.to_path_buf();
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return Ok(());
        };
        path.push(name);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(_) => std::fs::create_dir(&path)
                .map_err(|e| SandboxError::io("keeping a setup cache", &path, e))?,
        }
    }
    Ok(())
}

/// Give kiln's user full access to every directory under `dir` (never
/// following symlinks), so that it can delete them.
fn open_up(dir: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_MODE));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            open_up(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_directory_is_private_and_goes_with_the_sandbox() {
        let parent = tempfile::tempdir().unwrap();
        let state = StateDir::create(Some(parent.path()), None).unwrap();
        let path = state.path().to_path_buf();
        for dir in [path.clone(), state.home(), state.tmp(), path.join("output")] {
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
        }
        // A directory its owner cannot enter does not keep it alive.
        let locked = state.tmp().join("locked");
        std::fs::create_dir_all(locked.join("inner")).unwrap();
        std::fs::write(locked.join("inner/file"), "x").unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        drop(state);
        assert!(!path.exists());
    }

    #[test]
    fn state_directories_of_processes_that_are_gone_are_swept() {
        let parent = tempfile::tempdir().unwrap();
        let me = Owner::current().unwrap();
        let make = |name: &str, owner: Option<&Owner>| {
            let dir = parent.path().join(name);
            std::fs::create_dir_all(dir.join("private/tmp")).unwrap();
            if let Some(owner) = owner {
                std::fs::write(dir.join(OWNER_FILE), owner.to_line()).unwrap();
            }
            dir
        };
        // Same pid as a live process, another start time: a reused pid.
        let gone = Owner {
            pid: me.pid,
            start_ticks: me.start_ticks + 1,
            pid_namespace: me.pid_namespace.clone(),
        };
        let elsewhere = Owner {
            pid_namespace: "pid:[1]".into(),
            ..Owner::parse(&gone.to_line()).unwrap()
        };
        let stale = make("kiln-sandbox-stale", Some(&gone));
        let live = make("kiln-sandbox-live", Some(&me));
        let unowned = make("kiln-sandbox-unowned", None);
        let other_namespace = make("kiln-sandbox-container", Some(&elsewhere));
        let other = make("not-kiln", Some(&gone));
        let state = StateDir::create(Some(parent.path()), None).unwrap();
        assert!(!stale.exists());
        for kept in [live, unowned, other_namespace, other] {
            assert!(kept.exists(), "{}", kept.display());
        }
        assert_eq!(
            std::fs::read_to_string(state.path().join(OWNER_FILE)).unwrap(),
            me.to_line()
        );
    }

    #[test]
    fn caches_carried_over_from_setup_never_follow_symlinks() {
        let parent = tempfile::tempdir().unwrap();
        let outside = parent.path().join("outside");
        std::fs::create_dir_all(outside.join("registry")).unwrap();
        std::fs::write(outside.join("registry/host-file"), "host").unwrap();
        let state = StateDir::create(Some(parent.path()), None).unwrap();
        let scratch = state.begin_setup().unwrap();
        std::fs::create_dir_all(scratch.home.join(".npm")).unwrap();
        std::fs::write(scratch.home.join(".npm/pkg"), "cached").unwrap();
        std::os::unix::fs::symlink(&outside, scratch.home.join(".cargo")).unwrap();
        state
            .carry_over(&[".npm".into(), ".cargo/registry".into()])
            .unwrap();
        drop(scratch);
        assert_eq!(
            std::fs::read_to_string(state.home().join(".npm/pkg")).unwrap(),
            "cached"
        );
        assert!(!state.home().join(".cargo/registry").exists());
        assert!(outside.join("registry/host-file").exists());
        assert!(!state.setup_home().exists());
    }
}
