//! Copy-on-write mounts for checkouts: an overlay whose lower layer is a
//! clean, shared checkout of the base commit and whose upper layer holds
//! only what the attempt changed, so a checkout of a 100k-file repository
//! costs a mount instead of 100k file writes.
//!
//! Mounting needs `CAP_SYS_ADMIN` in the mount namespace's owning user
//! namespace. [`enable`] gives the whole process a private mount namespace
//! (and, for a non-root user, a user namespace that maps the user to
//! themselves) before any thread starts. Every later thread and child
//! process — git, the sandbox, kiln's own patch writes — then sees the
//! mounted checkouts, and the mounts vanish with the process, so a killed
//! kiln leaves none behind.

use std::ffi::CString;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Why overlay checkouts are off in this process (set once by [`enable`]).
static SUPPORT: OnceLock<Result<Privilege, String>> = OnceLock::new();

/// How this process got the right to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Privilege {
    /// Root in the initial user namespace: a private mount namespace is enough.
    Root,
    /// A user namespace of our own, where overlay needs `userxattr`.
    UserNamespace,
}

/// Give this process a private mount namespace so it can mount overlay
/// checkouts. Must run before any thread starts (a multi-threaded process
/// cannot enter a user namespace, and a mount namespace entered by one thread
/// is not shared with the others). Returns why it could not, in which case
/// checkouts are full git worktrees. Calling it again returns the first answer.
pub fn enable() -> Result<(), String> {
    SUPPORT
        .get_or_init(enter_private_namespace)
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

/// `None` when overlay checkouts can be mounted; otherwise why not.
pub fn unavailable_reason() -> Option<String> {
    match SUPPORT.get() {
        Some(Ok(_)) => None,
        Some(Err(reason)) => Some(reason.clone()),
        None => Some("copy-on-write checkouts were not enabled at start-up".into()),
    }
}

/// Whether an overlay with its upper layer in `dir` can be mounted now:
/// [`enable`] must have succeeded. For `kiln doctor`, which asks before any
/// checkout needs it.
pub fn probe(dir: &Path) -> Result<(), String> {
    check_upper_dir(dir)
}

fn enter_private_namespace() -> Result<Privilege, String> {
    if std::env::var_os("KILN_OVERLAY").is_some_and(|v| v == "0" || v == "off") {
        return Err("KILN_OVERLAY=off".into());
    }
    let threads = thread_count();
    if threads != Some(1) {
        return Err(format!(
            "the process already runs {} threads; copy-on-write checkouts must be enabled first",
            threads.map_or_else(|| "several".to_string(), |n| n.to_string())
        ));
    }
    let privilege = if nix::unistd::geteuid().is_root() {
        unshare(CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("cannot create a mount namespace: {e}"))?;
        Privilege::Root
    } else {
        let uid = nix::unistd::geteuid();
        let gid = nix::unistd::getegid();
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).map_err(|e| {
            format!(
                "cannot create a user namespace ({e}); unprivileged user namespaces \
                 may be disabled (sysctl kernel.unprivileged_userns_clone or an AppArmor policy)"
            )
        })?;
        // Map the user to themselves, so files keep their owner and git's
        // ownership checks still pass.
        write_proc("/proc/self/setgroups", "deny")?;
        write_proc("/proc/self/uid_map", &format!("{uid} {uid} 1"))?;
        write_proc("/proc/self/gid_map", &format!("{gid} {gid} 1"))?;
        Privilege::UserNamespace
    };
    // Mounts made here must not leak to the host; the host's still reach us.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make the mount namespace private: {e}"))?;
    Ok(privilege)
}

fn write_proc(path: &str, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("cannot write {path}: {e}"))
}

fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Whether overlays can be mounted with their upper layer in `dir` (some
/// filesystems, overlayfs itself among them, cannot hold one). Tried once
/// per filesystem and remembered, so that a checkout does not build a base
/// checkout only to find that it cannot mount over it.
pub(crate) fn check_upper_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    static CHECKED: Mutex<Vec<(u64, Result<(), String>)>> = Mutex::new(Vec::new());
    let device = std::fs::metadata(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .dev();
    let mut checked = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, answer)) = checked.iter().find(|(d, _)| *d == device) {
        return answer.clone();
    }
    let answer = try_mount_in(dir);
    checked.push((device, answer.clone()));
    answer
}

fn try_mount_in(dir: &Path) -> Result<(), String> {
    let probe = dir.join(format!(".kiln-overlay-probe-{}", std::process::id()));
    let parts = ["lower", "upper", "work", "merged"].map(|part| probe.join(part));
    let result = (|| {
        for part in &parts {
            std::fs::create_dir_all(part)
                .map_err(|e| format!("cannot create {}: {e}", part.display()))?;
        }
        mount_overlay(&parts[0], &parts[1], &parts[2], &parts[3]).map_err(|e| {
            format!(
                "{e} (the filesystem of {} cannot hold an overlay's upper layer)",
                dir.display()
            )
        })?;
        unmount(&parts[3])
    })();
    let _ = std::fs::remove_dir_all(&probe);
    result
}

/// Mount `lower` (read-only) under `upper` at `target`.
pub(crate) fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), String> {
    let privilege = match SUPPORT.get() {
        Some(Ok(privilege)) => *privilege,
        _ => return Err(unavailable_reason().unwrap_or_default()),
    };
    for path in [lower, upper, work] {
        // Overlay's option string uses `,` and `:` as separators.
        let text = path.to_string_lossy();
        if text.contains([',', ':']) || text.contains('\\') {
            return Err(format!(
                "{} contains `,`, `:` or `\\`, which overlay mount options cannot carry",
                path.display()
            ));
        }
    }
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    if privilege == Privilege::UserNamespace {
        options.push_str(",userxattr");
    }
    let options = CString::new(options).map_err(|_| "a path contains a NUL byte".to_string())?;
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_c_str()),
    )
    .map_err(|e| format!("cannot mount an overlay at {}: {e}", target.display()))
}

/// Detach the overlay at `target`; a target that is not mounted is fine.
pub(crate) fn unmount(target: &Path) -> Result<(), String> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!("cannot unmount {}: {e}", target.display())),
    }
}
