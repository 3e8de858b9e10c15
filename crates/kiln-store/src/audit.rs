//! The audit trail: one append-only row per action that changed something,
//! written in the same transaction as the change (so a change without its
//! audit event, or the reverse, cannot be committed). Database triggers
//! refuse UPDATE and DELETE of these rows (migration 0005). docs/audit.md
//! lists the actions.

use serde_json::Value;

use crate::db::{query, Tx};
use crate::error::{OpError, StoreError};
use crate::tokens::Principal;

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
