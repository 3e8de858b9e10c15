//! `kiln task new|list|show|logs|diff|cancel|reply`: a client of `kiln serve`.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{bail, Result};
use kiln_protocol::{Event, EventKind, EventSink};
use serde_json::{json, Value};

use crate::api_client::{print_json, ApiClient, ServerArgs};
use crate::render::{terminal_safe, HumanRenderer};
use crate::run_blocking;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: TaskCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TaskCommand {
    /// Create a task.
    New {
        /// Environment id or name (default: your only environment).
        #[arg(long = "env", value_name = "ENV")]
        environment: Option<String>,
        /// Ask mode: answer a question, change nothing.
        #[arg(long)]
        ask: bool,
        /// Attempts run in parallel (best-of-N), 1 to 8.
        #[arg(long, default_value_t = 1)]
        attempts: u32,
        #[arg(long)]
        model: Option<String>,
        /// Branch, tag or commit to start from (default: the environment's base branch).
        #[arg(long)]
        base_ref: Option<String>,
        prompt: String,
    },
    /// List your tasks, newest first.
    List {
        /// queued, running, succeeded, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// A task and its attempts.
    Show { id: String },
    /// A task's events; -f follows until it finishes.
    Logs {
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        attempt: Option<u32>,
        id: String,
    },
    /// An attempt's diff against its base.
    Diff {
        id: String,
        #[arg(long, default_value_t = 1)]
        attempt: u32,
    },
    /// Cancel a task's attempts.
    Cancel { id: String },
    /// Send a message: steers a running attempt, continues a finished one.
    Reply {
        id: String,
        text: String,
        /// Only this attempt (default: every attempt).
        #[arg(long)]
        attempt: Option<u32>,
    },
}

pub fn run(args: Args) -> ExitCode {
    run_blocking(async move {
        let client = ApiClient::new(&args.server)?;
        let json = args.server.json;
        match args.command {
            TaskCommand::New {
                environment,
                ask,
                attempts,
                model,
                base_ref,
                prompt,
            } => {
                let environment = match environment {
                    Some(env) => env,
                    None => only_environment(&client).await?,
                };
                let body = json!({
                    "environment": environment,
                    "prompt": prompt,
                    "mode": if ask { "ask" } else { "code" },
                    "attempts": attempts,
                    "model": model,
                    "base_ref": base_ref,
                });
                let task = client.post("/api/tasks", &body).await?;
                if json {
                    print_json(&task);
                } else {
                    let id = task["id"].as_str().unwrap_or_default();
                    println!("{id}");
                    eprintln!("created task {id} ({attempts} attempt(s)); follow it with: kiln task logs -f {id}");
                }
            }
            TaskCommand::List { status, limit } => {
                let mut path = format!("/api/tasks?limit={limit}");
                if let Some(status) = status {
                    path.push_str(&format!("&status={status}"));
                }
                let page = client.get(&path).await?;
                if json {
                    print_json(&page);
                } else {
                    for task in page["tasks"].as_array().into_iter().flatten() {
                        println!(
                            "{}  {:<9}  {}x  {}",
                            task["id"].as_str().unwrap_or_default(),
                            task["status"].as_str().unwrap_or_default(),
                            task["attempt_count"],
                            first_line(task["prompt"].as_str().unwrap_or_default())
                        );
                    }
                }
            }
            TaskCommand::Show { id } => {
                let task = client.get(&format!("/api/tasks/{id}")).await?;
                if json {
                    print_json(&task);
                } else {
                    print_task(&task);
                }
            }
            TaskCommand::Logs {
                follow,
                attempt,
                id,
            } => logs(&client, &id, attempt, follow, json).await?,
            TaskCommand::Diff { id, attempt } => {
                let diff = client
                    .get_text(&format!("/api/tasks/{id}/attempts/{attempt}/diff"))
                    .await?;
                // A patch saved to a file stays byte for byte; a terminal
                // gets control characters made visible.
                if std::io::stdout().is_terminal() {
                    print!("{}", terminal_safe(&diff));
                } else {
                    print!("{diff}");
                }
            }
            TaskCommand::Cancel { id } => {
                let outcome = client
                    .post(&format!("/api/tasks/{id}/cancel"), &json!({}))
                    .await?;
                if json {
                    print_json(&outcome);
                } else {
                    println!(
                        "cancelled attempts {}; stopping running attempts {}",
                        outcome["cancelled"], outcome["cancel_requested"]
                    );
                }
            }
            TaskCommand::Reply { id, text, attempt } => {
                let sent = client
                    .post(
                        &format!("/api/tasks/{id}/messages"),
                        &json!({"text": text, "attempt": attempt}),
                    )
                    .await?;
                if json {
                    print_json(&sent);
                } else {
                    let count = sent["messages"].as_array().map_or(0, Vec::len);
                    println!("sent to {count} attempt(s)");
                }
            }
        }
        Ok(())
    })
}

async fn only_environment(client: &ApiClient) -> Result<String> {
    let listed = client.get("/api/environments").await?;
    let environments = listed["environments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match environments.as_slice() {
        [only] => Ok(only["id"].as_str().unwrap_or_default().to_string()),
        [] => bail!("no environment yet: create one with `kiln env add NAME REPO`"),
        _ => bail!("you have several environments: pick one with --env NAME"),
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(70).collect()
}

fn print_task(task: &Value) {
    println!(
        "{}  {}  ({} mode)",
        task["id"].as_str().unwrap_or_default(),
        task["status"].as_str().unwrap_or_default(),
        task["mode"].as_str().unwrap_or_default()
    );
    println!(
        "{}",
        terminal_safe(task["prompt"].as_str().unwrap_or_default())
    );
    for attempt in task["attempts"].as_array().into_iter().flatten() {
        let stat = &attempt["diff_stat"];
        let stat = if stat.is_object() {
            format!(
                "{} files +{} -{}",
                stat["files_changed"], stat["insertions"], stat["deletions"]
            )
        } else {
            "no diff yet".into()
        };
        println!(
            "  attempt {}: {}  {}  {}",
            attempt["n"],
            attempt["status"].as_str().unwrap_or_default(),
            stat,
            attempt["branch"].as_str().unwrap_or_default()
        );
        if let Some(reason) = attempt["reason"].as_str() {
            println!("    reason: {}", terminal_safe(reason));
        }
        if let Some(message) = attempt["final_message"].as_str() {
            for line in message.lines() {
                println!("    {}", terminal_safe(line));
            }
        }
    }
}

/// Streams the task's events: readable on stderr (final messages on
/// stdout), or each event's JSON on stdout with --json.
async fn logs(
    client: &ApiClient,
    id: &str,
    attempt: Option<u32>,
    follow: bool,
    json: bool,
) -> Result<()> {
    let mut path = format!("/api/tasks/{id}/events?follow={follow}");
    if let Some(n) = attempt {
        path.push_str(&format!("&attempt={n}"));
    }
    let mut response = client.stream(&path).await?;
    let renderer = HumanRenderer::new();
    let mut buffer = String::new();
    let mut current_attempt = None;
    while let Some(chunk) = response.chunk().await? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let data: String = block
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue;
            }
            if json {
                println!("{data}");
                continue;
            }
            let Ok(value) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            let n = value["attempt"].as_u64();
            if n != current_attempt {
                eprintln!("── attempt {}", n.unwrap_or(0));
                current_attempt = n;
            }
            if let Ok(event) = serde_json::from_value::<Event>(value) {
                renderer.emit(&event);
                if let EventKind::AttemptFinished {
                    final_message: Some(message),
                    ..
                } = &event.kind
                {
                    println!("{}", terminal_safe(message));
                }
            }
        }
    }
    Ok(())
}
