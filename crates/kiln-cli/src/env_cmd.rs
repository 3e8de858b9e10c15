//! `kiln env add|list|show|edit|rm|history|secret`: a team's environments
//! on a kiln server (docs/environments.md).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kiln_protocol::api::{Environment, NewEnvironment};
use kiln_protocol::teams::EnvironmentPatch;
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
        /// File with the setup script (runs with network and secrets); `-`
        /// reads it from standard input.
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
        /// The team it belongs to (name or id); without it, the one team
        /// you maintain.
        #[arg(long, value_name = "TEAM")]
        team: Option<String>,
        #[command(flatten)]
        evidence: Box<EvidenceArgs>,
    },
    /// List the environments of your teams.
    List,
    /// Show one environment (secret names, never their values).
    Show {
        /// Its id, name, or TEAM/NAME.
        name: String,
    },
    /// Change an environment: only the flags given change (a new version).
    Edit(Box<EditArgs>),
    /// Delete an environment (refused while a task on it runs).
    Rm {
        /// Its id, name, or TEAM/NAME.
        name: String,
    },
    /// Every version of an environment: when, who, what changed.
    History {
        /// Its id, name, or TEAM/NAME.
        name: String,
    },
    /// Set or remove an environment's setup-only secrets.
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// Set secret KEY: the value is read from standard input, or from the
    /// variable --value-env names (never from a flag: flags show in `ps`).
    Set {
        /// The environment's id, name, or TEAM/NAME.
        name: String,
        key: String,
        /// Take the value from this environment variable.
        #[arg(long, value_name = "VAR")]
        value_env: Option<String>,
    },
    /// Remove secret KEY.
    Rm {
        /// The environment's id, name, or TEAM/NAME.
        name: String,
        key: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct EditArgs {
    /// The environment's id, name, or TEAM/NAME.
    target: String,
    /// A new name (unique in its team).
    #[arg(long)]
    name: Option<String>,
    /// A new repository: a git URL, or a local path (made absolute).
    #[arg(long)]
    repo: Option<String>,
    /// The base branch.
    #[arg(long, conflicts_with = "no_branch")]
    branch: Option<String>,
    /// Use the repository's default branch.
    #[arg(long)]
    no_branch: bool,
    /// File with the setup script; `-` reads standard input.
    #[arg(long, value_name = "FILE", conflicts_with = "no_setup_script")]
    setup_script: Option<PathBuf>,
    /// Remove the setup script.
    #[arg(long)]
    no_setup_script: bool,
    /// KEY=VALUE (repeatable): replaces all the variables.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Remove variable KEY (repeatable).
    #[arg(long = "unset-env", value_name = "KEY")]
    unset_env: Vec<String>,
    /// Give the agent network access.
    #[arg(long, conflicts_with = "no_network")]
    network: bool,
    /// Take the agent's network access away.
    #[arg(long)]
    no_network: bool,
    /// A container image to run in.
    #[arg(long, conflicts_with = "no_image")]
    image: Option<String>,
    /// Run on the host's root filesystem again.
    #[arg(long)]
    no_image: bool,
    /// NAME=COMMAND (repeatable): replaces all the environment's checks.
    #[arg(
        long = "check",
        value_name = "NAME=COMMAND",
        conflicts_with = "no_checks"
    )]
    checks: Vec<String>,
    /// Remove every check of the environment.
    #[arg(long)]
    no_checks: bool,
    /// Most US dollars one attempt may spend on tokens.
    #[arg(long, value_name = "USD", conflicts_with = "no_budget")]
    budget_usd: Option<f64>,
    /// Remove the budget.
    #[arg(long)]
    no_budget: bool,
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

fn parse_checks(raw: &[String]) -> Result<Vec<CheckSpec>> {
    raw.iter()
        .map(|check| {
            let Some((name, command)) = check.split_once('=') else {
                bail!("--check {check:?} is not NAME=COMMAND (e.g. --check 'tests=cargo test')");
            };
            Ok(CheckSpec {
                name: name.trim().to_string(),
                command: command.to_string(),
                timeout_secs: None,
            })
        })
        .collect()
}

impl EvidenceArgs {
    fn apply(self, new: &mut NewEnvironment) -> Result<()> {
        new.checks.extend(parse_checks(&self.checks)?);
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
                team,
                evidence,
            } => {
                let repo = absolute_if_local(&repo);
                let setup_script = match setup_script {
                    Some(path) => Some(read_script(&path)?),
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
                    team,
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
                            "{}  {}/{}  v{}  {}",
                            env.id,
                            terminal_safe(env.team_name.as_deref().unwrap_or("-")),
                            terminal_safe(&env.name),
                            env.version,
                            terminal_safe(&env.repo)
                        );
                    }
                }
            }
            EnvCommand::Show { name } => {
                let env = client.get_environment(&name).await?;
                if args.server.json {
                    env.print_json();
                } else {
                    print_environment(&env.value);
                }
            }
            EnvCommand::Edit(edit) => {
                let target = edit.target.clone();
                let patch = edit.into_patch(&client).await?;
                if patch == EnvironmentPatch::default() {
                    bail!(
                        "nothing to change: give the fields to change, e.g. `kiln env edit \
                         {target} --setup-script setup.sh` (see `kiln env edit --help`)"
                    );
                }
                let env = client.update_environment(&target, &patch).await?;
                if args.server.json {
                    env.print_json();
                } else {
                    println!(
                        "{} is at version {}",
                        terminal_safe(&env.value.name),
                        env.value.version
                    );
                }
            }
            EnvCommand::Rm { name } => {
                client.delete_environment(&name).await?;
                if !args.server.json {
                    println!("deleted environment {}", terminal_safe(&name));
                }
            }
            EnvCommand::History { name } => {
                let versions = client.environment_versions(&name).await?;
                if args.server.json {
                    versions.print_json();
                } else {
                    for version in &versions.value.versions {
                        let who = version
                            .changed_by_name
                            .as_deref()
                            .or(version.changed_by.as_deref())
                            .unwrap_or("-");
                        println!(
                            "v{}  {}  {}  {}",
                            version.version,
                            version
                                .created_at
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            terminal_safe(who),
                            terminal_safe(&version.change)
                        );
                    }
                }
            }
            EnvCommand::Secret(SecretCommand::Set {
                name,
                key,
                value_env,
            }) => {
                let value = secret_value(&key, value_env.as_deref())?;
                client.set_environment_secret(&name, &key, &value).await?;
                if !args.server.json {
                    println!(
                        "set secret {} of {}",
                        terminal_safe(&key),
                        terminal_safe(&name)
                    );
                }
            }
            EnvCommand::Secret(SecretCommand::Rm { name, key }) => {
                client.remove_environment_secret(&name, &key).await?;
                if !args.server.json {
                    println!(
                        "removed secret {} of {}",
                        terminal_safe(&key),
                        terminal_safe(&name)
                    );
                }
            }
        }
        Ok(())
    })
}

impl EditArgs {
    /// The patch of the flags given, and only of those. `--unset-env`
    /// without `--env` starts from the environment's current variables.
    async fn into_patch(self, client: &ApiClient) -> Result<EnvironmentPatch> {
        let mut patch = EnvironmentPatch {
            name: self.name,
            repo: self.repo.as_deref().map(absolute_if_local),
            ..EnvironmentPatch::default()
        };
        if let Some(branch) = self.branch {
            patch.base_branch = Some(Some(branch));
        } else if self.no_branch {
            patch.base_branch = Some(None);
        }
        if let Some(path) = &self.setup_script {
            patch.setup_script = Some(Some(read_script(path)?));
        } else if self.no_setup_script {
            patch.setup_script = Some(None);
        }
        if !self.env.is_empty() || !self.unset_env.is_empty() {
            let mut env = if self.env.is_empty() {
                client.get_environment(&self.target).await?.value.env
            } else {
                pairs("--env", &self.env)?
            };
            for key in &self.unset_env {
                env.remove(key);
            }
            patch.env = Some(env);
        }
        if self.network {
            patch.network = Some(true);
        } else if self.no_network {
            patch.network = Some(false);
        }
        if let Some(image) = self.image {
            patch.image = Some(Some(image));
        } else if self.no_image {
            patch.image = Some(None);
        }
        if !self.checks.is_empty() {
            patch.checks = Some(parse_checks(&self.checks)?);
        } else if self.no_checks {
            patch.checks = Some(Vec::new());
        }
        if let Some(budget) = self.budget_usd {
            patch.budget_usd = Some(Some(budget));
        } else if self.no_budget {
            patch.budget_usd = Some(None);
        }
        Ok(patch)
    }
}

fn print_environment(env: &Environment) {
    let none = || "-".to_string();
    println!("id:            {}", env.id);
    println!("name:          {}", terminal_safe(&env.name));
    println!(
        "team:          {}",
        terminal_safe(env.team_name.as_deref().unwrap_or("-"))
    );
    println!("version:       {}", env.version);
    let credential = if env.repo_has_credential {
        " (with a sealed credential)"
    } else {
        ""
    };
    println!("repo:          {}{credential}", terminal_safe(&env.repo));
    println!(
        "base branch:   {}",
        terminal_safe(&env.base_branch.clone().unwrap_or_else(none))
    );
    println!("network:       {}", if env.network { "on" } else { "off" });
    println!(
        "image:         {}",
        terminal_safe(&env.image.clone().unwrap_or_else(none))
    );
    for (key, value) in &env.env {
        println!(
            "env:           {}={}",
            terminal_safe(key),
            terminal_safe(value)
        );
    }
    for name in &env.secret_names {
        println!("secret:        {} (write-only)", terminal_safe(name));
    }
    for check in &env.checks {
        println!(
            "check:         {}: {}",
            terminal_safe(&check.name),
            terminal_safe(&check.command)
        );
    }
    if let Some(budget) = env.budget_usd {
        println!("budget:        ${budget}");
    }
    if let Some(script) = &env.setup_script {
        println!("setup script:");
        for line in script.lines() {
            println!("  {}", terminal_safe(line));
        }
    }
}

/// A setup script from a file, or from standard input for `-`.
fn read_script(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut script = String::new();
        std::io::stdin()
            .read_to_string(&mut script)
            .context("cannot read the setup script from standard input")?;
        return Ok(script);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// A secret's value from the variable `value_env` names, or from standard
/// input (without the newline that ends it).
fn secret_value(key: &str, value_env: Option<&str>) -> Result<String> {
    if let Some(var) = value_env {
        return std::env::var(var).with_context(|| {
            format!(
                "--value-env {var}: that variable is not set (or is not UTF-8): export it first"
            )
        });
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("type the value of {key}, then Enter and Ctrl-D:");
    }
    let mut value = String::new();
    stdin
        .lock()
        .read_to_string(&mut value)
        .context("cannot read the secret's value from standard input")?;
    let value = value
        .strip_suffix("\r\n")
        .or_else(|| value.strip_suffix('\n'))
        .unwrap_or(&value)
        .to_string();
    if value.is_empty() {
        bail!(
            "no value for secret {key}: pipe it in (`printf %s \"$VALUE\" | kiln env secret set \
             NAME {key}`) or use --value-env VAR"
        );
    }
    Ok(value)
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
