//! `kiln apply-patch [PATCH]`: applies an apply_patch-format patch under the current
//! directory, atomically (see `docs/apply-patch.md`).
//!
//! Exit codes: 0 applied (summary on stdout), 1 the patch is invalid or does not fit
//! the files (reason on stderr, no file changed), 2 usage error (no patch given).
use std::io::{IsTerminal, Read};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The patch text; read from stdin when omitted or `-`.
    pub patch: Option<String>,
}

const USAGE_HINT: &str = "pass the patch as the one argument or on stdin, e.g. \
                          `kiln apply-patch \"$(cat fix.patch)\"` or `kiln apply-patch < fix.patch`";

pub fn run(args: Args) -> ExitCode {
    let patch = match args.patch.filter(|patch| patch != "-") {
        Some(patch) => patch,
        None => match read_stdin() {
            Ok(patch) => patch,
            Err(problem) => {
                eprintln!("kiln apply-patch: {problem}; {USAGE_HINT}");
                return ExitCode::from(2);
            }
        },
    };
    if patch.trim().is_empty() {
        eprintln!("kiln apply-patch: the patch is empty; {USAGE_HINT}");
        return ExitCode::from(2);
    }
    let root = match std::env::current_dir() {
        Ok(root) => root,
        Err(error) => {
            eprintln!("kiln apply-patch: cannot determine the current directory: {error}");
            return ExitCode::from(1);
        }
    };
    match kiln_patch::apply(&root, &patch) {
        Ok(report) => {
            print!("{}", report.summary());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}\nNo files were changed.");
            ExitCode::from(1)
        }
    }
}

fn read_stdin() -> Result<String, String> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err("no patch given and stdin is a terminal".into());
    }
    let mut patch = String::new();
    stdin
        .read_to_string(&mut patch)
        .map_err(|error| format!("cannot read the patch from stdin: {error}"))?;
    Ok(patch)
}
