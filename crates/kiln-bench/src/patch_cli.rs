//! `kiln apply-patch` vs Codex's `apply_patch` (the Codex binary invoked
//! under that name, as Codex itself does) on the same large file and patch,
//! each as a process reading the patch on stdin. The library-level numbers
//! come from kiln-patch's own benchmark (see `patch_engine`); this compares
//! the two tools end to end and checks that they produce the same file.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bench::Bench;
use crate::process::run_measured_with_stdin;
use crate::report::{median, Row};
use crate::session::{mb, ms, RunDir};
use crate::tools::Tool;

const NAME: &str = "patch CLI (apply-patch, stdin)";
const LINES: usize = 200_000;

struct Scenario {
    label: &'static str,
    patch: String,
}

pub fn run(bench: &mut Bench) -> Result<Vec<Row>> {
    let dir = RunDir::fresh(&bench.work, "patch-cli")?;
    let codex_alias = dir.root.join("apply_patch");
    std::os::unix::fs::symlink(&bench.tools.codex, &codex_alias)
        .context("cannot link Codex's binary as apply_patch")?;
    let original = numbered_lines(LINES);
    let scenarios = [
        Scenario {
            label: "10 MB file, one change in the middle",
            patch: patch(&[LINES / 2]),
        },
        Scenario {
            label: "10 MB file, 500 chunks",
            patch: patch(
                &(0..500)
                    .map(|i| 200 + i * (LINES / 500))
                    .collect::<Vec<_>>(),
            ),
        },
    ];
    let runs = bench.runs.max(5);
    let mut rows = Vec::new();
    for scenario in &scenarios {
        let patch_file = dir.root.join("change.patch");
        std::fs::write(&patch_file, &scenario.patch)?;
        let mut wall = [Vec::new(), Vec::new()];
        let mut rss = [Vec::new(), Vec::new()];
        let mut results: [Option<Vec<u8>>; 2] = [None, None];
        for run in 0..runs {
            for tool in crate::bench::interleaved(run) {
                let work = dir.root.join(format!("tree-{}", tool.name()));
                std::fs::create_dir_all(&work)?;
                std::fs::write(work.join("f.txt"), &original)?;
                let mut command = match tool {
                    Tool::Kiln => {
                        let mut command = Command::new(&bench.tools.kiln);
                        command.arg("apply-patch");
                        command
                    }
                    Tool::Codex => Command::new(&codex_alias),
                };
                command.current_dir(&work);
                let measured = run_measured_with_stdin(
                    command,
                    Some(&patch_file),
                    &dir.stderr(),
                    Duration::from_secs(120),
                    false,
                )?;
                if !measured.succeeded() {
                    let reason = format!(
                        "{}: exit {:?}; stderr: {}",
                        scenario.label,
                        measured.exit_code,
                        dir.stderr_tail()
                    );
                    bench.fail(NAME, tool, run, reason);
                    continue;
                }
                wall[tool.index()].push(ms(measured.wall));
                rss[tool.index()].push(mb(measured.max_single_rss_bytes));
                results[tool.index()] = Some(std::fs::read(work.join("f.txt"))?);
            }
        }
        let same = match &results {
            [Some(kiln), Some(codex)] => kiln == codex,
            _ => false,
        };
        if results.iter().all(Option::is_some) && !same {
            bail!(
                "{}: kiln and Codex produced different files",
                scenario.label
            );
        }
        rows.push(
            Row::new(NAME, scenario.label, "ms")
                .kiln(median(&wall[0]))
                .codex(median(&wall[1]))
                .note(format!(
                    "median of {runs}; process wall time; identical output: {same}"
                )),
        );
        rows.push(
            Row::new(NAME, &format!("{}: peak RSS", scenario.label), "MB")
                .kiln(median(&rss[0]))
                .codex(median(&rss[1]))
                .note("wait4 ru_maxrss"),
        );
    }
    if !bench.keep {
        dir.remove();
    }
    Ok(rows)
}

fn line(i: usize) -> String {
    format!("line {i:07}: the quick brown fox jumps over the dog")
}

/// `count` lines of about 50 bytes (the shape kiln-patch's benchmark uses).
fn numbered_lines(count: usize) -> String {
    let mut text = String::with_capacity(count * 52);
    for i in 0..count {
        let _ = writeln!(text, "{}", line(i));
    }
    text
}

/// One chunk per entry of `at`, each replacing that line with context.
fn patch(at: &[usize]) -> String {
    let mut patch = String::from("*** Begin Patch\n*** Update File: f.txt\n");
    for (n, &i) in at.iter().enumerate() {
        let _ = write!(
            patch,
            "@@\n {}\n-{}\n+edited {n}\n {}\n",
            line(i - 1),
            line(i),
            line(i + 1)
        );
    }
    patch.push_str("*** End Patch\n");
    patch
}
