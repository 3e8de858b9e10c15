//! `kiln exec` (Code mode) and `kiln ask` (Ask mode): one attempt on a local
//! checkout, streamed to the terminal, logged under `$KILN_HOME/sessions`.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln_agent::{
    AgentConfig, AttemptInput, AttemptPlan, EventLog, InstructionsConfig, SandboxPlan, Workspace,
};
use kiln_protocol::{AttemptStatus, EventKind, EventSink, Mode};
use kiln_workspace::{BaseCheckouts, Repo, Worktree};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::event_log::{self, JsonStdout, JsonlFile};
use crate::render::HumanRenderer;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Work in DIR instead of the current directory.
    #[arg(short = 'C', long = "cd", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Model to use (overrides `model` in config.toml).
    #[arg(short, long)]
    pub model: Option<String>,
    /// Print the event log as JSON lines on stdout instead of the readable view.
    #[arg(long)]
    pub json: bool,
    /// Work in a fresh git worktree on a new branch; your checkout stays untouched.
    #[arg(long)]
    pub worktree: bool,
    /// Continue the run recorded in this event log with a follow-up PROMPT.
    #[arg(long, value_name = "LOG")]
    pub resume: Option<PathBuf>,
    /// Sandbox backend for commands: bwrap (default) or none (no isolation).
    #[arg(long, value_name = "BACKEND")]
    pub sandbox: Option<String>,
    /// Override a configuration key for this run, e.g. -c model_provider=ollama.
    #[arg(short = 'c', long = "config", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Stop cleanly once the run has cost this many US dollars at the
    /// model's price, keeping its work (overrides `limits.max_cost_usd`).
    #[arg(long, value_name = "USD")]
    pub budget_usd: Option<f64>,
    /// Run even when the workspace would be your home directory (or one of
    /// its parents) outside any git repository.
    #[arg(long)]
    pub skip_git_repo_check: bool,
    /// Do not run the checks after the agent's last turn (docs/checks.md).
    #[arg(long)]
    pub no_checks: bool,
    /// Add a check (repeatable); it replaces the repository's check of the
    /// same name.
    #[arg(long = "check", value_name = "NAME=COMMAND")]
    pub checks: Vec<String>,
    /// The task; `-` reads it from stdin.
    pub prompt: String,
}

pub fn run(args: Args, mode: Mode) -> ExitCode {
    // Read once, here: whether it resumes a `--worktree` run decides the
    // namespaces below. A log that cannot be read is reported by `run_async`,
    // in its turn.
    let resumed = args.resume.as_deref().map(Resumed::load).transpose();
    // Copy-on-write checkouts need the process's own mount namespace,
    // entered before the runtime starts its threads. A failure only means
    // full checkouts; `create_worktree` says why.
    let resumes_a_worktree =
        matches!(&resumed, Ok(Some(resumed)) if resumed.worked_in_a_worktree());
    if args.worktree || resumes_a_worktree {
        let _ = kiln_workspace::overlay::enable();
    }
    crate::run_blocking(run_async(args, mode, resumed))
}

async fn run_async(args: Args, mode: Mode, resumed: Result<Option<Resumed>>) -> Result<ExitCode> {
    let prompt = read_prompt(&args.prompt)?;
    let checks = args
        .checks
        .iter()
        .map(|raw| kiln_agent::checks::parse_check_flag(raw))
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(|problem| anyhow::anyhow!(problem))?;
    kiln_agent::checks::validate_checks(&checks).map_err(|problem| anyhow::anyhow!(problem))?;
    let home = config::kiln_home()?;
    std::fs::create_dir_all(&home)
        .with_context(|| format!("cannot create kiln home {}: set KILN_HOME", home.display()))?;

    let resumed = resumed?;
    let requested_dir = match (&args.dir, &resumed) {
        (Some(dir), _) => dir.clone(),
        (None, Some(resumed)) if args.dir.is_none() => resumed.cwd.clone(),
        _ => std::env::current_dir().context("cannot read the current directory")?,
    };
    // A `--worktree` run's copy-on-write checkout is unmounted when kiln
    // exits; resuming it mounts it again, with everything it held.
    let reattached = match &resumed {
        Some(_) if args.dir.is_none() && !args.worktree => {
            reattach_worktree(&home, &requested_dir)?
        }
        _ => None,
    };
    let cwd = requested_dir.canonicalize().with_context(|| {
        format!(
            "cannot use {} as the working directory",
            requested_dir.display()
        )
    })?;

    if !args.skip_git_repo_check {
        refuse_home_as_workspace(&cwd)?;
    }

    let mut overrides = args.overrides.clone();
    if let Some(model) = &args.model {
        overrides.push(format!("model={}", toml_string(model)));
    }
    if let Some(backend) = &args.sandbox {
        overrides.push(format!("sandbox.backend={}", toml_string(backend)));
    }
    if let Some(budget) = args.budget_usd {
        // `{:?}` keeps a decimal point (2.0, not 2): TOML reads a float.
        overrides.push(format!("limits.max_cost_usd={budget:?}"));
    }
    let config = config::load(&home, &cwd, &overrides)?;

    let mut full_checkout_reason = None;
    let worktree = if args.worktree {
        let (worktree, relative, reason) = create_worktree(&home, &cwd)?;
        full_checkout_reason = reason;
        Some((worktree, relative))
    } else {
        reattached
    };
    let run_dir = match &worktree {
        Some((wt, relative)) => wt.path().join(relative),
        None => cwd.clone(),
    };
    let workspace_root = config::project_root(&run_dir);

    let provider = config.provider()?;
    let client = kiln_model::connect(&provider).map_err(|err| anyhow::anyhow!("{err}"))?;
    let kiln_mount_point = crate::sandbox_policy::KilnMountPoint::note(&workspace_root);
    let base_policy = crate::sandbox_policy::base_policy(&config)?;

    let log_file = match &args.resume {
        Some(path) => JsonlFile::open_append(path)?,
        None => JsonlFile::create_new(&home)?,
    };
    eprintln!("log: {}", log_file.path().display());
    let log_path = log_file.path().to_path_buf();
    let mut sinks: Vec<Arc<dyn EventSink>> = vec![Arc::new(log_file)];
    if args.json {
        sinks.push(Arc::new(JsonStdout));
    } else {
        sinks.push(Arc::new(HumanRenderer::new()));
    }
    let message = kiln_agent::commit_message(&prompt);
    let (input, next_seq) = match resumed {
        Some(resumed) => (
            AttemptInput::resume(prompt, &resumed.events),
            resumed.next_seq,
        ),
        None => (AttemptInput::new(prompt), 1),
    };
    let events = EventLog::new(next_seq, sinks);
    if let Some(reason) = full_checkout_reason {
        events.emit(EventKind::Warning {
            message: format!("the worktree is a full checkout, not copy-on-write: {reason}"),
        });
    }

    let mut agent_config = agent_config(&config, &provider.name, mode, run_dir.clone(), &home);
    agent_config.checks = checks;
    agent_config.run_checks = !args.no_checks;
    let cancel = CancellationToken::new();
    let on_interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_interrupt.cancel();
        }
    });

    let (workspace, commit_message) = match worktree {
        Some((wt, relative)) => {
            let base = wt.base_commit().to_string();
            // `.git/worktrees/<name>` lies in the repository's git directory.
            let git_dir = wt
                .git_dir()
                .parent()
                .and_then(Path::parent)
                .unwrap_or(wt.git_dir())
                .to_path_buf();
            let checkout = kiln_workspace::Checkout::of_worktree(wt, base, git_dir);
            let workspace = Workspace::Checkout {
                checkout: Box::new(checkout),
                subdir: relative,
            };
            (workspace, Some(message))
        }
        None => {
            let workspace = Workspace::InPlace {
                root: workspace_root,
                cwd: run_dir,
            };
            (workspace, None)
        }
    };
    let policy = kiln_agent::sandbox_policy(&base_policy, &workspace, mode);
    if policy.backend == kiln_sandbox::Backend::None {
        eprintln!("warning: --sandbox none: commands run with NO isolation, as you, with your network and files");
    }
    let checkout_dir = workspace.checkout().map(|c| c.path().to_path_buf());
    let mut plan = AttemptPlan::new(
        agent_config,
        workspace,
        SandboxPlan::Policy(Box::new(policy)),
        input,
    );
    plan.commit_message = commit_message;
    let outcome = kiln_agent::run(plan, client, &events, cancel).await;
    drop(kiln_mount_point);

    if let Some(dir) = checkout_dir {
        // Unmounted either way; `kiln exec --resume LOG` mounts it again.
        park_worktree(&home, &dir)?;
    }
    if !args.json && outcome.commit_sha.is_some() {
        eprintln!(
            "bring it into your checkout with: kiln apply {}",
            log_path.display()
        );
    }
    if !args.json && !std::io::stdout().is_terminal() {
        if let Some(message) = &outcome.final_message {
            // Piped output is read later, often by a terminal: no control sequences.
            println!("{}", crate::render::terminal_safe(message));
        }
    }
    Ok(match outcome.status {
        AttemptStatus::Succeeded => ExitCode::SUCCESS,
        AttemptStatus::Failed => {
            eprintln!(
                "kiln: {}",
                outcome.reason.as_deref().unwrap_or("the attempt failed")
            );
            ExitCode::FAILURE
        }
        AttemptStatus::Cancelled => {
            eprintln!("kiln: cancelled");
            ExitCode::from(130)
        }
        AttemptStatus::ChecksFailed => {
            eprintln!(
                "kiln: {}",
                outcome.reason.as_deref().unwrap_or("the checks failed")
            );
            ExitCode::from(EXIT_CHECKS_FAILED)
        }
    })
}

/// The exit status of `kiln exec` (and `kiln task logs -f`) when the agent
/// finished but a check kiln ran itself failed. 1 is any other failure.
pub const EXIT_CHECKS_FAILED: u8 = 3;

/// Outside a repository the workspace is the working directory itself: in
/// `$HOME` (or `/`, `/home`) that hands the agent every file the user has,
/// `~/.ssh` and `~/.kiln` included.
fn refuse_home_as_workspace(cwd: &Path) -> Result<()> {
    if kiln_agent::project_root(cwd).is_some() {
        return Ok(());
    }
    let Some(home) = std::env::var_os("HOME").filter(|home| !home.is_empty()) else {
        return Ok(());
    };
    let home = PathBuf::from(home);
    let home = home.canonicalize().unwrap_or(home);
    if home.starts_with(cwd) {
        bail!(
            "{} is not inside a git repository, so it would be the workspace, and it holds your              home directory {}: the agent could read and change every file in it. cd into a              project (or pass -C DIR), or pass --skip-git-repo-check to run here anyway",
            cwd.display(),
            home.display()
        );
    }
    Ok(())
}

fn read_prompt(raw: &str) -> Result<String> {
    let prompt = if raw == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the prompt from stdin")?;
        text
    } else {
        raw.to_string()
    };
    if prompt.trim().is_empty() {
        bail!("the prompt is empty: say what to do, e.g. kiln exec \"make the failing test pass\"");
    }
    Ok(prompt)
}

/// `-c`/flag values are spliced into TOML; quote them so any text is a string.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// What a previous run left in its log: the conversation and where it ran.
struct Resumed {
    events: Vec<kiln_protocol::Event>,
    next_seq: u64,
    cwd: PathBuf,
}

impl Resumed {
    /// Whether the run worked in a `kiln exec --worktree` checkout.
    fn worked_in_a_worktree(&self) -> bool {
        config::kiln_home().is_ok_and(|home| self.cwd.starts_with(home.join("worktrees")))
    }

    fn load(path: &Path) -> Result<Self> {
        let events = event_log::read_events(path)?;
        let next_seq = events.last().map_or(1, |e| e.seq + 1);
        let cwd = events
            .iter()
            .rev()
            .find_map(|e| match &e.kind {
                EventKind::AttemptStarted { cwd, .. } => Some(PathBuf::from(cwd)),
                _ => None,
            })
            .with_context(|| {
                format!(
                    "{} has no attempt.started event: not a kiln run log",
                    path.display()
                )
            })?;
        Ok(Resumed {
            events,
            next_seq,
            cwd,
        })
    }
}

/// A checkout of HEAD on a new branch under `$KILN_HOME/worktrees`, with
/// the directory to run in inside it, and why it is not copy-on-write when
/// it is not.
fn create_worktree(home: &Path, cwd: &Path) -> Result<(Worktree, PathBuf, Option<String>)> {
    let repo = Repo::discover(cwd)?;
    let id = chrono::Utc::now().format("%Y%m%d-%H%M%S-%f").to_string();
    let dest = home.join("worktrees").join(&id);
    std::fs::create_dir_all(dest.parent().unwrap_or(home))?;
    // Checkouts the user removed (`git worktree remove`) leave their layers.
    kiln_workspace::sweep_orphan_layers(&home.join("worktrees"));
    let bases = BaseCheckouts::new(home.join("bases"));
    let (worktree, reason) =
        repo.add_checkout(&bases, "HEAD", &format!("kiln/exec/{id}"), &dest)?;
    let root = repo
        .root()
        .canonicalize()
        .unwrap_or_else(|_| repo.root().to_path_buf());
    let relative = cwd
        .strip_prefix(&root)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    Ok((worktree, relative, reason))
}

/// The parked copy-on-write checkout `dir` lies in, mounted again, when `dir`
/// is under `$KILN_HOME/worktrees/<id>`.
fn reattach_worktree(home: &Path, dir: &Path) -> Result<Option<(Worktree, PathBuf)>> {
    let Ok(inside) = dir.strip_prefix(home.join("worktrees")) else {
        return Ok(None);
    };
    let mut parts = inside.components();
    let Some(id) = parts.next() else {
        return Ok(None);
    };
    let dest = home.join("worktrees").join(id);
    let bases = BaseCheckouts::new(home.join("bases"));
    let worktree = Worktree::reattach(&bases, &dest)
        .with_context(|| format!("cannot mount the checkout {} again", dest.display()))?;
    Ok(worktree.map(|wt| (wt, parts.as_path().to_path_buf())))
}

/// Unmount the copy-on-write checkout at `dir` (a full worktree stays as
/// it is); `kiln exec --resume LOG` mounts it again.
fn park_worktree(home: &Path, dir: &Path) -> Result<()> {
    let bases = BaseCheckouts::new(home.join("bases"));
    if let Some(worktree) = Worktree::reattach(&bases, dir)? {
        worktree.park()?;
    }
    Ok(())
}

pub(crate) fn agent_config(
    config: &Config,
    provider: &str,
    mode: Mode,
    cwd: PathBuf,
    home: &Path,
) -> AgentConfig {
    let mut agent = AgentConfig::new(config.model.clone(), mode, cwd);
    agent.provider = provider.to_string();
    agent.kiln_home = Some(home.to_path_buf());
    agent.instructions = InstructionsConfig {
        fallback_filenames: config.project_doc_fallback_filenames.clone(),
        byte_budget: config.project_doc_max_bytes,
    };
    let limits = &mut agent.limits;
    let wanted = &config.limits;
    if let Some(turns) = wanted.max_turns {
        limits.max_turns = turns;
    }
    limits.max_total_tokens = wanted.max_total_tokens;
    limits.max_cost_usd = wanted.max_cost_usd;
    limits.wall_clock = wanted.wall_clock_secs.map(Duration::from_secs);
    if let Some(secs) = wanted.command_timeout_secs {
        limits.command_timeout = Duration::from_secs(secs);
    }
    if let Some(secs) = wanted.max_command_timeout_secs {
        limits.max_command_timeout = Duration::from_secs(secs);
    }
    if let Some(window) = config.model_context_window {
        limits.context_window = window;
    }
    // `load` refused invalid prices already: a table is always at hand here.
    if let Ok(prices) = config.price_table() {
        agent.prices = prices;
    }
    if let Some(turns) = wanted.check_fix_turns {
        limits.check_fix_turns = turns;
    }
    if let Some(secs) = wanted.check_timeout_secs {
        limits.check_timeout = Duration::from_secs(secs);
    }
    agent
}
