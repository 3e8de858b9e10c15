//! `kiln env add|list`: environments on a kiln server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kiln_protocol::api::NewEnvironment;

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
    },
    /// List your environments.
    List,
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
            } => {
                let repo = absolute_if_local(&repo);
                let setup_script = match setup_script {
                    Some(path) => Some(
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?,
                    ),
                    None => None,
                };
                let new = NewEnvironment {
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
