//! The audit trail: one append-only row per action that changed something,
//! written in the same transaction as the change (so a change without its
//! audit event, or the reverse, cannot be committed). Database triggers
//! refuse UPDATE and DELETE of these rows (migration 0005). docs/audit.md
//! lists the actions.

use kiln_protocol::teams::{AuditActor, AuditEvent, AuditPage, AuditQuery, AuditTarget};
use serde_json::Value;

use crate::clock::{from_millis, to_millis};
use crate::db::{query, DbRow, Query, Tx};
use crate::error::{OpError, Result, StoreError};
use crate::tokens::Principal;
use crate::Store;

/// What an audit event is about: a kind (`user`, `team`, `token`,
/// `environment`, `task`, `server`) and its id.
#[derive(Debug, Clone, Copy)]
pub struct AuditSubject<'a> {
    pub kind: &'static str,
    pub id: Option<&'a str>,
    /// The team the subject belongs to, for filtering by team.
    pub team_id: Option<&'a str>,
}

impl<'a> AuditSubject<'a> {
    pub fn new(kind: &'static str, id: &'a str) -> Self {
        AuditSubject {
            kind,
            id: Some(id),
            team_id: None,
        }
    }

    pub fn in_team(mut self, team_id: Option<&'a str>) -> Self {
        self.team_id = team_id;
        self
    }
}

/// Appends one audit event inside `tx`. `details` must never hold a secret
/// value (names of secrets are fine). Returns the event's id.
pub(crate) async fn audit_in(
    tx: &mut Tx,
    who: &Principal,
    action: &str,
    subject: AuditSubject<'_>,
    details: Value,
    now_ms: i64,
) -> Result<i64, OpError> {
    let id = tx
        .fetch_one(query(
            "UPDATE counters SET value = value + 1 WHERE name = 'audit_id' RETURNING value",
        ))
        .await?
        .int("value")?;
    let details = serde_json::to_string(&details)
        .map_err(|e| StoreError::invalid("audit details", e.to_string()))?;
    let actor_name = if who.user_name.is_empty() {
        who.name.as_str()
    } else {
        who.user_name.as_str()
    };
    let token_id = (!who.token_id.is_empty()).then_some(who.token_id.as_str());
    tx.execute(
        query(
            "INSERT INTO audit_events (id, ts, actor_user_id, actor_name, actor_token_id, origin,
                action, target_kind, target_id, team_id, details)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(id)
        .bind(now_ms)
        .bind(who.user_id.as_deref())
        .bind(actor_name)
        .bind(token_id)
        .bind(who.origin.as_deref())
        .bind(action)
        .bind(subject.kind)
        .bind(subject.id)
        .bind(subject.team_id)
        .bind(details),
    )
    .await?;
    Ok(id)
}

/// The actor of what the server does on its own (the first admin token at
/// bootstrap, a pull request refreshed after a follow-up): no user, no
/// token, named `kiln`.
pub fn server_actor() -> Principal {
    Principal {
        name: SERVER_ACTOR.to_string(),
        user_name: SERVER_ACTOR.to_string(),
        ..Principal::default()
    }
}

/// The name the server's own actions carry in the audit trail.
pub const SERVER_ACTOR: &str = "kiln";

/// Most events one page (`GET /api/audit`) holds.
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// Events per database round trip of an export: memory stays flat however
/// long the trail is.
pub const AUDIT_EXPORT_BATCH: u32 = 1000;

/// The `WHERE` of both listings: `$1`/`$2` bound the id (exclusive), then
/// the filters of [`AuditFilter`] in its field order. A filter bound to
/// NULL matches everything.
macro_rules! audit_where {
    () => {
        "SELECT id, ts, actor_user_id, actor_name, actor_token_id, origin, action,
            target_kind, target_id, team_id, details
         FROM audit_events
         WHERE id < $1 AND id > $2
           AND ($3 IS NULL OR actor_user_id = $3 OR actor_name = $3 OR actor_token_id = $3)
           AND ($4 IS NULL OR action = $4)
           AND ($5 IS NULL OR action LIKE $5 ESCAPE '\\')
           AND ($6 IS NULL OR team_id = $6 OR team_id IN (SELECT id FROM teams WHERE name = $6))
           AND ($7 IS NULL OR target_id = $7)
           AND ($8 IS NULL OR ts >= $8)
           AND ($9 IS NULL OR ts < $9) "
    };
}

/// An [`AuditQuery`]'s filters, checked and ready to bind.
#[derive(Debug, Clone, Default)]
struct AuditFilter {
    actor: Option<String>,
    action: Option<String>,
    /// `LIKE` pattern of an action prefix (`task.` → `task.%`).
    action_prefix: Option<String>,
    team: Option<String>,
    target: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
}

impl AuditFilter {
    fn from_query(request: &AuditQuery) -> Result<AuditFilter> {
        let text = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let mut filter = AuditFilter {
            actor: text(&request.actor),
            team: text(&request.team),
            target: text(&request.target),
            since_ms: request.since.map(to_millis),
            until_ms: request.until.map(to_millis),
            ..AuditFilter::default()
        };
        if let Some(action) = text(&request.action) {
            let valid = action
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
                && !action.starts_with('.');
            if !valid {
                return Err(StoreError::invalid(
                    "action",
                    format!(
                        "{action:?} is not an action: give one such as `task.created`, or a \
                         prefix ending in `.` such as `task.` (docs/audit.md lists them)"
                    ),
                ));
            }
            if action.ends_with('.') {
                // `_` is a LIKE wildcard: escaped, it only matches itself.
                filter.action_prefix = Some(format!("{}%", action.replace('_', "\\_")));
            } else {
                filter.action = Some(action);
            }
        }
        if let (Some(since), Some(until)) = (request.since, request.until) {
            if until <= since {
                return Err(StoreError::invalid(
                    "until",
                    format!(
                        "{until} is not after since ({since}): `until` is exclusive, give a \
                         later time"
                    ),
                ));
            }
        }
        Ok(filter)
    }

    fn bind(&self, q: Query) -> Query {
        q.bind(self.actor.as_deref())
            .bind(self.action.as_deref())
            .bind(self.action_prefix.as_deref())
            .bind(self.team.as_deref())
            .bind(self.target.as_deref())
            .bind(self.since_ms)
            .bind(self.until_ms)
    }
}

fn event_from_row(row: &DbRow) -> Result<AuditEvent, OpError> {
    let details = row.text("details")?;
    Ok(AuditEvent {
        id: row.int("id")?,
        ts: from_millis(row.int("ts")?),
        actor: AuditActor {
            user_id: row.opt_text("actor_user_id")?,
            user_name: row.text("actor_name")?,
            token_id: row.opt_text("actor_token_id")?,
        },
        origin: row.opt_text("origin")?,
        action: row.text("action")?,
        target: AuditTarget {
            kind: row.text("target_kind")?,
            id: row.opt_text("target_id")?,
        },
        team_id: row.opt_text("team_id")?,
        details: serde_json::from_str(&details)
            .map_err(|e| StoreError::corrupt("audit event details", e))?,
    })
}

fn require_admin(who: &Principal) -> Result<()> {
    if who.admin {
        Ok(())
    } else {
        Err(StoreError::forbidden(
            "the audit trail is for server admins and owners only: ask one to read it for you, \
             or to make you an admin (`kiln user update NAME --role admin`)",
        ))
    }
}

fn parse_cursor(cursor: Option<&str>) -> Result<i64> {
    match cursor.map(str::trim).filter(|c| !c.is_empty()) {
        None => Ok(i64::MAX),
        Some(cursor) => cursor
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| {
                StoreError::invalid(
                    "cursor",
                    "not a cursor from a previous page; omit it to start from the newest event",
                )
            }),
    }
}

impl Store {
    /// Audit events newest first, filtered by `request` (admins only).
    /// Keyset pagination: `next_cursor` (opaque to callers) continues
    /// below the page's oldest event, so events appended meanwhile never
    /// shift a page.
    pub async fn audit_events(&self, who: &Principal, request: &AuditQuery) -> Result<AuditPage> {
        require_admin(who)?;
        let limit = request.limit.unwrap_or(100);
        if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
            return Err(StoreError::invalid(
                "limit",
                format!("{limit} is out of range: use 1 to {MAX_AUDIT_PAGE}"),
            ));
        }
        let before = parse_cursor(request.cursor.as_deref())?;
        let filter = AuditFilter::from_query(request)?;
        self.run("list audit events", || async {
            let q = query(concat!(audit_where!(), "ORDER BY id DESC LIMIT $10"))
                .bind(before)
                .bind(0_i64);
            let rows = self
                .inner
                .db
                .fetch_all(filter.bind(q).bind(i64::from(limit) + 1))
                .await?;
            let mut events = rows
                .iter()
                .map(event_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            let next_cursor = if events.len() > limit as usize {
                events.truncate(limit as usize);
                events.last().map(|e| e.id.to_string())
            } else {
                None
            };
            Ok(AuditPage {
                events,
                next_cursor,
            })
        })
        .await
    }

    /// Every audit event matching `request` oldest first, read in batches
    /// of [`AUDIT_EXPORT_BATCH`] (admins only; `limit` and `cursor` are
    /// ignored). The export is the trail as it was when it started: events
    /// appended while it runs are left for the next one.
    pub async fn audit_export(&self, who: &Principal, request: &AuditQuery) -> Result<AuditExport> {
        require_admin(who)?;
        let filter = AuditFilter::from_query(request)?;
        let last = self
            .run("start an audit export", || async {
                Ok(self
                    .inner
                    .db
                    .fetch_one(query(
                        "SELECT COALESCE(MAX(id), 0) AS last FROM audit_events",
                    ))
                    .await?
                    .int("last")?)
            })
            .await?;
        Ok(AuditExport {
            store: self.clone(),
            filter,
            after: 0,
            last,
            done: false,
        })
    }
}

/// An export in progress: [`AuditExport::next_batch`] until it gives `None`.
#[derive(Debug)]
pub struct AuditExport {
    store: Store,
    filter: AuditFilter,
    /// The id of the last event given out.
    after: i64,
    /// The newest event when the export started: its end.
    last: i64,
    done: bool,
}

impl AuditExport {
    /// The next events, oldest first, or `None` once every one was given.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<AuditEvent>>> {
        if self.done {
            return Ok(None);
        }
        let (after, last) = (self.after, self.last);
        let filter = &self.filter;
        let store = &self.store;
        let events = store
            .run("export audit events", || async {
                let q = query(concat!(audit_where!(), "ORDER BY id ASC LIMIT $10"))
                    .bind(last + 1)
                    .bind(after);
                let rows = store
                    .inner
                    .db
                    .fetch_all(filter.bind(q).bind(i64::from(AUDIT_EXPORT_BATCH)))
                    .await?;
                rows.iter()
                    .map(event_from_row)
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        if events.len() < AUDIT_EXPORT_BATCH as usize {
            self.done = true;
        }
        match events.last() {
            Some(event) => {
                self.after = event.id;
                Ok(Some(events))
            }
            None => Ok(None),
        }
    }
}
