//! `kiln apply-patch [PATCH]` (owned by the patch engine work, issue 3).
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The patch text; read from stdin when omitted.
    pub patch: Option<String>,
}

pub fn run(_args: Args) -> ExitCode {
    eprintln!("kiln apply-patch: not implemented yet");
    ExitCode::from(2)
}
