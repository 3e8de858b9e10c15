//! git for kiln: the checkout an attempt works in, and what it hands back
//! (a diff and a commit on a branch).
//!
//! kiln drives the `git` program rather than a library: it is what users
//! have, and worktrees share the object store so a checkout costs only the
//! files it writes. A checkout is the agent's to write, and kiln's git runs
//! on the host: every command names the repository (never discovers it
//! from the checkout), reads only the repository's own configuration
//! (no system, global or `GIT_*` environment), and runs no fsmonitor,
//! hook, external diff, textconv or nested repository (see `git_command`).
//!
//! ```no_run
//! use kiln_workspace::Repo;
//! # fn main() -> Result<(), kiln_workspace::GitError> {
//! let repo = Repo::discover(std::path::Path::new("."))?;
//! let wt = repo.add_worktree("HEAD", "kiln/exec/1", std::path::Path::new("/tmp/wt1"))?;
//! // … the agent edits files under wt.path() …
//! if let Some(commit) = wt.commit_all("kiln: make the failing test pass")? {
//!     println!("committed {commit} on {}", wt.branch());
//! }
//! # Ok(()) }
//! ```

pub mod apply;
mod bases;
mod cow;
mod git;
pub mod mirrors;
pub mod overlay;
mod push;
mod worktree;

pub use apply::{
    apply, create_branch, preflight, Applied, ApplyError, BranchOutcome, Conflict, ConflictKind,
    Preflight,
};
pub use bases::BaseCheckouts;
pub use cow::sweep_orphan_layers;
pub use git::{git_command, run_git, run_git_with_env, GitEnv, GitError, Repo};
pub use mirrors::{Checkout, CheckoutError, FetchRules, Mirrors, Source, Start};
pub use push::{push_branch, PushAuth, PushError};
pub use worktree::{Diff, Worktree};
