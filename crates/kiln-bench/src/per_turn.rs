//! Per-turn overhead: a 50-turn session whose every turn runs `true`, against
//! a session with no command at all, both with an instant scripted model.
//!
//! overhead per turn = (T50 − T0) / 50 − t(`bash -c true` run directly)
//!
//! T50 − T0 removes start-up and shutdown, which both sessions share; what is
//! left is 50 × (one model round trip + one command + bookkeeping). The
//! scripted model answers at once, so subtracting the command's own time
//! leaves the agent's overhead: request building, SSE parsing, sandbox
//! start, event logging.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::bench::{interleaved, Bench};
use crate::process::run_measured;
use crate::report::{median, Row};
use crate::repos::fresh_git_copy;
use crate::session::{command_spans, mb, ms, run_session, RunDir};
use crate::tools::Tool;

const NAME: &str = "per-turn overhead (50 x `true`)";
const TURNS: usize = 50;

pub fn run(bench: &mut Bench) -> Result<Vec<Row>> {
    let fixture = bench.workspace.join("crates/kiln-testkit/fixtures/calc-py");
    let mut long = [Vec::new(), Vec::new()];
    let mut short = [Vec::new(), Vec::new()];
    let mut rss = [Vec::new(), Vec::new()];
    let mut direct = Vec::new();
    for run in 0..bench.runs {
        direct.push(direct_true(&bench.work)?);
        for tool in interleaved(run) {
            eprintln!("  per-turn {} run {}/{}", tool.name(), run + 1, bench.runs);
            for (script, turns) in [("per-turn-50", TURNS), ("per-turn-0", 0)] {
                let dir = RunDir::fresh(&bench.work, &format!("turns-{}-{run}", tool.name()))?;
                let repo = dir.root.join("repo");
                fresh_git_copy(&fixture, &repo)?;
                let measured = run_session(
                    &bench.tools,
                    tool,
                    &bench.script(script, tool),
                    &repo,
                    &dir,
                    extra_args(tool),
                    "run the commands you are given",
                )?;
                let commands = command_spans(tool, &measured.stdout).len();
                if !measured.succeeded() || commands != turns {
                    let reason = format!(
                        "{script}: exit {:?}, {commands} of {turns} commands ran; stderr: {}",
                        measured.exit_code,
                        dir.stderr_tail()
                    );
                    bench.fail(NAME, tool, run, reason);
                } else if turns == TURNS {
                    long[tool.index()].push(ms(measured.wall));
                    rss[tool.index()].push(mb(measured.tree_peak_rss_bytes));
                } else {
                    short[tool.index()].push(ms(measured.wall));
                }
                if !bench.keep {
                    dir.remove();
                }
            }
        }
    }
    let command_ms = median(&direct);
    let per_turn = |tool: Tool| -> Option<f64> {
        let t50 = median(&long[tool.index()])?;
        let t0 = median(&short[tool.index()])?;
        Some((t50 - t0) / TURNS as f64 - command_ms?)
    };
    let note = format!(
        "(T50-T0)/50 - direct `bash -c true`; {} runs; failed: kiln {}, codex {}",
        bench.runs,
        bench.failed_count(NAME, Tool::Kiln),
        bench.failed_count(NAME, Tool::Codex)
    );
    Ok(vec![
        Row::new(NAME, "overhead per turn", "ms")
            .kiln(per_turn(Tool::Kiln))
            .codex(per_turn(Tool::Codex))
            .baseline(command_ms)
            .target_ratio(0.5)
            .note(note),
        Row::new(NAME, "50-turn session wall time", "ms")
            .kiln(median(&long[0]))
            .codex(median(&long[1])),
        Row::new(NAME, "no-command session wall time", "ms")
            .kiln(median(&short[0]))
            .codex(median(&short[1])),
        Row::new(NAME, "peak RSS over 50 turns, process tree", "MB")
            .kiln(median(&rss[0]))
            .codex(median(&rss[1]))
            .target_ratio(0.5),
    ])
}

/// kiln stops at 50 turns by default; this session needs 51.
fn extra_args(tool: Tool) -> &'static [&'static str] {
    match tool {
        Tool::Kiln => &["-c", "limits.max_turns=100"],
        Tool::Codex => &[],
    }
}

/// Median wall time of `bash -c true` run directly, in ms (10 runs).
fn direct_true(work: &std::path::Path) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..10 {
        let mut command = Command::new("bash");
        command.args(["-c", "true"]);
        let measured = run_measured(
            command,
            &work.join("direct-true.stderr"),
            Duration::from_secs(10),
            false,
        )?;
        times.push(ms(measured.wall));
    }
    Ok(median(&times).unwrap_or(0.0))
}
