//! The `kiln` binary.

mod api_client;
mod apply_cmd;
mod apply_patch_cmd;
mod audit_cmd;
mod config;
mod config_keys;
mod doctor_cmd;
mod env_cmd;
mod event_log;
mod exec_cmd;
mod login_cmd;
mod people_cmd;
mod quota_cmd;
mod render;
mod sandbox_cmd;
mod sandbox_policy;
mod serve_cmd;
mod task_cmd;
mod token_cmd;
mod worker_cmd;
mod worker_run;

use std::future::Future;
use std::process::{ExitCode, Termination};

use clap::{Parser, Subcommand};
use kiln_protocol::Mode;

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "A self-hosted software-engineering agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a Code task: the agent may edit the repository.
    Exec(exec_cmd::Args),
    /// Ask about the codebase: read-only, no patches.
    Ask(exec_cmd::Args),
    /// Apply a patch in the apply_patch format under the current directory.
    ApplyPatch(apply_patch_cmd::Args),
    /// Apply a `kiln exec --worktree` run's commit (from its event LOG) to
    /// the checkout here, 3-way when HEAD moved on; or --branch.
    Apply(apply_cmd::Args),
    /// Run one command under the sandbox policy an agent's command would get.
    Sandbox(sandbox_cmd::Args),
    /// Serve the HTTP API and run tasks from the queue with a worker pool.
    Serve(Box<serve_cmd::Args>),
    /// Tasks on a kiln server: new, list, show, logs, diff, cancel, reply, share.
    Task(task_cmd::Args),
    /// Environments on a kiln server: add, list.
    Env(env_cmd::Args),
    /// API tokens on a kiln server: create, list, revoke (your own;
    /// admins: anyone's).
    Token(token_cmd::Args),
    /// The server's audit trail (admin): list, export as JSON lines.
    Audit(audit_cmd::Args),
    /// Who the token in use belongs to: user, server role, teams.
    Whoami(people_cmd::WhoamiArgs),
    /// Users on a kiln server (admins): add, list, show, set-role, disable, enable.
    User(people_cmd::UserArgs),
    /// Teams on a kiln server: add, list, show, set-member, remove-member.
    Team(people_cmd::TeamArgs),
    /// Quotas of teams and users (admins set them): set, show.
    Quota(quota_cmd::Args),
    /// Sign in to a kiln server with its single sign-on; the token is kept
    /// in $KILN_HOME/credentials.toml.
    Login(login_cmd::LoginArgs),
    /// Revoke the token `kiln login` got and forget it.
    Logout(login_cmd::LogoutArgs),
    /// Check this machine: bubblewrap, namespaces, cgroups, git, overlay, config, model endpoint.
    Doctor(doctor_cmd::Args),
    /// Run attempts for a kiln server on this machine, or `kiln worker
    /// list` the workers a server has seen.
    Worker(worker_cmd::Args),
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::Exec(args) => exec_cmd::run(args, Mode::Code),
        Command::Ask(args) => exec_cmd::run(args, Mode::Ask),
        Command::ApplyPatch(args) => apply_patch_cmd::run(args),
        Command::Apply(args) => apply_cmd::run(args),
        Command::Sandbox(args) => sandbox_cmd::run(args),
        Command::Serve(args) => serve_cmd::run(*args),
        Command::Task(args) => task_cmd::run(args),
        Command::Env(args) => env_cmd::run(args),
        Command::Token(args) => token_cmd::run(args),
        Command::Audit(args) => audit_cmd::run(args),
        Command::Whoami(args) => people_cmd::whoami(args),
        Command::User(args) => people_cmd::user(args),
        Command::Team(args) => people_cmd::team(args),
        Command::Quota(args) => quota_cmd::run(args),
        Command::Login(args) => login_cmd::login(args),
        Command::Logout(args) => login_cmd::logout(args),
        Command::Doctor(args) => doctor_cmd::run(args),
        Command::Worker(args) => worker_cmd::run(args),
    }
}

/// Runs a subcommand's async body on a fresh runtime. Its value is the
/// exit status (`()` is success); an error is printed as one line.
pub(crate) fn run_blocking<T: Termination>(
    body: impl Future<Output = anyhow::Result<T>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("kiln: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body) {
        Ok(status) => status.report(),
        Err(err) => {
            eprintln!("kiln: {}", format!("{err:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// Diagnostics (`tracing`) go to stderr: warnings by default, so that a model
/// request being retried is visible; `KILN_LOG=debug` (or `RUST_LOG`) for more.
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("KILN_LOG")
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false)
        .without_time()
        .try_init();
}
