//! Repository metadata inside a writable workspace that the agent's commands
//! may read but never write.
//!
//! Whatever the agent writes into a repository's `.git` runs later on the
//! host: `core.fsmonitor`, `core.pager`, a hook, or a filter in `.git/config`
//! is executed by the user's next `git status` or `git commit`, outside any
//! sandbox. The same holds for a checked-out submodule's `.git`, because
//! `git status` in the superproject runs `git status` inside every populated
//! submodule. And `.kiln/` holds the configuration of kiln's next run in the
//! project. So in the agent phase these are mounted read-only over the
//! writable workspace (as Codex does for `.git` and `.codex`); `git status`,
//! `git diff` and `git log` still work, `git commit` and `git config` do not.
//!
//! Which submodules exist is read from the git index (entries of mode
//! 160000, the gitlinks), not by walking the tree: a workspace of 100 000
//! files starts its first command in milliseconds, and `git status` recurses
//! only into gitlinks, never into other repositories that merely lie inside
//! the tree. The index is parsed here rather than asking `git ls-files`: for
//! 100 000 entries (a 9 MB index) reading and parsing took 8-17 ms in a
//! release build on a loaded two-core machine, the parse itself 2-5 ms,
//! against 30-60 ms for `git ls-files --stage`. Formats this parser does not
//! read (a split index, SHA-256 object names) fall back to git.

use std::path::{Path, PathBuf};

use crate::filesystem::Mount;

/// The mounts that make the workspace's repository metadata read-only,
/// applied after the workspace's own mount so that they win over it.
///
/// - `.git`, a directory or a worktree's `gitdir:` file: bound read-only;
/// - `.kiln/`: bound read-only when it exists; when it does not, an empty
///   read-only directory takes its place, so that the agent cannot create it
///   either (its mount point stays behind as an empty directory);
/// - each populated submodule's `.git`: bound read-only.
///
/// Symbolic links are passed over: a read-only bind would land on the link's
/// target, and kiln reads neither through them.
pub(crate) fn repository_metadata_mounts(workspace: &Path) -> Vec<Mount> {
    let mut mounts = Vec::new();
    let git = workspace.join(".git");
    if is_real(&git) {
        mounts.push(read_only(&git));
        for gitlink in gitlinks(workspace, &git) {
            let nested = workspace.join(&gitlink).join(".git");
            if parents_are_real_dirs(workspace, &gitlink) && is_real(&nested) {
                mounts.push(read_only(&nested));
            }
        }
    }
    let kiln = workspace.join(".kiln");
    match std::fs::symlink_metadata(&kiln) {
        Ok(meta) if meta.is_dir() => mounts.push(read_only(&kiln)),
        // Its mount point is created in the workspace; where kiln's user
        // cannot create it, the agent (the same user) cannot either.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && is_writable(workspace) => {
            mounts.push(Mount::HideDir(kiln));
        }
        _ => {}
    }
    mounts
}

fn read_only(path: &Path) -> Mount {
    Mount::ReadOnly {
        src: path.to_path_buf(),
        dst: path.to_path_buf(),
    }
}

fn is_writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// A directory or regular file, not a symbolic link.
fn is_real(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir() || meta.is_file())
}

/// Every directory from the workspace down to `relative` is a directory,
/// not a link that would move the mount elsewhere.
fn parents_are_real_dirs(workspace: &Path, relative: &Path) -> bool {
    let mut dir = workspace.to_path_buf();
    relative.components().all(|part| {
        dir.push(part);
        matches!(part, std::path::Component::Normal(_))
            && std::fs::symlink_metadata(&dir).is_ok_and(|meta| meta.is_dir())
    })
}

/// The index of the repository whose `.git` (directory or `gitdir:` file)
/// is `git`.
fn index_file(git: &Path) -> Option<PathBuf> {
    let meta = std::fs::symlink_metadata(git).ok()?;
    if meta.is_dir() {
        return Some(git.join("index"));
    }
    let text = std::fs::read_to_string(git).ok()?;
    let target = text.lines().next()?.strip_prefix("gitdir:")?.trim();
    let parent = git.parent()?;
    Some(parent.join(target).join("index"))
}

/// Paths (relative to the workspace) of the gitlinks in the index.
fn gitlinks(workspace: &Path, git: &Path) -> Vec<PathBuf> {
    let Some(index) = index_file(git) else {
        return Vec::new();
    };
    if !std::fs::metadata(&index).is_ok_and(|meta| meta.is_file()) {
        return Vec::new();
    }
    let Ok(bytes) = std::fs::read(&index) else {
        return Vec::new();
    };
    match parse_gitlinks(&bytes) {
        Some(paths) => paths,
        None => gitlinks_from_git(workspace),
    }
}

/// `git ls-files --stage` for index formats [`parse_gitlinks`] leaves to git.
/// `core.fsmonitor` is turned off: reading the index must not run a command
/// the repository's configuration names.
fn gitlinks_from_git(workspace: &Path) -> Vec<PathBuf> {
    let output = std::process::Command::new("git")
        .args(["-c", "core.fsmonitor=false", "ls-files", "--stage", "-z"])
        .current_dir(workspace)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(output) = output else {
        return Vec::new();
    };
    output
        .stdout
        .split(|b| *b == 0)
        .filter_map(|line| {
            let line = std::str::from_utf8(line).ok()?;
            let (meta, path) = line.split_once('\t')?;
            meta.starts_with("160000 ").then(|| PathBuf::from(path))
        })
        .collect()
}

const GITLINK_MODE: u32 = 0o160000;
/// ctime, mtime, dev, ino, mode, uid, gid, size: ten 32-bit fields.
const STAT_BYTES: usize = 40;
const SHA1_BYTES: usize = 20;
const EXTENDED_FLAG: u16 = 0x4000;
const NAME_LENGTH_MASK: u16 = 0x0fff;

/// The gitlinks of a git index (versions 2, 3 and 4 with SHA-1 names), or
/// `None` when the index is in a form this does not read: a split index
/// (its `link` extension), another object format, or anything malformed.
pub(crate) fn parse_gitlinks(bytes: &[u8]) -> Option<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;

    let be32 = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let be16 = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    };
    if bytes.get(..4)? != b"DIRC" {
        return None;
    }
    let version = be32(4)?;
    if !(2..=4).contains(&version) {
        return None;
    }
    let entries = be32(8)?;
    let mut at = 12;
    let mut previous: Vec<u8> = Vec::new();
    let mut found = Vec::new();
    for _ in 0..entries {
        let entry = at;
        let mode = be32(entry + 24)?;
        let flags = be16(entry + STAT_BYTES + SHA1_BYTES)?;
        let mut name_at = entry + STAT_BYTES + SHA1_BYTES + 2;
        if flags & EXTENDED_FLAG != 0 {
            if version < 3 {
                return None;
            }
            name_at += 2;
        }
        let length = usize::from(flags & NAME_LENGTH_MASK);
        // No allocation per entry and no scan of names whose length the
        // flags give: only gitlinks' names are copied.
        let name: &[u8] = if version == 4 {
            let (strip, after) = varint(bytes, name_at)?;
            let end = after + bytes.get(after..)?.iter().position(|b| *b == 0)?;
            let keep = previous.len().checked_sub(usize::try_from(strip).ok()?)?;
            previous.truncate(keep);
            previous.extend_from_slice(&bytes[after..end]);
            at = end + 1;
            &previous
        } else {
            let end = if length < usize::from(NAME_LENGTH_MASK) {
                (*bytes.get(name_at + length)? == 0).then_some(name_at + length)?
            } else {
                name_at + bytes.get(name_at..)?.iter().position(|b| *b == 0)?
            };
            // Entries are padded with 1 to 8 NULs to a multiple of 8 bytes.
            at = entry + ((end - entry + 8) & !7);
            &bytes[name_at..end]
        };
        if length < usize::from(NAME_LENGTH_MASK) && length != name.len() {
            return None;
        }
        if !matches!(mode >> 12, 0o10 | 0o12 | 0o16 | 0o04) {
            return None;
        }
        if mode == GITLINK_MODE {
            found.push(PathBuf::from(std::ffi::OsStr::from_bytes(name)));
        }
    }
    // Extensions follow the entries, each a signature and a length; the
    // trailing checksum ends the file.
    while at + 8 + SHA1_BYTES <= bytes.len() {
        let signature = bytes.get(at..at + 4)?;
        if signature == b"link" {
            return None;
        }
        let length = usize::try_from(be32(at + 4)?).ok()?;
        at = at.checked_add(8 + length)?;
    }
    (at + SHA1_BYTES == bytes.len()).then_some(found)
}

/// git's offset encoding of index version 4 (`decode_varint`).
fn varint(bytes: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut byte = *bytes.get(at)?;
    at += 1;
    let mut value = u64::from(byte & 0x7f);
    while byte & 0x80 != 0 {
        byte = *bytes.get(at)?;
        at += 1;
        value = value
            .checked_add(1)?
            .checked_mul(128)?
            .checked_add(u64::from(byte & 0x7f))?;
    }
    Some((value, at))
}

#[cfg(test)]
#[path = "protected_tests.rs"]
mod tests;
