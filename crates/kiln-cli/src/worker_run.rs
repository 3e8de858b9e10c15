//! `kiln worker --server URL` (without a subcommand): runs attempts for a
//! `kiln serve` on this machine until SIGTERM or Ctrl-C (see kiln-worker).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_protocol::Mode;
use kiln_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

use crate::config;

pub async fn run(args: &crate::worker_cmd::RunArgs) -> Result<ExitCode> {
    let home = config::kiln_home()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| home.join("worker"));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    kiln_server::secure_data_dir(&data_dir).with_context(|| {
        format!(
            "cannot make the data directory {} private (mode 700): make the user kiln worker runs as its owner",
            data_dir.display()
        )
    })?;
    // Two workers on one directory would share checkouts and mirrors.
    let _lock = kiln_server::DataDirLock::acquire(&data_dir)?;

    // The worker's own settings (sandbox, guidance files, budgets it does
    // not get from the server): the user's config and DATA/.kiln/config.toml.
    let config = config::load_for_server(&home, &data_dir, &[])?;
    let agent =
        crate::exec_cmd::agent_config(&config, "kiln server", Mode::Code, data_dir.clone(), &home);
    let sandbox = crate::sandbox_policy::base_policy(&config)?;
    if sandbox.backend == kiln_sandbox::Backend::None {
        eprintln!("warning: sandbox backend none: attempts run with NO isolation");
    }

    let Some(token) = args.server.token.clone().filter(|t| !t.trim().is_empty()) else {
        anyhow::bail!(
            "no worker token: an admin creates one with `kiln token create --worker NAME`; \
             pass it in KILN_TOKEN (or --token)"
        );
    };
    let name = match args.name.clone().filter(|n| !n.trim().is_empty()) {
        Some(name) => name,
        None => hostname(),
    };
    let server = args.server.server.trim_end_matches('/').to_string();
    let mut worker = WorkerConfig::new(&server, token, &name, &data_dir, agent, sandbox);
    worker.max_parallel = args.max_parallel.max(1);
    if let Some(secs) = args.drain_secs {
        worker.drain = Duration::from_secs(secs);
    }

    println!(
        "kiln worker {name}: running up to {} attempts for {server} (data in {})",
        worker.max_parallel,
        data_dir.display()
    );
    std::io::stdout().flush()?;

    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("kiln worker: stopping: no more claims, running attempts may finish");
        on_signal.cancel();
    });
    kiln_worker::run(worker, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// This machine's name, the default worker name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
