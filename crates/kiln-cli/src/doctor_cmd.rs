//! `kiln doctor`: checks that this machine can run kiln, and says how to fix
//! what it cannot.
//!
//! Each check tries the real thing where it can (starts a bubblewrap
//! sandbox, mounts an overlay, asks the model endpoint for its models)
//! rather than guessing from files. A `problem` stops kiln from working as
//! configured; a `warning` means kiln works but without something (limits
//! fall back to rlimits, checkouts are full copies). Exit status 1 when
//! there is a problem.
//!
//! Namespace checks run in a child `kiln doctor --probe …`: entering a user
//! or mount namespace changes the calling process for good, and needs it to
//! have a single thread.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_model::{ModelError, ProviderConfig};
use kiln_sandbox::{Backend, ExecRequest, SandboxPolicy};
use serde::Serialize;

use crate::config;

/// How long the model endpoint has to answer `GET /models`.
const MODEL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the trial sandbox command may take.
const SANDBOX_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Check the configuration as `kiln exec` would load it in DIR.
    #[arg(short = 'C', long = "cd", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Override a configuration key, as for `kiln exec`.
    #[arg(short = 'c', long = "config", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Print the checks as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// One namespace check in this (child) process; for kiln's own use.
    #[arg(long, hide = true, value_enum)]
    probe: Option<Probe>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Probe {
    UserNamespace,
    Overlay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warning,
    Problem,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    status: Status,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn failed(
        name: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            name,
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    checks: Vec<Check>,
}

pub fn run(args: Args) -> ExitCode {
    if let Some(probe) = args.probe {
        return run_probe(probe);
    }
    let json = args.json;
    crate::run_blocking(async move {
        let checks = run_checks(&args).await;
        let report = Report {
            ok: !checks.iter().any(|check| check.status == Status::Problem),
            checks,
        };
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{}", render(&report));
        }
        Ok(if report.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

async fn run_checks(args: &Args) -> Vec<Check> {
    let mut checks = vec![check_git()];
    let bubblewrap = check_bubblewrap().await;
    let bubblewrap_works = bubblewrap.status == Status::Ok;
    checks.push(bubblewrap);
    checks.push(check_user_namespaces(bubblewrap_works));
    checks.push(check_seccomp());
    checks.push(check_cgroups());
    checks.push(check_overlay());
    match load_config(args) {
        Ok(config) => {
            if config.sandbox.backend == "none" {
                // Commands run unsandboxed as configured: kiln works without it.
                for check in checks.iter_mut().filter(|c| c.name == "bubblewrap") {
                    if check.status == Status::Problem {
                        check.status = Status::Warning;
                        check.detail
                            .push_str(" (the configuration runs commands without a sandbox: sandbox.backend = \"none\")");
                    }
                }
            }
            checks.push(Check::ok(
                "config",
                format!(
                    "valid (model {}, provider {}, sandbox {})",
                    config.model, config.model_provider, config.sandbox.backend
                ),
            ));
            checks.push(check_model_endpoint(&config).await);
        }
        Err(err) => {
            checks.push(Check::failed(
                "config",
                Status::Problem,
                format!("{err:#}").replace('\n', " "),
                "fix or remove the key or file named above, then run `kiln doctor` again",
            ));
            checks.push(Check::failed(
                "model endpoint",
                Status::Problem,
                "not checked: the configuration does not load",
                "fix the configuration first",
            ));
        }
    }
    checks
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    for check in &report.checks {
        let status = match check.status {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Problem => "problem",
        };
        out.push_str(&format!("{status:<8} {}: {}\n", check.name, check.detail));
        if let Some(fix) = &check.fix {
            out.push_str(&format!("{:<8}   fix: {fix}\n", ""));
        }
    }
    let count = |status| {
        report
            .checks
            .iter()
            .filter(|check| check.status == status)
            .count()
    };
    let (problems, warnings) = (count(Status::Problem), count(Status::Warning));
    out.push_str(&match (problems, warnings) {
        (0, 0) => "kiln doctor: all checks passed\n".to_string(),
        (0, w) => format!("kiln doctor: kiln can run; {w} warning(s) above\n"),
        (p, w) => format!("kiln doctor: {p} problem(s) and {w} warning(s) above\n"),
    });
    out
}

fn load_config(args: &Args) -> Result<config::Config> {
    let home = config::kiln_home()?;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot use {} as the directory to check", dir.display()))?;
    let config = config::load(&home, &dir, &args.overrides)?;
    config.provider()?;
    Ok(config)
}

fn check_git() -> Check {
    match std::process::Command::new("git").arg("--version").output() {
        Ok(out) if out.status.success() => Check::ok(
            "git",
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ),
        Ok(out) => Check::failed(
            "git",
            Status::Problem,
            format!(
                "`git --version` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            "reinstall git (`apt-get install git`)",
        ),
        Err(err) => Check::failed(
            "git",
            Status::Problem,
            format!("git cannot be run ({err})"),
            "install git (`apt-get install git`, `dnf install git`) and put it on PATH",
        ),
    }
}

/// Starts a real sandbox, the way an agent's command gets one, and runs
/// `true` in it: installed is not enough (the kernel or an AppArmor policy
/// may refuse its namespaces).
async fn check_bubblewrap() -> Check {
    let version = std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string());
    let workspace = std::env::temp_dir().join(format!("kiln-doctor-{}", std::process::id()));
    let result = try_sandbox(&workspace).await;
    let _ = std::fs::remove_dir_all(&workspace);
    match (result, version) {
        (Ok(()), version) => Check::ok(
            "bubblewrap",
            format!(
                "{} started a sandbox and ran a command in it",
                version.unwrap_or_else(|| "bwrap".to_string())
            ),
        ),
        (Err(err), _) => {
            let text = err.to_string();
            let fix = if text.contains("not installed") {
                "install bubblewrap (`apt-get install bubblewrap`; `scripts/kiln` in a kiln \
                 checkout installs it), or run without isolation with `--sandbox none`"
            } else {
                "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, \
                 or kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu), or run without \
                 isolation with `--sandbox none`"
            };
            Check::failed("bubblewrap", Status::Problem, text, fix)
        }
    }
}

async fn try_sandbox(workspace: &Path) -> Result<()> {
    std::fs::create_dir_all(workspace)
        .with_context(|| format!("cannot create {}", workspace.display()))?;
    let mut policy = SandboxPolicy::for_workspace(workspace);
    policy.backend = Backend::Bwrap;
    let sandbox = kiln_sandbox::create(policy)?;
    let request = ExecRequest::new(["true"], workspace).with_timeout(SANDBOX_TIMEOUT);
    let outcome = sandbox
        .exec(request, None, tokio_util::sync::CancellationToken::new())
        .await?;
    if outcome.success() {
        Ok(())
    } else {
        anyhow::bail!(
            "`true` in the sandbox did not succeed (exit code {:?}): {}",
            outcome.exit_code,
            outcome.output.trim()
        )
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn check_user_namespaces(bubblewrap_works: bool) -> Check {
    const NAME: &str = "user namespaces";
    if is_root() {
        return Check::ok(NAME, "not needed: kiln runs as root");
    }
    match run_probe_child(Probe::UserNamespace) {
        Ok(()) => Check::ok(NAME, "an unprivileged user namespace can be created"),
        Err(reason) => {
            // Without them bubblewrap fails too, unless it is installed setuid.
            let status = if bubblewrap_works {
                Status::Warning
            } else {
                Status::Problem
            };
            Check::failed(NAME, status, reason, user_namespace_fix())
        }
    }
}

/// The setting that disables user namespaces on this machine, when one does.
fn user_namespace_fix() -> String {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|value| value.trim().to_string())
    };
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        "AppArmor restricts unprivileged user namespaces: `sysctl \
         kernel.apparmor_restrict_unprivileged_userns=0` (or an AppArmor profile for kiln and bwrap)"
            .to_string()
    } else if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        "`sysctl kernel.unprivileged_userns_clone=1` (persist it in /etc/sysctl.d/)".to_string()
    } else if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        "`sysctl user.max_user_namespaces=15000` (persist it in /etc/sysctl.d/)".to_string()
    } else {
        "allow unprivileged user namespaces (a container needs them allowed by its runtime, \
         e.g. a seccomp profile that permits unshare), or run kiln as root"
            .to_string()
    }
}

fn check_seccomp() -> Check {
    const NAME: &str = "seccomp";
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !status.lines().any(|line| line.starts_with("Seccomp:")) {
        return Check::failed(
            NAME,
            Status::Problem,
            "this kernel has no seccomp support (no `Seccomp:` in /proc/self/status)",
            "use a kernel built with CONFIG_SECCOMP_FILTER, or run without isolation with \
             `--sandbox none`",
        );
    }
    match kiln_sandbox::seccomp_filter_builds() {
        Ok(()) => Check::ok(
            NAME,
            "the kernel supports seccomp and kiln's filter builds for this architecture",
        ),
        Err(err) => Check::failed(
            NAME,
            Status::Problem,
            err.to_string(),
            "run kiln on x86_64 or aarch64, or without isolation with `--sandbox none`",
        ),
    }
}

fn check_cgroups() -> Check {
    const NAME: &str = "cgroups";
    let controllers = kiln_sandbox::limit_enforcement();
    let describe = |(name, how): &(&str, Option<&str>)| {
        format!(
            "{name} via {}",
            how.unwrap_or(if *name == "cpu" { "nothing" } else { "rlimit" })
        )
    };
    let detail = controllers
        .iter()
        .map(describe)
        .collect::<Vec<_>>()
        .join(", ");
    if controllers.iter().all(|(_, how)| how.is_some()) {
        Check::ok(NAME, format!("limits are enforced: {detail}"))
    } else {
        Check::failed(
            NAME,
            Status::Warning,
            format!(
                "no writable cgroup with every controller: {detail}; memory and process limits \
                 fall back to rlimits and cpu is not limited"
            ),
            "run kiln in a delegated cgroup v2 subtree: `systemd-run --user --scope -p \
             Delegate=yes kiln …`, or `Delegate=yes` in kiln's systemd unit",
        )
    }
}

fn check_overlay() -> Check {
    const NAME: &str = "overlay";
    match run_probe_child(Probe::Overlay) {
        Ok(()) => Check::ok(
            NAME,
            "copy-on-write checkouts can be mounted (`kiln serve`, `kiln exec --worktree`)",
        ),
        Err(reason) => Check::failed(
            NAME,
            Status::Warning,
            format!("copy-on-write checkouts are unavailable ({reason}); checkouts are full git worktrees"),
            "allow user namespaces (see above) and keep KILN_HOME on a filesystem that can hold \
             an overlay's upper layer (ext4, xfs, btrfs; Linux 5.11+ without root)",
        ),
    }
}

/// Run `kiln doctor --probe PROBE` and read its verdict: `ok`, or the reason.
fn run_probe_child(probe: Probe) -> std::result::Result<(), String> {
    let name = match probe {
        Probe::UserNamespace => "user-namespace",
        Probe::Overlay => "overlay",
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find kiln's binary: {e}"))?;
    let out = std::process::Command::new(exe)
        .args(["doctor", "--probe", name])
        .output()
        .map_err(|e| format!("cannot run the probe: {e}"))?;
    let verdict = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match verdict.strip_prefix("problem: ") {
        None if out.status.success() && verdict == "ok" => Ok(()),
        Some(reason) => Err(reason.to_string()),
        None => Err(format!(
            "the probe ended without a verdict ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

fn run_probe(probe: Probe) -> ExitCode {
    let verdict = match probe {
        Probe::UserNamespace => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("cannot create a user namespace ({e})")),
        Probe::Overlay => probe_overlay(),
    };
    match verdict {
        Ok(()) => println!("ok"),
        Err(reason) => println!("problem: {}", reason.replace('\n', " ")),
    }
    ExitCode::SUCCESS
}

/// What `kiln exec --worktree` does first, then one trial mount where its
/// checkouts live.
fn probe_overlay() -> std::result::Result<(), String> {
    kiln_workspace::overlay::enable()?;
    let home = config::kiln_home().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
    kiln_workspace::overlay::probe(&home)
}

async fn check_model_endpoint(config: &config::Config) -> Check {
    const NAME: &str = "model endpoint";
    let provider = match config.provider() {
        Ok(provider) => provider,
        Err(err) => {
            return Check::failed(
                NAME,
                Status::Problem,
                format!("{err:#}"),
                "fix model_provider",
            )
        }
    };
    // The URL is shown without its query: a provider's query parameters
    // may carry a credential.
    let url = format!("{}/models", provider.base_url.trim_end_matches('/'));
    let key = match provider.resolve_api_key(|name| std::env::var(name).ok()) {
        Ok(key) => key,
        Err(err @ ModelError::MissingApiKey { .. }) => {
            return Check::failed(
                NAME,
                Status::Problem,
                format!("{url} not asked: {err}"),
                format!(
                    "export {} with your key",
                    provider.env_key.as_deref().unwrap_or("the key variable")
                ),
            )
        }
        Err(err) => {
            return Check::failed(
                NAME,
                Status::Problem,
                err.to_string(),
                "fix the provider's configuration",
            )
        }
    };
    match ask_for_models(&provider, &url, key.as_deref()).await {
        Ok(status) if status.is_success() => Check::ok(
            NAME,
            match (&key, &provider.env_key) {
                (Some(_), Some(env_key)) => format!("GET {url}: {status}; the key in {env_key} was accepted"),
                (Some(_), None) => format!("GET {url}: {status}; the configured key was accepted"),
                (None, _) => format!("GET {url}: {status} (no key configured)"),
            },
        ),
        Ok(status) if status.as_u16() == 401 || status.as_u16() == 403 => Check::failed(
            NAME,
            Status::Problem,
            format!(
                "GET {url}: {status}; the key{} was rejected",
                provider.env_key.as_deref().map(|k| format!(" in {k}")).unwrap_or_default()
            ),
            "use a valid key for this provider (or point base_url at the provider the key belongs to)",
        ),
        Ok(status) => Check::failed(
            NAME,
            Status::Warning,
            format!("GET {url}: {status}; the endpoint answers, but the key could not be verified"),
            "check that base_url is the provider's API root (it usually ends in /v1)",
        ),
        Err(reason) => Check::failed(
            NAME,
            Status::Problem,
            format!("GET {url} failed: {reason}"),
            format!(
                "start the model server or correct base_url for provider {}{}",
                provider.name,
                if provider.name == config::DEFAULT_PROVIDER { " (OPENAI_BASE_URL)" } else { "" }
            ),
        ),
    }
}

async fn ask_for_models(
    provider: &ProviderConfig,
    url: &str,
    key: Option<&str>,
) -> std::result::Result<reqwest::StatusCode, String> {
    let client = reqwest::Client::builder()
        .timeout(MODEL_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let mut request = client.get(url).query(&provider.query_params);
    for (name, value) in &provider.http_headers {
        request = request.header(name, value);
    }
    for (name, variable) in &provider.env_http_headers {
        if let Ok(value) = std::env::var(variable) {
            request = request.header(name, value);
        }
    }
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|err| {
        let err = err.without_url();
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    })?;
    Ok(response.status())
}
