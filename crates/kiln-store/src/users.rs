//! Users and their teams: the identities tokens belong to. The access rules
//! that read them are in `access.rs`; the user and team routes' queries
//! (lists, memberships, roles, quotas) build on the helpers here.

use kiln_protocol::teams::{Membership, ServerRole, TeamRole};

use crate::db::{query, Reads, Tx};
use crate::error::{OpError, StoreError};
use crate::Store;

/// Longest user or team name.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` is a valid user or team name: 1 to 64 of `a-z`, `0-9`,
/// `.`, `_`, `-`, starting with a letter or digit (names appear in URLs,
/// `team/environment` references and audit lines).
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
}

/// The error for an invalid user or team name.
pub(crate) fn invalid_name(field: &'static str, name: &str) -> StoreError {
    StoreError::invalid(
        field,
        format!(
            "{name:?} is not a valid name: use 1 to {MAX_NAME_LEN} lowercase letters, digits, \
             '.', '_' or '-', starting with a letter or digit"
        ),
    )
}

/// `hint` made into a valid name (lowercased, other characters as `-`).
pub fn sanitize_name(hint: &str) -> String {
    let mut name: String = hint
        .trim()
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = name.trim_start_matches(['.', '_', '-']).to_string();
    name = trimmed;
    name.truncate(MAX_NAME_LEN - 4);
    if name.is_empty() {
        name = "user".to_string();
    }
    name
}

/// A name for a new row of `table` (users or teams) from `hint`: the
/// sanitized hint, or with `-2`, `-3`… appended when it is taken.
pub(crate) async fn unique_name_in(
    tx: &mut Tx,
    table: NameTable,
    hint: &str,
) -> Result<String, OpError> {
    let base = sanitize_name(hint);
    let mut candidate = base.clone();
    for n in 2.. {
        let sql = match table {
            NameTable::Users => "SELECT COUNT(*) AS n FROM users WHERE name = $1",
            NameTable::Teams => "SELECT COUNT(*) AS n FROM teams WHERE name = $1",
        };
        let taken = tx
            .fetch_one(query(sql).bind(candidate.as_str()))
            .await?
            .int("n")?;
        if taken == 0 {
            break;
        }
        candidate = format!("{base}-{n}");
    }
    Ok(candidate)
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum NameTable {
    Users,
    Teams,
}

/// Creates a user named after `hint` with `role`, and a personal team of
/// the same name where they are maintainer (so that a token-only identity
/// can create environments at once). The first admin becomes the owner.
/// Returns (user id, team id).
pub(crate) async fn create_identity_in(
    store: &Store,
    tx: &mut Tx,
    hint: &str,
    email: Option<&str>,
    role: ServerRole,
) -> Result<(String, String), OpError> {
    let now = store.now_ms();
    let role = if role == ServerRole::Admin && !owner_exists_in(tx).await? {
        ServerRole::Owner
    } else {
        role
    };
    let user_id = store.new_id("usr_");
    let name = unique_name_in(tx, NameTable::Users, hint).await?;
    tx.execute(
        query("INSERT INTO users (id, name, email, role, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&user_id)
            .bind(&name)
            .bind(email)
            .bind(role.as_str())
            .bind(now),
    )
    .await?;
    let team_id = create_team_in(store, tx, &name).await?;
    set_member_in(tx, &team_id, &user_id, TeamRole::Maintainer, "local", now).await?;
    Ok((user_id, team_id))
}

async fn owner_exists_in(tx: &mut Tx) -> Result<bool, OpError> {
    Ok(tx
        .fetch_one(query(
            "SELECT COUNT(*) AS n FROM users WHERE role = 'owner' AND disabled_at IS NULL",
        ))
        .await?
        .int("n")?
        > 0)
}

/// Creates a team named after `hint` (made unique); returns its id.
pub(crate) async fn create_team_in(
    store: &Store,
    tx: &mut Tx,
    hint: &str,
) -> Result<String, OpError> {
    let team_id = store.new_id("team_");
    let name = unique_name_in(tx, NameTable::Teams, hint).await?;
    tx.execute(
        query("INSERT INTO teams (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&team_id)
            .bind(&name)
            .bind(store.now_ms()),
    )
    .await?;
    Ok(team_id)
}

/// Gives `user_id` `role` in `team_id` (replacing their role there).
pub(crate) async fn set_member_in(
    tx: &mut Tx,
    team_id: &str,
    user_id: &str,
    role: TeamRole,
    source: &str,
    now: i64,
) -> Result<(), OpError> {
    tx.execute(
        query(
            "INSERT INTO team_members (team_id, user_id, role, source, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (team_id, user_id) DO UPDATE SET role = $3, source = $4",
        )
        .bind(team_id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(source)
        .bind(now),
    )
    .await?;
    Ok(())
}

/// The teams `user_id` belongs to, by team name, read in a change's
/// transaction or from the pool.
pub(crate) async fn memberships_in(
    db: &mut impl Reads,
    user_id: &str,
) -> Result<Vec<Membership>, OpError> {
    let rows = db
        .rows(
            query(
                "SELECT m.team_id, t.name, m.role, m.source FROM team_members m
                 JOIN teams t ON t.id = m.team_id WHERE m.user_id = $1 ORDER BY t.name",
            )
            .bind(user_id),
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Membership {
                team_id: row.text("team_id")?,
                team_name: row.text("name")?,
                role: row
                    .text("role")?
                    .parse()
                    .map_err(|e| StoreError::corrupt("team role", e))?,
                source: row.text("source")?,
            })
        })
        .collect()
}

impl Store {
    /// Gives every token that predates users an identity (migration 0005's
    /// Rust half; idempotent): each non-worker token without a user becomes
    /// a user of its own with a personal team where they are maintainer, and
    /// that token's environments and tasks move into the team. The oldest
    /// live admin token's user becomes the owner, other admin tokens' users
    /// admins. Nothing becomes visible to anyone who could not see it.
    pub(crate) async fn migrate_identities(&self) -> crate::Result<u64> {
        self.run("give existing tokens users and teams", || async {
            let mut tx = self.begin().await?;
            let rows = tx
                .fetch_all(query(
                    "SELECT id, name, admin FROM tokens
                     WHERE user_id IS NULL AND worker = FALSE
                     ORDER BY (CASE WHEN admin AND revoked_at IS NULL THEN 0 ELSE 1 END),
                        created_at, id",
                ))
                .await?;
            let mut migrated = 0;
            for row in &rows {
                let token_id = row.text("id")?;
                let role = if row.bool("admin")? {
                    ServerRole::Admin
                } else {
                    ServerRole::User
                };
                let (user_id, team_id) =
                    create_identity_in(self, &mut tx, &row.text("name")?, None, role).await?;
                tx.execute(
                    query("UPDATE tokens SET user_id = $2 WHERE id = $1")
                        .bind(&token_id)
                        .bind(&user_id),
                )
                .await?;
                tx.execute(
                    query(
                        "UPDATE environments SET team_id = $2
                         WHERE owner_token_id = $1 AND team_id IS NULL",
                    )
                    .bind(&token_id)
                    .bind(&team_id),
                )
                .await?;
                tx.execute(
                    query(
                        "UPDATE tasks SET user_id = $2, team_id = $3
                         WHERE owner_token_id = $1 AND user_id IS NULL",
                    )
                    .bind(&token_id)
                    .bind(&user_id)
                    .bind(&team_id),
                )
                .await?;
                migrated += 1;
            }
            if migrated > 0 {
                crate::environments::record_initial_versions_in(self, &mut tx).await?;
            }
            self.commit(tx, Vec::new()).await?;
            Ok(migrated)
        })
        .await
    }
}
