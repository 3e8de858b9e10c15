//! An attempt's commit applied in the user's own clone (`kiln task apply`,
//! `kiln apply LOG`).
//!
//! The change is computed as a tree first and written second: the preflight
//! merges the attempt onto the user's `HEAD` in git's object store only
//! (`git merge-tree --write-tree`, the same merge `git cherry-pick` does),
//! and compares what that would change with the user's uncommitted and
//! untracked files. Nothing in the index, the working tree or the refs
//! changes unless every file is clear; the apply then moves the index and
//! the working tree from `HEAD` to that tree with `git read-tree -m -u`,
//! which refuses (before writing anything) to lose a local change and
//! never writes into `.git`. The change ends up staged, as
//! `git cherry-pick --no-commit` leaves it: `git diff --cached` shows it,
//! `git commit` records it.
//!
//! The user's hooks do not run: kiln's git runs none (see `git_command`),
//! and nothing here commits; they run when the user commits. The user's
//! global git configuration is not read either, so a global filter (such
//! as git-lfs installed with `git lfs install`) does not apply to the files
//! kiln writes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::git::{failed, git_command, output_of, run, run_capped, GitError, Repo};

/// Why an attempt's commit cannot be applied, or a branch not created.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{what} {value:?} is not a full commit id (40 or 64 hex digits)")]
    NotACommitId { what: &'static str, value: String },
    #[error("{what} {sha} is not in the repository at {}: {fix}", repo.display())]
    MissingCommit {
        what: &'static str,
        sha: String,
        repo: PathBuf,
        fix: String,
    },
    #[error("your checkout has no commit yet (HEAD is unborn): commit something first, or create a branch instead (--branch)")]
    UnbornHead,
    #[error(
        "{} file(s) conflict with the attempt's change, and nothing was changed:\n{}",
        .0.len(),
        ConflictList(.0)
    )]
    Conflicts(Vec<Conflict>),
    #[error("branch {name} already exists (at {at}): name another with --branch NAME, or delete it first (git branch -D {name})")]
    BranchExists { name: String, at: String },
    #[error(
        "{name:?} is not a valid branch name: pick one git accepts (see git check-ref-format)"
    )]
    BadBranchName { name: String },
    #[error("the attempt's commits take more than the {cap} bytes kiln hands out as a bundle: read the change with `kiln task diff` instead")]
    BundleTooLarge { cap: usize },
}

/// A file that stops the apply, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Relative to the repository's top-level directory.
    pub path: String,
    pub kind: ConflictKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictKind {
    /// The attempt and the commits since its base changed it incompatibly
    /// (git's own message, such as `CONFLICT (content): Merge conflict in a.txt`).
    Merge(String),
    /// It has uncommitted changes (staged or not) and the attempt changes
    /// it (`changed_by_attempt` is the attempt's path when it differs: a
    /// file inside a directory the attempt replaces, or the other way round).
    Uncommitted { changed_by_attempt: Option<String> },
    /// An untracked file where the attempt writes.
    Untracked { changed_by_attempt: Option<String> },
    /// An ignored file, or one git does not track, where the attempt writes.
    InTheWay,
    /// The attempt writes a path git must never check out (inside `.git`).
    Unsafe,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let also = |other: &Option<String>| match other {
            Some(other) => format!(" (the attempt changes {other})"),
            None => String::new(),
        };
        match &self.kind {
            ConflictKind::Merge(message) => write!(f, "{}: {message}", self.path),
            ConflictKind::Uncommitted { changed_by_attempt } => write!(
                f,
                "{}: you have uncommitted changes here that the attempt also changes{}: commit or stash them",
                self.path,
                also(changed_by_attempt)
            ),
            ConflictKind::Untracked { changed_by_attempt } => write!(
                f,
                "{}: an untracked file of yours is where the attempt writes{}: move it away, or commit it",
                self.path,
                also(changed_by_attempt)
            ),
            ConflictKind::InTheWay => write!(
                f,
                "{}: a file git does not track (an ignored one?) is where the attempt writes: move it away",
                self.path
            ),
            ConflictKind::Unsafe => write!(
                f,
                "{}: the attempt writes inside .git, which git never checks out: the attempt is refused",
                self.path
            ),
        }
    }
}

struct ConflictList<'a>(&'a [Conflict]);

impl fmt::Display for ConflictList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, conflict) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {conflict}")?;
        }
        Ok(())
    }
}

/// What applying an attempt's commit onto the checkout's `HEAD` would do.
#[derive(Debug, Clone)]
pub struct Preflight {
    pub head: String,
    pub base: String,
    pub commit: String,
    /// `HEAD` is not the attempt's base: the change is merged onto it (3-way).
    pub base_moved: bool,
    /// The files the apply changes in the checkout (none: it is there already).
    pub files: Vec<String>,
    /// Every file that stops the apply; empty when it can go ahead.
    pub conflicts: Vec<Conflict>,
    /// The tree `HEAD` has with the attempt's change.
    tree: String,
}

impl Preflight {
    pub fn is_clean(&self) -> bool {
        self.conflicts.is_empty()
    }
}

/// Whether `value` is a full object id (SHA-1 or SHA-256), not a revision
/// expression that git would evaluate.
pub fn is_commit_id(value: &str) -> bool {
    matches!(value.len(), 40 | 64) && value.bytes().all(|b| b.is_ascii_hexdigit())
}

fn commit_id(what: &'static str, value: &str) -> Result<String, ApplyError> {
    if is_commit_id(value) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(ApplyError::NotACommitId {
            what,
            value: value.to_string(),
        })
    }
}

/// Whether the repository has `sha` as a commit.
pub fn has_commit(repo: &Repo, sha: &str) -> Result<bool, GitError> {
    let mut command = git_command(repo.git_dir(), None);
    command.args([
        "cat-file",
        "-e",
        "--end-of-options",
        &format!("{sha}^{{commit}}"),
    ]);
    Ok(output_of(command)?.status.success())
}

/// The work-tree command on the user's checkout.
/// `commit` (the attempt's) must be in `repo`'s object store.
fn require_attempt_commit(repo: &Repo, commit: &str) -> Result<(), ApplyError> {
    if has_commit(repo, commit)? {
        return Ok(());
    }
    Err(ApplyError::MissingCommit {
        what: "the attempt's commit",
        sha: commit.to_string(),
        repo: repo.root().to_path_buf(),
        fix: "run kiln in the repository the attempt was made from".into(),
    })
}

fn on_checkout(repo: &Repo) -> std::process::Command {
    git_command(repo.git_dir(), Some(repo.root()))
}

/// Names every file that stops `commit` (made on `base`) from applying onto
/// the checkout's `HEAD`, and what the apply would change, without
/// touching the index, the working tree or any ref (the merged tree is
/// written to the object store only).
pub fn preflight(repo: &Repo, base: &str, commit: &str) -> Result<Preflight, ApplyError> {
    let base = commit_id("the attempt's base", base)?;
    let commit = commit_id("the attempt's commit", commit)?;
    if !has_commit(repo, &base)? {
        return Err(ApplyError::MissingCommit {
            what: "the attempt's base commit",
            sha: base,
            repo: repo.root().to_path_buf(),
            fix: "your clone is behind the server's: fetch it (`git fetch origin`, or `git fetch origin <sha>`) and try again".into(),
        });
    }
    require_attempt_commit(repo, &commit)?;
    let head = repo.resolve("HEAD").map_err(|_| ApplyError::UnbornHead)?;
    let base_moved = head != base;
    let (tree, mut conflicts) = if base_moved {
        merge_onto(repo, &base, &head, &commit)?
    } else {
        let tree = repo.git(["rev-parse", "--verify", &format!("{commit}^{{tree}}")])?;
        (tree.trim().to_string(), Vec::new())
    };
    let files = names_z(&repo.git([
        "diff-tree",
        "-r",
        "--name-only",
        "-z",
        "--no-renames",
        &head,
        &tree,
    ])?);
    conflicts.extend(local_conflicts(repo, &files)?);
    conflicts.extend(
        files
            .iter()
            .filter(|path| !is_safe_path(path))
            .map(|path| Conflict {
                path: path.clone(),
                kind: ConflictKind::Unsafe,
            }),
    );
    conflicts.sort_by(|a, b| a.path.cmp(&b.path));
    conflicts.dedup_by(|a, b| a.path == b.path);
    Ok(Preflight {
        head,
        base,
        commit,
        base_moved,
        files,
        conflicts,
        tree,
    })
}

/// What applying did.
#[derive(Debug, Clone)]
pub struct Applied {
    pub preflight: Preflight,
}

impl Applied {
    /// The checkout already had the attempt's change: nothing was written.
    pub fn was_already_there(&self) -> bool {
        self.preflight.files.is_empty()
    }
}

/// Applies `commit` (made on `base`) to the checkout: its change staged in
/// the index and written to the working tree, merged 3-way when `HEAD`
/// moved on from `base`. Refuses with every conflicting file named, having
/// changed nothing, unless the [`preflight`] is clean.
pub fn apply(repo: &Repo, base: &str, commit: &str) -> Result<Applied, ApplyError> {
    let preflight = preflight(repo, base, commit)?;
    if !preflight.is_clean() {
        return Err(ApplyError::Conflicts(preflight.conflicts));
    }
    if !preflight.files.is_empty() {
        // read-tree trusts the index's stat data: a file touched but not
        // changed would otherwise count as a local change. The exit status
        // only says that some file differs, which the preflight allowed.
        let mut refresh = on_checkout(repo);
        refresh.args(["update-index", "-q", "--refresh"]);
        output_of(refresh)?;
        // A two-tree merge, as `git checkout` does: it checks every path
        // before it writes one, and keeps local changes to other files.
        run(
            on_checkout(repo),
            repo.root(),
            ["read-tree", "-m", "-u", &preflight.head, &preflight.tree],
        )?;
    }
    Ok(Applied { preflight })
}

/// How [`create_branch`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchOutcome {
    Created,
    /// The branch already pointed at the commit.
    AlreadyThere,
}

/// Creates branch `name` at `commit`, never moving an existing branch
/// (one that already points at `commit` is left as it is).
pub fn create_branch(repo: &Repo, name: &str, commit: &str) -> Result<BranchOutcome, ApplyError> {
    let commit = commit_id("the attempt's commit", commit)?;
    require_attempt_commit(repo, &commit)?;
    let refname = format!("refs/heads/{name}");
    let mut check = git_command(repo.git_dir(), None);
    check.args(["check-ref-format", &refname]);
    if name.starts_with('-') || !output_of(check)?.status.success() {
        return Err(ApplyError::BadBranchName {
            name: name.to_string(),
        });
    }
    if let Ok(at) = repo.resolve(&refname) {
        if at == commit {
            return Ok(BranchOutcome::AlreadyThere);
        }
        return Err(ApplyError::BranchExists {
            name: name.to_string(),
            at,
        });
    }
    // The empty old value makes git refuse if the branch appeared meanwhile.
    repo.git([
        "update-ref",
        "-m",
        "kiln: an attempt's commit",
        &refname,
        &commit,
        "",
    ])?;
    Ok(BranchOutcome::Created)
}

/// Brings the objects of the git bundle at `bundle` into the repository
/// without changing any ref (not even `FETCH_HEAD`). Returns the bundle's
/// refs as (commit, name). The bundle's prerequisites (the attempt's base)
/// must be in the repository.
pub fn unbundle(repo: &Repo, bundle: &Path) -> Result<Vec<(String, String)>, GitError> {
    let listed = run(
        git_command(repo.git_dir(), None),
        repo.git_dir(),
        [
            std::ffi::OsStr::new("bundle"),
            std::ffi::OsStr::new("unbundle"),
            bundle.as_os_str(),
        ],
    )?;
    Ok(listed
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(sha, name)| (sha.to_string(), name.to_string()))
        .collect())
}

/// A git bundle of `branch` (a branch name, without `refs/heads/`) with
/// everything reachable from `base` left out: the attempt's own commits,
/// for a clone that has the base. At most `cap` bytes.
pub fn bundle(repo: &Repo, branch: &str, base: &str, cap: usize) -> Result<Vec<u8>, ApplyError> {
    let (command, args) = bundle_parts(repo, branch, base)?;
    let (bytes, cut) = run_capped(command, repo.git_dir(), args, cap)?;
    if cut {
        return Err(ApplyError::BundleTooLarge { cap });
    }
    Ok(bytes)
}

/// The git command that writes [`bundle`]'s bundle to its stdout, for a
/// caller that streams it (stdin, stdout and stderr are the caller's to set).
pub fn bundle_command(
    repo: &Repo,
    branch: &str,
    base: &str,
) -> Result<std::process::Command, ApplyError> {
    let (mut command, args) = bundle_parts(repo, branch, base)?;
    command.args(args);
    Ok(command)
}

fn bundle_parts(
    repo: &Repo,
    branch: &str,
    base: &str,
) -> Result<(std::process::Command, [String; 6]), ApplyError> {
    let base = commit_id("the attempt's base", base)?;
    let refname = format!("refs/heads/{branch}");
    let mut check = git_command(repo.git_dir(), None);
    check.args(["check-ref-format", &refname]);
    if branch.starts_with('-') || !output_of(check)?.status.success() {
        return Err(ApplyError::BadBranchName {
            name: branch.to_string(),
        });
    }
    let args = [
        "bundle".to_string(),
        "create".to_string(),
        "-q".to_string(),
        "-".to_string(),
        refname,
        format!("^{base}"),
    ];
    Ok((git_command(repo.git_dir(), None), args))
}

/// `git merge-tree` of `commit` onto `head` with `base` as the merge base:
/// the merged tree, and the files that conflict with git's reasons.
fn merge_onto(
    repo: &Repo,
    base: &str,
    head: &str,
    commit: &str,
) -> Result<(String, Vec<Conflict>), ApplyError> {
    let merge_base = format!("--merge-base={base}");
    let args = [
        "merge-tree",
        "--write-tree",
        "-z",
        "--name-only",
        merge_base.as_str(),
        head,
        commit,
    ];
    let mut command = git_command(repo.git_dir(), None);
    command.args(args);
    let output = output_of(command)?;
    let clean = match output.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => return Err(failed(repo.git_dir(), args, &output.stderr).into()),
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let parsed = parse_merge_tree(&text, clean);
    Ok((parsed.tree, parsed.conflicts))
}

struct MergeTree {
    tree: String,
    conflicts: Vec<Conflict>,
}

/// `git merge-tree --write-tree -z --name-only` output: the tree, NUL; when
/// it did not merge cleanly the conflicted paths, each NUL-ended, and an
/// empty field; then the messages, each `<count> NUL <path>… NUL <type>
/// NUL <message> NUL`.
fn parse_merge_tree(text: &str, clean: bool) -> MergeTree {
    let mut fields = text.split('\0');
    let tree = fields.next().unwrap_or_default().trim().to_string();
    let mut conflicted = Vec::new();
    if !clean {
        for field in fields.by_ref() {
            if field.is_empty() {
                break;
            }
            conflicted.push(field.to_string());
        }
    }
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    while let Some(count) = fields.next() {
        let Ok(count) = count.parse::<usize>() else {
            break;
        };
        let paths: Vec<&str> = fields.by_ref().take(count).collect();
        let kind = fields.next().unwrap_or_default();
        let message = fields.next().unwrap_or_default().trim();
        if kind.starts_with("CONFLICT") {
            for path in paths {
                reasons
                    .entry(path.to_string())
                    .or_insert_with(|| message.to_string());
            }
        }
    }
    conflicted.dedup();
    let conflicts = conflicted
        .into_iter()
        .map(|path| {
            let reason = reasons
                .get(&path)
                .cloned()
                .unwrap_or_else(|| "changed both by the attempt and since its base".into());
            Conflict {
                path,
                kind: ConflictKind::Merge(reason),
            }
        })
        .collect();
    MergeTree { tree, conflicts }
}

fn names_z(text: &str) -> Vec<String> {
    text.split('\0')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// The user's own changes in the way of `files` (what the apply writes):
/// uncommitted changes and untracked files at those paths (or inside a
/// directory the attempt turns into a file, and the other way round), and
/// files git does not track where the attempt writes.
fn local_conflicts(repo: &Repo, files: &[String]) -> Result<Vec<Conflict>, GitError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    // `--no-optional-locks`: status would otherwise refresh (write) the index.
    let mut status = on_checkout(repo);
    status.arg("--no-optional-locks");
    let status = run(
        status,
        repo.root(),
        [
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
            "--no-renames",
        ],
    )?;
    let changed: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    let mut conflicts = Vec::new();
    let mut reported = BTreeSet::new();
    for entry in status.split('\0').filter(|e| e.len() > 3) {
        let (code, path) = entry.split_at(3);
        let untracked = code.starts_with("??");
        let Some(hit) = overlapping(path, &changed) else {
            continue;
        };
        let changed_by_attempt = (hit != path).then(|| hit.to_string());
        reported.insert(path.to_string());
        conflicts.push(Conflict {
            path: path.to_string(),
            kind: if untracked {
                ConflictKind::Untracked { changed_by_attempt }
            } else {
                ConflictKind::Uncommitted { changed_by_attempt }
            },
        });
    }
    // Status leaves out ignored files, which the apply must not overwrite
    // either: anything on disk at (or a file above) a path the attempt
    // writes that the index does not know.
    let tracked: BTreeSet<String> = names_z(&repo.git(["ls-files", "-z", "--cached"])?)
        .into_iter()
        .collect();
    for file in files {
        let mut prefix = String::new();
        for (i, part) in file.split('/').enumerate() {
            if i > 0 {
                prefix.push('/');
            }
            prefix.push_str(part);
            let is_last = prefix.len() == file.len();
            if tracked.contains(&prefix) || reported.contains(&prefix) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(repo.root().join(&prefix)) else {
                break;
            };
            if is_last || !meta.is_dir() {
                reported.insert(prefix.clone());
                conflicts.push(Conflict {
                    path: prefix.clone(),
                    kind: ConflictKind::InTheWay,
                });
                break;
            }
        }
    }
    Ok(conflicts)
}

/// The path of `changed` that `path` is, lies inside, or contains.
fn overlapping<'a>(path: &str, changed: &BTreeSet<&'a str>) -> Option<&'a str> {
    if let Some(&same) = changed.get(path) {
        return Some(same);
    }
    let inside = |outer: &str, inner: &str| {
        inner.len() > outer.len()
            && inner.starts_with(outer)
            && inner.as_bytes()[outer.len()] == b'/'
    };
    changed
        .iter()
        .copied()
        .find(|c| inside(c, path) || inside(path.trim_end_matches('/'), c))
}

/// git refuses to check out such paths; the preflight names them first.
fn is_safe_path(path: &str) -> bool {
    path.split('/').all(|part| {
        !part.is_empty() && part != "." && part != ".." && !part.eq_ignore_ascii_case(".git")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_tree_output_names_each_conflict_with_gits_reason() {
        let text = "62a9\0a.txt\0c.txt\0\0\
                    1\0a.txt\0Auto-merging\0Auto-merging a.txt\n\0\
                    1\0a.txt\0CONFLICT (contents)\0CONFLICT (content): Merge conflict in a.txt\n\0\
                    1\0c.txt\0CONFLICT (modify/delete)\0CONFLICT (modify/delete): c.txt deleted in x\n\0";
        let parsed = parse_merge_tree(text, false);
        assert_eq!(parsed.tree, "62a9");
        assert_eq!(
            parsed.conflicts,
            vec![
                Conflict {
                    path: "a.txt".into(),
                    kind: ConflictKind::Merge("CONFLICT (content): Merge conflict in a.txt".into()),
                },
                Conflict {
                    path: "c.txt".into(),
                    kind: ConflictKind::Merge(
                        "CONFLICT (modify/delete): c.txt deleted in x".into()
                    ),
                },
            ]
        );
    }

    #[test]
    fn a_clean_merge_has_a_tree_and_no_conflicts() {
        let parsed = parse_merge_tree("abcd\0", true);
        assert_eq!(parsed.tree, "abcd");
        assert!(parsed.conflicts.is_empty());
    }

    #[test]
    fn overlap_covers_a_directory_replaced_by_a_file_and_back() {
        let changed: BTreeSet<&str> = ["d", "e/f.txt", "x.txt"].into_iter().collect();
        assert_eq!(overlapping("x.txt", &changed), Some("x.txt"));
        assert_eq!(overlapping("d/inner.txt", &changed), Some("d"));
        assert_eq!(overlapping("e", &changed), Some("e/f.txt"));
        assert_eq!(overlapping("e/", &changed), Some("e/f.txt"));
        assert_eq!(overlapping("dd", &changed), None);
        assert_eq!(overlapping("x.txt2", &changed), None);
    }

    #[test]
    fn only_full_hex_ids_are_commit_ids() {
        assert!(is_commit_id(&"a".repeat(40)));
        assert!(is_commit_id(&"0".repeat(64)));
        assert!(!is_commit_id("HEAD"));
        assert!(!is_commit_id(&"g".repeat(40)));
        assert!(!is_commit_id(&format!("{}^", "a".repeat(39))));
    }

    #[test]
    fn paths_into_git_are_unsafe() {
        assert!(is_safe_path("src/main.rs"));
        assert!(!is_safe_path(".git/hooks/post-checkout"));
        assert!(!is_safe_path("sub/.GIT/config"));
        assert!(!is_safe_path("a/../b"));
    }
}
