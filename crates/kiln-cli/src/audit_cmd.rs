//! `kiln audit list|export`: the server's audit trail (admins only), as a
//! readable table a page at a time, or every matching event as JSON lines
//! (docs/audit.md).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use kiln_protocol::teams::{AuditEvent, AuditQuery};

use crate::api_client::{ApiClient, ServerArgs};
use crate::render::terminal_safe;
use crate::run_blocking;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// The newest events first, as a table (`--json`: the server's page).
    List {
        #[command(flatten)]
        filters: Filters,
        /// Events per page, 1 to 1000.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// The page after the one that printed this cursor.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Every matching event, oldest first, as JSON lines (one event each),
    /// streamed to stdout or a file.
    Export {
        #[command(flatten)]
        filters: Filters,
        /// Write to this file instead of stdout (it appears complete or not
        /// at all).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// What `list` and `export` select.
#[derive(Debug, Clone, clap::Args)]
pub struct Filters {
    /// A user id or name (or a token id).
    #[arg(long)]
    actor: Option<String>,
    /// An action (`task.created`) or a prefix ending in `.` (`task.`).
    #[arg(long)]
    action: Option<String>,
    /// A team id or name.
    #[arg(long)]
    team: Option<String>,
    /// A target id: a task, environment, token, user or team id.
    #[arg(long)]
    target: Option<String>,
    /// From this time on: RFC 3339 (`2026-12-01T09:00:00Z`) or a duration
    /// back from now (`30m`, `24h`, `7d`, `2w`).
    #[arg(long)]
    since: Option<String>,
    /// Before this time (exclusive); the same forms as --since.
    #[arg(long)]
    until: Option<String>,
}

impl Filters {
    fn query(&self, now: DateTime<Utc>) -> Result<AuditQuery> {
        Ok(AuditQuery {
            actor: self.actor.clone(),
            action: self.action.clone(),
            team: self.team.clone(),
            target: self.target.clone(),
            since: self
                .since
                .as_deref()
                .map(|s| parse_time(s, now))
                .transpose()
                .context("--since")?,
            until: self
                .until
                .as_deref()
                .map(|s| parse_time(s, now))
                .transpose()
                .context("--until")?,
            limit: None,
            cursor: None,
        })
    }
}

/// An RFC 3339 time, or `now` minus a duration such as `24h`.
fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let unit_at = text.len().saturating_sub(1);
    let (number, unit) = (text.get(..unit_at), text.get(unit_at..));
    let seconds_per_unit = match unit {
        Some("s") => 1,
        Some("m") => 60,
        Some("h") => 3600,
        Some("d") => 86_400,
        Some("w") => 7 * 86_400,
        _ => 0,
    };
    let amount = number
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n >= 0);
    match amount.and_then(|n| n.checked_mul(seconds_per_unit)) {
        Some(seconds) if seconds_per_unit > 0 => chrono::Duration::try_seconds(seconds)
            .and_then(|back| now.checked_sub_signed(back))
            .with_context(|| format!("{text:?} reaches too far back")),
        _ => bail!(
            "{text:?} is not a time: give RFC 3339 (2026-12-01T09:00:00Z) or a duration back \
             from now such as 30m, 24h, 7d or 2w"
        ),
    }
}

pub fn run(args: Args) -> ExitCode {
    run_blocking(async move {
        let client = ApiClient::new(&args.server)?;
        match args.command {
            AuditCommand::List {
                filters,
                limit,
                cursor,
            } => {
                let mut query = filters.query(Utc::now())?;
                query.limit = Some(limit);
                query.cursor = cursor;
                let page = client.audit_page(&query).await?;
                if args.server.json {
                    page.print_json();
                } else {
                    print_table(&page.value.events);
                    if let Some(next) = &page.value.next_cursor {
                        eprintln!("older events: kiln audit list --cursor {next} (same filters)");
                    }
                }
            }
            AuditCommand::Export { filters, output } => {
                let query = filters.query(Utc::now())?;
                let response = client.audit_export(&query).await?;
                match output {
                    Some(path) => export_to_file(response, &path).await?,
                    None => {
                        let stdout = std::io::stdout();
                        copy_body(response, &mut stdout.lock()).await?;
                    }
                }
            }
        }
        Ok(())
    })
}

/// Copies the export into a file next to `path`, renamed into place once
/// the whole trail arrived: a broken transfer leaves no file that looks
/// like a complete export.
async fn export_to_file(response: reqwest::Response, path: &std::path::Path) -> Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let copied = copy_body(response, &mut file).await.and_then(|n| {
        file.sync_all()
            .with_context(|| format!("cannot write {}", partial.display()))?;
        Ok(n)
    });
    match copied {
        Ok(lines) => {
            std::fs::rename(&partial, path).with_context(|| {
                format!("cannot move {} to {}", partial.display(), path.display())
            })?;
            eprintln!("{lines} audit events written to {}", path.display());
            Ok(())
        }
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            Err(err)
        }
    }
}

/// Writes the response body as it arrives; returns the number of lines.
async fn copy_body(mut response: reqwest::Response, out: &mut impl Write) -> Result<usize> {
    let mut lines = 0;
    while let Some(chunk) = response
        .chunk()
        .await
        .context("the export broke off before its end: run it again")?
    {
        lines += chunk.iter().filter(|b| **b == b'\n').count();
        out.write_all(&chunk).context("cannot write the export")?;
    }
    out.flush().context("cannot write the export")?;
    Ok(lines)
}

/// Longest details column before it is cut with `…`.
const DETAILS_WIDTH: usize = 60;

fn print_table(events: &[AuditEvent]) {
    if events.is_empty() {
        eprintln!("no audit events match");
        return;
    }
    println!(
        "{:<20}  {:<16}  {:<15}  {:<22}  {:<34}  DETAILS",
        "TIME", "ACTOR", "ORIGIN", "ACTION", "TARGET"
    );
    for event in events {
        let target = match &event.target.id {
            Some(id) => format!("{} {id}", event.target.kind),
            None => event.target.kind.clone(),
        };
        let details = event.details.to_string();
        let details = match details.char_indices().nth(DETAILS_WIDTH) {
            Some((cut, _)) => format!("{}…", &details[..cut]),
            None => details,
        };
        let line = format!(
            "{:<20}  {:<16}  {:<15}  {:<22}  {:<34}  {details}",
            event.ts.format("%Y-%m-%dT%H:%M:%SZ"),
            event.actor.user_name,
            event.origin.as_deref().unwrap_or("-"),
            event.action,
            target,
        );
        // Names and details come from users: no escape sequences on a terminal.
        println!("{}", terminal_safe(&line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn since_takes_rfc3339_or_a_duration_back_from_now() {
        let now = at("2026-12-02T12:00:00Z");
        assert_eq!(
            parse_time("2026-12-01T09:30:00+01:00", now).unwrap(),
            at("2026-12-01T08:30:00Z")
        );
        assert_eq!(parse_time("24h", now).unwrap(), at("2026-12-01T12:00:00Z"));
        assert_eq!(parse_time("7d", now).unwrap(), at("2026-11-25T12:00:00Z"));
        assert_eq!(parse_time("30m", now).unwrap(), at("2026-12-02T11:30:00Z"));
        assert_eq!(parse_time("2w", now).unwrap(), at("2026-11-18T12:00:00Z"));
        for bad in [
            "",
            "h",
            "24",
            "-1h",
            "1y",
            "soon",
            "9999999999999999999d",
            "1é",
        ] {
            let err = parse_time(bad, now).unwrap_err().to_string();
            assert!(err.contains(bad.trim()), "{bad:?}: {err}");
        }
    }
}
