//! The sandbox's own device nodes.
//!
//! bubblewrap's `--dev` binds the host's `/dev/null`, `/dev/zero`, … into
//! the sandbox. When kiln runs as root the sandbox's user is the host's
//! uid 0, the owner of those inodes, so a sandboxed `chmod 600 /dev/null`
//! would change the host's `/dev/null` for every process on the machine.
//! As root, kiln therefore makes private nodes with the same device numbers
//! in the sandbox's state directory and binds them over bubblewrap's: a
//! `chmod` or `chown` inside changes only the sandbox's copy.

use std::path::{Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::SandboxError;

/// The nodes bubblewrap's `--dev` provides, with their major and minor numbers.
pub(crate) const DEVICE_NODES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Make private device nodes in `dir` when kiln runs as the host's root.
///
/// Returns `None` when kiln is not the host's root: the sandbox's user then
/// maps to an unprivileged host uid that cannot change the host's nodes.
pub(crate) fn private_nodes(dir: &Path) -> Result<Option<PathBuf>, SandboxError> {
    if !is_host_root() {
        return Ok(None);
    }
    let fix_nodev = |path: &Path| {
        SandboxError::BackendUnavailable {
        backend: "bwrap",
        reason: format!(
            "the sandbox state directory {} is on a filesystem mounted nodev, where the sandbox's private /dev/null could not be opened",
            path.display()
        ),
        fix: "put the state directory (TMPDIR, or kiln's data directory) on a filesystem mounted without nodev".into(),
    }
    };
    let parent = dir.parent().unwrap_or(dir);
    if mounted_nodev(parent) {
        return Err(fix_nodev(parent));
    }
    std::fs::create_dir(dir)
        .map_err(|e| SandboxError::io("creating the sandbox's device directory", dir, e))?;
    for (name, major, minor) in DEVICE_NODES {
        let path = dir.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        )
        .map_err(|e| SandboxError::BackendUnavailable {
            backend: "bwrap",
            reason: format!(
                "kiln runs as root but could not create the sandbox's private device node {}: {e}",
                path.display()
            ),
            fix: "give kiln CAP_MKNOD (it has it as an ordinary root process), or run kiln as an ordinary user".into(),
        })?;
        // mknod applies the umask; the nodes must be usable by anyone.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &path,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        )
        .map_err(|e| {
            SandboxError::io(
                "setting the mode of the sandbox's private device node",
                &path,
                std::io::Error::from(e),
            )
        })?;
    }
    Ok(Some(dir.to_path_buf()))
}

/// True when this process is uid 0 of the host, not of a user namespace
/// (`kiln serve` run by an ordinary user is root of its own namespace).
pub(crate) fn is_host_root() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    // The initial user namespace maps all of 0..2^32-1 onto itself.
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            map.split_whitespace()
                .collect::<Vec<_>>()
                .starts_with(&["0", "0", "4294967295"])
        }
        Err(_) => true,
    }
}

fn mounted_nodev(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_NODEV))
        .unwrap_or(false)
}
