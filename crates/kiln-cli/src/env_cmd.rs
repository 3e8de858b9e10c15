//! `kiln env add|list`: environments on a kiln server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kiln_protocol::api::NewEnvironment;
use kiln_protocol::{CheckSpec, ForgeConfig, ForgeKind, WebhookConfig};

use crate::api_client::{ApiClient, ServerArgs};
use crate::render::terminal_safe;
use crate::run_blocking;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: EnvCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum EnvCommand {
    /// Create an environment: a repository and how to prepare it.
    Add {
        name: String,
        /// A git URL, or a local path (made absolute).
        repo: String,
        #[arg(long)]
        base_branch: Option<String>,
        /// File with the setup script (runs with network and secrets).
        #[arg(long, value_name = "FILE")]
        setup_script: Option<PathBuf>,
        /// KEY=VALUE for setup and agent (repeatable).
        #[arg(long = "var", value_name = "KEY=VALUE")]
        vars: Vec<String>,
        /// KEY=VALUE for the setup script only (repeatable).
        #[arg(long = "secret", value_name = "KEY=VALUE")]
        secrets: Vec<String>,
        /// Give the agent network access.
        #[arg(long)]
        network: bool,
        #[arg(long)]
        image: Option<String>,
        #[command(flatten)]
        evidence: Box<EvidenceArgs>,
    },
    /// List your environments.
    List,
}

/// What an environment adds to every attempt's result and its delivery.
#[derive(Debug, clap::Args)]
pub struct EvidenceArgs {
    /// NAME=COMMAND: a check kiln runs after every attempt, besides the
    /// repository's own (repeatable; docs/checks.md).
    #[arg(long = "check", value_name = "NAME=COMMAND")]
    checks: Vec<String>,
    /// Where pull requests are opened: github, gitlab or forgejo (with
    /// --forge-repo and --forge-token-secret; docs/pull-requests.md).
    #[arg(long, value_name = "KIND")]
    forge: Option<String>,
    /// The repository on the forge, OWNER/NAME.
    #[arg(long, value_name = "OWNER/NAME", requires = "forge")]
    forge_repo: Option<String>,
    /// The forge's API URL when it is not the public service.
    #[arg(long, value_name = "URL", requires = "forge")]
    forge_api_url: Option<String>,
    /// The name of the --secret that holds the forge token.
    #[arg(long, value_name = "SECRET", requires = "forge")]
    forge_token_secret: Option<String>,
    /// A URL that gets attempt and task completions and pull requests as
    /// signed JSON (with --webhook-secret; docs/webhooks.md).
    #[arg(long, value_name = "URL", requires = "webhook_secret")]
    webhook: Option<String>,
    /// The secret that signs every webhook delivery (HMAC-SHA256).
    #[arg(long, value_name = "SECRET", requires = "webhook")]
    webhook_secret: Option<String>,
    /// Most US dollars one attempt may spend on tokens (docs/cost.md).
    #[arg(long, value_name = "USD")]
    budget_usd: Option<f64>,
}

impl EvidenceArgs {
    fn apply(self, new: &mut NewEnvironment) -> Result<()> {
        for check in &self.checks {
            let Some((name, command)) = check.split_once('=') else {
                bail!("--check {check:?} is not NAME=COMMAND (e.g. --check 'tests=cargo test')");
            };
            new.checks.push(CheckSpec {
                name: name.trim().to_string(),
                command: command.to_string(),
                timeout_secs: None,
            });
        }
        if let Some(kind) = self.forge {
            let kind = match kind.as_str() {
                "github" => ForgeKind::Github,
                "gitlab" => ForgeKind::Gitlab,
                "forgejo" | "gitea" => ForgeKind::Forgejo,
                other => bail!("--forge {other:?} is not one of github, gitlab, forgejo"),
            };
            let (Some(repo), Some(token_secret)) = (self.forge_repo, self.forge_token_secret)
            else {
                bail!(
                    "--forge needs --forge-repo OWNER/NAME and --forge-token-secret NAME \
                     (the --secret that holds the forge token)"
                );
            };
            new.forge = Some(ForgeConfig {
                kind,
                api_url: self.forge_api_url,
                repo,
                token_secret,
            });
        }
        if let (Some(url), Some(secret)) = (self.webhook, self.webhook_secret) {
            new.webhook = Some(WebhookConfig { url, secret });
        }
        new.budget_usd = self.budget_usd;
        Ok(())
    }
}

pub fn run(args: Args) -> ExitCode {
    run_blocking(async move {
        let client = ApiClient::new(&args.server)?;
        match args.command {
            EnvCommand::Add {
                name,
                repo,
                base_branch,
                setup_script,
                vars,
                secrets,
                network,
                image,
                evidence,
            } => {
                let repo = absolute_if_local(&repo);
                let setup_script = match setup_script {
                    Some(path) => Some(
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?,
                    ),
                    None => None,
                };
                let mut new = NewEnvironment {
                    name,
                    repo,
                    base_branch,
                    setup_script,
                    env: pairs("--var", &vars)?,
                    secrets: pairs("--secret", &secrets)?,
                    network,
                    image,
                    ..NewEnvironment::default()
                };
                evidence.apply(&mut new)?;
                let env = client.create_environment(&new).await?;
                if args.server.json {
                    env.print_json();
                } else {
                    println!("{}", env.value.id);
                }
            }
            EnvCommand::List => {
                let listed = client.list_environments().await?;
                if args.server.json {
                    listed.print_json();
                } else {
                    for env in &listed.value.environments {
                        println!(
                            "{}  {}  {}",
                            env.id,
                            terminal_safe(&env.name),
                            terminal_safe(&env.repo)
                        );
                    }
                }
            }
        }
        Ok(())
    })
}

/// A path that exists locally is sent absolute; anything else (URLs) as given.
fn absolute_if_local(repo: &str) -> String {
    let path = std::path::Path::new(repo);
    if path.exists() {
        if let Ok(absolute) = path.canonicalize() {
            return absolute.display().to_string();
        }
    }
    repo.to_string()
}

fn pairs(flag: &str, raw: &[String]) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for item in raw {
        let Some((key, value)) = item.split_once('=') else {
            bail!("{flag} {item:?} is not KEY=VALUE");
        };
        map.insert(key.to_string(), value.to_string());
    }
    Ok(map)
}
