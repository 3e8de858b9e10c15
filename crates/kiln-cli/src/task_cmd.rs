//! `kiln task new|list|show|logs|diff|cancel|reply|pr`: a client of `kiln serve`.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kiln_protocol::api::{NewMessage, NewTask, TaskDetail, TaskQuery, TaskStatus, TaskStreamItem};
use kiln_protocol::{EventKind, EventSink, Mode, NewPullRequest};

use crate::api_client::{ApiClient, EventsQuery, ServerArgs};
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
    /// A task's events; -f follows until it finishes and exits 0 if it
    /// succeeded, 1 if it failed, 130 if it was cancelled.
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
    /// Push an attempt's commit as branch kiln/<task> and open a pull
    /// (merge) request on the environment's forge, or update the task's
    /// pull request if it has one. Prints its URL.
    Pr {
        id: String,
        /// The attempt to propose (default: the best-ranked attempt).
        #[arg(long)]
        attempt: Option<u32>,
        /// Open it as a draft (GitHub: only when it is created).
        #[arg(long)]
        draft: bool,
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
                let new = NewTask {
                    budget_usd: None,
                    environment,
                    prompt,
                    mode: if ask { Mode::Ask } else { Mode::Code },
                    attempts,
                    model,
                    base_ref,
                };
                let task = client.create_task(&new).await?;
                if json {
                    task.print_json();
                } else {
                    let id = &task.value.task.id;
                    println!("{id}");
                    eprintln!("created task {id} ({attempts} attempt(s)); follow it with: kiln task logs -f {id}");
                }
            }
            TaskCommand::List { status, limit } => {
                let status = status
                    .map(|s| s.parse::<TaskStatus>())
                    .transpose()
                    .context("--status")?;
                let query = TaskQuery {
                    status,
                    limit: Some(limit),
                    cursor: None,
                };
                let page = client.list_tasks(&query).await?;
                if json {
                    page.print_json();
                } else {
                    for task in &page.value.tasks {
                        println!(
                            "{}  {:<9}  {}x  {}",
                            task.id,
                            task.status,
                            task.attempt_count,
                            terminal_safe(&first_line(&task.prompt))
                        );
                    }
                }
            }
            TaskCommand::Show { id } => {
                let task = client.get_task(&id).await?;
                if json {
                    task.print_json();
                } else {
                    print_task(&task.value);
                }
            }
            TaskCommand::Logs {
                follow,
                attempt,
                id,
            } => return logs(&client, &id, attempt, follow, json).await,
            TaskCommand::Diff { id, attempt } => {
                let diff = client.attempt_diff(&id, attempt).await?;
                // A patch saved to a file stays byte for byte; a terminal
                // gets control characters made visible.
                if std::io::stdout().is_terminal() {
                    print!("{}", terminal_safe(&diff));
                } else {
                    print!("{diff}");
                }
            }
            TaskCommand::Cancel { id } => {
                let outcome = client.cancel_task(&id).await?;
                if json {
                    outcome.print_json();
                } else {
                    println!(
                        "cancelled attempts {:?}; stopping running attempts {:?}",
                        outcome.value.cancelled, outcome.value.cancel_requested
                    );
                }
            }
            TaskCommand::Reply { id, text, attempt } => {
                let sent = client
                    .send_message(&id, &NewMessage { text, attempt })
                    .await?;
                if json {
                    sent.print_json();
                } else {
                    println!("sent to {} attempt(s)", sent.value.messages.len());
                }
            }
            TaskCommand::Pr { id, attempt, draft } => {
                let opened = client
                    .open_pull_request(&id, &NewPullRequest { attempt, draft })
                    .await?;
                if json {
                    opened.print_json();
                } else {
                    let pr = &opened.value;
                    println!("{}", terminal_safe(&pr.url));
                    eprintln!(
                        "{} #{} of task {} proposes attempt {} (branch {}){}",
                        pr.forge,
                        pr.number,
                        pr.task_id,
                        pr.attempt,
                        terminal_safe(&pr.branch),
                        if pr.created_at == pr.updated_at {
                            ""
                        } else {
                            ": updated"
                        }
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn only_environment(client: &ApiClient) -> Result<String> {
    let listed = client.list_environments().await?.value;
    match listed.environments.as_slice() {
        [only] => Ok(only.id.clone()),
        [] => bail!("no environment yet: create one with `kiln env add NAME REPO`"),
        _ => bail!("you have several environments: pick one with --env NAME"),
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(70).collect()
}

fn print_task(detail: &TaskDetail) {
    let task = &detail.task;
    println!("{}  {}  ({} mode)", task.id, task.status, task.mode);
    println!("{}", terminal_safe(&task.prompt));
    for attempt in &detail.attempts {
        let stat = match attempt.diff_stat {
            Some(stat) => format!(
                "{} files +{} -{}",
                stat.files_changed, stat.insertions, stat.deletions
            ),
            None => "no diff yet".into(),
        };
        println!(
            "  attempt {}: {}  {}  {}",
            attempt.n,
            attempt.status,
            stat,
            terminal_safe(attempt.branch.as_deref().unwrap_or_default())
        );
        if let Some(reason) = &attempt.reason {
            println!("    reason: {}", terminal_safe(reason));
        }
        if let Some(message) = &attempt.final_message {
            for line in message.lines() {
                println!("    {}", terminal_safe(line));
            }
        }
    }
}

/// Streams the task's events: readable on stderr (final messages on
/// stdout), or each frame's JSON on stdout with --json. Following, it ends
/// with the task and its exit status says how the task ended.
async fn logs(
    client: &ApiClient,
    id: &str,
    attempt: Option<u32>,
    follow: bool,
    json: bool,
) -> Result<ExitCode> {
    let query = EventsQuery {
        attempt,
        after: None,
        follow,
    };
    let mut events = client.events(id, &query).await?;
    let renderer = HumanRenderer::new();
    let mut current_attempt = None;
    let mut last_status = None;
    while let Some(frame) = events.next().await? {
        if json {
            println!("{}", one_line(&frame.data));
        }
        match frame.item {
            TaskStreamItem::Status(status) => last_status = Some(status.status),
            TaskStreamItem::Event { event, .. } if !json => {
                if current_attempt != Some(event.attempt) {
                    eprintln!("── attempt {}", event.attempt);
                    current_attempt = Some(event.attempt);
                }
                renderer.emit(&event.event);
                if let EventKind::AttemptFinished {
                    final_message: Some(message),
                    ..
                } = &event.event.kind
                {
                    println!("{}", terminal_safe(message));
                }
            }
            TaskStreamItem::Event { .. } => {}
        }
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    match last_status {
        Some(status) if status.is_finished() => {
            if !json {
                eprintln!("── task {id} {status}");
            }
            Ok(exit_status(status))
        }
        _ => bail!(
            "the server closed the event stream of task {id} before the task finished \
             (is it shutting down?): run `kiln task logs -f {id}` again"
        ),
    }
}

/// A frame's JSON on one line, so that `--json` output stays JSON lines
/// when a server splits its data over several `data:` lines.
fn one_line(data: &str) -> std::borrow::Cow<'_, str> {
    if !data.contains(['\n', '\r']) {
        return data.into();
    }
    match serde_json::from_str::<serde_json::Value>(data) {
        Ok(value) => value.to_string().into(),
        Err(_) => data.replace(['\n', '\r'], " ").into(),
    }
}

/// How `kiln task logs -f` exits for a task that ended with `status`.
fn exit_status(status: TaskStatus) -> ExitCode {
    match status {
        TaskStatus::Succeeded => ExitCode::SUCCESS,
        TaskStatus::Cancelled => ExitCode::from(130),
        TaskStatus::ChecksFailed => ExitCode::from(crate::exec_cmd::EXIT_CHECKS_FAILED),
        TaskStatus::Failed | TaskStatus::Queued | TaskStatus::Running => ExitCode::FAILURE,
    }
}
