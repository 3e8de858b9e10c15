//! Pushing an attempt's commit from the server's mirror to the
//! environment's remote as the task's branch, and finding the branch the
//! pull request merges into.
//!
//! TODO(i12-w4): replace `push_commit` with `kiln_workspace::push_branch`
//! once that lands; this is the minimal push the pull-request flow needs
//! meanwhile (one implementation only is to remain).

use std::path::PathBuf;

use kiln_workspace::{FetchRules, Repo};

/// Pushes `commit` (present in `mirror`) to `remote` as `refs/heads/{branch}`,
/// replacing what the branch held: kiln owns `kiln/<task>`, and another
/// attempt's commit need not descend from the one pushed before.
/// `rules` are the fetch rules of the environment's repository (allowed
/// transport, no redirects, no credential helper, the credential as a
/// header from git's environment, never in its arguments).
pub(crate) async fn push_commit(
    mirror: PathBuf,
    commit: String,
    remote: String,
    branch: String,
    rules: FetchRules,
) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let repo = Repo::at(&mirror);
        let mut args = rules.options.clone();
        args.extend([
            "push".to_string(),
            "--quiet".to_string(),
            "--".to_string(),
            remote,
            format!("+{commit}:refs/heads/{branch}"),
        ]);
        repo.git_with_env(&args, &rules.env)
            .map(|_| ())
            .map_err(|e| match e {
                kiln_workspace::GitError::Failed { stderr, .. } => stderr,
                other => other.to_string(),
            })
    })
    .await
    .map_err(|e| format!("the push stopped: {e}"))?
}

/// The branch a pull request from this task merges into: the task's base
/// ref when it is a branch of the remote, else the environment's base
/// branch, else the remote's default branch (the mirror's `origin/HEAD`).
pub(crate) async fn base_branch(
    mirror: PathBuf,
    task_base: Option<String>,
    environment_base: Option<String>,
) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        let repo = Repo::at(&mirror);
        if let Some(base) = task_base {
            let remote_ref = format!("refs/remotes/origin/{base}");
            if repo
                .git([
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    "--end-of-options",
                    &remote_ref,
                ])
                .is_ok()
            {
                return Ok(base);
            }
        }
        if let Some(base) = environment_base {
            return Ok(base);
        }
        let head = repo
            .git(["symbolic-ref", "--quiet", "refs/remotes/origin/HEAD"])
            .map_err(|_| {
                "cannot tell the remote's default branch: give the environment a base_branch"
                    .to_string()
            })?;
        head.trim()
            .strip_prefix("refs/remotes/origin/")
            .filter(|name| !name.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                "cannot tell the remote's default branch: give the environment a base_branch"
                    .to_string()
            })
    })
    .await
    .map_err(|e| format!("reading the default branch stopped: {e}"))?
}
