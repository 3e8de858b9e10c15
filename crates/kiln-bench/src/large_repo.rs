//! The large repository: time from process start to the agent's first
//! command (kiln in place, kiln `--worktree`, Codex in place), and the
//! search and read commands over it, each against running them directly.
//!
//! `--worktree` is measured twice: once at a commit kiln has not seen
//! (it builds the cached base checkout, one full checkout per commit), and
//! then in every run with that base cached, which is what every later task
//! on the commit pays: a copy-on-write mount.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::bench::Bench;
use crate::process::{run_measured, Measured};
use crate::report::{median, Row};
use crate::repos::{large_repo, NEEDLE, NEEDLE_FILE};
use crate::session::{command_spans, final_message_at, ms, run_session, RunDir};
use crate::tools::Tool;

const SCRIPT: &str = "large-repo-search";

/// One way of starting an agent on the repository.
#[derive(Clone, Copy)]
struct Variant {
    label: &'static str,
    tool: Tool,
    worktree: bool,
}

const VARIANTS: [Variant; 3] = [
    Variant {
        label: "kiln",
        tool: Tool::Kiln,
        worktree: false,
    },
    Variant {
        label: "kiln --worktree",
        tool: Tool::Kiln,
        worktree: true,
    },
    Variant {
        label: "codex",
        tool: Tool::Codex,
        worktree: false,
    },
];

#[derive(Default)]
struct Samples {
    first_command: Vec<f64>,
    search: Vec<f64>,
    read: Vec<f64>,
}

pub fn run(bench: &mut Bench) -> Result<Vec<Row>> {
    let size = bench.large_size;
    let name = format!(
        "large repo ({}k files, {} MB)",
        size.files / 1000,
        size.total_bytes / 1_000_000
    );
    let repo = large_repo(&bench.bench_dir, size)?;
    // Warm the page cache so every variant searches the same cached files.
    direct(&repo, &bench.work, &search_command())?;

    // The base checkouts `--worktree` runs share, as they would in one
    // KILN_HOME; built afresh by the first (cold) run below.
    let bases = bench.work.join("large-bases");
    let _ = std::fs::remove_dir_all(&bases);
    std::fs::create_dir_all(&bases)?;
    forget_worktrees_under(&repo, &bench.work)?;
    let cold = cold_worktree_start(bench, &repo, &bases, &name)?;

    let mut samples: [Samples; 3] = Default::default();
    let mut direct_search = Vec::new();
    let mut direct_read = Vec::new();
    for run in 0..bench.large_runs {
        direct_search.push(direct(&repo, &bench.work, &search_command())?);
        direct_read.push(direct(&repo, &bench.work, &["cat", NEEDLE_FILE])?);
        let mut order: Vec<usize> = (0..VARIANTS.len()).collect();
        order.rotate_left(run % VARIANTS.len());
        for index in order {
            let variant = VARIANTS[index];
            eprintln!(
                "  large repo {} run {}/{}",
                variant.label,
                run + 1,
                bench.large_runs
            );
            let dir = RunDir::fresh(&bench.work, &format!("large-{index}-{run}"))?;
            let extra: &[&str] = if variant.worktree {
                share_bases(&dir, &bases)?;
                &["--worktree"]
            } else {
                &[]
            };
            let measured = run_session(
                &bench.tools,
                variant.tool,
                &bench.script(SCRIPT, variant.tool),
                &repo,
                &dir,
                extra,
                "find where the needle is",
            )?;
            if variant.worktree {
                drop_worktrees(&repo, &dir.home())?;
            }
            match spans_if_ok(variant.tool, &measured) {
                Ok([first, search, read]) => {
                    samples[index].first_command.push(first);
                    samples[index].search.push(search);
                    samples[index].read.push(read);
                }
                Err(reason) => {
                    let reason =
                        format!("{}: {reason}; stderr: {}", variant.label, dir.stderr_tail());
                    bench.fail(&name, variant.tool, run, reason);
                }
            }
            if !bench.keep {
                dir.remove();
            }
        }
    }
    let next = next_commit_worktree_start(bench, &repo, &bases, &name)?;
    let note = format!("median of {} runs", bench.large_runs);
    let [in_place, worktree, codex] = &samples;
    Ok(vec![
        Row::new(&name, "start to first command, in place", "ms")
            .kiln(median(&in_place.first_command))
            .codex(median(&codex.first_command))
            .target_below(200.0)
            .note(format!(
                "{note}; process spawn to first exec event on stdout"
            )),
        Row::new(&name, "start to first command, --worktree", "ms")
            .kiln(median(&worktree.first_command))
            .target_below(200.0)
            .note(format!(
                "{note}; kiln only (Codex has no worktree mode); copy-on-write over the cached base checkout of the commit"
            )),
        Row::new(&name, "start to first command, --worktree at a new commit", "ms")
            .kiln(cold)
            .note("one run; builds the commit's base checkout (a full git checkout), once per commit"),
        Row::new(&name, "start to first command, --worktree at the next commit", "ms")
            .kiln(next)
            .target_below(200.0)
            .note("one run; one file changed since the cached base, which the new commit takes over"),
        Row::new(&name, "search turn: grep -rl over the repo", "ms")
            .kiln(median(&in_place.search))
            .codex(median(&codex.search))
            .baseline(median(&direct_search))
            .note("command begin event to next command's; baseline: grep run directly (rg is not installed)"),
        Row::new(&name, "read turn: cat one file", "ms")
            .kiln(median(&in_place.read))
            .codex(median(&codex.read))
            .baseline(median(&direct_read))
            .note("command begin event to final message; baseline: cat run directly"),
    ])
}

fn search_command() -> Vec<&'static str> {
    vec!["grep", "-rl", "--exclude-dir=.git", NEEDLE, "."]
}

/// [first command start, search turn, read turn] in ms, or why the run does
/// not count. A turn runs from its command's begin event to the next
/// command's begin event (or the final message): the command, its result
/// sent back, and the scripted model's instant answer. Each tool decides when
/// it reports a command as begun and ended, so only these turn boundaries
/// compare across tools.
fn spans_if_ok(tool: Tool, measured: &Measured) -> Result<[f64; 3], String> {
    if !measured.succeeded() {
        return Err(format!("exit {:?}", measured.exit_code));
    }
    let found = measured.first_line_with(&["./docs/needle.md"]).is_some();
    let read = measured.first_line_with(&["lives here"]).is_some();
    if !found || !read {
        return Err(format!(
            "the search did not report the needle file ({found}) or the read its text ({read})"
        ));
    }
    let spans = command_spans(tool, &measured.stdout);
    let last = final_message_at(tool, &measured.stdout);
    match (spans.as_slice(), last) {
        ([(search, Some(_)), (read, Some(_))], Some(last)) => Ok([
            ms(*search),
            ms(read.saturating_sub(*search)),
            ms(last.saturating_sub(*read)),
        ]),
        (other, last) => Err(format!(
            "expected 2 finished commands and a final message, saw {} commands, final message: {}",
            other.len(),
            last.is_some()
        )),
    }
}

/// Wall time in ms of `argv` run directly in `repo`.
fn direct(repo: &Path, work: &Path, argv: &[&str]) -> Result<f64> {
    let mut command = Command::new(argv[0]);
    command.args(&argv[1..]).current_dir(repo);
    let measured = run_measured(
        command,
        &work.join("direct.stderr"),
        Duration::from_secs(300),
        false,
    )?;
    if !measured.succeeded() {
        bail!("{} failed directly in {}", argv.join(" "), repo.display());
    }
    Ok(ms(measured.wall))
}

/// First command of a `--worktree` run whose base checkout is not cached.
fn cold_worktree_start(
    bench: &mut Bench,
    repo: &Path,
    bases: &Path,
    name: &str,
) -> Result<Option<f64>> {
    eprintln!("  large repo kiln --worktree at a new commit (builds the base checkout)");
    let first = single_worktree_run(bench, repo, bases, "large-cold-worktree")?;
    // The base checkout left a gigabyte of dirty pages; write them back now
    // rather than during the runs that follow.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    Ok(bench.kiln_sample_or_failure(name, first, "--worktree at a new commit"))
}

/// First command of a `--worktree` run one commit after the cached base
/// (a branch that moved on): the idle base is taken over, not rebuilt. The
/// commit is dropped again afterwards.
fn next_commit_worktree_start(
    bench: &mut Bench,
    repo: &Path,
    bases: &Path,
    name: &str,
) -> Result<Option<f64>> {
    eprintln!("  large repo kiln --worktree at the next commit (takes over the idle base)");
    let git = |args: &[&str]| -> Result<String> {
        let output = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args([
                "-c",
                "user.name=kiln-bench",
                "-c",
                "user.email=bench@localhost",
            ])
            .args(args)
            .output()?;
        if !output.status.success() {
            bail!("git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let original = git(&["rev-parse", "HEAD"])?;
    std::fs::write(
        repo.join("NEXT-COMMIT.md"),
        "A commit after the cached base.\n",
    )?;
    git(&["add", "NEXT-COMMIT.md"])?;
    git(&["commit", "-q", "-m", "kiln-bench: the next commit"])?;
    let first = single_worktree_run(bench, repo, bases, "large-next-worktree");
    git(&["reset", "-q", "--hard", &original])?;
    Ok(bench.kiln_sample_or_failure(name, first?, "--worktree at the next commit"))
}

/// One `--worktree` session over the shared bases, cleaned up after: its
/// time to the first command, or why the run does not count.
fn single_worktree_run(
    bench: &Bench,
    repo: &Path,
    bases: &Path,
    dir_name: &str,
) -> Result<Result<f64, String>> {
    let dir = RunDir::fresh(&bench.work, dir_name)?;
    share_bases(&dir, bases)?;
    let measured = run_session(
        &bench.tools,
        Tool::Kiln,
        &bench.script(SCRIPT, Tool::Kiln),
        repo,
        &dir,
        &["--worktree"],
        "find where the needle is",
    );
    drop_worktrees(repo, &dir.home())?;
    let first = spans_if_ok(Tool::Kiln, &measured?).map(|[first, _, _]| first);
    if !bench.keep {
        dir.remove();
    }
    Ok(first)
}

/// Point the run's `KILN_HOME/bases` at the shared base checkouts.
fn share_bases(dir: &RunDir, bases: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.home())?;
    std::os::unix::fs::symlink(bases, dir.home().join("bases"))?;
    Ok(())
}

/// Drop git's records of worktrees under `root` (kiln locks its own, so
/// `git worktree prune` keeps them even once their directories are gone).
fn forget_worktrees_under(repo: &Path, root: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(repo.join(".git/worktrees")) else {
        return Ok(());
    };
    for entry in entries.filter_map(Result::ok) {
        let recorded = std::fs::read_to_string(entry.path().join("gitdir")).unwrap_or_default();
        if Path::new(recorded.trim()).starts_with(root) {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

/// Remove the worktrees and branches a `--worktree` run left in the cached
/// repository, so the next run starts from the same state (the shared base
/// checkouts stay).
fn drop_worktrees(repo: &Path, home: &Path) -> Result<()> {
    let worktrees = home.join("worktrees");
    forget_worktrees_under(repo, &worktrees)?;
    if let Ok(canonical) = worktrees.canonicalize() {
        forget_worktrees_under(repo, &canonical)?;
    }
    let _ = std::fs::remove_dir_all(&worktrees);
    let git = |args: &[&str]| Command::new("git").arg("-C").arg(repo).args(args).output();
    git(&["worktree", "prune"])?;
    let refs = git(&["for-each-ref", "--format=%(refname)", "refs/heads/kiln/"])?;
    for name in String::from_utf8_lossy(&refs.stdout).lines() {
        git(&["update-ref", "-d", name])?;
    }
    Ok(())
}
