//! Quotas: how many attempts a team or a user may run at once, and how much
//! their attempts may cost per calendar month (UTC). The claim
//! (`Store::claim_in`) asks [`quota_gate_in`] which teams and users are at a
//! limit and passes over their attempts, saying why on each one it passes
//! (`attempts.wait_reason`). A quota never fails an attempt: it delays it.
//! docs/quotas.md describes the behaviour.

use std::collections::HashMap;

use chrono::{Datelike, NaiveDate};
use kiln_protocol::teams::{Quota, QuotaScope, QuotaStatus, QuotaUsage};
use kiln_protocol::{format_usd, micros_from_usd, usd_from_micros};
use serde_json::json;

use crate::audit::{audit_in, AuditSubject};
use crate::changes::Change;
use crate::clock::{from_millis, to_millis};
use crate::db::{query, Backend, DbRow, Tx};
use crate::error::{OpError, Result, StoreError};
use crate::tokens::Principal;
use crate::Store;

/// The PostgreSQL advisory lock key quota-checked claims take turns on
/// (`kilnq` in ASCII), so that two claimers (two servers, or a server and a
/// remote worker) never both count the same free slot. SQLite's
/// `BEGIN IMMEDIATE` already runs one claim at a time.
const QUOTA_CLAIM_LOCK: i64 = 0x6b_69_6c_6e_71;

/// The largest monthly budget accepted, in US dollars: far above any real
/// budget, and small enough that micro-dollars fit a BIGINT with room.
const MAX_BUDGET_USD: f64 = 1e9;

/// Midnight UTC of the first day of `now_ms`'s month, in milliseconds.
pub(crate) fn month_start_ms(now_ms: i64) -> i64 {
    let now = from_millis(now_ms);
    NaiveDate::from_ymd_opt(now.year(), now.month(), 1)
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map_or(now_ms, |start| to_millis(start.and_utc()))
}

/// One team's or user's limits (NULL columns: no limit).
#[derive(Debug, Clone)]
struct Limits {
    scope: QuotaScope,
    id: String,
    name: String,
    max_concurrent: Option<u64>,
    budget_micros: Option<u64>,
}

impl Limits {
    fn from_row(row: &DbRow, scope: QuotaScope) -> Result<Limits, OpError> {
        let non_negative = |v: Option<i64>| v.map(|v| u64::try_from(v).unwrap_or(0));
        Ok(Limits {
            scope,
            id: row.text("id")?,
            name: row.text("name")?,
            max_concurrent: non_negative(row.opt_int("max_concurrent_attempts")?),
            budget_micros: non_negative(row.opt_int("monthly_budget_microusd")?),
        })
    }

    fn quota(&self) -> Quota {
        Quota {
            max_concurrent_attempts: self
                .max_concurrent
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            monthly_budget_usd: self.budget_micros.map(usd_from_micros),
        }
    }

    /// Why this team's or user's attempts wait now, if they do.
    fn wait_reason(&self, running: u64, spent_micros: u64) -> Option<String> {
        let (scope, name) = (self.scope.as_str(), self.name.as_str());
        if let Some(max) = self.max_concurrent {
            if running >= max {
                let whose = match self.scope {
                    QuotaScope::Team => "its",
                    QuotaScope::User => "their",
                };
                return Some(format!(
                    "waiting for a slot: {scope} {name} runs {running} of {whose} {max} \
                     concurrent attempts (quota)"
                ));
            }
        }
        if let Some(budget) = self.budget_micros {
            if spent_micros >= budget {
                return Some(format!(
                    "waiting: {scope} {name} spent {} of a {} monthly budget (quota); an admin \
                     can raise it with kiln quota set --{scope} {name} --monthly-budget-usd N, \
                     or it renews on the 1st of next month (UTC)",
                    format_usd(usd_from_micros(spent_micros)),
                    format_usd(usd_from_micros(budget)),
                ));
            }
        }
        None
    }
}

/// Every team and user with a quota; one statement, as it runs before
/// every claim.
const LIMITED: &str = "SELECT 'team' AS scope, id, name, max_concurrent_attempts,
        monthly_budget_microusd FROM teams
     WHERE max_concurrent_attempts IS NOT NULL OR monthly_budget_microusd IS NOT NULL
     UNION ALL
     SELECT 'user' AS scope, id, name, max_concurrent_attempts, monthly_budget_microusd
     FROM users
     WHERE max_concurrent_attempts IS NOT NULL OR monthly_budget_microusd IS NOT NULL";

/// Running attempts and this month's spend, by (team, user) of the task.
#[derive(Debug, Default)]
struct Usage {
    running_by_team: HashMap<String, u64>,
    running_by_user: HashMap<String, u64>,
    spent_by_team: HashMap<String, u64>,
    spent_by_user: HashMap<String, u64>,
}

impl Usage {
    async fn read(tx: &mut Tx, month_start: i64, with_spend: bool) -> Result<Usage, OpError> {
        let mut usage = Usage::default();
        let running = tx
            .fetch_all(query(
                "SELECT t.team_id, t.user_id, COUNT(*) AS n
                 FROM attempts a JOIN tasks t ON t.id = a.task_id
                 WHERE a.status = 'running' GROUP BY t.team_id, t.user_id",
            ))
            .await?;
        for row in &running {
            let n = row.u64("n")?;
            add(&mut usage.running_by_team, row.opt_text("team_id")?, n);
            add(&mut usage.running_by_user, row.opt_text("user_id")?, n);
        }
        if with_spend {
            let spent = tx
                .fetch_all(
                    query(
                        "SELECT t.team_id, t.user_id,
                            CAST(COALESCE(SUM(a.cost_microusd), 0) AS BIGINT) AS spent
                         FROM attempts a JOIN tasks t ON t.id = a.task_id
                         WHERE a.finished_at >= $1 AND a.cost_microusd IS NOT NULL
                         GROUP BY t.team_id, t.user_id",
                    )
                    .bind(month_start),
                )
                .await?;
            for row in &spent {
                let micros = row.u64("spent")?;
                add(&mut usage.spent_by_team, row.opt_text("team_id")?, micros);
                add(&mut usage.spent_by_user, row.opt_text("user_id")?, micros);
            }
        }
        Ok(usage)
    }

    fn of(&self, scope: QuotaScope, id: &str) -> (u64, u64) {
        let (running, spent) = match scope {
            QuotaScope::Team => (&self.running_by_team, &self.spent_by_team),
            QuotaScope::User => (&self.running_by_user, &self.spent_by_user),
        };
        (
            running.get(id).copied().unwrap_or(0),
            spent.get(id).copied().unwrap_or(0),
        )
    }
}

fn add(map: &mut HashMap<String, u64>, key: Option<String>, n: u64) {
    if let Some(key) = key {
        let total = map.entry(key).or_insert(0);
        *total = total.saturating_add(n);
    }
}

/// The teams and users whose attempts wait now, with the reason for each.
#[derive(Debug, Default)]
pub(crate) struct QuotaGate {
    teams: HashMap<String, String>,
    users: HashMap<String, String>,
}

impl QuotaGate {
    /// Why an attempt of a task by `user_id` in `team_id` may not start
    /// now; the user's own limit is named first.
    pub(crate) fn reason_for(&self, user_id: Option<&str>, team_id: Option<&str>) -> Option<&str> {
        let user = user_id.and_then(|id| self.users.get(id));
        let team = team_id.and_then(|id| self.teams.get(id));
        user.or(team).map(String::as_str)
    }
}

/// `None` when no team or user has a quota (the common case, one cheap
/// query). Otherwise, on PostgreSQL, takes the claim lock for the rest of
/// `tx` and returns who is at a limit.
pub(crate) async fn quota_gate_in(tx: &mut Tx, now_ms: i64) -> Result<Option<QuotaGate>, OpError> {
    let mut limits = Vec::new();
    for row in tx.fetch_all(query(LIMITED)).await? {
        let scope = match row.text("scope")?.as_str() {
            "team" => QuotaScope::Team,
            _ => QuotaScope::User,
        };
        limits.push(Limits::from_row(&row, scope)?);
    }
    if limits.is_empty() {
        return Ok(None);
    }
    if tx.backend() == Backend::Postgres {
        // Counted after the lock: every claim that held it before has
        // committed, so its running attempt is in the count.
        tx.execute(query("SELECT pg_advisory_xact_lock($1)").bind(QUOTA_CLAIM_LOCK))
            .await?;
    }
    let with_spend = limits.iter().any(|l| l.budget_micros.is_some());
    let usage = Usage::read(tx, month_start_ms(now_ms), with_spend).await?;
    let mut gate = QuotaGate::default();
    for limit in &limits {
        let (running, spent) = usage.of(limit.scope, &limit.id);
        if let Some(reason) = limit.wait_reason(running, spent) {
            let blocked = match limit.scope {
                QuotaScope::Team => &mut gate.teams,
                QuotaScope::User => &mut gate.users,
            };
            blocked.insert(limit.id.clone(), reason);
        }
    }
    Ok(Some(gate))
}

/// The team or user `target` (an id, or a name) names, with its limits.
async fn resolve_in(tx: &mut Tx, scope: QuotaScope, target: &str) -> Result<Limits, OpError> {
    // An id wins over a name that happens to look like one.
    let sql = match scope {
        QuotaScope::Team => {
            "SELECT id, name, max_concurrent_attempts, monthly_budget_microusd FROM teams
             WHERE id = $1 OR name = $1 ORDER BY (CASE WHEN id = $1 THEN 0 ELSE 1 END) LIMIT 1"
        }
        QuotaScope::User => {
            "SELECT id, name, max_concurrent_attempts, monthly_budget_microusd FROM users
             WHERE id = $1 OR name = $1 ORDER BY (CASE WHEN id = $1 THEN 0 ELSE 1 END) LIMIT 1"
        }
    };
    match tx.fetch_optional(query(sql).bind(target)).await? {
        Some(row) => Limits::from_row(&row, scope),
        None => Err(StoreError::not_found(format!("{} {target}", scope.as_str())).into()),
    }
}

/// Whether `who` may read `limits`: admins; a team's members (any role);
/// a user themselves. Others get "not found" (existence is not revealed).
fn check_read(who: &Principal, limits: &Limits) -> Result<(), StoreError> {
    let allowed = who.admin
        || match limits.scope {
            QuotaScope::Team => who.team_role(&limits.id).is_some(),
            QuotaScope::User => who.user_id.as_deref() == Some(limits.id.as_str()),
        };
    if allowed {
        Ok(())
    } else {
        Err(StoreError::not_found(format!(
            "{} {}",
            limits.scope.as_str(),
            limits.name
        )))
    }
}

fn validate(quota: &Quota) -> Result<(Option<i64>, Option<i64>), StoreError> {
    let max = match quota.max_concurrent_attempts {
        Some(0) => {
            return Err(StoreError::invalid(
                "max_concurrent_attempts",
                "use 1 or more, or null to remove the limit",
            ))
        }
        max => max.map(i64::from),
    };
    let budget = match quota.monthly_budget_usd {
        None => None,
        Some(usd) if usd.is_finite() && usd > 0.0 && usd <= MAX_BUDGET_USD => {
            let micros = micros_from_usd(usd);
            if micros == 0 {
                return Err(StoreError::invalid(
                    "monthly_budget_usd",
                    "use at least 0.000001 US dollars, or null to remove the budget",
                ));
            }
            Some(i64::try_from(micros).unwrap_or(i64::MAX))
        }
        Some(usd) => {
            return Err(StoreError::invalid(
                "monthly_budget_usd",
                format!(
                    "{usd} is not a budget: use a number of US dollars above 0 and at most \
                     {MAX_BUDGET_USD}, or null to remove the budget"
                ),
            ))
        }
    };
    Ok((max, budget))
}

impl Store {
    /// The quota of the team or user `target` (id or name) and its use now.
    /// Admins, the team's members, or the user themselves.
    pub async fn quota(
        &self,
        who: &Principal,
        scope: QuotaScope,
        target: &str,
    ) -> Result<QuotaStatus> {
        self.run("read a quota", || async {
            let now = self.now_ms();
            let mut tx = self.begin().await?;
            let limits = resolve_in(&mut tx, scope, target).await?;
            check_read(who, &limits)?;
            let status = status_in(&mut tx, &limits, now).await?;
            self.commit(tx, Vec::new()).await?;
            Ok(status)
        })
        .await
    }

    /// Sets (replaces) the quota of the team or user `target` (id or name);
    /// `None` fields remove that limit. Admins only. Attempts that waited on
    /// the old quota are looked at again at once.
    pub async fn set_quota(
        &self,
        who: &Principal,
        scope: QuotaScope,
        target: &str,
        quota: &Quota,
    ) -> Result<QuotaStatus> {
        let (max, budget) = validate(quota)?;
        self.run("set a quota", || async {
            let now = self.now_ms();
            let mut tx = self.begin().await?;
            let old = resolve_in(&mut tx, scope, target).await?;
            check_read(who, &old)?;
            if !who.admin {
                return Err(StoreError::forbidden(format!(
                    "only admins may set quotas (of {} {}); ask an admin",
                    scope.as_str(),
                    old.name
                ))
                .into());
            }
            let (update, clear_reasons) = match scope {
                QuotaScope::Team => (
                    "UPDATE teams SET max_concurrent_attempts = $2, monthly_budget_microusd = $3
                     WHERE id = $1",
                    "UPDATE attempts SET wait_reason = NULL
                     WHERE status IN ('queued', 'interrupted') AND wait_reason IS NOT NULL
                       AND task_id IN (SELECT id FROM tasks WHERE team_id = $1)",
                ),
                QuotaScope::User => (
                    "UPDATE users SET max_concurrent_attempts = $2, monthly_budget_microusd = $3
                     WHERE id = $1",
                    "UPDATE attempts SET wait_reason = NULL
                     WHERE status IN ('queued', 'interrupted') AND wait_reason IS NOT NULL
                       AND task_id IN (SELECT id FROM tasks WHERE user_id = $1)",
                ),
            };
            tx.execute(query(update).bind(old.id.as_str()).bind(max).bind(budget))
                .await?;
            // The next claim says again why they wait, if they still do.
            tx.execute(query(clear_reasons).bind(old.id.as_str()))
                .await?;
            let new = Limits {
                max_concurrent: max.map(|n| u64::try_from(n).unwrap_or(0)),
                budget_micros: budget.map(|n| u64::try_from(n).unwrap_or(0)),
                ..old.clone()
            };
            let subject = AuditSubject::new(scope.as_str(), &old.id);
            let subject = match scope {
                QuotaScope::Team => subject.in_team(Some(&old.id)),
                QuotaScope::User => subject,
            };
            audit_in(
                &mut tx,
                who,
                "quota.set",
                subject,
                json!({
                    "scope": scope.as_str(),
                    "name": old.name,
                    "old": old.quota(),
                    "new": new.quota(),
                }),
                now,
            )
            .await?;
            let status = status_in(&mut tx, &new, now).await?;
            // A raised quota lets waiting attempts start now.
            self.commit(tx, vec![Change::Queue]).await?;
            Ok(status)
        })
        .await
    }

    /// [`Store::set_quota`] of a team.
    pub async fn set_team_quota(
        &self,
        who: &Principal,
        team: &str,
        quota: &Quota,
    ) -> Result<QuotaStatus> {
        self.set_quota(who, QuotaScope::Team, team, quota).await
    }

    /// [`Store::set_quota`] of a user.
    pub async fn set_user_quota(
        &self,
        who: &Principal,
        user: &str,
        quota: &Quota,
    ) -> Result<QuotaStatus> {
        self.set_quota(who, QuotaScope::User, user, quota).await
    }
}

async fn status_in(tx: &mut Tx, limits: &Limits, now_ms: i64) -> Result<QuotaStatus, OpError> {
    let month_start = month_start_ms(now_ms);
    let usage = Usage::read(tx, month_start, true).await?;
    let (running, spent) = usage.of(limits.scope, &limits.id);
    Ok(QuotaStatus {
        scope: limits.scope,
        id: limits.id.clone(),
        name: limits.name.clone(),
        quota: limits.quota(),
        usage: QuotaUsage {
            running_attempts: running,
            spent_this_month_usd: usd_from_micros(spent),
            month_start: from_millis(month_start),
        },
    })
}
