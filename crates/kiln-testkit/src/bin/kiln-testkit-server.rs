//! `kiln-testkit-server SCRIPT.json [--port PORT]`: serves a scripted model on
//! 127.0.0.1 and prints its base URL as the first line of stdout, so benchmarks
//! can point kiln or another agent at it. Runs until killed or until stdin
//! closes when `--exit-on-stdin-eof` is given.

use std::net::SocketAddr;
use std::process::ExitCode;

use kiln_testkit::{Script, ScriptedServer};
use tokio::io::AsyncReadExt;

const USAGE: &str = "usage: kiln-testkit-server SCRIPT.json [--port PORT] [--exit-on-stdin-eof]";

struct Args {
    script_path: String,
    port: u16,
    exit_on_stdin_eof: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut script_path = None;
    let mut port = 0;
    let mut exit_on_stdin_eof = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let value = args.next().ok_or("--port needs a number")?;
                port = value
                    .parse()
                    .map_err(|_| format!("--port {value}: not a port number"))?;
            }
            "--exit-on-stdin-eof" => exit_on_stdin_eof = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other if other.starts_with('-') => {
                return Err(format!("unknown option {other}\n{USAGE}"))
            }
            other if script_path.is_none() => script_path = Some(other.to_string()),
            other => return Err(format!("unexpected argument {other}\n{USAGE}")),
        }
    }
    Ok(Args {
        script_path: script_path.ok_or(USAGE)?,
        port,
        exit_on_stdin_eof,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read_to_string(&args.script_path) {
        Ok(text) => text,
        Err(error) => {
            eprintln!(
                "kiln-testkit-server: cannot read {}: {error}",
                args.script_path
            );
            return ExitCode::from(2);
        }
    };
    let script = match Script::from_json(&text) {
        Ok(script) => script,
        Err(error) => {
            eprintln!(
                "kiln-testkit-server: {} is not a script ({error}); expected {{\"turns\": [{{\"kind\": \"reply\", \"text\": \"…\"}}]}}",
                args.script_path
            );
            return ExitCode::from(2);
        }
    };
    let turns = script.turns.len();
    let server =
        match ScriptedServer::bind(SocketAddr::from(([127, 0, 0, 1], args.port)), script).await {
            Ok(server) => server,
            Err(error) => {
                eprintln!(
                    "kiln-testkit-server: cannot listen on port {}: {error}",
                    args.port
                );
                return ExitCode::from(1);
            }
        };
    println!("{}", server.base_url());
    eprintln!("kiln-testkit-server: serving {turns} scripted turns");
    if args.exit_on_stdin_eof {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
    eprintln!(
        "kiln-testkit-server: served {} of {turns} turns, {} requests",
        server.turns_served(),
        server.requests().len()
    );
    ExitCode::SUCCESS
}
