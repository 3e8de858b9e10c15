//! `kiln worker [--data-dir DIR …]` runs attempts for a kiln server on this
//! machine (crate::worker_run); `kiln worker list` shows the workers a
//! server has seen (admin token). docs/workers.md describes both.

use std::path::PathBuf;
use std::process::ExitCode;

use kiln_protocol::worker::WorkerInfo;

use crate::api_client::{print_json, ApiClient, ServerArgs};
use crate::run_blocking;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<WorkerCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum WorkerCommand {
    /// The workers the server has seen: name, version, token, running
    /// attempts, last contact (admin token).
    List,
}

/// `kiln worker --server URL --token WORKER_TOKEN --data-dir DIR`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The server's URL and the worker token (KILN_SERVER, KILN_TOKEN);
    /// create the token with `kiln token create --worker NAME`.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Where this worker keeps its mirrors, checkouts and state.
    #[arg(long, value_name = "DIR", required = true)]
    pub data_dir: Option<PathBuf>,
    /// Attempts this worker runs at once.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub max_parallel: usize,
    /// The name the server lists this worker under (default: the host
    /// name); unique per worker token.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Seconds running attempts get to finish after SIGTERM or Ctrl-C;
    /// then they are cancelled unreported and the server runs them again.
    #[arg(long, value_name = "SECS")]
    pub drain_secs: Option<u64>,
}

pub fn run(args: Args) -> ExitCode {
    match args.command {
        Some(WorkerCommand::List) => run_blocking(list(args.run.server)),
        None => {
            // Copy-on-write checkouts need the process's own mount
            // namespace, entered before the runtime starts its threads.
            if let Err(reason) = kiln_workspace::overlay::enable() {
                tracing::warn!("checkouts will be full copies, not copy-on-write: {reason}");
            }
            run_blocking(async move { crate::worker_run::run(&args.run).await })
        }
    }
}

async fn list(server: ServerArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&server)?;
    let listed = client.get("/api/workers").await?;
    if server.json {
        print_json(&listed);
        return Ok(());
    }
    let workers: Vec<WorkerInfo> = serde_json::from_value(listed)?;
    if workers.is_empty() {
        eprintln!("no worker has contacted this server yet");
    }
    for worker in workers {
        let running = if worker.running.is_empty() {
            "idle".to_string()
        } else {
            worker
                .running
                .iter()
                .map(|a| format!("{}/{}", a.task_id, a.n))
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "{}  {}  {}  {}  {running}",
            worker.name,
            worker.version,
            worker.token_id,
            worker
                .last_contact
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
    }
    Ok(())
}
