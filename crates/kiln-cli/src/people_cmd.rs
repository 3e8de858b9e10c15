//! `kiln whoami`, `kiln user add|list|show|set-role|disable|enable` and
//! `kiln team add|list|show|set-member|remove-member`: people and teams on
//! a kiln server (docs/roles.md). Changing users and teams is for admins;
//! the server says so when the token is not one.

use std::process::ExitCode;

use anyhow::Context;
use kiln_protocol::teams::{NewTeam, NewUser, ServerRole, Team, TeamRole, User, UserPatch};

use crate::api_client::{ApiClient, ServerArgs};
use crate::render::terminal_safe;
use crate::run_blocking;

#[derive(Debug, clap::Args)]
pub struct WhoamiArgs {
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct UserArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Create a user (admins). They get no team: put them in one with
    /// `kiln team set-member`, and a token with `kiln token create --user`.
    Add {
        name: String,
        #[arg(long)]
        email: Option<String>,
        /// Server role: user (default), admin or owner (owner and admin
        /// only by an owner).
        #[arg(long, value_parser = parse_server_role)]
        role: Option<ServerRole>,
    },
    /// List users (admins: everyone; others: themselves).
    List,
    /// A user and their teams.
    Show { name: String },
    /// Change a user's server role: owner, admin or user (owner and admin
    /// only by an owner; never the last owner's).
    SetRole {
        name: String,
        #[arg(value_parser = parse_server_role)]
        role: ServerRole,
    },
    /// Disable a user: every token of theirs stops working.
    Disable { name: String },
    /// Enable a disabled user again: their tokens work again.
    Enable { name: String },
}

#[derive(Debug, clap::Args)]
pub struct TeamArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: TeamCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TeamCommand {
    /// Create a team (admins).
    Add { name: String },
    /// List teams (admins: all; others: their own).
    List,
    /// A team and its members.
    Show { name: String },
    /// Give a user a role in a team: maintainer, member or viewer (admins).
    SetMember {
        team: String,
        user: String,
        #[arg(value_parser = parse_team_role)]
        role: TeamRole,
    },
    /// Take a user out of a team (admins).
    RemoveMember { team: String, user: String },
}

fn parse_server_role(s: &str) -> Result<ServerRole, String> {
    s.parse()
        .map_err(|e: kiln_protocol::teams::UnknownRole| e.to_string())
}

fn parse_team_role(s: &str) -> Result<TeamRole, String> {
    s.parse()
        .map_err(|e: kiln_protocol::teams::UnknownRole| e.to_string())
}

pub fn whoami(args: WhoamiArgs) -> ExitCode {
    run_blocking(async move {
        let client = ApiClient::new(&args.server)?;
        let me = client.me().await?;
        if args.server.json {
            me.print_json();
        } else {
            print_user(&me.value);
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn user(args: UserArgs) -> ExitCode {
    run_blocking(async move {
        let client = ApiClient::new(&args.server)?;
        let json = args.server.json;
        let changed = match args.command {
            UserCommand::Add { name, email, role } => {
                client.create_user(&NewUser { name, email, role }).await?
            }
            UserCommand::List => {
                let users = client.list_users().await?;
                if json {
                    users.print_json();
                } else {
                    for user in &users.value.users {
                        println!("{}", user_line(user));
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            UserCommand::Show { name } => client.get_user(&name).await?,
            UserCommand::SetRole { name, role } => {
                let patch = UserPatch {
                    role: Some(role),
                    ..UserPatch::default()
                };
                client.update_user(&name, &patch).await?
            }
            UserCommand::Disable { name } => {
                let patch = UserPatch {
                    disabled: Some(true),
                    ..UserPatch::default()
                };
                client.update_user(&name, &patch).await?
            }
            UserCommand::Enable { name } => {
                let patch = UserPatch {
                    disabled: Some(false),
                    ..UserPatch::default()
                };
                client.update_user(&name, &patch).await?
            }
        };
        if json {
            changed.print_json();
        } else {
            print_user(&changed.value);
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn team(args: TeamArgs) -> ExitCode {
    run_blocking(async move {
        let client = ApiClient::new(&args.server)?;
        let json = args.server.json;
        let shown = match args.command {
            TeamCommand::Add { name } => client.create_team(&NewTeam { name }).await?,
            TeamCommand::List => {
                let teams = client.list_teams().await?;
                if json {
                    teams.print_json();
                } else {
                    for team in &teams.value.teams {
                        println!(
                            "{}  {}  {} member(s)",
                            team.id,
                            terminal_safe(&team.name),
                            team.members.len()
                        );
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            TeamCommand::Show { name } => client.get_team(&name).await?,
            TeamCommand::SetMember { team, user, role } => client
                .set_member(&team, &user, Some(role))
                .await
                .with_context(|| format!("making {user} a {role} of team {team}"))?,
            TeamCommand::RemoveMember { team, user } => client
                .set_member(&team, &user, None)
                .await
                .with_context(|| format!("taking {user} out of team {team}"))?,
        };
        if json {
            shown.print_json();
        } else {
            print_team(&shown.value);
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn user_line(user: &User) -> String {
    let disabled = if user.disabled_at.is_some() {
        "  disabled"
    } else {
        ""
    };
    format!(
        "{}  {}  {}{disabled}",
        user.id,
        terminal_safe(&user.name),
        user.role
    )
}

fn print_user(user: &User) {
    println!("{}", user_line(user));
    if let Some(email) = &user.email {
        println!("  email {}", terminal_safe(email));
    }
    if user.teams.is_empty() {
        println!("  no teams");
    }
    for membership in &user.teams {
        println!(
            "  team {}  {}",
            terminal_safe(&membership.team_name),
            membership.role
        );
    }
}

fn print_team(team: &Team) {
    println!("{}  {}", team.id, terminal_safe(&team.name));
    if team.members.is_empty() {
        println!("  no members");
    }
    for member in &team.members {
        println!("  {}  {}", terminal_safe(&member.user_name), member.role);
    }
}
