//! The patch engine: kiln-patch's own apply benchmark (`cargo bench -p
//! kiln-patch`, crates/kiln-patch/benches/apply.rs) is the source of truth;
//! this section runs it and turns its medians into rows.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::report::Row;

const NAME: &str = "patch engine (kiln-patch apply)";

pub fn run(workspace: &Path) -> Result<Vec<Row>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["bench", "-p", "kiln-patch", "--bench", "apply"])
        .current_dir(workspace)
        .output()
        .context("cannot run cargo bench -p kiln-patch")?;
    if !output.status.success() {
        bail!(
            "cargo bench -p kiln-patch failed: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let rows = parse(&String::from_utf8_lossy(&output.stdout));
    if rows.is_empty() {
        bail!("cargo bench -p kiln-patch printed no result lines: has its output format changed?");
    }
    Ok(rows)
}

/// Lines look like `NAME   100.0 MB  median   123.4 ms  (min …)  800 MB/s`.
fn parse(stdout: &str) -> Vec<Row> {
    stdout
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" MB  median ")?;
            let (scenario, _megabytes) = left.trim_end().rsplit_once(' ')?;
            let median_ms: f64 = right
                .trim_start()
                .split_once(" ms")?
                .0
                .trim()
                .parse()
                .ok()?;
            let throughput = right.rsplit_once(')')?.1.trim().to_string();
            Some(
                Row::new(NAME, scenario.trim(), "ms")
                    .kiln(Some(median_ms))
                    .note(format!("median of 5; {throughput}")),
            )
        })
        .collect()
}

#[cfg(test)]
#[path = "patch_engine_tests.rs"]
mod tests;
