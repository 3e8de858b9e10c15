//! Finding the branch a task's pull request merges into, from the
//! server's mirror of the environment's repository. (The push itself is
//! `kiln_workspace::push_branch`.)

use std::path::PathBuf;

use kiln_workspace::Repo;

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
