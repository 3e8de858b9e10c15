//! What every benchmark section shares: the tools, the directories, the run
//! counts, and the list of failed runs (reported, never timed).

use std::path::PathBuf;

use serde::Serialize;

use crate::repos::LargeRepoSize;
use crate::tools::{Tool, Tools};

pub struct Bench {
    pub tools: Tools,
    pub workspace: PathBuf,
    /// target/bench: caches (Codex, the large repository) and results.
    pub bench_dir: PathBuf,
    /// Scratch space for runs (under bench_dir, not /tmp: Codex's sandbox
    /// helper refuses a CODEX_HOME under /tmp).
    pub work: PathBuf,
    pub runs: usize,
    pub sandbox_runs: usize,
    pub large_runs: usize,
    pub large_size: LargeRepoSize,
    pub keep: bool,
    pub failures: Vec<Failure>,
}

/// A run that did not do its job: excluded from the medians, listed here.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub benchmark: String,
    pub tool: String,
    pub run: usize,
    pub reason: String,
}

impl Bench {
    pub fn fail(&mut self, benchmark: &str, tool: Tool, run: usize, reason: String) {
        eprintln!("  FAILED {benchmark} {} run {run}: {reason}", tool.name());
        self.failures.push(Failure {
            benchmark: benchmark.to_string(),
            tool: tool.name().to_string(),
            run,
            reason,
        });
    }

    pub fn script(&self, name: &str, tool: Tool) -> PathBuf {
        self.workspace
            .join("crates/kiln-bench/scripts")
            .join(format!("{name}.{}.json", tool.dialect()))
    }

    /// A single-run sample of kiln, or `None` with the failure recorded.
    pub fn kiln_sample_or_failure(
        &mut self,
        benchmark: &str,
        sample: std::result::Result<f64, String>,
        what: &str,
    ) -> Option<f64> {
        match sample {
            Ok(value) => Some(value),
            Err(reason) => {
                self.fail(benchmark, Tool::Kiln, 0, format!("{what}: {reason}"));
                None
            }
        }
    }

    pub fn failed_count(&self, benchmark: &str, tool: Tool) -> usize {
        self.failures
            .iter()
            .filter(|f| f.benchmark == benchmark && f.tool == tool.name())
            .count()
    }
}

/// kiln first on even runs, Codex first on odd ones, so slow drift in the
/// machine's load hits both equally.
pub fn interleaved(run: usize) -> [Tool; 2] {
    if run.is_multiple_of(2) {
        [Tool::Kiln, Tool::Codex]
    } else {
        [Tool::Codex, Tool::Kiln]
    }
}
