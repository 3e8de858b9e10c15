//! `kiln apply LOG`: a `kiln exec --worktree` run's commit applied to the
//! checkout in the current directory; and the apply both it and
//! `kiln task apply` share (preflight, apply, or a branch). See docs/apply.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kiln_protocol::EventKind;
use kiln_workspace::{ApplyError, BranchOutcome, Repo};

use crate::event_log;
use crate::render::terminal_safe;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run's event log (the path `kiln exec` printed as `log:`).
    pub log: PathBuf,
    #[command(flatten)]
    pub how: HowToApply,
}

/// What to do with an attempt's commit in your checkout.
#[derive(Debug, Clone, clap::Args)]
pub struct HowToApply {
    /// Create a local branch at the attempt's commit instead of applying it
    /// (default name: the attempt's branch); an existing branch is never moved.
    #[arg(long, value_name = "NAME", num_args = 0..=1)]
    pub branch: Option<Option<String>>,
    /// Only check: name every file that would conflict, change nothing.
    #[arg(long, conflicts_with = "branch")]
    pub check: bool,
}

pub fn run(args: Args) -> ExitCode {
    crate::run_blocking(async move {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        let (branch, commit, base) = committed_in(&args.log)?;
        let repo = your_clone(&cwd, "kiln apply")?;
        if !kiln_workspace::apply::has_commit(&repo, &commit)? {
            bail!(
                "commit {commit} of {} is not in the repository at {}: run kiln apply in the repository the run's worktree belongs to",
                args.log.display(),
                repo.root().display()
            );
        }
        apply_commit(&repo, &base, &commit, &branch, &args.how)
    })
}

/// The repository the current directory is in, which the apply changes.
pub(crate) fn your_clone(cwd: &Path, command: &str) -> Result<Repo> {
    Repo::discover(cwd).map_err(|err| match err {
        kiln_workspace::GitError::NotARepository { path } => anyhow::anyhow!(
            "{} is not inside a git repository: run {command} in your clone of the repository",
            path.display()
        ),
        other => other.into(),
    })
}

/// The branch, commit and base of the run's last `commit.created`.
fn committed_in(log: &Path) -> Result<(String, String, String)> {
    let events = event_log::read_events(log)?;
    let last = events.iter().rev().find_map(|event| match &event.kind {
        EventKind::CommitCreated { branch, sha, base } => {
            Some((branch.clone(), sha.clone(), base.clone()))
        }
        _ => None,
    });
    match last {
        Some((branch, sha, Some(base))) => Ok((branch, sha, base)),
        Some((branch, _, None)) => bail!(
            "{} does not record the base the run started from (a kiln older than `kiln apply`): bring branch {branch} in with git (git cherry-pick or git merge)",
            log.display()
        ),
        None => bail!(
            "{} has no commit.created event: the run committed nothing (an ask run, a run that changed nothing, or one without --worktree, whose changes are already in your checkout)",
            log.display()
        ),
    }
}

/// The preflight, the apply or the branch, as `how` says, with what
/// happened printed. Exit status 1 when files conflict (nothing changed).
pub(crate) fn apply_commit(
    repo: &Repo,
    base: &str,
    commit: &str,
    attempt_branch: &str,
    how: &HowToApply,
) -> Result<ExitCode> {
    let short = |sha: &str| sha.chars().take(12).collect::<String>();
    if let Some(name) = &how.branch {
        let name = name.as_deref().unwrap_or(attempt_branch);
        let outcome = kiln_workspace::create_branch(repo, name, commit)?;
        let name = terminal_safe(name);
        match outcome {
            BranchOutcome::Created => {
                println!("created branch {name} at {}", short(commit));
            }
            BranchOutcome::AlreadyThere => {
                println!("branch {name} already points at {}", short(commit));
            }
        }
        eprintln!("see it with: git log -p {name}    bring it in with: git merge {name}");
        return Ok(ExitCode::SUCCESS);
    }
    let result = if how.check {
        kiln_workspace::preflight(repo, base, commit).and_then(|preflight| {
            if preflight.is_clean() {
                Ok(preflight)
            } else {
                Err(ApplyError::Conflicts(preflight.conflicts))
            }
        })
    } else {
        kiln_workspace::apply(repo, base, commit).map(|applied| applied.preflight)
    };
    let preflight = match result {
        Ok(preflight) => preflight,
        Err(ApplyError::Conflicts(conflicts)) => {
            eprintln!(
                "kiln: {} file(s) conflict with commit {} and nothing was changed:",
                conflicts.len(),
                short(commit)
            );
            for conflict in &conflicts {
                eprintln!("  {}", terminal_safe(&conflict.to_string()));
            }
            eprintln!(
                "or create a branch with the commit instead, and merge it yourself: add --branch"
            );
            return Ok(ExitCode::FAILURE);
        }
        Err(err) => return Err(err.into()),
    };
    let how_merged = if preflight.base_moved {
        format!(
            "your HEAD moved on from its base {}: merged 3-way",
            short(&preflight.base)
        )
    } else {
        "onto its own base".to_string()
    };
    if preflight.files.is_empty() {
        println!(
            "nothing to apply: your checkout already has commit {}'s change",
            short(commit)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if how.check {
        "applies cleanly"
    } else {
        "applied"
    };
    println!("commit {} {verb} ({how_merged}):", short(commit));
    for file in &preflight.files {
        println!("  {}", terminal_safe(file));
    }
    if how.check {
        eprintln!("nothing was changed; apply it without --check");
    } else {
        eprintln!(
            "the change is staged: review it with `git diff --cached`, record it with `git commit`, \
             or undo it with `git restore --source=HEAD --staged --worktree -- <the files above>`"
        );
    }
    Ok(ExitCode::SUCCESS)
}
