//! Sandbox start: `kiln sandbox -- true` vs `codex sandbox -- true` vs a
//! plain `true`, interleaved, each spawned and waited by the harness.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::bench::Bench;
use crate::process::run_measured;
use crate::report::{median, Row};
use crate::session::{mb, ms, RunDir};
use crate::tools::Tool;

const NAME: &str = "sandbox start (`-- true`)";

pub fn run(bench: &mut Bench) -> Result<Vec<Row>> {
    let dir = RunDir::fresh(&bench.work, "sandbox-start")?;
    let cwd = dir.root.join("cwd");
    std::fs::create_dir_all(&cwd)?;
    std::fs::create_dir_all(dir.home())?;
    let mut wall = [Vec::new(), Vec::new()];
    let mut rss = [Vec::new(), Vec::new()];
    let mut plain = Vec::new();
    for run in 0..bench.sandbox_runs {
        if run % 20 == 0 {
            eprintln!("  sandbox start run {}/{}", run + 1, bench.sandbox_runs);
        }
        let mut order = vec![Some(Tool::Kiln), Some(Tool::Codex), None];
        order.rotate_left(run % 3);
        for tool in order {
            let command = match tool {
                Some(tool) => bench
                    .tools
                    .sandbox_command(tool, &dir.home(), &cwd, &["true"]),
                None => {
                    let mut command = Command::new("true");
                    command.current_dir(&cwd);
                    command
                }
            };
            let measured = run_measured(command, &dir.stderr(), Duration::from_secs(30), false)?;
            match tool {
                Some(tool) if !measured.succeeded() => {
                    let reason = format!(
                        "exit {:?}; stderr: {}",
                        measured.exit_code,
                        dir.stderr_tail()
                    );
                    bench.fail(NAME, tool, run, reason);
                }
                Some(tool) => {
                    wall[tool.index()].push(ms(measured.wall));
                    rss[tool.index()].push(mb(measured.max_single_rss_bytes));
                }
                None => plain.push(ms(measured.wall)),
            }
        }
    }
    if !bench.keep {
        dir.remove();
    }
    let baseline = median(&plain);
    let kiln = median(&wall[0]);
    let over_plain = match (kiln, baseline) {
        (Some(kiln), Some(plain)) => format!(", kiln - plain `true` = {:.2} ms", kiln - plain),
        _ => String::new(),
    };
    Ok(vec![
        Row::new(NAME, "wall time", "ms")
            .kiln(kiln)
            .codex(median(&wall[1]))
            .baseline(baseline)
            .target_ratio(1.0)
            .note(format!(
                "median of {} runs; failed: kiln {}, codex {}{over_plain}",
                bench.sandbox_runs,
                bench.failed_count(NAME, Tool::Kiln),
                bench.failed_count(NAME, Tool::Codex)
            )),
        Row::new(NAME, "peak RSS, largest process", "MB")
            .kiln(median(&rss[0]))
            .codex(median(&rss[1]))
            .note("wait4 ru_maxrss"),
    ])
}
