//! The `kiln` binary.

mod apply_patch_cmd;
mod config;
mod event_log;
mod exec_cmd;
mod render;
mod sandbox_cmd;
mod sandbox_policy;

use std::process::ExitCode;

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
    /// Run one command under the sandbox policy an agent's command would get.
    Sandbox(sandbox_cmd::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Exec(args) => exec_cmd::run(args, Mode::Code),
        Command::Ask(args) => exec_cmd::run(args, Mode::Ask),
        Command::ApplyPatch(args) => apply_patch_cmd::run(args),
        Command::Sandbox(args) => sandbox_cmd::run(args),
    }
}
