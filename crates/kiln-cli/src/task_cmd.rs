//! `kiln task new|list|show|logs|diff|apply|cancel|prefer|reply|pr`: a client of `kiln serve`.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kiln_protocol::api::{NewMessage, NewTask, TaskDetail, TaskQuery, TaskStatus, TaskStreamItem};
use kiln_protocol::{format_usd, EventKind, EventSink, Mode, NewPullRequest};

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
        /// Stop each attempt cleanly (its work kept) once it has cost this
        /// many US dollars (default: the environment's budget).
        #[arg(long, value_name = "USD")]
        budget_usd: Option<f64>,
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
    /// Apply an attempt's commit to the checkout in the current directory
    /// (3-way when HEAD moved on from its base), after a preflight that
    /// names every conflicting file; or --branch to create a branch with it.
    Apply {
        id: String,
        /// The attempt (default: the best-ranked one, else the first that succeeded).
        #[arg(long)]
        attempt: Option<u32>,
        #[command(flatten)]
        how: crate::apply_cmd::HowToApply,
    },
    /// Cancel a task's attempts.
    Cancel { id: String },
    /// Mark a finished attempt preferred: it ranks first whatever the
    /// evidence (--clear takes the mark off it again).
    Prefer {
        id: String,
        attempt: u32,
        #[arg(long)]
        clear: bool,
    },
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
                budget_usd,
                prompt,
            } => {
                let environment = match environment {
                    Some(env) => env,
                    None => only_environment(&client).await?,
                };
                let new = NewTask {
                    budget_usd,
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
                    scope: None,
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
            TaskCommand::Apply { id, attempt, how } => {
                return apply(&client, &id, attempt, &how).await;
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
            TaskCommand::Prefer { id, attempt, clear } => {
                let task = client.prefer_attempt(&id, attempt, !clear).await?;
                if json {
                    task.print_json();
                } else {
                    print_ranking(&task.value);
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

/// `kiln task apply`: the attempt's commits fetched from the server into
/// the clone here (objects only), then the shared apply.
async fn apply(
    client: &ApiClient,
    id: &str,
    attempt: Option<u32>,
    how: &crate::apply_cmd::HowToApply,
) -> Result<ExitCode> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let repo = crate::apply_cmd::your_clone(&cwd, "kiln task apply")?;
    let detail = client.get_task(id).await?.value;
    let n = match attempt {
        Some(n) => n,
        None => {
            let (n, why) = default_attempt(&detail)?;
            eprintln!("attempt {n} ({why}); pick another with --attempt N");
            n
        }
    };
    let bundle = client.attempt_bundle(id, n).await?;
    for (what, sha) in [("base", &bundle.base), ("commit", &bundle.commit)] {
        if !kiln_workspace::apply::is_commit_id(sha) {
            bail!("the server named {what} {sha:?}, which is not a commit id");
        }
    }
    if !kiln_workspace::apply::has_commit(&repo, &bundle.base)? {
        bail!(
            "attempt {n} started from commit {base}, which your clone at {root} does not have: \
             fetch it (`git fetch origin`, or `git fetch origin {base}`) and try again",
            base = bundle.base,
            root = repo.root().display()
        );
    }
    // In the git directory: the bundle is the user's code, kept from other users.
    let file = repo
        .git_dir()
        .join(format!("kiln-apply-{}.bundle", std::process::id()));
    std::fs::write(&file, &bundle.bytes)
        .with_context(|| format!("cannot write {}", file.display()))?;
    let unbundled = kiln_workspace::apply::unbundle(&repo, &file);
    let _ = std::fs::remove_file(&file);
    let refs = unbundled.context("cannot read the attempt's bundle")?;
    if !refs
        .iter()
        .any(|(sha, _)| sha.eq_ignore_ascii_case(&bundle.commit))
    {
        bail!(
            "the server's bundle does not hold commit {} it named: try again",
            bundle.commit
        );
    }
    crate::apply_cmd::apply_commit(&repo, &bundle.base, &bundle.commit, &bundle.branch, how)
}

/// The attempt `kiln task apply` takes without --attempt, and why.
fn default_attempt(detail: &TaskDetail) -> Result<(u32, &'static str)> {
    let has_commit = |n: u32| {
        detail
            .attempts
            .iter()
            .any(|a| a.n == n && a.commit_sha.is_some())
    };
    // An attempt that changed nothing may rank first (an answer): it has
    // nothing to apply.
    if let Some(best) = detail.ranking.iter().find(|e| has_commit(e.attempt)) {
        let why = if best.preferred {
            "marked preferred"
        } else if best.rank == 1 {
            "the best-ranked"
        } else {
            "the best-ranked with a commit"
        };
        return Ok((best.attempt, why));
    }
    let succeeded = detail.attempts.iter().find(|a| {
        a.status == kiln_protocol::api::AttemptState::Succeeded && a.commit_sha.is_some()
    });
    match succeeded {
        Some(attempt) => Ok((attempt.n, "the first that succeeded with a commit")),
        None => bail!(
            "no attempt of task {} succeeded with a commit: pick one with --attempt N (kiln task show {} lists them)",
            detail.task.id,
            detail.task.id
        ),
    }
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
    let mut spending = Vec::new();
    if let Some(cost) = detail.cost_usd {
        spending.push(format!("cost {}", format_usd(cost)));
    }
    if let Some(budget) = task.budget_usd {
        spending.push(format!("budget {} per attempt", format_usd(budget)));
    }
    if !spending.is_empty() {
        println!("{}", spending.join(" · "));
    }
    for attempt in &detail.attempts {
        let stat = match attempt.diff_stat {
            Some(stat) => format!(
                "{} files +{} -{}",
                stat.files_changed, stat.insertions, stat.deletions
            ),
            None => "no diff yet".into(),
        };
        let cost = match attempt.cost_usd {
            Some(cost) => format!("  {}", format_usd(cost)),
            None if attempt.usage.total() > 0 => "  cost unknown".to_string(),
            None => String::new(),
        };
        println!(
            "  attempt {}: {}  {}{}  {}",
            attempt.n,
            attempt.status,
            stat,
            cost,
            terminal_safe(attempt.branch.as_deref().unwrap_or_default())
        );
        if let Some(reason) = &attempt.reason {
            println!("    reason: {}", terminal_safe(reason));
        }
        for check in &attempt.checks {
            // Names and commands come from the repository's configuration.
            let verdict = if check.passed {
                "passed".to_string()
            } else {
                terminal_safe(check.reason.as_deref().unwrap_or("failed")).into_owned()
            };
            println!(
                "    check {}: {verdict} ({} ms, output {})",
                terminal_safe(&check.name),
                check.duration_ms,
                check.chunk_id
            );
        }
        if attempt.citations_invalid > 0 {
            println!(
                "    citations: {} of {} did not hold",
                attempt.citations_invalid,
                attempt.citations_valid + attempt.citations_invalid
            );
        }
        if let Some(message) = &attempt.final_message {
            for line in message.lines() {
                println!("    {}", terminal_safe(line));
            }
        }
    }
    print_ranking(detail);
    if let Some(pr) = &detail.pull_request {
        println!(
            "pull request: {} ({} #{}, attempt {}, branch {}{})",
            terminal_safe(&pr.url),
            pr.forge,
            pr.number,
            pr.attempt,
            terminal_safe(&pr.branch),
            if pr.draft { ", draft" } else { "" }
        );
    }
}

/// The finished attempts best first, each with the evidence weighed.
fn print_ranking(detail: &TaskDetail) {
    if detail.ranking.is_empty() {
        println!("ranking: no attempt finished yet");
        return;
    }
    println!("ranking (best first):");
    for entry in &detail.ranking {
        // Reasons quote check names from the repository's configuration.
        let reasons: Vec<String> = entry
            .reasons
            .iter()
            .map(|r| terminal_safe(r).into_owned())
            .collect();
        println!(
            "  {}. attempt {}: {}",
            entry.rank,
            entry.attempt,
            reasons.join("; ")
        );
    }
    if let Some(n) = detail.task.preferred_attempt {
        println!(
            "  (attempt {n} ranks first by a user's preference; clear it with: kiln task prefer --clear {} {n})",
            detail.task.id
        );
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
