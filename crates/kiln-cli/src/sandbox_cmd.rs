//! `kiln sandbox … -- CMD…` (owned by the sandbox work, issue 4).
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The command to run.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(_args: Args) -> ExitCode {
    eprintln!("kiln sandbox: not implemented yet");
    ExitCode::from(2)
}
