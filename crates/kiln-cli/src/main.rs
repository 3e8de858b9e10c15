//! The `kiln` binary.

mod apply_patch_cmd;
mod sandbox_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "kiln", version, about = "A self-hosted software-engineering agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply a patch in the apply_patch format under the current directory.
    ApplyPatch(apply_patch_cmd::Args),
    /// Run one command under the sandbox policy an agent's command would get.
    Sandbox(sandbox_cmd::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::ApplyPatch(args) => apply_patch_cmd::run(args),
        Command::Sandbox(args) => sandbox_cmd::run(args),
    }
}
