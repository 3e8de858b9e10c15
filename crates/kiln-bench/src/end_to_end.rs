//! The calc-py task end to end: the same four scripted turns (run the
//! tests, patch, run the tests, final message) for `kiln exec` and
//! `codex exec`, each on a fresh git copy of the fixture.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::bench::{interleaved, Bench};
use crate::report::{median, Row};
use crate::repos::fresh_git_copy;
use crate::session::{mb, ms, run_session, RunDir};
use crate::tools::Tool;

const NAME: &str = "end-to-end (calc-py fix, 4 turns)";

pub fn run(bench: &mut Bench) -> Result<Vec<Row>> {
    let fixture = bench.workspace.join("crates/kiln-testkit/fixtures/calc-py");
    let mut wall = [Vec::new(), Vec::new()];
    let mut tree_rss = [Vec::new(), Vec::new()];
    let mut single_rss = [Vec::new(), Vec::new()];
    for run in 0..bench.runs {
        for tool in interleaved(run) {
            eprintln!(
                "  end-to-end {} run {}/{}",
                tool.name(),
                run + 1,
                bench.runs
            );
            let dir = RunDir::fresh(&bench.work, &format!("e2e-{}-{run}", tool.name()))?;
            let repo = dir.root.join("repo");
            fresh_git_copy(&fixture, &repo)?;
            let script = bench.workspace.join(format!(
                "crates/kiln-testkit/scripts/calc-py-fix.{}.json",
                tool.dialect()
            ));
            let measured = run_session(
                &bench.tools,
                tool,
                &script,
                &repo,
                &dir,
                &[],
                "make the failing test pass",
            )?;
            let tests_pass = unit_tests_pass(&repo, &dir.root)?;
            if !measured.succeeded() || !tests_pass {
                let reason = format!(
                    "exit {:?}{}, tests {} afterwards; stderr: {}",
                    measured.exit_code,
                    if measured.timed_out {
                        " (timed out)"
                    } else {
                        ""
                    },
                    if tests_pass { "pass" } else { "still fail" },
                    dir.stderr_tail()
                );
                bench.fail(NAME, tool, run, reason);
            } else {
                let i = tool.index();
                wall[i].push(ms(measured.wall));
                tree_rss[i].push(mb(measured.tree_peak_rss_bytes));
                single_rss[i].push(mb(measured.max_single_rss_bytes));
            }
            if !bench.keep {
                dir.remove();
            }
        }
    }
    let note = format!(
        "median of {} runs; failed: kiln {}, codex {}",
        bench.runs,
        bench.failed_count(NAME, Tool::Kiln),
        bench.failed_count(NAME, Tool::Codex)
    );
    Ok(vec![
        Row::new(NAME, "wall time", "ms")
            .kiln(median(&wall[0]))
            .codex(median(&wall[1]))
            .target_ratio(0.5)
            .note(note),
        Row::new(NAME, "peak RSS, process tree", "MB")
            .kiln(median(&tree_rss[0]))
            .codex(median(&tree_rss[1]))
            .target_ratio(0.5)
            .note("sum over live descendants, sampled every 10 ms"),
        Row::new(NAME, "peak RSS, largest process", "MB")
            .kiln(median(&single_rss[0]))
            .codex(median(&single_rss[1]))
            .note("wait4 ru_maxrss"),
    ])
}

/// Whether `python3 -m unittest -q` passes in `repo` now. Bytecode goes to a
/// private cache: a `.pyc` written before a same-size patch in the same
/// second would otherwise be run instead of the patched source.
fn unit_tests_pass(repo: &Path, scratch: &Path) -> Result<bool> {
    let status = Command::new("python3")
        .args(["-m", "unittest", "-q"])
        .current_dir(repo)
        .env("PYTHONPYCACHEPREFIX", scratch.join("pycache-verify"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("cannot run python3 to verify the fix: install python3")?;
    Ok(status.success())
}
