//! `kiln serve`: the HTTP API and an in-process worker pool over the store
//! (SQLite in the data directory, or PostgreSQL with --database-url).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_protocol::Mode;
use kiln_server::{ConnectionLimits, MetricsAccess, Server, ServerConfig};
use kiln_store::{AdminBootstrap, Store, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::config;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub addr: String,
    /// Where the database, repository mirrors and checkouts live
    /// (default: $KILN_HOME/server).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// postgres://… (or sqlite:PATH) instead of SQLite in the data directory.
    #[arg(long, value_name = "URL", env = "KILN_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Attempts that run at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_parallel: usize,
    /// Run no attempts here: only remote `kiln worker`s do (the API, and
    /// the sweep that takes back attempts of workers that died, still run).
    #[arg(long)]
    pub no_local_workers: bool,
    /// Claims an interrupted attempt gets before it is failed.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_tries: u32,
    /// Seconds a worker's claim lasts without a heartbeat.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub lease_secs: u64,
    /// On SIGTERM/Ctrl-C, seconds running attempts get to finish before
    /// the server exits (they are taken up again at the next start).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub drain_secs: u64,
    /// Sandbox backend for attempts: bwrap (default) or none (no isolation).
    #[arg(long, value_name = "BACKEND")]
    pub sandbox: Option<String>,
    /// Override a configuration key, e.g. -c model=gpt-5-codex.
    #[arg(short = 'c', long = "config", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Let every user's environments use this location (repeatable): a
    /// directory on the server (host paths and file:// URLs inside it) or
    /// the start of a git URL (https://git.internal/, git@gitlab.corp:).
    /// Without it only admins may use host paths, file:// URLs and hosts
    /// at loopback, private or link-local addresses.
    #[arg(long = "allow-repo", value_name = "PREFIX")]
    pub allow_repo: Vec<String>,
    /// Seconds an outgoing webhook delivery that failed waits before each
    /// next try (comma-separated; fractions allowed). After the last one
    /// the delivery is failed: the default makes 5 tries over ~36 minutes.
    #[arg(
        long,
        value_name = "SECS,…",
        value_delimiter = ',',
        default_value = "10,60,300,1800"
    )]
    pub webhook_retry_delays: Vec<f64>,
    /// Seconds one webhook try may take, from connecting to the answer.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub webhook_timeout_secs: u64,
    /// The URL people reach this server at (e.g. https://kiln.example.com):
    /// pull requests link back to their task under it.
    #[arg(long, value_name = "URL", env = "KILN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// A token that may read /metrics besides admin tokens (for a scraper).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "KILN_METRICS_TOKEN",
        hide_env_values = true
    )]
    pub metrics_token: Option<String>,
    /// Serve /metrics to anyone who can reach the port, without a token.
    #[arg(long)]
    pub metrics_public: bool,
    /// Seconds a connection gets to send a request's headers (an idle
    /// keep-alive connection is closed after as long).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Connections open at once; more are answered 503.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,
    /// Connections open at once from one IP address; more are answered 429.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_connections_per_ip: usize,
    /// Event streams open at once per token; more are answered 429.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_streams_per_token: usize,
    /// Largest request body, in bytes; larger ones are answered 413.
    #[arg(long, value_name = "BYTES", default_value_t = kiln_server::DEFAULT_BODY_LIMIT)]
    pub max_body_bytes: usize,
    #[command(flatten)]
    pub sso: SsoArgs,
}

/// Single sign-on with an OpenID Connect provider (docs/sso.md).
#[derive(Debug, clap::Args)]
pub struct SsoArgs {
    /// Enables single sign-on: the provider's issuer URL, exactly as its
    /// discovery document names it (needs --public-url and --oidc-client-id).
    #[arg(long, value_name = "URL")]
    pub oidc_issuer: Option<String>,
    /// The client id kiln is registered with at the provider.
    #[arg(long, value_name = "ID")]
    pub oidc_client_id: Option<String>,
    /// The environment variable holding the client secret (never a flag:
    /// flags show in `ps`).
    #[arg(long, value_name = "VAR", default_value = "KILN_OIDC_CLIENT_SECRET")]
    pub oidc_client_secret_env: String,
    /// Scopes asked for at sign-in (space- or comma-separated).
    #[arg(long, value_name = "SCOPES", default_value = "openid profile email")]
    pub oidc_scopes: String,
    /// The ID token claim that lists a user's groups.
    #[arg(long, value_name = "NAME", default_value = "groups")]
    pub oidc_groups_claim: String,
    /// GROUP=TEAM:ROLE (ROLE maintainer, member or viewer) or GROUP=admin:
    /// what members of a provider group get (repeatable).
    #[arg(long = "oidc-map", value_name = "GROUP=TEAM:ROLE")]
    pub oidc_map: Vec<kiln_server::GroupMapping>,
    /// Let in users whose groups map to no team (they get none); without
    /// it they are refused.
    #[arg(long)]
    pub oidc_allow_unmapped: bool,
    /// Days a token from `kiln login` lasts.
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub sso_token_days: u32,
}

/// The SSO settings from the flags and the environment, or `None` without
/// --oidc-issuer.
pub fn oidc_config(
    sso: &SsoArgs,
    public_url: Option<&str>,
) -> Result<Option<kiln_server::OidcConfig>> {
    let Some(issuer) = &sso.oidc_issuer else {
        if sso.oidc_client_id.is_some() || !sso.oidc_map.is_empty() {
            anyhow::bail!("--oidc-client-id and --oidc-map need --oidc-issuer: give the provider's issuer URL to enable single sign-on");
        }
        return Ok(None);
    };
    if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
        anyhow::bail!("--oidc-issuer {issuer:?} is not an http(s) URL: give the issuer URL the provider's discovery document names, e.g. https://keycloak.example.com/realms/acme");
    }
    if public_url.is_none() {
        anyhow::bail!("--oidc-issuer needs --public-url: the provider sends people back to {{--public-url}}/auth/oidc/callback, which must be registered with it as the redirect URI");
    }
    let client_id = sso
        .oidc_client_id
        .as_deref()
        .filter(|id| !id.trim().is_empty())
        .context("--oidc-issuer needs --oidc-client-id: the client id kiln is registered with at the provider")?;
    let var = &sso.oidc_client_secret_env;
    let secret = std::env::var(var).ok().filter(|s| !s.is_empty()).with_context(|| {
        format!("the OIDC client secret is not set: put it in the environment variable {var} (--oidc-client-secret-env names another)")
    })?;
    let scopes: Vec<String> = sso
        .oidc_scopes
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if !scopes.iter().any(|s| s == "openid") {
        anyhow::bail!(
            "--oidc-scopes {:?} lacks `openid`: without it the provider returns no ID token",
            sso.oidc_scopes
        );
    }
    if sso.oidc_groups_claim.trim().is_empty() {
        anyhow::bail!("--oidc-groups-claim is empty: name the ID token claim that lists groups (default `groups`)");
    }
    if !(1..=3650).contains(&sso.sso_token_days) {
        anyhow::bail!(
            "--sso-token-days {} is out of range: give 1 to 3650 days",
            sso.sso_token_days
        );
    }
    let mut config = kiln_server::OidcConfig::new(issuer.clone(), client_id, secret);
    config.scopes = scopes;
    config.groups_claim = sso.oidc_groups_claim.trim().to_string();
    config.group_map = sso.oidc_map.clone();
    config.allow_unmapped = sso.oidc_allow_unmapped;
    config.token_days = sso.sso_token_days;
    Ok(Some(config))
}

pub fn run(args: Args) -> ExitCode {
    // Copy-on-write checkouts need the process's own mount namespace,
    // entered before the runtime starts its threads.
    if let Err(reason) = kiln_workspace::overlay::enable() {
        tracing::warn!("checkouts will be full copies, not copy-on-write: {reason}");
    }
    crate::run_blocking(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let home = config::kiln_home()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| home.join("server"));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    kiln_server::secure_data_dir(&data_dir).with_context(|| {
        format!(
            "cannot make the data directory {} private (mode 700): make the user kiln serve runs as its owner",
            data_dir.display()
        )
    })?;
    let _lock = kiln_server::DataDirLock::acquire(&data_dir)?;
    let repo_access = kiln_server::RepoAccess::new(&args.allow_repo)?;

    let mut overrides = args.overrides.clone();
    if let Some(backend) = &args.sandbox {
        overrides.push(format!(
            "sandbox.backend={}",
            toml::Value::String(backend.clone())
        ));
    }
    let config = config::load_for_server(&home, &data_dir, &overrides)?;
    let provider = config.provider()?;
    let agent =
        crate::exec_cmd::agent_config(&config, &provider.name, Mode::Code, data_dir.clone(), &home);
    let sandbox = crate::sandbox_policy::base_policy(&config)?;
    if sandbox.backend == kiln_sandbox::Backend::None {
        eprintln!("warning: sandbox backend none: attempts run with NO isolation");
    }

    let options = match &args.database_url {
        Some(url) => StoreOptions::from_url(url)?,
        None => StoreOptions::sqlite_in_dir(&data_dir),
    };
    let options = options.secret_key(secret_key(&data_dir)?);
    let store = Store::open(options).await?;
    kiln_server::secure_data_files(&data_dir).with_context(|| {
        format!(
            "cannot make the files in {} private (mode 600): make the user kiln serve runs as their owner",
            data_dir.display()
        )
    })?;
    let mut server_config = ServerConfig::new(&data_dir, provider, agent, sandbox);
    server_config.max_parallel = args.max_parallel.max(1);
    server_config.local_workers = !args.no_local_workers;
    server_config.max_tries = args.max_tries.max(1);
    server_config.lease = Duration::from_secs(args.lease_secs.max(3));
    server_config.drain = Duration::from_secs(args.drain_secs);
    server_config.repo_access = repo_access;
    server_config.webhooks = webhook_delivery(&args)?;
    server_config.body_limit = args.max_body_bytes;
    if let Some(url) = &args.public_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            anyhow::bail!(
                "--public-url {url:?} is not an http(s) URL: give it as https://HOST[:PORT]"
            );
        }
    }
    server_config.public_url = args.public_url.clone();
    server_config.oidc = oidc_config(&args.sso, args.public_url.as_deref())?;
    server_config.metrics_access = match (args.metrics_public, &args.metrics_token) {
        (true, _) => MetricsAccess::Public,
        (false, Some(token)) if !token.trim().is_empty() => {
            MetricsAccess::AdminOrToken(token.trim().to_string())
        }
        (false, _) => MetricsAccess::Admin,
    };
    server_config.limits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(args.header_read_timeout_secs.max(1)),
        max_connections: args.max_connections.max(1),
        max_connections_per_ip: args.max_connections_per_ip.max(1),
        max_streams_per_token: args.max_streams_per_token.max(1),
        ..ConnectionLimits::default()
    };
    let server = Server::new(store.clone(), server_config)?;
    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .with_context(|| format!("cannot listen on {}: pick another --addr", args.addr))?;
    let admin_from_env = std::env::var("KILN_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    match store.ensure_admin_token(admin_from_env.as_deref()).await? {
        AdminBootstrap::Created(token) => {
            println!("admin token (shown once, store it now): {}", token.secret);
        }
        AdminBootstrap::Registered(info) => {
            eprintln!("registered KILN_ADMIN_TOKEN as admin token {}", info.id);
        }
        AdminBootstrap::Present => {}
    }

    server.connect_sso().await?;
    let recovered = server.recover().await?;
    if !recovered.requeued.is_empty() || !recovered.failed.is_empty() {
        eprintln!(
            "recovered interrupted attempts: {} requeued, {} failed after too many tries, {} cancelled",
            recovered.requeued.len(),
            recovered.failed.len(),
            recovered.cancelled.len()
        );
    }

    let addr = listener.local_addr()?;
    println!(
        "kiln serve: listening on http://{addr} (data in {})",
        data_dir.display()
    );
    std::io::stdout().flush()?;

    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        on_signal.cancel();
    });
    server.serve(listener, shutdown).await?;
    Ok(())
}

/// The key environment secrets are sealed with: `KILN_SECRET_KEY`, else
/// `DATA/secret.key` (created on the first start, which is said once).
fn secret_key(data_dir: &std::path::Path) -> Result<kiln_store::SecretKey> {
    let from_env = match std::env::var(kiln_server::SECRET_KEY_VAR) {
        Ok(value) => Some(value),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!(
            "{} is not valid text: write the key as 64 hex digits or as base64",
            kiln_server::SECRET_KEY_VAR
        ),
    };
    let (key, origin) = kiln_server::load_or_create_secret_key(data_dir, from_env.as_deref())?;
    if let kiln_server::KeyOrigin::CreatedFile(path) = origin {
        eprintln!(
            "created the secret key {} (environment secrets are encrypted with it: back it up; without it they cannot be read)",
            path.display()
        );
    }
    Ok(key)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The webhook retry schedule from the flags. The queue is looked at every
/// second, or as often as the shortest delay needs.
fn webhook_delivery(args: &Args) -> anyhow::Result<kiln_server::WebhookDelivery> {
    let mut retry_delays = Vec::with_capacity(args.webhook_retry_delays.len());
    for &secs in &args.webhook_retry_delays {
        if !(secs.is_finite() && secs > 0.0 && secs <= 7.0 * 86_400.0) {
            anyhow::bail!(
                "--webhook-retry-delays: {secs} is not a delay; give seconds above 0 and at most a week, e.g. 10,60,300"
            );
        }
        retry_delays.push(Duration::from_secs_f64(secs));
    }
    let poll = retry_delays
        .iter()
        .copied()
        .min()
        .unwrap_or(Duration::from_secs(1))
        .min(Duration::from_secs(1));
    Ok(kiln_server::WebhookDelivery {
        retry_delays,
        timeout: Duration::from_secs(args.webhook_timeout_secs.max(1)),
        poll,
    })
}
