//! People and teams as the API manages them: users, teams, memberships,
//! each user's own tokens and task sharing. Who may do what is decided
//! here for these admin routes (owners and admins; only an owner grants or
//! removes `owner`/`admin`) and in `access.rs` for tasks. Every change
//! writes its audit event in the same transaction.

use kiln_protocol::api::TaskDetail;
use kiln_protocol::teams::{
    Membership, NewTeam, NewUser, Quota, ServerRole, Team, TeamMember, TeamRole, User, UserPatch,
};
use kiln_protocol::usd_from_micros;
use serde_json::json;

use crate::audit::{audit_in, AuditSubject};
use crate::clock::from_millis;

use crate::db::{query, Backend, DbRow, Reads, Tx};
use crate::error::{OpError, Result, StoreError};
use crate::tokens::{NewToken, Principal, TokenInfo};
use crate::users::{invalid_name, set_member_in, valid_name};
use crate::Store;

/// Longest email address accepted (RFC 5321's path limit).
const MAX_EMAIL_LEN: usize = 254;

macro_rules! select_user {
    () => {
        "SELECT id, name, email, role, oidc_issuer, max_concurrent_attempts,
            monthly_budget_microusd, created_at, disabled_at
         FROM users "
    };
}

macro_rules! select_team {
    () => {
        "SELECT id, name, max_concurrent_attempts, monthly_budget_microusd, created_at
         FROM teams "
    };
}

/// Whose token `POST /api/tokens` makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFor {
    /// The caller's own.
    Caller,
    /// An existing user's (id or name; admins only).
    User(String),
    /// A new user named after the token, with a personal team (admins;
    /// what every token was before users existed). `admin` makes that
    /// user an admin (owners only).
    NewUser { admin: bool },
    /// A worker token for `kiln worker` (admins).
    Worker,
}

fn quota_from_row(row: &DbRow) -> Result<Quota, OpError> {
    Ok(Quota {
        max_concurrent_attempts: row
            .opt_int("max_concurrent_attempts")?
            .and_then(|n| u32::try_from(n).ok()),
        monthly_budget_usd: row
            .opt_int("monthly_budget_microusd")?
            .map(|m| usd_from_micros(u64::try_from(m).unwrap_or(0))),
    })
}

fn user_from_row(row: &DbRow, teams: Vec<Membership>) -> Result<User, OpError> {
    Ok(User {
        id: row.text("id")?,
        name: row.text("name")?,
        email: row.opt_text("email")?,
        role: row
            .text("role")?
            .parse()
            .map_err(|e| StoreError::corrupt("user role", e))?,
        teams,
        oidc_issuer: row.opt_text("oidc_issuer")?,
        quota: quota_from_row(row)?,
        created_at: from_millis(row.int("created_at")?),
        disabled_at: row.opt_int("disabled_at")?.map(from_millis),
    })
}

fn team_from_row(row: &DbRow, members: Vec<TeamMember>) -> Result<Team, OpError> {
    Ok(Team {
        id: row.text("id")?,
        name: row.text("name")?,
        members,
        quota: quota_from_row(row)?,
        created_at: from_millis(row.int("created_at")?),
    })
}

fn require_admin(who: &Principal, what: &str) -> Result<(), StoreError> {
    if who.admin {
        Ok(())
    } else {
        Err(StoreError::forbidden(format!(
            "only an owner or admin may {what} (you are a {}); ask an admin",
            who.role
        )))
    }
}

fn require_owner_for(who: &Principal, role: ServerRole, user: &str) -> Result<(), StoreError> {
    if role.is_admin() && who.role != ServerRole::Owner {
        return Err(StoreError::forbidden(format!(
            "only an owner may give or take the {role} role (user {user}); ask an owner"
        )));
    }
    Ok(())
}

fn check_email(email: Option<&str>) -> Result<Option<String>, StoreError> {
    let Some(email) = email.map(str::trim).filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    let shaped = email.len() <= MAX_EMAIL_LEN
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !email.chars().any(|c| c.is_control() || c.is_whitespace());
    if shaped {
        Ok(Some(email.to_string()))
    } else {
        Err(StoreError::invalid(
            "email",
            format!("{email:?} is not an email address: give one like ana@example.com"),
        ))
    }
}

async fn members_in(tx: &mut impl Reads, team_id: &str) -> Result<Vec<TeamMember>, OpError> {
    let rows = tx
        .rows(
            query(
                "SELECT m.user_id, u.name, m.role, m.source FROM team_members m
                 JOIN users u ON u.id = m.user_id WHERE m.team_id = $1 ORDER BY u.name",
            )
            .bind(team_id),
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(TeamMember {
                user_id: row.text("user_id")?,
                user_name: row.text("name")?,
                role: row
                    .text("role")?
                    .parse()
                    .map_err(|e| StoreError::corrupt("team role", e))?,
                source: row.text("source")?,
            })
        })
        .collect()
}

/// The user `key` (an id or a name) names, with their teams.
async fn user_in(tx: &mut impl Reads, key: &str) -> Result<User, OpError> {
    let row = tx
        .row(
            query(concat!(
                select_user!(),
                "WHERE id = $1 OR name = $1 ORDER BY (CASE WHEN id = $1 THEN 0 ELSE 1 END) LIMIT 1"
            ))
            .bind(key),
        )
        .await?
        .ok_or_else(|| StoreError::not_found(format!("user {key}")))?;
    let teams = crate::users::memberships_in(tx, &row.text("id")?).await?;
    user_from_row(&row, teams)
}

/// The team `key` (an id or a name) names, with its members.
async fn team_in(tx: &mut impl Reads, key: &str) -> Result<Team, OpError> {
    let row = tx
        .row(
            query(concat!(
                select_team!(),
                "WHERE id = $1 OR name = $1 ORDER BY (CASE WHEN id = $1 THEN 0 ELSE 1 END) LIMIT 1"
            ))
            .bind(key),
        )
        .await?
        .ok_or_else(|| StoreError::not_found(format!("team {key}")))?;
    let members = members_in(tx, &row.text("id")?).await?;
    team_from_row(&row, members)
}

async fn name_taken_in(tx: &mut Tx, sql: &'static str, name: &str) -> Result<bool, OpError> {
    Ok(tx.fetch_one(query(sql).bind(name)).await?.int("n")? > 0)
}

/// Whether `user_id` is the only enabled owner.
async fn last_owner_in(tx: &mut Tx, user_id: &str) -> Result<bool, OpError> {
    let others = tx
        .fetch_one(
            query(
                "SELECT COUNT(*) AS n FROM users
                 WHERE role = 'owner' AND disabled_at IS NULL AND id <> $1",
            )
            .bind(user_id),
        )
        .await?
        .int("n")?;
    Ok(others == 0)
}

impl Store {
    /// The caller as a user, with their teams.
    pub async fn me(&self, who: &Principal) -> Result<User> {
        let Some(user_id) = who.user_id.clone() else {
            return Err(StoreError::not_found(
                "the user of this token (a worker token has none)",
            ));
        };
        self.run("get the caller's user", || async {
            user_in(&mut &self.inner.db, &user_id).await
        })
        .await
    }

    /// Creates a user (admins; an `owner` or `admin` only by an owner). No
    /// personal team is made: an admin puts them in teams.
    pub async fn create_user(&self, who: &Principal, new: &NewUser) -> Result<User> {
        require_admin(who, "create users")?;
        let name = new.name.trim();
        if !valid_name(name) {
            return Err(invalid_name("name", name));
        }
        let role = new.role.unwrap_or_default();
        require_owner_for(who, role, name)?;
        let email = check_email(new.email.as_deref())?;
        self.run("create user", || async {
            let mut tx = self.begin().await?;
            if name_taken_in(
                &mut tx,
                "SELECT COUNT(*) AS n FROM users WHERE name = $1",
                name,
            )
            .await?
            {
                return Err(StoreError::Conflict {
                    message: format!("a user named {name} exists already: choose another name"),
                }
                .into());
            }
            let id = self.new_id("usr_");
            let now = self.now_ms();
            tx.execute(
                query(
                    "INSERT INTO users (id, name, email, role, created_at)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&id)
                .bind(name)
                .bind(email.as_deref())
                .bind(role.as_str())
                .bind(now),
            )
            .await?;
            audit_in(
                &mut tx,
                who,
                "user.created",
                AuditSubject::new("user", &id),
                json!({"name": name, "role": role.as_str(), "email": email}),
                now,
            )
            .await?;
            let user = user_in(&mut tx, &id).await?;
            self.commit(tx, Vec::new()).await?;
            Ok(user)
        })
        .await
    }

    /// Every user (admins), or only the caller (everyone else).
    pub async fn users(&self, who: &Principal) -> Result<Vec<User>> {
        if !who.admin {
            return Ok(vec![self.me(who).await?]);
        }
        self.run("list users", || async {
            let mut db = &self.inner.db;
            let ids = db
                .rows(query("SELECT id FROM users ORDER BY name"))
                .await?
                .iter()
                .map(|row| row.text("id"))
                .collect::<Result<Vec<_>, _>>()?;
            let mut users = Vec::with_capacity(ids.len());
            for id in ids {
                users.push(user_in(&mut db, &id).await?);
            }
            Ok(users)
        })
        .await
    }

    /// One user by id or name: any for admins, only themselves for others.
    pub async fn user(&self, who: &Principal, key: &str) -> Result<User> {
        let user = self
            .run("get user", || async {
                user_in(&mut &self.inner.db, key).await
            })
            .await;
        match user {
            Ok(user) if who.admin || who.user_id.as_deref() == Some(user.id.as_str()) => Ok(user),
            Ok(_) | Err(StoreError::NotFound { .. }) if !who.admin => Err(StoreError::forbidden(
                format!("only an owner or admin may look up other users (user {key})"),
            )),
            other => other,
        }
    }

    /// Changes a user's email, role or whether they are disabled (admins;
    /// owner and admin roles, given or taken, only by an owner). The last
    /// enabled owner can be neither demoted nor disabled. A disabled user's
    /// tokens stay but no longer verify.
    pub async fn update_user(&self, who: &Principal, key: &str, patch: &UserPatch) -> Result<User> {
        require_admin(who, "change users")?;
        let email = match &patch.email {
            Some(email) => Some(check_email(Some(email))?),
            None => None,
        };
        self.run("update user", || async {
            let mut tx = self.begin().await?;
            if tx.backend() == Backend::Postgres
                && (patch.role.is_some() || patch.disabled.is_some())
            {
                // Two owners demoting each other at once must not both see
                // the other still an owner (SQLite's write lock already
                // serializes this).
                tx.execute(query(
                    "SELECT id FROM users WHERE role = 'owner' FOR UPDATE",
                ))
                .await?;
            }
            let before = user_in(&mut tx, key).await?;
            let name = before.name.as_str();
            let mut fields = Vec::new();
            let now = self.now_ms();
            if let Some(role) = patch.role.filter(|role| *role != before.role) {
                require_owner_for(who, role, name)?;
                require_owner_for(who, before.role, name)?;
                if before.role == ServerRole::Owner && last_owner_in(&mut tx, &before.id).await? {
                    return Err(StoreError::Conflict {
                        message: format!(
                            "user {name} is the last owner: make another user owner first"
                        ),
                    }
                    .into());
                }
                tx.execute(
                    query("UPDATE users SET role = $2 WHERE id = $1")
                        .bind(&before.id)
                        .bind(role.as_str()),
                )
                .await?;
                // Token rows keep the admin flag their listing shows in step
                // (verification reads the user's role).
                tx.execute(
                    query("UPDATE tokens SET admin = $2 WHERE user_id = $1 AND worker = FALSE")
                        .bind(&before.id)
                        .bind(role.is_admin()),
                )
                .await?;
                fields.push("role");
            }
            if let Some(email) = email.as_ref().filter(|e| **e != before.email) {
                tx.execute(
                    query("UPDATE users SET email = $2 WHERE id = $1")
                        .bind(&before.id)
                        .bind(email.as_deref()),
                )
                .await?;
                fields.push("email");
            }
            let disable = patch
                .disabled
                .filter(|d| *d != before.disabled_at.is_some());
            if let Some(disable) = disable {
                require_owner_for(who, before.role, name)?;
                if disable && who.user_id.as_deref() == Some(before.id.as_str()) {
                    return Err(StoreError::Conflict {
                        message: format!(
                            "you cannot disable yourself ({name}): ask another admin to"
                        ),
                    }
                    .into());
                }
                if disable
                    && before.role == ServerRole::Owner
                    && last_owner_in(&mut tx, &before.id).await?
                {
                    return Err(StoreError::Conflict {
                        message: format!(
                            "user {name} is the last owner: make another user owner first"
                        ),
                    }
                    .into());
                }
                tx.execute(
                    query("UPDATE users SET disabled_at = $2 WHERE id = $1")
                        .bind(&before.id)
                        .bind(disable.then_some(now)),
                )
                .await?;
            }
            let after = user_in(&mut tx, &before.id).await?;
            if !fields.is_empty() || disable == Some(false) {
                if disable == Some(false) {
                    fields.push("disabled");
                }
                audit_in(
                    &mut tx,
                    who,
                    "user.updated",
                    AuditSubject::new("user", &before.id),
                    json!({
                        "name": name,
                        "fields": fields,
                        "old_role": before.role.as_str(),
                        "new_role": after.role.as_str(),
                    }),
                    now,
                )
                .await?;
            }
            if disable == Some(true) {
                audit_in(
                    &mut tx,
                    who,
                    "user.disabled",
                    AuditSubject::new("user", &before.id),
                    json!({"name": name}),
                    now,
                )
                .await?;
            }
            self.commit(tx, Vec::new()).await?;
            Ok(after)
        })
        .await
    }

    /// Creates a team with no members (admins).
    pub async fn create_team(&self, who: &Principal, new: &NewTeam) -> Result<Team> {
        require_admin(who, "create teams")?;
        let name = new.name.trim();
        if !valid_name(name) {
            return Err(invalid_name("name", name));
        }
        self.run("create team", || async {
            let mut tx = self.begin().await?;
            if name_taken_in(
                &mut tx,
                "SELECT COUNT(*) AS n FROM teams WHERE name = $1",
                name,
            )
            .await?
            {
                return Err(StoreError::Conflict {
                    message: format!("a team named {name} exists already: choose another name"),
                }
                .into());
            }
            let id = self.new_id("team_");
            let now = self.now_ms();
            tx.execute(
                query("INSERT INTO teams (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(&id)
                    .bind(name)
                    .bind(now),
            )
            .await?;
            audit_in(
                &mut tx,
                who,
                "team.created",
                AuditSubject::new("team", &id).in_team(Some(&id)),
                json!({"name": name}),
                now,
            )
            .await?;
            let team = team_in(&mut tx, &id).await?;
            self.commit(tx, Vec::new()).await?;
            Ok(team)
        })
        .await
    }

    /// Every team (admins) or the caller's own, with members.
    pub async fn teams(&self, who: &Principal) -> Result<Vec<Team>> {
        self.run("list teams", || async {
            let mut db = &self.inner.db;
            let rows = db
                .rows(
                    query(
                        "SELECT id FROM teams t WHERE $1 OR EXISTS (SELECT 1 FROM team_members m
                            WHERE m.team_id = t.id AND m.user_id = $2)
                         ORDER BY name",
                    )
                    .bind(who.admin)
                    .bind(who.user_id.as_deref()),
                )
                .await?;
            let mut teams = Vec::with_capacity(rows.len());
            for row in &rows {
                teams.push(team_in(&mut db, &row.text("id")?).await?);
            }
            Ok(teams)
        })
        .await
    }

    /// One team by id or name, with its members: admins and its members
    /// (to anyone else it does not exist).
    pub async fn team(&self, who: &Principal, key: &str) -> Result<Team> {
        let team = self
            .run("get team", || async {
                team_in(&mut &self.inner.db, key).await
            })
            .await?;
        if who.admin || who.team_role(&team.id).is_some() {
            Ok(team)
        } else {
            Err(StoreError::not_found(format!("team {key}")))
        }
    }

    /// Gives `user` `role` in `team` (admins), replacing the role they had.
    pub async fn set_member(
        &self,
        who: &Principal,
        team: &str,
        user: &str,
        role: TeamRole,
    ) -> Result<Team> {
        require_admin(who, "change team memberships")?;
        self.run("set team member", || async {
            let mut tx = self.begin().await?;
            let team = team_in(&mut tx, team).await?;
            let user = user_in(&mut tx, user).await?;
            let previous = team
                .members
                .iter()
                .find(|m| m.user_id == user.id)
                .map(|m| m.role);
            let now = self.now_ms();
            if previous == Some(role) {
                return Ok(team);
            }
            set_member_in(&mut tx, &team.id, &user.id, role, "local", now).await?;
            audit_in(
                &mut tx,
                who,
                "team.member_set",
                AuditSubject::new("team", &team.id).in_team(Some(&team.id)),
                json!({
                    "team": team.name,
                    "user_id": user.id,
                    "user": user.name,
                    "role": role.as_str(),
                    "previous_role": previous.map(TeamRole::as_str),
                }),
                now,
            )
            .await?;
            let team = team_in(&mut tx, &team.id).await?;
            self.commit(tx, Vec::new()).await?;
            Ok(team)
        })
        .await
    }

    /// Takes `user` out of `team` (admins).
    pub async fn remove_member(&self, who: &Principal, team: &str, user: &str) -> Result<Team> {
        require_admin(who, "change team memberships")?;
        self.run("remove team member", || async {
            let mut tx = self.begin().await?;
            let team = team_in(&mut tx, team).await?;
            let user = user_in(&mut tx, user).await?;
            let Some(previous) = team.members.iter().find(|m| m.user_id == user.id) else {
                return Err(StoreError::not_found(format!(
                    "member {} of team {}",
                    user.name, team.name
                ))
                .into());
            };
            tx.execute(
                query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
                    .bind(&team.id)
                    .bind(&user.id),
            )
            .await?;
            let now = self.now_ms();
            audit_in(
                &mut tx,
                who,
                "team.member_removed",
                AuditSubject::new("team", &team.id).in_team(Some(&team.id)),
                json!({
                    "team": team.name,
                    "user_id": user.id,
                    "user": user.name,
                    "previous_role": previous.role.as_str(),
                }),
                now,
            )
            .await?;
            let team = team_in(&mut tx, &team.id).await?;
            self.commit(tx, Vec::new()).await?;
            Ok(team)
        })
        .await
    }

    /// Creates a token as `POST /api/tokens` asks; the secret is the only copy.
    pub async fn issue_token(
        &self,
        who: &Principal,
        name: &str,
        whose: &TokenFor,
    ) -> Result<NewToken> {
        match whose {
            TokenFor::Caller => {}
            TokenFor::User(_) => require_admin(who, "create tokens for other users")?,
            TokenFor::Worker => require_admin(who, "create worker tokens")?,
            TokenFor::NewUser { admin } => {
                require_admin(who, "create tokens for new users")?;
                if *admin {
                    require_owner_for(who, ServerRole::Admin, name)?;
                }
            }
        }
        let name = crate::tokens::validate_token_name(name)?;
        let secret = crate::ids::new_token_secret();
        let info = self
            .run("create token", || async {
                let mut tx = self.begin().await?;
                let kind = match whose {
                    TokenFor::Caller => {
                        let Some(user_id) = who.user_id.clone() else {
                            return Err(StoreError::invalid(
                                "user",
                                "this token has no user: name the user the token is for",
                            )
                            .into());
                        };
                        crate::tokens::TokenKind::of_user(user_id, who.role.is_admin())
                    }
                    TokenFor::User(key) => {
                        let user = user_in(&mut tx, key).await?;
                        crate::tokens::TokenKind::of_user(user.id, user.role.is_admin())
                    }
                    TokenFor::NewUser { admin } => crate::tokens::TokenKind::user(*admin),
                    TokenFor::Worker => crate::tokens::TokenKind::WORKER,
                };
                // insert_token_in records `token.created` with `who` as the actor.
                let info = self
                    .insert_token_in(&mut tx, who, name, &secret, kind)
                    .await?;
                self.commit(tx, Vec::new()).await?;
                Ok(info)
            })
            .await?;
        Ok(NewToken { info, secret })
    }

    /// Tokens `who` may see: their own; admins every token, or one user's
    /// (`user`, an id or a name).
    pub async fn tokens(&self, who: &Principal, user: Option<&str>) -> Result<Vec<TokenInfo>> {
        if user.is_some() && !who.admin {
            require_admin(who, "list other users' tokens")?;
        }
        self.run("list tokens", || async {
            let mut db = &self.inner.db;
            let owner = match (user, who.admin) {
                (Some(key), _) => Some(user_in(&mut db, key).await?.id),
                (None, true) => None,
                (None, false) => Some(who.user_id.clone().unwrap_or_default()),
            };
            let rows = db
                .rows(
                    query(
                        "SELECT id, name, admin, worker, user_id, source, expires_at, created_at,
                            revoked_at FROM tokens WHERE $1 IS NULL OR user_id = $1 ORDER BY id",
                    )
                    .bind(owner.as_deref()),
                )
                .await?;
            rows.iter().map(crate::tokens::token_from_row).collect()
        })
        .await
    }

    /// Revokes a token: the caller's own, or any for admins (someone
    /// else's is "not found" to a non-admin). Again is fine.
    pub async fn revoke_token_as(&self, who: &Principal, id: &str) -> Result<TokenInfo> {
        let owner = self
            .run("find token", || async {
                let row = self
                    .inner
                    .db
                    .fetch_optional(query("SELECT user_id FROM tokens WHERE id = $1").bind(id))
                    .await?
                    .ok_or_else(|| StoreError::not_found(format!("token {id}")))?;
                Ok(row.opt_text("user_id")?)
            })
            .await?;
        let own = owner.is_some() && owner == who.user_id;
        if !own && !who.admin {
            return Err(StoreError::not_found(format!("token {id}")));
        }
        // A token's owner never changes: the check holds for the revocation,
        // which records `token.revoked` in its own transaction.
        self.revoke_token_by(who, id).await
    }

    /// Shares a task with its team (`shared`), or makes it private to its
    /// author and the team's maintainers again: its author, the team's
    /// maintainers and admins.
    pub async fn share_task(
        &self,
        who: &Principal,
        task_id: &str,
        shared: bool,
    ) -> Result<TaskDetail> {
        self.run("share task", || async {
            let task = self
                .task_for(who, task_id, crate::access::TaskAction::Share)
                .await?;
            if task.shared == shared {
                return Ok(());
            }
            let now = self.now_ms();
            let mut tx = self.begin().await?;
            tx.execute(
                query("UPDATE tasks SET shared = $2, updated_at = $3 WHERE id = $1")
                    .bind(task_id)
                    .bind(shared)
                    .bind(now),
            )
            .await?;
            audit_in(
                &mut tx,
                who,
                if shared {
                    "task.shared"
                } else {
                    "task.unshared"
                },
                AuditSubject::new("task", task_id).in_team(task.team_id.as_deref()),
                json!({}),
                now,
            )
            .await?;
            self.commit(tx, Vec::new()).await?;
            Ok(())
        })
        .await?;
        self.task(who, task_id).await
    }
}
