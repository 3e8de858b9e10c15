//! Per-repository mirrors and per-attempt checkouts.
//!
//! Each environment's repository is cloned once into `DATA/mirrors/<hash>`
//! (fetched again before each checkout); each attempt works in its own
//! checkout of that mirror at `DATA/checkouts/<task>/<n>`, on branch
//! `kiln/<task>/<n>`, so attempts share objects but never files. Checkouts
//! are copy-on-write over a clean checkout of the base commit cached in
//! `DATA/bases` (a full git worktree where the process cannot mount
//! overlays). The commit an attempt ends with stays on its branch in the
//! mirror; a copy-on-write checkout is parked when the attempt ends, and a
//! follow-up mounts it again with everything the attempt left (setup
//! products included).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_protocol::DiffStat;
use sha2::{Digest, Sha256};

use crate::{run_git_with_env, BaseCheckouts, Diff, GitEnv, GitError, Repo, Worktree};

/// How long a fetch serves later checkouts of the same mirror.
const FETCH_REUSE: Duration = Duration::from_secs(2);

/// Why an attempt could not get its checkout.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("cannot prepare {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("base ref {wanted:?} does not exist in {repo}: use a branch, tag or commit of that repository")]
    UnknownRef { wanted: String, repo: String },
    #[error("the checkout task stopped: {0}")]
    Join(String),
}

/// An attempt's checkout and the commit its diff is measured against.
pub struct Checkout {
    pub worktree: Worktree,
    /// The environment's base commit (a follow-up continues from the
    /// attempt's last commit, but its diff still covers the whole attempt).
    pub base_commit: String,
    /// The mirror's `.git` directory, which the worktree's git metadata lives in.
    pub git_dir: PathBuf,
    /// Why the checkout is a full worktree rather than copy-on-write.
    pub full_checkout_reason: Option<String>,
    /// The checkout as the setup script left it (a tree id), when setup ran
    /// in this checkout: what setup wrote is not the agent's change.
    pub setup_tree: Option<String>,
    /// kiln's record of `setup_tree`, beside the checkout, for a follow-up.
    setup_file: PathBuf,
}

/// The mirrors under one data directory, with one lock per mirror so that
/// fetches and worktree changes of one repository take turns.
pub struct Mirrors {
    root: PathBuf,
    bases: BaseCheckouts,
    /// Per mirror: its lock, holding when it was last fetched.
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl Mirrors {
    pub fn new(data_dir: &Path) -> Self {
        Mirrors {
            root: data_dir.to_path_buf(),
            bases: BaseCheckouts::new(data_dir.join("bases")),
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn checkout_dir(&self, task_id: &str, n: u32) -> PathBuf {
        self.root
            .join("checkouts")
            .join(task_id)
            .join(n.to_string())
    }

    /// The attempt's checkout at `DATA/checkouts/<task>/<n>` on branch
    /// `kiln/<task>/<n>`, from `source`'s mirror, starting as `start` says.
    pub async fn checkout(
        &self,
        source: Source<'_>,
        start: Start<'_>,
        task_id: &str,
        n: u32,
    ) -> Result<Checkout, CheckoutError> {
        let Source {
            url,
            owner,
            name,
            fetch,
        } = source;
        // One mirror per owner: the sandbox sees its mirror's git directory,
        // so a mirror shared by users would show each one the others' task
        // branches (prompts, diffs, setup products) and let a `base_ref`
        // start from them.
        let mirror = self.mirror_dir(owner, name);
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(mirror.clone()).or_default().clone()
        };
        let mut last_fetch = lock.lock().await;
        // Attempts created together share one fetch; a ref that is missing
        // from a recent fetch triggers a new one (see `Request::run`).
        let fresh = last_fetch.is_some_and(|at| at.elapsed() < FETCH_REUSE);
        let request = Request {
            repo: url.to_string(),
            start: start.owned(),
            branch: format!("kiln/{task_id}/{n}"),
            dest: self.checkout_dir(task_id, n),
            mirror,
            bases: self.bases.clone(),
            fresh,
            fetch,
        };
        let (result, fetched) = tokio::task::spawn_blocking(move || request.run())
            .await
            .map_err(|err| CheckoutError::Join(err.to_string()))?;
        if let Some(at) = fetched {
            *last_fetch = Some(at);
        }
        result
    }

    /// The mirror of `name` (a repository location, or any stable key) kept for `owner`.
    pub fn mirror_dir(&self, owner: &str, name: &str) -> PathBuf {
        self.root
            .join("mirrors")
            .join(owner_dir_name(owner))
            .join(mirror_name(name))
    }

    /// Fetch `source`'s mirror now (cloning it the first time) and resolve
    /// `base` in it (the remote's default branch when `None`): the mirror's
    /// directory and the base commit. For a server that lets another machine
    /// check out from its mirror.
    pub async fn prepare(
        &self,
        source: Source<'_>,
        base: Option<&str>,
    ) -> Result<(PathBuf, String), CheckoutError> {
        let Source {
            url,
            owner,
            name,
            fetch,
        } = source;
        let mirror = self.mirror_dir(owner, name);
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(mirror.clone()).or_default().clone()
        };
        let mut last_fetch = lock.lock().await;
        let request = Request {
            repo: url.to_string(),
            start: OwnedStart::Fresh {
                base: base.map(str::to_string),
            },
            branch: String::new(),
            dest: PathBuf::new(),
            mirror: mirror.clone(),
            bases: self.bases.clone(),
            fresh: false,
            fetch,
        };
        let result = tokio::task::spawn_blocking(move || {
            request.sync_mirror()?;
            request.resolve_base(&Repo::at(&request.mirror))
        })
        .await
        .map_err(|err| CheckoutError::Join(err.to_string()))?;
        *last_fetch = Some(Instant::now());
        result.map(|commit| (mirror, commit))
    }
}

/// Where an attempt's checkout starts.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// A fresh checkout of `base` (a branch, tag or commit; the remote's
    /// default branch when `None`). An earlier try's checkout is discarded.
    Fresh { base: Option<&'a str> },
    /// A follow-up on this machine: the parked checkout when there is one
    /// (setup products included), else the branch's last commit.
    Resume,
    /// A follow-up of an attempt that ran elsewhere: continue from `tip` (a
    /// ref or commit the fetch brought in), measuring the diff from `base_commit`.
    Continue { base_commit: &'a str, tip: &'a str },
}

impl Start<'_> {
    fn owned(self) -> OwnedStart {
        match self {
            Start::Fresh { base } => OwnedStart::Fresh {
                base: base.map(str::to_string),
            },
            Start::Resume => OwnedStart::Resume,
            Start::Continue { base_commit, tip } => OwnedStart::Continue {
                base_commit: base_commit.to_string(),
                tip: tip.to_string(),
            },
        }
    }
}

enum OwnedStart {
    Fresh { base: Option<String> },
    Resume,
    Continue { base_commit: String, tip: String },
}

struct Request {
    repo: String,
    start: OwnedStart,
    branch: String,
    dest: PathBuf,
    mirror: PathBuf,
    bases: BaseCheckouts,
    /// The mirror was fetched moments ago.
    fresh: bool,
    fetch: FetchRules,
}

/// Where an attempt's repository comes from: its location, whose mirror
/// holds it, and how that mirror may be fetched.
pub struct Source<'a> {
    /// What git fetches from (a URL or a path).
    pub url: &'a str,
    /// Whose mirror: one per owner, so that no one sees another's branches.
    pub owner: &'a str,
    /// Names the mirror within the owner's: the repository's location, or
    /// another key that stays the same while `url` changes.
    pub name: &'a str,
    pub fetch: FetchRules,
}

/// How a mirror's clone and fetch run, as the check of the environment's
/// repository location prescribes (see `repo_access::CheckedRepo`): only
/// the checked transport, no redirects, pinned addresses, and none of the
/// server's own credentials (an empty `HOME`, no ssh agent or keys).
#[derive(Debug, Clone, Default)]
pub struct FetchRules {
    /// `-c` options before `clone`/`fetch`.
    pub options: Vec<String>,
    pub env: GitEnv,
    /// What a fetch brings in; the remote's branches (as `origin/*`) and
    /// tags when empty.
    pub refspecs: Vec<String>,
}

/// An empty directory only kiln can read, as git's `HOME` for fetches.
pub fn create_private_dir(dir: &Path) -> Result<(), CheckoutError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CheckoutError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

impl Request {
    /// The checkout, and when the mirror was fetched if it was.
    fn run(self) -> (Result<Checkout, CheckoutError>, Option<Instant>) {
        let mut fetched = None;
        let result = self.checkout(&mut fetched);
        (result, fetched)
    }

    fn checkout(&self, fetched: &mut Option<Instant>) -> Result<Checkout, CheckoutError> {
        if !self.fresh {
            self.sync_mirror()?;
            *fetched = Some(Instant::now());
        }
        let repo = Repo::at(&self.mirror);
        let base_file = self.dest.with_extension("base");
        let previous = match &self.start {
            OwnedStart::Fresh { .. } => None,
            OwnedStart::Resume => {
                if let Some(checkout) = self.reattach(&base_file)? {
                    return Ok(checkout);
                }
                let base = std::fs::read_to_string(&base_file).ok();
                let head = repo.resolve(&self.branch).ok();
                base.zip(head)
            }
            OwnedStart::Continue { base_commit, tip } => {
                let head = match repo.resolve(tip) {
                    Err(_) if fetched.is_none() => {
                        self.sync_mirror()?;
                        *fetched = Some(Instant::now());
                        repo.resolve(tip)
                    }
                    other => other,
                }
                .map_err(|_| CheckoutError::UnknownRef {
                    wanted: tip.clone(),
                    repo: self.repo.clone(),
                })?;
                Some((base_commit.clone(), head))
            }
        };
        // A fresh checkout holds no setup products, whatever an earlier try's
        // record says.
        remove_if_present(&self.dest.with_extension("setup"))?;
        // A rerun starts from a fresh checkout: drop what an earlier try left
        // (every try writes its base file before it makes anything else).
        if base_file.exists() || self.dest.exists() {
            repo.discard_checkout(&self.dest)?;
            let _ = repo.git(["branch", "-D", "--end-of-options", &self.branch]);
        }
        if let Some(parent) = self.dest.parent() {
            std::fs::create_dir_all(parent).map_err(|source| CheckoutError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let (start, base_commit) = match previous {
            Some((base, head)) => (head, base.trim().to_string()),
            None => {
                let commit = match self.resolve_base(&repo) {
                    Err(_) if fetched.is_none() => {
                        self.sync_mirror()?;
                        *fetched = Some(Instant::now());
                        self.resolve_base(&repo)?
                    }
                    other => other?,
                };
                (commit.clone(), commit)
            }
        };
        // Written first: its presence makes a later try clean up this one.
        std::fs::write(&base_file, &base_commit).map_err(|source| CheckoutError::Io {
            path: base_file.clone(),
            source,
        })?;
        let (worktree, full_checkout_reason) =
            repo.add_checkout(&self.bases, &start, &self.branch, &self.dest)?;
        Ok(Checkout {
            worktree,
            base_commit,
            git_dir: self.mirror.join(".git"),
            full_checkout_reason,
            setup_tree: None,
            setup_file: self.dest.with_extension("setup"),
        })
    }

    /// The parked copy-on-write checkout of this attempt, mounted again.
    fn reattach(&self, base_file: &Path) -> Result<Option<Checkout>, CheckoutError> {
        let Ok(base) = std::fs::read_to_string(base_file) else {
            return Ok(None);
        };
        let Some(worktree) = Worktree::reattach(&self.bases, &self.dest)? else {
            return Ok(None);
        };
        if worktree.branch() != self.branch {
            return Ok(None);
        }
        // The parked checkout still holds what setup wrote.
        let setup_file = self.dest.with_extension("setup");
        let setup_tree = std::fs::read_to_string(&setup_file)
            .ok()
            .map(|tree| tree.trim().to_string());
        Ok(Some(Checkout {
            worktree,
            base_commit: base.trim().to_string(),
            git_dir: self.mirror.join(".git"),
            full_checkout_reason: None,
            setup_tree,
            setup_file,
        }))
    }

    fn sync_mirror(&self) -> Result<(), CheckoutError> {
        if self.mirror.join(".git").exists() {
            let mirror = Repo::at(&self.mirror);
            // A mirror cloned by an older kiln may hold a credential in its
            // URL, in a config file every sandbox of the owner can read.
            mirror.git(["remote", "set-url", "--", "origin", &self.repo])?;
            return self.fetch_into(&mirror);
        }
        let parent = self.mirror.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).map_err(|source| CheckoutError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
        // Clone beside the final name and rename, so a crash mid-clone never
        // leaves a half mirror that later looks complete.
        let partial = self.mirror.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        let partial_str = partial.to_string_lossy().into_owned();
        let mut args = self.fetch.options.clone();
        if self.fetch.refspecs.is_empty() {
            args.extend(
                [
                    "clone",
                    "--quiet",
                    "--no-checkout",
                    "--",
                    &self.repo,
                    &partial_str,
                ]
                .map(String::from),
            );
            run_git_with_env(parent, &args, &self.fetch.env)?;
        } else {
            // Only the refs the rules name: a clone would take the remote's
            // branches, which are not what such a remote offers.
            run_git_with_env(
                parent,
                ["init", "--quiet", "--", &partial_str],
                &GitEnv::default(),
            )?;
            let partial_repo = Repo::at(&partial);
            partial_repo.git(["remote", "add", "--", "origin", &self.repo])?;
            self.fetch_into(&partial_repo)?;
        }
        std::fs::rename(&partial, &self.mirror).map_err(|source| CheckoutError::Io {
            path: self.mirror.clone(),
            source,
        })
    }

    fn fetch_into(&self, mirror: &Repo) -> Result<(), CheckoutError> {
        let mut args = self.fetch.options.clone();
        args.extend(["fetch", "--quiet", "--prune", "origin"].map(String::from));
        if self.fetch.refspecs.is_empty() {
            args.extend(
                [
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                ]
                .map(String::from),
            );
        } else {
            args.extend(self.fetch.refspecs.iter().cloned());
        }
        mirror.git_with_env(&args, &self.fetch.env)?;
        Ok(())
    }

    fn resolve_base(&self, repo: &Repo) -> Result<String, CheckoutError> {
        let base = match &self.start {
            OwnedStart::Fresh { base } => base.as_deref(),
            _ => None,
        };
        let candidates: Vec<String> = match base {
            None | Some("HEAD") => vec!["origin/HEAD".into(), "HEAD".into()],
            Some(base) => vec![format!("origin/{base}"), base.to_string()],
        };
        candidates
            .iter()
            .find_map(|rev| repo.resolve(rev).ok())
            .ok_or_else(|| CheckoutError::UnknownRef {
                wanted: base.unwrap_or("HEAD").to_string(),
                repo: self.repo.clone(),
            })
    }
}

impl Checkout {
    /// An attempt's checkout made some other way (`kiln exec --worktree`):
    /// `worktree`, whose diff is measured from `base_commit`, with its
    /// repository's git directory.
    pub fn of_worktree(worktree: Worktree, base_commit: String, git_dir: PathBuf) -> Self {
        let setup_file = worktree.path().with_extension("setup");
        Checkout {
            worktree,
            base_commit,
            git_dir,
            full_checkout_reason: None,
            setup_tree: None,
            setup_file,
        }
    }

    pub fn path(&self) -> &Path {
        self.worktree.path()
    }

    pub fn branch(&self) -> &str {
        self.worktree.branch()
    }

    /// The whole attempt's changes against the base, untracked files
    /// included, at most `cap` bytes of it (see [`Diff::cut`]).
    pub fn diff(&self, cap: usize) -> Result<(Diff, DiffStat), GitError> {
        let base = self.setup_tree.as_deref().unwrap_or(&self.base_commit);
        let diff = self.worktree.diff_against(base, cap)?;
        let stat = DiffStat {
            files_changed: diff.files_changed,
            insertions: diff.insertions,
            deletions: diff.deletions,
        };
        Ok((diff, stat))
    }
}

impl Checkout {
    /// Take the checkout as setup left it as the attempt's base, and record
    /// it for a follow-up in this checkout.
    pub fn record_setup(&mut self) -> Result<(), CheckoutError> {
        let tree = self.worktree.snapshot_tree()?;
        std::fs::write(&self.setup_file, &tree).map_err(|source| CheckoutError::Io {
            path: self.setup_file.clone(),
            source,
        })?;
        self.setup_tree = Some(tree);
        Ok(())
    }

    /// Commit the agent's changes on the attempt's branch (never what only
    /// setup wrote).
    pub fn commit(&self, message: &str) -> Result<Option<String>, GitError> {
        match &self.setup_tree {
            Some(tree) => self.worktree.commit_changes_since(tree, message),
            None => self.worktree.commit_all(message),
        }
    }
}

fn remove_if_present(path: &Path) -> Result<(), CheckoutError> {
    match std::fs::remove_file(path) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(CheckoutError::Io {
            path: path.to_path_buf(),
            source,
        }),
        _ => Ok(()),
    }
}

/// A directory name per owner (a token id), safe whatever the id holds.
fn owner_dir_name(owner: &str) -> String {
    let digest = Sha256::digest(owner.as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// A stable directory name for a repository location.
fn mirror_name(repo: &str) -> String {
    let digest = Sha256::digest(repo.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let tail: String = repo
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo")
        .trim_end_matches(".git")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(40)
        .collect();
    format!("{tail}-{hex}")
}

#[cfg(test)]
#[path = "mirrors_tests.rs"]
mod tests;
