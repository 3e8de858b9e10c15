//! `kiln sandbox [OPTIONS] -- CMD…`: run one command under the sandbox
//! policy an agent's command would get, so users and tests can see exactly
//! what it sees.
//!
//! Exit status: the command's own; 124 when the timeout fired; 125 when the
//! sandbox could not be set up; 130 after Ctrl-C. A command killed by a limit also says which
//! limit on stderr ("kiln sandbox: killed: memory limit 64 MiB").

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln_protocol::{ExecStream, Mode};
use kiln_sandbox::{Backend, ExecRequest, SandboxPolicy};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Exit status when the command's timeout fired (as timeout(1)).
const EXIT_TIMEOUT: u8 = 124;
/// Exit status when kiln could not run the command at all.
const EXIT_SANDBOX_FAILED: u8 = 125;
/// Exit status of a command that was killed (128 + SIGKILL).
const EXIT_KILLED: u8 = 137;
/// Exit status after Ctrl-C (128 + SIGINT), as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Allow network access (as the setup phase has); without it only a
    /// private loopback exists.
    #[arg(long)]
    pub network: bool,
    /// Ask mode: the workspace is read-only.
    #[arg(long)]
    pub ask: bool,
    /// Kill the command (and everything it started) after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600.0)]
    pub timeout: f64,
    /// Memory limit for the command's processes together, e.g. 512M or 2G.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Limit on processes and threads alive at once.
    #[arg(long, value_name = "N")]
    pub max_processes: Option<u64>,
    /// CPU limit in cores, e.g. 1.5.
    #[arg(long, value_name = "CORES")]
    pub cpus: Option<f64>,
    /// The workspace; the command runs in it (default: current directory).
    #[arg(short = 'C', long = "directory", value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// Isolation backend: bwrap, podman (needs --image) or none (default:
    /// `sandbox.backend` of config.toml, else bwrap).
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<String>,
    /// OCI image for the podman backend.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Extra host path visible read-only (repeatable).
    #[arg(long = "ro", value_name = "PATH")]
    pub read_only_paths: Vec<PathBuf>,
    /// Extra host path visible read-write (repeatable).
    #[arg(long = "rw", value_name = "PATH")]
    pub writable_paths: Vec<PathBuf>,
    /// Set a variable inside the sandbox (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Print what the sandbox enforces on stderr before running.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// The command to run.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(args: Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("kiln sandbox: could not start the async runtime: {err}");
            return ExitCode::from(EXIT_SANDBOX_FAILED);
        }
    };
    match runtime.block_on(run_async(args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kiln sandbox: {err:#}");
            ExitCode::from(EXIT_SANDBOX_FAILED)
        }
    }
}

/// The policy an agent's command in the workspace would get: the
/// `[sandbox]` configuration (as `kiln exec` reads it) through the same
/// builder as every attempt, with the flags on top.
fn build_policy(args: &Args) -> Result<SandboxPolicy> {
    let directory = match &args.directory {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().context("reading the current directory")?,
    };
    let workspace = std::path::absolute(&directory)
        .with_context(|| format!("resolving the workspace {}", directory.display()))?;
    let mut overrides = Vec::new();
    if let Some(backend) = &args.backend {
        overrides.push(format!(
            "sandbox.backend={}",
            toml::Value::String(backend.clone())
        ));
    }
    let home = crate::config::kiln_home()?;
    let config = crate::config::load(&home, &workspace, &overrides)?;
    let base = crate::sandbox_policy::base_policy(&config)?;
    let mode = if args.ask { Mode::Ask } else { Mode::Code };
    let in_place = kiln_agent::Workspace::InPlace {
        root: workspace.clone(),
        cwd: workspace,
    };
    let mut policy = kiln_agent::sandbox_policy(&base, &in_place, mode);
    policy.network = policy.network || args.network;
    if args.image.is_some() {
        policy.image = args.image.clone();
    }
    policy
        .extra_read_only
        .extend(absolute_all(&args.read_only_paths)?);
    policy
        .extra_writable
        .extend(absolute_all(&args.writable_paths)?);
    if let Some(memory) = &args.memory {
        policy.limits.memory_bytes = Some(kiln_sandbox::parse_bytes(memory)?);
    }
    if let Some(n) = args.max_processes {
        policy.limits.max_processes = Some(n);
    }
    if args.cpus.is_some() {
        policy.limits.cpu_cores = args.cpus;
    }
    policy.env.extend(parse_env(&args.env)?);
    Ok(policy)
}

fn absolute_all(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    paths
        .iter()
        .map(|p| std::path::absolute(p).with_context(|| format!("resolving {}", p.display())))
        .collect()
}

fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--env {pair:?} needs the form KEY=VALUE");
        };
        if key.is_empty() {
            bail!("--env {pair:?} has an empty variable name");
        }
        env.insert(key.to_string(), value.to_string());
    }
    Ok(env)
}

fn parse_timeout(secs: f64) -> Result<Duration> {
    if !secs.is_finite() || secs <= 0.0 {
        bail!("--timeout {secs} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(secs))
}

async fn run_async(args: Args) -> Result<ExitCode> {
    let timeout = parse_timeout(args.timeout)?;
    let policy = build_policy(&args)?;
    let workspace = policy.workspace.clone();
    if policy.backend == Backend::None {
        eprintln!(
            "kiln sandbox: WARNING: backend `none` isolates NOTHING: the command can read and \
             write everything your user can, and use the network"
        );
    }
    let _kiln_mount_point = crate::sandbox_policy::KilnMountPoint::note(&workspace);
    let sandbox = kiln_sandbox::create(policy)?;
    if args.verbose {
        eprintln!("kiln sandbox: {}", sandbox.describe());
    }

    let cancel = CancellationToken::new();
    let interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            interrupt.cancel();
        }
    });

    let (sender, receiver) = mpsc::channel(16);
    let request = ExecRequest::new(args.command.clone(), workspace).with_timeout(timeout);
    let printer = tokio::task::spawn_blocking(move || print_chunks(receiver));
    let outcome = sandbox.exec(request, Some(sender), cancel).await;
    // The sender went away with exec; the printer ends after the last chunk.
    let _ = printer.await;
    let outcome = outcome?;

    if let Some(reason) = &outcome.killed_by {
        eprintln!("kiln sandbox: killed: {reason}");
    }
    for limit in &outcome.limits_reached {
        if outcome.killed_by.as_ref() != Some(limit) {
            eprintln!("kiln sandbox: limit reached: {limit}");
        }
    }
    if outcome.timed_out {
        return Ok(ExitCode::from(EXIT_TIMEOUT));
    }
    if outcome.cancelled {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    let code = match outcome.exit_code {
        Some(code) => (code & 0xff) as u8,
        // Ended without an exit status of its own: report it as a shell
        // reports a SIGKILL.
        None => EXIT_KILLED,
    };
    Ok(ExitCode::from(code))
}

/// Copy streamed output to our own stdout and stderr as it arrives.
/// Write errors (a closed pipe) stop the copying, not the command.
fn print_chunks(mut receiver: mpsc::Receiver<kiln_sandbox::OutputChunk>) {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut stdout_ok = true;
    let mut stderr_ok = true;
    while let Some(chunk) = receiver.blocking_recv() {
        match chunk.stream {
            ExecStream::Stdout if stdout_ok => {
                let mut out = stdout.lock();
                stdout_ok = out.write_all(&chunk.data).and_then(|_| out.flush()).is_ok();
            }
            ExecStream::Stderr if stderr_ok => {
                let mut err = stderr.lock();
                stderr_ok = err.write_all(&chunk.data).and_then(|_| err.flush()).is_ok();
            }
            _ => {}
        }
    }
}
