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

use kiln_store::DiffStat;
use kiln_workspace::{run_git_with_env, BaseCheckouts, Diff, GitEnv, GitError, Repo, Worktree};
use sha2::{Digest, Sha256};

use kiln_store::RepoCredential;

use crate::repo_access::{git_credential_env, CheckedRepo, GIT_FETCH_ENV_REMOVE};

/// How long a fetch serves later checkouts of the same mirror.
const FETCH_REUSE: Duration = Duration::from_secs(2);

/// Why an attempt could not get its checkout.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckoutError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("cannot prepare {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("base ref {wanted:?} does not exist in {repo}: use a branch, tag or commit of that repository")]
    UnknownRef { wanted: String, repo: String },
    #[error("{0}")]
    Credential(String),
    #[error("the checkout task stopped: {0}")]
    Join(String),
}

/// An attempt's checkout and the commit its diff is measured against.
pub(crate) struct Checkout {
    pub(crate) worktree: Worktree,
    /// The environment's base commit (a follow-up continues from the
    /// attempt's last commit, but its diff still covers the whole attempt).
    pub(crate) base_commit: String,
    /// The mirror's `.git` directory, which the worktree's git metadata lives in.
    pub(crate) git_dir: PathBuf,
    /// Why the checkout is a full worktree rather than copy-on-write.
    pub(crate) full_checkout_reason: Option<String>,
    /// The checkout as the setup script left it (a tree id), when setup ran
    /// in this checkout: what setup wrote is not the agent's change.
    pub(crate) setup_tree: Option<String>,
    /// kiln's record of `setup_tree`, beside the checkout, for a follow-up.
    setup_file: PathBuf,
}

/// The mirrors under one data directory, with one lock per mirror so that
/// fetches and worktree changes of one repository take turns.
pub(crate) struct Mirrors {
    root: PathBuf,
    bases: BaseCheckouts,
    /// Per mirror: its lock, holding when it was last fetched.
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl Mirrors {
    pub(crate) fn new(data_dir: &Path) -> Self {
        Mirrors {
            root: data_dir.to_path_buf(),
            bases: BaseCheckouts::new(data_dir.join("bases")),
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn checkout_dir(&self, task_id: &str, n: u32) -> PathBuf {
        self.root
            .join("checkouts")
            .join(task_id)
            .join(n.to_string())
    }

    /// A fresh checkout of `base` (the remote default branch when `None`), or,
    /// with `resume`, a checkout continuing from the branch's last commit.
    pub(crate) async fn checkout(
        &self,
        source: Source<'_>,
        base: Option<&str>,
        task_id: &str,
        n: u32,
        resume: bool,
    ) -> Result<Checkout, CheckoutError> {
        let Source { repo, owner, fetch } = source;
        // One mirror per owner: the sandbox sees its mirror's git directory,
        // so a mirror shared by users would show each one the others' task
        // branches (prompts, diffs, setup products) and let a `base_ref`
        // start from them.
        let mirror = self
            .root
            .join("mirrors")
            .join(owner_dir_name(owner))
            .join(mirror_name(repo));
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(mirror.clone()).or_default().clone()
        };
        let mut last_fetch = lock.lock().await;
        // Attempts created together share one fetch; a ref that is missing
        // from a recent fetch triggers a new one (see `Request::run`).
        let fresh = last_fetch.is_some_and(|at| at.elapsed() < FETCH_REUSE);
        let request = Request {
            repo: repo.to_string(),
            base: base.map(str::to_string),
            branch: format!("kiln/{task_id}/{n}"),
            dest: self.checkout_dir(task_id, n),
            mirror,
            bases: self.bases.clone(),
            resume,
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
}

struct Request {
    repo: String,
    base: Option<String>,
    branch: String,
    dest: PathBuf,
    mirror: PathBuf,
    bases: BaseCheckouts,
    resume: bool,
    /// The mirror was fetched moments ago.
    fresh: bool,
    fetch: FetchRules,
}

/// Where an attempt's repository comes from: its location, whose mirror
/// holds it, and how that mirror may be fetched.
pub(crate) struct Source<'a> {
    pub(crate) repo: &'a str,
    pub(crate) owner: &'a str,
    pub(crate) fetch: FetchRules,
}

/// How a mirror's clone and fetch run, as the check of the environment's
/// repository location prescribes (see `repo_access::CheckedRepo`): only
/// the checked transport, no redirects, pinned addresses, and none of the
/// server's own credentials (an empty `HOME`, no ssh agent or keys).
#[derive(Debug, Clone, Default)]
pub(crate) struct FetchRules {
    /// `-c` options before `clone`/`fetch`.
    pub(crate) options: Vec<String>,
    pub(crate) env: GitEnv,
}

impl Mirrors {
    /// The rules for fetching `repo`, a location that passed `checked`,
    /// with the credential its environment stores (sent as a header for
    /// that URL only, from git's environment: never in its arguments or in
    /// the mirror's config, which sandboxes can read).
    pub(crate) fn fetch_rules(
        &self,
        checked: &CheckedRepo,
        repo: &str,
        credential: Option<&RepoCredential>,
    ) -> Result<FetchRules, CheckoutError> {
        let home = self.root.join("git-home");
        create_private_dir(&home)?;
        let mut set: Vec<(String, String)> = CheckedRepo::git_fetch_env(&home)
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        if let Some(credential) = credential {
            let header = git_credential_env(repo, credential)
                .map_err(|err| CheckoutError::Credential(err.to_string()))?;
            set.extend(
                header
                    .into_iter()
                    .map(|(name, value)| (name.to_string(), value)),
            );
        }
        let remove = GIT_FETCH_ENV_REMOVE.iter().map(|s| s.to_string()).collect();
        Ok(FetchRules {
            options: checked.git_fetch_args(),
            env: GitEnv { set, remove },
        })
    }
}

/// An empty directory only kiln can read, as git's `HOME` for fetches.
fn create_private_dir(dir: &Path) -> Result<(), CheckoutError> {
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
        if self.resume {
            if let Some(checkout) = self.reattach(&base_file)? {
                return Ok(checkout);
            }
        }
        let previous = if self.resume {
            let base = std::fs::read_to_string(&base_file).ok();
            let head = repo.resolve(&self.branch).ok();
            base.zip(head)
        } else {
            None
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
            let mut args = self.fetch.options.clone();
            args.extend(
                [
                    "fetch",
                    "--quiet",
                    "--prune",
                    "origin",
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                ]
                .map(String::from),
            );
            mirror.git_with_env(&args, &self.fetch.env)?;
            return Ok(());
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
        std::fs::rename(&partial, &self.mirror).map_err(|source| CheckoutError::Io {
            path: self.mirror.clone(),
            source,
        })
    }

    fn resolve_base(&self, repo: &Repo) -> Result<String, CheckoutError> {
        let candidates: Vec<String> = match self.base.as_deref() {
            None | Some("HEAD") => vec!["origin/HEAD".into(), "HEAD".into()],
            Some(base) => vec![format!("origin/{base}"), base.to_string()],
        };
        candidates
            .iter()
            .find_map(|rev| repo.resolve(rev).ok())
            .ok_or_else(|| CheckoutError::UnknownRef {
                wanted: self.base.clone().unwrap_or_else(|| "HEAD".into()),
                repo: self.repo.clone(),
            })
    }
}

impl Checkout {
    /// The whole attempt's changes against the base, untracked files
    /// included, at most `cap` bytes of it (see [`Diff::cut`]).
    pub(crate) fn diff(&self, cap: usize) -> Result<(Diff, DiffStat), GitError> {
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
    pub(crate) fn record_setup(&mut self) -> Result<(), CheckoutError> {
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
    pub(crate) fn commit(&self, message: &str) -> Result<Option<String>, GitError> {
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
#[path = "checkout_tests.rs"]
mod tests;

/// For remote workers (`kiln worker`), which get the repository from the
/// server's mirror over git's smart HTTP instead of a checkout here.
impl Mirrors {
    /// Where `owner`'s mirror of `repo` lives (it may not exist yet).
    pub(crate) fn mirror_dir(&self, owner: &str, repo: &str) -> PathBuf {
        self.root
            .join("mirrors")
            .join(owner_dir_name(owner))
            .join(mirror_name(repo))
    }

    /// Brings the mirror up to date for a remote attempt on `branch` and
    /// returns it with the commit the run starts from. A fresh run starts
    /// from what `base` resolves to, and its branch is set there so the
    /// worker can fetch it whatever `base` is (a commit that no advertised
    /// ref points at included); a follow-up (`fresh_branch` false)
    /// continues the branch's tip, which must exist.
    pub(crate) async fn prepare(
        &self,
        source: Source<'_>,
        base: Option<&str>,
        branch: &str,
        fresh_branch: bool,
    ) -> Result<(PathBuf, String), CheckoutError> {
        let Source { repo, owner, fetch } = source;
        let mirror = self.mirror_dir(owner, repo);
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(mirror.clone()).or_default().clone()
        };
        let mut last_fetch = lock.lock().await;
        let fresh = last_fetch.is_some_and(|at| at.elapsed() < FETCH_REUSE);
        let request = Request {
            repo: repo.to_string(),
            base: base.map(str::to_string),
            branch: branch.to_string(),
            dest: PathBuf::new(),
            mirror: mirror.clone(),
            bases: self.bases.clone(),
            resume: !fresh_branch,
            fresh,
            fetch,
        };
        let (result, fetched) = tokio::task::spawn_blocking(move || {
            let mut fetched = None;
            let result = request.prepare_remote(fresh_branch, &mut fetched);
            (result, fetched)
        })
        .await
        .map_err(|err| CheckoutError::Join(err.to_string()))?;
        if let Some(at) = fetched {
            *last_fetch = Some(at);
        }
        result.map(|commit| (mirror, commit))
    }
}

impl Request {
    fn prepare_remote(
        &self,
        fresh_branch: bool,
        fetched: &mut Option<Instant>,
    ) -> Result<String, CheckoutError> {
        if !self.fresh {
            self.sync_mirror()?;
            *fetched = Some(Instant::now());
        }
        let repo = Repo::at(&self.mirror);
        let branch_ref = format!("refs/heads/{}", self.branch);
        if !fresh_branch {
            return repo
                .resolve(&branch_ref)
                .map_err(|_| CheckoutError::UnknownRef {
                    wanted: self.branch.clone(),
                    repo: self.repo.clone(),
                });
        }
        let commit = match self.resolve_base(&repo) {
            Err(_) if fetched.is_none() => {
                self.sync_mirror()?;
                *fetched = Some(Instant::now());
                self.resolve_base(&repo)?
            }
            other => other?,
        };
        repo.git(["update-ref", &branch_ref, &commit])?;
        Ok(commit)
    }
}
