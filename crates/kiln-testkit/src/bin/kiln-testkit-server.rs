//! `kiln-testkit-server SCRIPT.json [--port PORT] [--requests-log FILE]
//! [--exit-on-stdin-eof]`: serves a scripted model on 127.0.0.1 and prints its
//! base URL as the first line of stdout, so benchmarks can point kiln or
//! another agent at it. Runs until SIGINT/SIGTERM (or until stdin closes with
//! `--exit-on-stdin-eof`), then writes every request it got to the requests
//! log as JSON lines, when one was named.

use std::net::SocketAddr;
use std::process::ExitCode;

use kiln_testkit::{Script, ScriptedServer};
use tokio::io::AsyncReadExt;

const USAGE: &str =
    "usage: kiln-testkit-server SCRIPT.json [--port PORT] [--requests-log FILE] [--exit-on-stdin-eof]";

struct Args {
    script_path: String,
    port: u16,
    requests_log: Option<String>,
    exit_on_stdin_eof: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut script_path = None;
    let mut port = 0;
    let mut exit_on_stdin_eof = false;
    let mut requests_log = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let value = args.next().ok_or("--port needs a number")?;
                port = value
                    .parse()
                    .map_err(|_| format!("--port {value}: not a port number"))?;
            }
            "--requests-log" => {
                requests_log = Some(args.next().ok_or("--requests-log needs a file path")?);
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
        requests_log,
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
    let routes = script.routes.len();
    let routed: usize = script.routes.iter().map(|route| route.turns.len()).sum();
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
    eprintln!(
        "kiln-testkit-server: serving {turns} scripted turns, and {routed} more in {routes} routes"
    );
    wait_for_stop(args.exit_on_stdin_eof).await;
    if let Some(path) = &args.requests_log {
        if let Err(error) = write_requests_log(path, &server) {
            eprintln!("kiln-testkit-server: cannot write {path}: {error}");
        }
    }
    eprintln!(
        "kiln-testkit-server: served {} of {turns} turns, {} requests",
        server.turns_served(),
        server.requests().len()
    );
    ExitCode::SUCCESS
}

/// Waits for SIGINT, SIGTERM or, when asked, the end of stdin.
async fn wait_for_stop(exit_on_stdin_eof: bool) {
    let stdin_closed = async {
        if exit_on_stdin_eof {
            let mut sink = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let terminated = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated => {}
        _ = stdin_closed => {}
    }
}

fn write_requests_log(path: &str, server: &ScriptedServer) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for request in server.requests() {
        let line = serde_json::json!({
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "body": if request.body.is_null() { serde_json::Value::String(request.body_text) } else { request.body },
        });
        writeln!(file, "{line}")?;
    }
    file.flush()
}
