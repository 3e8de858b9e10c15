//! `kiln token create|list|revoke`: API tokens on a kiln server: your own,
//! or (admins) anyone's, new users' and workers'.

use std::process::ExitCode;

use serde_json::json;

use crate::api_client::{print_json, ApiClient, ServerArgs};
use crate::run_blocking;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once. Without --user it is
    /// your own, or for an admin a new user named NAME with a team of
    /// their own (as tokens were before users existed).
    Create {
        name: String,
        /// The existing user the token is for (admins).
        #[arg(long, conflicts_with_all = ["admin", "worker"])]
        user: Option<String>,
        /// A new admin user named NAME (owners).
        #[arg(long)]
        admin: bool,
        /// A worker token for `kiln worker` on another machine: it claims
        /// and runs attempts and may call nothing else.
        #[arg(long, conflicts_with = "admin")]
        worker: bool,
    },
    /// List your tokens (admins: every token, or one user's with --user);
    /// never their secrets.
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

pub fn run(args: Args) -> ExitCode {
    run_blocking(async move {
        let client = ApiClient::new(&args.server)?;
        let json = args.server.json;
        match args.command {
            TokenCommand::Create {
                name,
                user,
                admin,
                worker,
            } => {
                let token = client
                    .post(
                        "/api/tokens",
                        &json!({"name": name, "user": user, "admin": admin, "worker": worker}),
                    )
                    .await?;
                if json {
                    print_json(&token);
                } else {
                    println!("{}", token["secret"].as_str().unwrap_or_default());
                    eprintln!(
                        "token {} created; the secret above is shown only now",
                        token["id"].as_str().unwrap_or_default()
                    );
                }
            }
            TokenCommand::List { user } => {
                let listed = match user {
                    Some(user) => client.get_query("/api/tokens", &[("user", user)]).await?,
                    None => client.get("/api/tokens").await?,
                };
                if json {
                    print_json(&listed);
                } else {
                    for token in listed["tokens"].as_array().into_iter().flatten() {
                        let state = if token["revoked_at"].is_null() {
                            "active"
                        } else {
                            "revoked"
                        };
                        let admin = if token["admin"] == true {
                            "admin"
                        } else if token["worker"] == true {
                            "worker"
                        } else {
                            "user"
                        };
                        println!(
                            "{}  {}  {admin}  {state}",
                            token["id"].as_str().unwrap_or_default(),
                            token["name"].as_str().unwrap_or_default()
                        );
                    }
                }
            }
            TokenCommand::Revoke { id } => {
                let revoked = client.delete(&format!("/api/tokens/{id}")).await?;
                if json {
                    print_json(&revoked);
                } else {
                    println!("revoked {id}");
                }
            }
        }
        Ok(())
    })
}
