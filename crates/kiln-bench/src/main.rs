//! `kiln-bench`: kiln against Codex CLI on identical scripted work, in one
//! run, as ratios.
//!
//! Both agents talk to the same scripted model server (`kiln-testkit-server`),
//! each in its own tool dialect, so the model costs nothing and what is left
//! is the agent: start-up, request building, stream parsing, sandboxing,
//! patching, logging. Sections: the calc-py task end to end, per-turn
//! overhead, sandbox start, a large repository, the patch engine, and
//! parallel attempts through `kiln serve` (kiln only). Results print as a table and are
//! saved as JSON. `scripts/bench` builds everything and runs it:
//!
//! ```text
//! scripts/bench                  # the full suite (10 runs, 100k-file repository)
//! scripts/bench --quick          # fewer runs and a 10k-file repository
//! scripts/bench --only sandbox   # one section
//! ```

mod bench;
mod end_to_end;
mod large_repo;
mod parallel;
mod patch_cli;
mod patch_engine;
mod per_turn;
mod process;
mod report;
mod repos;
mod sandbox_start;
mod serve_process;
mod session;
mod tools;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;

use crate::bench::{Bench, Failure};
use crate::report::Row;
use crate::repos::LargeRepoSize;
use crate::tools::Tools;

#[derive(Debug, Parser)]
#[command(name = "kiln-bench", about = "Benchmark kiln against Codex CLI")]
struct Args {
    /// Runs per tool for the end-to-end and per-turn benchmarks.
    #[arg(long)]
    runs: Option<usize>,
    /// Runs per tool for sandbox start.
    #[arg(long)]
    sandbox_runs: Option<usize>,
    /// Runs per variant on the large repository.
    #[arg(long)]
    large_runs: Option<usize>,
    /// Tasks posted at once to `kiln serve` (default 50; 10 with --quick).
    #[arg(long)]
    parallel_tasks: Option<usize>,
    /// Files in the generated large repository.
    #[arg(long)]
    large_files: Option<usize>,
    /// Total size of the generated large repository, in MB.
    #[arg(long)]
    large_mb: Option<u64>,
    /// Fewer runs and a 10k-file / 100 MB repository, for a first look.
    #[arg(long)]
    quick: bool,
    /// Sections to run, comma-separated: e2e,turns,sandbox,large,patch,parallel.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The kiln binary (default: target/release/kiln).
    #[arg(long)]
    kiln: Option<PathBuf>,
    /// The scripted model server (default: target/release/kiln-testkit-server).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Where `npm install @openai/codex` put node_modules
    /// (default: target/bench/codex).
    #[arg(long)]
    codex_prefix: Option<PathBuf>,
    /// Also write the results here (scripts/bench passes docs/benchmarks/latest.json).
    #[arg(long)]
    latest: Option<PathBuf>,
    /// Keep every run's directory under target/bench/work for inspection.
    #[arg(long)]
    keep: bool,
}

const SECTIONS: [&str; 6] = ["e2e", "turns", "sandbox", "large", "patch", "parallel"];

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kiln-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything a results file holds.
#[derive(Serialize)]
struct Results {
    timestamp: String,
    kiln_commit: String,
    codex_version: String,
    machine: Machine,
    runs: usize,
    sandbox_runs: usize,
    large_runs: usize,
    large_repo: LargeRepoSize,
    rows: Vec<Row>,
    failures: Vec<Failure>,
}

#[derive(Serialize)]
struct Machine {
    cpus: usize,
    load_average_at_start: String,
    load_average_at_end: String,
    kernel: String,
}

fn run(args: Args) -> Result<()> {
    let workspace = workspace_root();
    let bench_dir = workspace.join("target/bench");
    let sections: Vec<&str> = if args.only.is_empty() {
        SECTIONS.to_vec()
    } else {
        for name in &args.only {
            if !SECTIONS.contains(&name.as_str()) {
                bail!(
                    "unknown section {name:?} in --only: choose from {}",
                    SECTIONS.join(",")
                );
            }
        }
        SECTIONS
            .iter()
            .copied()
            .filter(|s| args.only.iter().any(|o| o == s))
            .collect()
    };
    let (runs, sandbox_runs, large_runs, files, megabytes) = if args.quick {
        (3, 30, 2, 10_000, 100)
    } else {
        (10, 100, 3, 100_000, 1_000)
    };
    let parallel_tasks = args
        .parallel_tasks
        .unwrap_or(if args.quick { 10 } else { 50 })
        .max(1);
    let tools = find_tools(&workspace, &bench_dir, &args)?;
    let codex_version = version_of(&tools.codex);
    let mut bench = Bench {
        tools,
        workspace: workspace.clone(),
        work: bench_dir.join("work"),
        bench_dir: bench_dir.clone(),
        runs: args.runs.unwrap_or(runs).max(1),
        sandbox_runs: args.sandbox_runs.unwrap_or(sandbox_runs).max(1),
        large_runs: args.large_runs.unwrap_or(large_runs).max(1),
        large_size: LargeRepoSize {
            files: args.large_files.unwrap_or(files).max(1),
            total_bytes: args.large_mb.unwrap_or(megabytes) * 1_000_000,
        },
        keep: args.keep,
        failures: Vec::new(),
    };
    std::fs::create_dir_all(&bench.work)?;
    let load_at_start = load_average();
    eprintln!("kiln-bench: {codex_version}; load average {load_at_start}");

    let mut rows = Vec::new();
    for section in sections {
        eprintln!("== {section}");
        let result = match section {
            "e2e" => end_to_end::run(&mut bench),
            "turns" => per_turn::run(&mut bench),
            "sandbox" => sandbox_start::run(&mut bench),
            "large" => large_repo::run(&mut bench),
            "patch" => {
                // The library benchmark and the CLI comparison fail alone.
                let library = patch_engine::run(&workspace).unwrap_or_else(|err| {
                    vec![Row::new("patch engine", "not run", "-").note(format!("error: {err:#}"))]
                });
                patch_cli::run(&mut bench).map(|cli| library.into_iter().chain(cli).collect())
            }
            "parallel" => parallel::run(&mut bench, parallel_tasks),
            other => Err(anyhow::anyhow!("no section named {other}")),
        };
        match result {
            Ok(section_rows) => rows.extend(section_rows),
            Err(err) => {
                eprintln!("  section {section} could not run: {err:#}");
                rows.push(Row::new(section, "not run", "-").note(format!("error: {err:#}")));
            }
        }
    }

    let results = Results {
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        kiln_commit: git_head(&workspace),
        codex_version,
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_average_at_start: load_at_start,
            load_average_at_end: load_average(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        },
        runs: bench.runs,
        sandbox_runs: bench.sandbox_runs,
        large_runs: bench.large_runs,
        large_repo: bench.large_size,
        rows,
        failures: bench.failures,
    };
    println!("{}", report::render_table(&results.rows));
    if !results.failures.is_empty() {
        println!("failed runs (not timed):");
        for f in &results.failures {
            println!("  {} / {} run {}: {}", f.benchmark, f.tool, f.run, f.reason);
        }
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let history = bench_dir.join(format!("results-{stamp}.json"));
    report::write_json(&history, &results)?;
    println!("results: {}", history.display());
    match &args.latest {
        // The latest file is the full table: some sections alone would replace it.
        Some(latest) if !args.only.is_empty() => println!(
            "not written: {} (--only ran some sections; the history file above has them)",
            latest.display()
        ),
        Some(latest) => {
            report::write_json(latest, &results)?;
            println!("results: {}", latest.display());
        }
        None => {}
    }
    Ok(())
}

/// The workspace this crate was built in (crates/kiln-bench/../..).
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

fn find_tools(workspace: &Path, bench_dir: &Path, args: &Args) -> Result<Tools> {
    let release = workspace.join("target/release");
    let kiln = args.kiln.clone().unwrap_or_else(|| release.join("kiln"));
    let server = args
        .server
        .clone()
        .unwrap_or_else(|| release.join("kiln-testkit-server"));
    for (path, build) in [
        (&kiln, "cargo build --release -p kiln-cli"),
        (
            &server,
            "cargo build --release -p kiln-testkit --bin kiln-testkit-server",
        ),
    ] {
        if !path.is_file() {
            bail!(
                "{} is missing: build it with `{build}` (or run scripts/bench)",
                path.display()
            );
        }
    }
    let prefix = args
        .codex_prefix
        .clone()
        .unwrap_or_else(|| bench_dir.join("codex"));
    let package_root = prefix.join("node_modules/@openai/codex");
    let vendor =
        prefix.join("node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl");
    let codex = vendor.join("bin/codex");
    if !codex.is_file() {
        bail!(
            "Codex CLI is missing at {}: install it with `npm install --prefix {} @openai/codex@0.169.0` (or run scripts/bench)",
            codex.display(),
            prefix.display()
        );
    }
    let path_dir = vendor.join("codex-path");
    Ok(Tools {
        kiln,
        server,
        codex,
        codex_path_dir: path_dir.is_dir().then_some(path_dir),
        codex_package_root: package_root.is_dir().then_some(package_root),
    })
}

fn version_of(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|err| format!("unknown ({err})"))
}

fn git_head(workspace: &Path) -> String {
    Command::new("git")
        .arg("-C")
        .arg(workspace)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .context("cannot read /proc/loadavg")
        .unwrap_or_default()
}
