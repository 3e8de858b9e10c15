//! `kiln quota set|show`: how many attempts a team or a user may run at
//! once and how much their attempts may cost per month (docs/quotas.md).

use std::process::ExitCode;

use anyhow::{bail, Result};
use kiln_protocol::format_usd;
use kiln_protocol::teams::{QuotaScope, QuotaStatus};

use crate::api_client::{ApiClient, ServerArgs};
use crate::run_blocking;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: QuotaCommand,
}

/// Whose quota: exactly one of --team and --user.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Whose {
    /// A team, by name or id.
    #[arg(long)]
    team: Option<String>,
    /// A user, by name or id.
    #[arg(long)]
    user: Option<String>,
}

impl Whose {
    fn target(&self) -> Result<(QuotaScope, &str)> {
        match (&self.team, &self.user) {
            (Some(team), None) => Ok((QuotaScope::Team, team)),
            (None, Some(user)) => Ok((QuotaScope::User, user)),
            _ => bail!("name exactly one of --team T and --user U"),
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum QuotaCommand {
    /// Change a team's or user's quota (admin); limits not named stay as they are.
    Set {
        #[command(flatten)]
        whose: Whose,
        /// Most attempts of its tasks running at once (at least 1).
        #[arg(long, value_name = "N", conflicts_with = "no_max_concurrent")]
        max_concurrent: Option<u32>,
        /// Remove the concurrency limit.
        #[arg(long)]
        no_max_concurrent: bool,
        /// Most US dollars its attempts may cost per calendar month (UTC).
        #[arg(long, value_name = "X", conflicts_with = "no_monthly_budget")]
        monthly_budget_usd: Option<f64>,
        /// Remove the monthly budget.
        #[arg(long)]
        no_monthly_budget: bool,
    },
    /// Show a team's or user's quota and what it uses now.
    Show {
        #[command(flatten)]
        whose: Whose,
    },
}

pub fn run(args: Args) -> ExitCode {
    run_blocking(async move {
        let client = ApiClient::new(&args.server)?;
        let answer = match args.command {
            QuotaCommand::Set {
                whose,
                max_concurrent,
                no_max_concurrent,
                monthly_budget_usd,
                no_monthly_budget,
            } => {
                let (scope, target) = whose.target()?;
                if max_concurrent.is_none()
                    && !no_max_concurrent
                    && monthly_budget_usd.is_none()
                    && !no_monthly_budget
                {
                    bail!(
                        "nothing to change: give --max-concurrent N, --no-max-concurrent, \
                         --monthly-budget-usd X or --no-monthly-budget"
                    );
                }
                // The API replaces the whole quota: start from the current one
                // so that a limit not named here stays.
                let mut quota = client.quota(scope, target).await?.value.quota;
                if max_concurrent.is_some() || no_max_concurrent {
                    quota.max_concurrent_attempts = max_concurrent;
                }
                if monthly_budget_usd.is_some() || no_monthly_budget {
                    quota.monthly_budget_usd = monthly_budget_usd;
                }
                client.set_quota(scope, target, &quota).await?
            }
            QuotaCommand::Show { whose } => {
                let (scope, target) = whose.target()?;
                client.quota(scope, target).await?
            }
        };
        if args.server.json {
            answer.print_json();
        } else {
            print!("{}", render_quota(&answer.value));
        }
        Ok(())
    })
}

/// The readable view of a quota and its use.
fn render_quota(status: &QuotaStatus) -> String {
    let concurrency = match status.quota.max_concurrent_attempts {
        Some(max) => format!("{} of {max} running", status.usage.running_attempts),
        None => format!("{} running, no limit", status.usage.running_attempts),
    };
    let spent = format_usd(status.usage.spent_this_month_usd);
    let month = status.usage.month_start.format("%Y-%m");
    let budget = match status.quota.monthly_budget_usd {
        Some(budget) => format!("{spent} of {} spent in {month} (UTC)", format_usd(budget)),
        None => format!("{spent} spent in {month} (UTC), no budget"),
    };
    format!(
        "{} {} ({})\n  concurrent attempts: {concurrency}\n  monthly budget: {budget}\n",
        status.scope.as_str(),
        status.name,
        status.id
    )
}
