//! Remote workers (`kiln worker`): claims that hand out a lease token, the
//! calls fenced by it (heartbeat, events, finish), and the workers seen.
//!
//! A remote claim stores only the SHA-256 of its lease token, on the
//! attempt (the claim that holds it now) and in `worker_leases` (every
//! token handed out), so that a token of a claim that was taken back is
//! told apart from a token nobody issued: the first is "lease lost" (stop
//! writing), the second is not a credential at all. Every fenced call
//! re-checks, in its own transaction and under the attempt row's lock,
//! that the attempt still runs under that token with an unexpired lease;
//! a re-claimed attempt has a new token, so a worker that comes back after
//! its lease was taken writes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use kiln_protocol::worker::{AttemptAddress, WorkerIdentity, WorkerInfo};
use kiln_protocol::{AttemptReport, Event};
use rand::Rng;

use crate::changes::Change;
use crate::clock::{duration_millis, from_millis};
use crate::db::{query, Tx};
use crate::error::{OpError, Result, StoreError};
use crate::ids::hash_secret;
use crate::queue::{lease_lost, ClaimedAttempt, Lease};
use crate::tasks::AttemptRef;
use crate::tokens::Principal;
use crate::Store;

/// Longest worker name (`kiln worker --name`).
pub const MAX_WORKER_NAME: usize = 64;

/// An attempt a remote worker claimed, with the only credential for it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteClaim {
    pub claimed: ClaimedAttempt,
    /// Shown to the worker once; only its SHA-256 is stored.
    pub lease_token: String,
    /// `remote:<token id>:<name>`, the attempt's `worker_id`.
    pub worker_id: String,
}

/// A lease token that was checked against the attempt it is used on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub attempt: AttemptRef,
    /// The attempt's `worker_id` while this lease holds.
    pub worker_id: String,
    pub worker_token_id: String,
    pub worker_name: String,
    token_sha256: String,
}

/// The attempt row's lock and the fence in one statement: it changes
/// nothing, but matches only while the attempt runs under this lease.
const FENCE: &str = "UPDATE attempts SET lease_expires_at = lease_expires_at
    WHERE task_id = $1 AND n = $2 AND status = 'running' AND lease_token_sha256 = $3
      AND lease_expires_at >= $4";

/// The `worker_id` of a remote worker's claims.
pub fn remote_worker_id(token_id: &str, name: &str) -> String {
    format!("remote:{token_id}:{name}")
}

fn validate_worker_name(name: &str) -> Result<()> {
    let fits = (1..=MAX_WORKER_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if fits {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "worker.name",
            format!("use 1 to {MAX_WORKER_NAME} characters of A-Z, a-z, 0-9, '-', '_', '.', '@' (e.g. the host name)"),
        ))
    }
}

fn validate_worker_version(version: &str) -> Result<()> {
    if version.len() > 100 || version.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            "worker.version",
            "use at most 100 printable characters",
        ));
    }
    Ok(())
}

/// 32 random bytes, base64url without padding.
fn new_lease_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Store {
    /// Takes the oldest waiting attempt for a remote worker (as
    /// [`Store::claim_next`] does) and hands out a new lease token for it.
    /// Records the worker as seen either way.
    pub async fn claim_for_worker(
        &self,
        worker: &Principal,
        identity: &WorkerIdentity,
        lease: Duration,
    ) -> Result<Option<RemoteClaim>> {
        if !worker.worker {
            return Err(StoreError::invalid(
                "token",
                "only a worker token (kiln token create --worker) claims attempts",
            ));
        }
        validate_worker_name(&identity.name)?;
        validate_worker_version(&identity.version)?;
        let worker_id = remote_worker_id(&worker.token_id, &identity.name);
        let lease_token = new_lease_token();
        let token_sha256 = hash_secret(&lease_token);
        self.run("claim an attempt for a worker", || async {
            let now = self.now_ms();
            let mut tx = self.begin().await?;
            upsert_worker(&mut tx, &worker.token_id, identity, now).await?;
            let claimed = self
                .claim_in(&mut tx, &worker_id, lease, Some(&token_sha256))
                .await?;
            if let Some(claimed) = &claimed {
                tx.execute(
                    query(
                        "INSERT INTO worker_leases
                            (token_sha256, task_id, n, worker_token_id, worker_name, issued_at)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(token_sha256.as_str())
                    .bind(claimed.attempt.task_id.as_str())
                    .bind(claimed.attempt.n)
                    .bind(worker.token_id.as_str())
                    .bind(identity.name.as_str())
                    .bind(now),
                )
                .await?;
            }
            self.commit(tx, Vec::new()).await?;
            Ok(claimed)
        })
        .await
        .map(|claimed| {
            claimed.map(|claimed| RemoteClaim {
                claimed,
                lease_token: lease_token.clone(),
                worker_id: worker_id.clone(),
            })
        })
    }

    /// Checks `lease_token` for a call about `attempt`: [`StoreError::UnknownLease`]
    /// when no live worker token was given it, `NotFound` when it is another
    /// attempt's, [`StoreError::LeaseLost`] when the attempt no longer runs
    /// under it (expired, taken back, re-claimed or finished).
    pub async fn verify_lease(
        &self,
        lease_token: &str,
        attempt: &AttemptRef,
    ) -> Result<LeaseHolder> {
        let token_sha256 = hash_secret(lease_token);
        self.run("check a lease token", || async {
            let row = self
                .inner
                .db
                .fetch_optional(
                    query(
                        "SELECT l.task_id, l.n, l.worker_token_id, l.worker_name, t.revoked_at,
                            a.status, a.lease_token_sha256, a.lease_expires_at
                         FROM worker_leases l
                         JOIN tokens t ON t.id = l.worker_token_id
                         JOIN attempts a ON a.task_id = l.task_id AND a.n = l.n
                         WHERE l.token_sha256 = $1",
                    )
                    .bind(token_sha256.as_str()),
                )
                .await?;
            let Some(row) = row else {
                return Err(StoreError::UnknownLease.into());
            };
            if row.opt_int("revoked_at")?.is_some() {
                return Err(StoreError::UnknownLease.into());
            }
            let leased = AttemptRef::new(row.text("task_id")?, row.uint("n")?);
            if &leased != attempt {
                return Err(StoreError::not_found(attempt.to_string()).into());
            }
            let worker_token_id = row.text("worker_token_id")?;
            let worker_name = row.text("worker_name")?;
            let worker_id = remote_worker_id(&worker_token_id, &worker_name);
            let current = row.text("status")? == "running"
                && row.opt_text("lease_token_sha256")?.as_deref() == Some(token_sha256.as_str())
                && row.opt_int("lease_expires_at")?.unwrap_or(i64::MIN) >= self.now_ms();
            if !current {
                return Err(lease_lost(&worker_id, attempt).into());
            }
            Ok(LeaseHolder {
                attempt: leased,
                worker_id,
                worker_token_id,
                worker_name,
                token_sha256: token_sha256.clone(),
            })
        })
        .await
    }

    /// Renews the lease of `holder` and takes the messages waiting for the
    /// attempt (they count as delivered once returned).
    pub async fn heartbeat_lease(
        &self,
        holder: &LeaseHolder,
        lease: Duration,
    ) -> Result<(Lease, Vec<String>)> {
        let lease = self
            .run("renew a worker's lease", || async {
                let now = self.now_ms();
                let expires = now.saturating_add(duration_millis(lease));
                let mut tx = self.begin().await?;
                let row = tx
                    .fetch_optional(
                        query(
                            "UPDATE attempts SET lease_expires_at = $5
                             WHERE task_id = $1 AND n = $2 AND status = 'running'
                               AND lease_token_sha256 = $3 AND lease_expires_at >= $4
                             RETURNING cancel_requested",
                        )
                        .bind(holder.attempt.task_id.as_str())
                        .bind(holder.attempt.n)
                        .bind(holder.token_sha256.as_str())
                        .bind(now)
                        .bind(expires),
                    )
                    .await?
                    .ok_or_else(|| lease_lost(&holder.worker_id, &holder.attempt))?;
                let cancel_requested = row.bool("cancel_requested")?;
                touch_worker(&mut tx, holder, now).await?;
                self.commit(tx, Vec::new()).await?;
                Ok(Lease {
                    expires_at: from_millis(expires),
                    cancel_requested,
                })
            })
            .await?;
        let messages = self.take_undelivered(&holder.attempt).await?;
        Ok((lease, messages.into_iter().map(|m| m.text).collect()))
    }

    /// Appends a worker's events to the attempt's log. They must continue
    /// it: consecutive `seq`s starting at most at the next one; the part of
    /// a batch that repeats stored `seq`s is skipped (a retry after a lost
    /// reply). Returns the `seq` the next event must have.
    pub async fn append_leased_events(
        &self,
        holder: &LeaseHolder,
        events: &[Event],
    ) -> Result<u64> {
        for pair in events.windows(2) {
            if pair[1].seq != pair[0].seq.saturating_add(1) {
                return Err(StoreError::invalid(
                    "events",
                    format!(
                        "seq {} follows seq {}: send the events of a batch with consecutive seqs",
                        pair[1].seq, pair[0].seq
                    ),
                ));
            }
        }
        self.run("append a worker's events", || async {
            let now = self.now_ms();
            let mut tx = self.begin().await?;
            fence(&mut tx, holder, now).await?;
            let next = crate::events::next_seq(&mut tx, &holder.attempt).await?;
            if let Some(first) = events.first() {
                if first.seq > next {
                    return Err(StoreError::Conflict {
                        message: format!(
                            "the batch starts at seq {} but the log's next seq is {next}: send the events from {next} on",
                            first.seq
                        ),
                    }
                    .into());
                }
            }
            let new: Vec<&Event> = events.iter().filter(|e| e.seq >= next).collect();
            let next_after = new.last().map_or(next, |e| e.seq + 1);
            touch_worker(&mut tx, holder, now).await?;
            let appended =
                crate::events::insert_new_events(&mut tx, &holder.attempt, &new).await?;
            let changes = appended
                .last_id
                .map(|last_id| Change::Events {
                    task_id: holder.attempt.task_id.clone(),
                    last_id,
                })
                .into_iter()
                .collect();
            self.commit(tx, changes).await?;
            Ok(next_after)
        })
        .await
    }

    /// Records how a remote worker's attempt ended; its lease ends with it.
    pub async fn finish_leased(&self, holder: &LeaseHolder, report: &AttemptReport) -> Result<()> {
        self.run("finish a worker's attempt", || async {
            let now = self.now_ms();
            let mut tx = self.begin().await?;
            fence(&mut tx, holder, now).await?;
            touch_worker(&mut tx, holder, now).await?;
            self.finish_in(&mut tx, &holder.worker_id, &holder.attempt, report)
                .await?;
            self.commit(tx, Vec::new()).await
        })
        .await
    }

    /// Records the commit a fresh run of `attempt` starts from; a follow-up
    /// reads it back ([`Store::base_commit`]) to measure its diff against
    /// the same base on whichever machine it runs.
    pub async fn set_base_commit(&self, attempt: &AttemptRef, commit: &str) -> Result<()> {
        self.run("record an attempt's base commit", || async {
            let mut tx = self.begin().await?;
            let changed = tx
                .execute(
                    query("UPDATE attempts SET base_commit = $3 WHERE task_id = $1 AND n = $2")
                        .bind(attempt.task_id.as_str())
                        .bind(attempt.n)
                        .bind(commit),
                )
                .await?;
            if changed == 0 {
                return Err(StoreError::not_found(attempt.to_string()).into());
            }
            self.commit(tx, Vec::new()).await
        })
        .await
    }

    /// The commit `attempt` started from, when a run recorded it.
    pub async fn base_commit(&self, attempt: &AttemptRef) -> Result<Option<String>> {
        self.run("read an attempt's base commit", || async {
            let row = self
                .inner
                .db
                .fetch_optional(
                    query("SELECT base_commit FROM attempts WHERE task_id = $1 AND n = $2")
                        .bind(attempt.task_id.as_str())
                        .bind(attempt.n),
                )
                .await?
                .ok_or_else(|| StoreError::not_found(attempt.to_string()))?;
            Ok(row.opt_text("base_commit")?)
        })
        .await
    }

    /// Every worker seen, with the attempts it holds a lease on now.
    pub async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        self.run("list workers", || async {
            let rows = self
                .inner
                .db
                .fetch_all(query(
                    "SELECT token_id, name, version, last_contact FROM workers
                     ORDER BY token_id, name",
                ))
                .await?;
            let running_rows = self
                .inner
                .db
                .fetch_all(
                    query(
                        "SELECT l.worker_token_id, l.worker_name, a.task_id, a.n
                         FROM attempts a JOIN worker_leases l ON l.token_sha256 = a.lease_token_sha256
                         WHERE a.status = 'running' AND a.lease_expires_at >= $1
                         ORDER BY a.task_id, a.n",
                    )
                    .bind(self.now_ms()),
                )
                .await?;
            let mut running: BTreeMap<(String, String), Vec<AttemptAddress>> = BTreeMap::new();
            for row in running_rows {
                running
                    .entry((row.text("worker_token_id")?, row.text("worker_name")?))
                    .or_default()
                    .push(AttemptAddress {
                        task_id: row.text("task_id")?,
                        n: row.uint("n")?,
                    });
            }
            rows.iter()
                .map(|row| {
                    let token_id = row.text("token_id")?;
                    let name = row.text("name")?;
                    let held = running
                        .remove(&(token_id.clone(), name.clone()))
                        .unwrap_or_default();
                    Ok(WorkerInfo {
                        name,
                        version: row.text("version")?,
                        token_id,
                        running: held,
                        last_contact: from_millis(row.int("last_contact")?),
                    })
                })
                .collect()
        })
        .await
    }
}

async fn fence(tx: &mut Tx, holder: &LeaseHolder, now: i64) -> Result<(), OpError> {
    let held = tx
        .execute(
            query(FENCE)
                .bind(holder.attempt.task_id.as_str())
                .bind(holder.attempt.n)
                .bind(holder.token_sha256.as_str())
                .bind(now),
        )
        .await?;
    if held == 0 {
        return Err(lease_lost(&holder.worker_id, &holder.attempt).into());
    }
    Ok(())
}

async fn upsert_worker(
    tx: &mut Tx,
    token_id: &str,
    identity: &WorkerIdentity,
    now: i64,
) -> Result<(), OpError> {
    tx.execute(
        query(
            "INSERT INTO workers (token_id, name, version, first_seen, last_contact)
             VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (token_id, name) DO UPDATE SET version = $3, last_contact = $4",
        )
        .bind(token_id)
        .bind(identity.name.as_str())
        .bind(identity.version.as_str())
        .bind(now),
    )
    .await?;
    Ok(())
}

async fn touch_worker(tx: &mut Tx, holder: &LeaseHolder, now: i64) -> Result<(), OpError> {
    tx.execute(
        query("UPDATE workers SET last_contact = $3 WHERE token_id = $1 AND name = $2")
            .bind(holder.worker_token_id.as_str())
            .bind(holder.worker_name.as_str())
            .bind(now),
    )
    .await?;
    Ok(())
}
