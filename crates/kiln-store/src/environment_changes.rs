//! Changing a team's environment after it was created: edits, secrets,
//! deletion, and the version history each of them adds to.
//!
//! Every change is one transaction that first takes the environment row's
//! write lock (an UPDATE of the row), reads it as it is now, writes the
//! change with `version + 1`, its `environment_versions` row and its audit
//! event. Two concurrent edits therefore become two versions, never one
//! edit lost under another. Secret values are sealed with the environment
//! id as associated data (`secrets.rs`) and never leave the store here: the
//! versions' snapshots and the audit details carry secret names only.

use std::collections::BTreeMap;

use kiln_protocol::api::{Environment, NewEnvironment};
use kiln_protocol::teams::{EnvironmentPatch, EnvironmentVersion};
use kiln_protocol::WebhookConfig;

use crate::access::EnvironmentAction;
use crate::audit::audit_in;
use crate::clock::from_millis;
use crate::db::{query, DbRow, Tx};
use crate::environments::{
    environment_from_row, is_variable_name, record_version_in, seal_repo_credential,
    select_environment, settings_of, to_json, validate, Settings, WEBHOOK_SECRET_NAME,
};
use crate::error::{OpError, Result, StoreError};
use crate::repo_url::{self, RepoCredential, SplitRepo};
use crate::secrets::{self, Sealed};
use crate::tokens::Principal;
use crate::{AuditSubject, Store};

/// Takes the write lock of the live environment `id` for the rest of `tx`
/// and returns its row as it is now; "not found" once it was deleted.
async fn lock_live(tx: &mut Tx, id: &str, name: &str) -> Result<DbRow, OpError> {
    // A no-op UPDATE: PostgreSQL locks the row until the transaction ends
    // (SQLite's BEGIN IMMEDIATE holds the database's write lock already).
    let locked = tx
        .execute(
            query("UPDATE environments SET version = version WHERE id = $1 AND deleted_at IS NULL")
                .bind(id),
        )
        .await?;
    if locked == 0 {
        return Err(StoreError::not_found(format!("environment {name}")).into());
    }
    Ok(tx
        .fetch_one(query(concat!(select_environment!(), "WHERE id = $1")).bind(id))
        .await?)
}

/// Bumps the version of the locked environment `id` and returns it as it is
/// after the change.
async fn next_version(tx: &mut Tx, id: &str, now_ms: i64) -> Result<Environment, OpError> {
    tx.execute(
        query("UPDATE environments SET version = version + 1, updated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now_ms),
    )
    .await?;
    let row = tx
        .fetch_one(query(concat!(select_environment!(), "WHERE id = $1")).bind(id))
        .await?;
    environment_from_row(&row)
}

/// What a patch would make of `current`, as a [`NewEnvironment`], so that
/// an edit is validated by the very rules a creation is. Secrets appear by
/// name only (a forge's `token_secret` must name one); the current webhook
/// is left out because its secret is not read here and was checked when set.
fn as_new(current: &Environment, patch: &EnvironmentPatch) -> NewEnvironment {
    let pick = |patched: &Option<Option<String>>, now: &Option<String>| match patched {
        Some(value) => value.clone(),
        None => now.clone(),
    };
    NewEnvironment {
        name: patch.name.clone().unwrap_or_else(|| current.name.clone()),
        repo: patch.repo.clone().unwrap_or_else(|| current.repo.clone()),
        base_branch: pick(&patch.base_branch, &current.base_branch),
        setup_script: pick(&patch.setup_script, &current.setup_script),
        env: patch.env.clone().unwrap_or_else(|| current.env.clone()),
        secrets: current
            .secret_names
            .iter()
            .map(|name| (name.clone(), String::new()))
            .collect(),
        network: patch.network.unwrap_or(current.network),
        image: pick(&patch.image, &current.image),
        checks: patch
            .checks
            .clone()
            .unwrap_or_else(|| current.checks.clone()),
        forge: match &patch.forge {
            Some(forge) => forge.clone(),
            None => current.forge.clone(),
        },
        webhook: patch.webhook.clone().flatten(),
        budget_usd: match patch.budget_usd {
            Some(budget) => budget,
            None => current.budget_usd,
        },
        team: None,
    }
}

/// An optional text field as stored: blank is none.
fn text_value(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// The columns an edit writes, starting from the environment as it is.
struct Columns {
    name: String,
    repo: String,
    repo_credential: String,
    base_branch: Option<String>,
    setup_script: Option<String>,
    env_json: String,
    network: bool,
    image: Option<String>,
    settings: Settings,
    webhook_secret: Option<String>,
}

impl Store {
    /// Changes the fields `patch` gives (`null` clears an optional one) of
    /// an environment; only its team's maintainers (and admins) may. A
    /// patch that changes nothing adds no version. A new repository URL
    /// drops the old URL's credential (it must never reach another host)
    /// and seals the one it carries; the same URL without a credential
    /// keeps the sealed one. Returns the environment at its new version.
    pub async fn update_environment(
        &self,
        who: &Principal,
        id_or_name: &str,
        patch: &EnvironmentPatch,
    ) -> Result<Environment> {
        let found = self
            .environment_for(who, id_or_name, EnvironmentAction::Manage)
            .await?;
        validate(&as_new(&found, patch))?;
        let repo = patch.repo.as_deref().map(|r| repo_url::split(r.trim()));
        if let Some(repo) = &repo {
            repo.check_new()?;
        }
        let budget = match patch.budget_usd {
            Some(budget) => {
                Some(crate::tasks::budget_micros("budget_usd", budget)?.map(|micros| micros as u64))
            }
            None => None,
        };
        let updated = self
            .run("update environment", || async {
                let mut tx = self.begin().await?;
                let row = lock_live(&mut tx, &found.id, &found.name).await?;
                let current = environment_from_row(&row)?;
                let webhook_secret = tx
                    .fetch_one(
                        query("SELECT webhook_secret FROM environments WHERE id = $1")
                            .bind(&current.id),
                    )
                    .await?
                    .opt_text("webhook_secret")?;
                let (columns, changed) = self.patched_columns(
                    &row,
                    &current,
                    patch,
                    repo.as_ref(),
                    budget,
                    webhook_secret,
                )?;
                if changed.is_empty() {
                    // Dropping the transaction releases the lock; nothing was written.
                    return Ok(current);
                }
                let settings_json = serde_json::to_string(&columns.settings)
                    .map_err(|e| StoreError::invalid("settings", e.to_string()))?;
                let now = self.now_ms();
                let written = tx
                    .execute(
                        query(
                            "UPDATE environments SET name = $2, repo = $3, repo_credential = $4,
                                base_branch = $5, setup_script = $6, env_json = $7, network = $8,
                                image = $9, settings_json = $10, webhook_secret = $11
                             WHERE id = $1",
                        )
                        .bind(&current.id)
                        .bind(&columns.name)
                        .bind(&columns.repo)
                        .bind(&columns.repo_credential)
                        .bind(columns.base_branch.as_deref())
                        .bind(columns.setup_script.as_deref())
                        .bind(&columns.env_json)
                        .bind(columns.network)
                        .bind(columns.image.as_deref())
                        .bind(&settings_json)
                        .bind(columns.webhook_secret.as_deref()),
                    )
                    .await;
                match written {
                    Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                        return Err(StoreError::Conflict {
                            message: format!(
                                "team {} has an environment named {:?} already; choose another \
                                 name",
                                current.team_name.as_deref().unwrap_or("(none)"),
                                columns.name
                            ),
                        }
                        .into())
                    }
                    other => other?,
                };
                let environment = next_version(&mut tx, &current.id, now).await?;
                let change = format!("updated: {}", changed.join(", "));
                record_version_in(&mut tx, &environment, who.user_id.as_deref(), &change, now)
                    .await?;
                audit_in(
                    &mut tx,
                    who,
                    "environment.updated",
                    AuditSubject::new("environment", &environment.id)
                        .in_team(environment.team_id.as_deref()),
                    serde_json::json!({
                        "name": environment.name,
                        "version": environment.version,
                        "changed": changed,
                    }),
                    now,
                )
                .await?;
                self.commit(tx, Vec::new()).await?;
                Ok(environment)
            })
            .await?;
        Ok(updated)
    }

    /// The columns `patch` makes of the locked `row`, and the names (as the
    /// API spells them) of the fields that really change.
    fn patched_columns(
        &self,
        row: &DbRow,
        current: &Environment,
        patch: &EnvironmentPatch,
        repo: Option<&SplitRepo>,
        budget: Option<Option<u64>>,
        webhook_secret: Option<String>,
    ) -> Result<(Columns, Vec<&'static str>), OpError> {
        let key = self.inner.secret_key.as_ref();
        let mut changed = Vec::new();
        let mut columns = Columns {
            name: current.name.clone(),
            repo: row.text("repo")?,
            repo_credential: row.text("repo_credential")?,
            base_branch: current.base_branch.clone(),
            setup_script: current.setup_script.clone(),
            env_json: row.text("env_json")?,
            network: current.network,
            image: current.image.clone(),
            settings: settings_of(row)?,
            webhook_secret,
        };
        if let Some(name) = patch.name.as_deref().map(str::trim) {
            if name != current.name {
                columns.name = name.to_string();
                changed.push("name");
            }
        }
        if let Some(repo) = repo {
            let stored_credential = || -> Option<RepoCredential> {
                let parts = secrets::open_as(
                    Sealed::RepoCredential,
                    key,
                    &current.id,
                    &columns.repo_credential,
                )
                .ok()?;
                (!parts.is_empty()).then(|| RepoCredential::from_parts(parts))
            };
            let moved = repo.clean != current.repo;
            let new_credential = repo
                .credential
                .as_ref()
                .is_some_and(|given| stored_credential().as_ref() != Some(given));
            if moved || new_credential {
                columns.repo = repo.clean.clone();
                columns.repo_credential =
                    seal_repo_credential(key, &current.id, repo.credential.as_ref())?;
                changed.push("repo");
            }
        }
        let mut set_text = |field: &'static str,
                            patched: &Option<Option<String>>,
                            column: &mut Option<String>,
                            blank_is_none: bool| {
            if let Some(value) = patched {
                let value = if blank_is_none {
                    text_value(value)
                } else {
                    value.clone().filter(|v| !v.trim().is_empty())
                };
                if value != *column {
                    *column = value;
                    changed.push(field);
                }
            }
        };
        set_text(
            "base_branch",
            &patch.base_branch,
            &mut columns.base_branch,
            true,
        );
        // A script keeps its own whitespace; only an empty one is none.
        set_text(
            "setup_script",
            &patch.setup_script,
            &mut columns.setup_script,
            false,
        );
        if let Some(env) = &patch.env {
            if *env != current.env {
                columns.env_json = to_json(env)?;
                changed.push("env");
            }
        }
        if let Some(network) = patch.network {
            if network != current.network {
                columns.network = network;
                changed.push("network");
            }
        }
        let mut set_image = |value: &Option<Option<String>>, column: &mut Option<String>| {
            if let Some(value) = value {
                let value = text_value(value);
                if value != *column {
                    *column = value;
                    changed.push("image");
                }
            }
        };
        set_image(&patch.image, &mut columns.image);
        if let Some(checks) = &patch.checks {
            if *checks != columns.settings.checks {
                columns.settings.checks = checks.clone();
                changed.push("checks");
            }
        }
        if let Some(forge) = &patch.forge {
            if *forge != columns.settings.forge {
                columns.settings.forge = forge.clone();
                changed.push("forge");
            }
        }
        if let Some(webhook) = &patch.webhook {
            if self.webhook_changes(current, &columns, webhook.as_ref()) {
                columns.settings.webhook_url = webhook.as_ref().map(|w| w.url.trim().to_string());
                columns.webhook_secret = match webhook {
                    Some(webhook) => Some(secrets::seal_as(
                        Sealed::WebhookSecret,
                        key,
                        &current.id,
                        &BTreeMap::from([(
                            WEBHOOK_SECRET_NAME.to_string(),
                            webhook.secret.clone(),
                        )]),
                    )?),
                    None => None,
                };
                changed.push("webhook");
            }
        }
        if let Some(budget) = budget {
            if budget != columns.settings.budget_microusd {
                columns.settings.budget_microusd = budget;
                changed.push("budget_usd");
            }
        }
        Ok((columns, changed))
    }

    /// Whether `wanted` differs from the webhook the environment has (its
    /// URL, or its secret as sealed; an unreadable secret counts as changed).
    fn webhook_changes(
        &self,
        current: &Environment,
        columns: &Columns,
        wanted: Option<&WebhookConfig>,
    ) -> bool {
        let Some(wanted) = wanted else {
            return columns.settings.webhook_url.is_some() || columns.webhook_secret.is_some();
        };
        if columns.settings.webhook_url.as_deref() != Some(wanted.url.trim()) {
            return true;
        }
        let stored = columns.webhook_secret.as_deref().and_then(|sealed| {
            secrets::open_as(
                Sealed::WebhookSecret,
                self.inner.secret_key.as_ref(),
                &current.id,
                sealed,
            )
            .ok()
        });
        stored.and_then(|mut values| values.remove(WEBHOOK_SECRET_NAME))
            != Some(wanted.secret.clone())
    }

    /// Sets (adds or replaces) the setup-only secret `name` of an
    /// environment; only its team's maintainers (and admins) may. The value
    /// is sealed and never shown again. Returns the environment at its new
    /// version.
    pub async fn set_environment_secret(
        &self,
        who: &Principal,
        id_or_name: &str,
        name: &str,
        value: &str,
    ) -> Result<Environment> {
        let found = self
            .environment_for(who, id_or_name, EnvironmentAction::Manage)
            .await?;
        if !is_variable_name(name) {
            return Err(StoreError::invalid(
                "secrets",
                format!(
                    "{name:?} is not a variable name (letters, digits and _, not starting with \
                     a digit)"
                ),
            ));
        }
        self.change_secrets(who, &found, name, "environment.secret_set", |secrets| {
            secrets.insert(name.to_string(), value.to_string());
            Ok(format!("secret set: {name}"))
        })
        .await
    }

    /// Removes the secret `name` of an environment; only its team's
    /// maintainers (and admins) may. "Not found" naming it when there is
    /// none; refused while the environment's forge takes its token from it.
    pub async fn remove_environment_secret(
        &self,
        who: &Principal,
        id_or_name: &str,
        name: &str,
    ) -> Result<Environment> {
        let found = self
            .environment_for(who, id_or_name, EnvironmentAction::Manage)
            .await?;
        if found
            .forge
            .as_ref()
            .is_some_and(|forge| forge.token_secret == name)
        {
            return Err(StoreError::Conflict {
                message: format!(
                    "environment {} takes its forge token from secret {name}: point the forge \
                     at another secret (`kiln env edit`) or remove the forge first",
                    found.name
                ),
            });
        }
        let environment = found.name.clone();
        self.change_secrets(
            who,
            &found,
            name,
            "environment.secret_removed",
            move |secrets| match secrets.remove(name) {
                Some(_) => Ok(format!("secret removed: {name}")),
                None => Err(StoreError::not_found(format!(
                    "secret {name} of environment {environment}"
                ))),
            },
        )
        .await
    }

    /// Opens the locked environment's secrets, lets `change` edit them (it
    /// returns the version's `change` text), seals them again under the
    /// environment id and records the version and the audit event `action`.
    async fn change_secrets<F>(
        &self,
        who: &Principal,
        found: &Environment,
        secret_name: &str,
        action: &'static str,
        change: F,
    ) -> Result<Environment>
    where
        F: Fn(&mut BTreeMap<String, String>) -> Result<String>,
    {
        let key = self.inner.secret_key.as_ref();
        self.run("change environment secrets", || async {
            let mut tx = self.begin().await?;
            let row = lock_live(&mut tx, &found.id, &found.name).await?;
            let mut values = secrets::open(key, &found.id, &row.text("secrets_json")?)?;
            let what = change(&mut values)?;
            let sealed = secrets::seal(key, &found.id, &values)?;
            tx.execute(
                query("UPDATE environments SET secrets_json = $2 WHERE id = $1")
                    .bind(&found.id)
                    .bind(&sealed),
            )
            .await?;
            let now = self.now_ms();
            let environment = next_version(&mut tx, &found.id, now).await?;
            record_version_in(&mut tx, &environment, who.user_id.as_deref(), &what, now).await?;
            audit_in(
                &mut tx,
                who,
                action,
                AuditSubject::new("environment", &environment.id)
                    .in_team(environment.team_id.as_deref()),
                serde_json::json!({
                    "name": environment.name,
                    "version": environment.version,
                    "secret": secret_name,
                }),
                now,
            )
            .await?;
            self.commit(tx, Vec::new()).await?;
            Ok(environment)
        })
        .await
    }

    /// Deletes an environment (only its team's maintainers and admins may):
    /// refused while a task on it has an attempt queued, interrupted or
    /// running. The row stays (tasks keep pointing at it and stay readable)
    /// but leaves every list and lookup, and its name is free again.
    pub async fn delete_environment(&self, who: &Principal, id_or_name: &str) -> Result<()> {
        let found = self
            .environment_for(who, id_or_name, EnvironmentAction::Manage)
            .await?;
        self.run("delete environment", || async {
            let mut tx = self.begin().await?;
            lock_live(&mut tx, &found.id, &found.name).await?;
            let busy = tx
                .fetch_all(
                    query(
                        "SELECT DISTINCT t.id FROM tasks t JOIN attempts a ON a.task_id = t.id
                         WHERE t.environment_id = $1
                           AND a.status IN ('queued', 'interrupted', 'running')
                         ORDER BY t.id",
                    )
                    .bind(&found.id),
                )
                .await?;
            if !busy.is_empty() {
                let ids = busy
                    .iter()
                    .map(|row| row.text("id"))
                    .collect::<Result<Vec<_>, _>>()?;
                let count = match ids.len() {
                    1 => "1 task".to_string(),
                    n => format!("{n} tasks"),
                };
                return Err(StoreError::Conflict {
                    message: format!(
                        "environment {} has {count} with attempts queued or running ({}): wait \
                         for them to finish or cancel them with `kiln task cancel ID`, then \
                         delete it",
                        found.name,
                        ids.join(", ")
                    ),
                }
                .into());
            }
            let now = self.now_ms();
            tx.execute(
                query("UPDATE environments SET deleted_at = $2 WHERE id = $1")
                    .bind(&found.id)
                    .bind(now),
            )
            .await?;
            let environment = next_version(&mut tx, &found.id, now).await?;
            record_version_in(
                &mut tx,
                &environment,
                who.user_id.as_deref(),
                "deleted",
                now,
            )
            .await?;
            audit_in(
                &mut tx,
                who,
                "environment.deleted",
                AuditSubject::new("environment", &environment.id)
                    .in_team(environment.team_id.as_deref()),
                serde_json::json!({
                    "name": environment.name,
                    "version": environment.version,
                }),
                now,
            )
            .await?;
            self.commit(tx, Vec::new()).await?;
            Ok(())
        })
        .await
    }

    /// Every version of an environment `who` may read, newest first, with
    /// the name of who made each.
    pub async fn environment_versions(
        &self,
        who: &Principal,
        id_or_name: &str,
    ) -> Result<Vec<EnvironmentVersion>> {
        let found = self
            .environment_for(who, id_or_name, EnvironmentAction::Read)
            .await?;
        self.run("list environment versions", || async {
            let rows = self
                .inner
                .db
                .fetch_all(
                    query(
                        "SELECT v.version, v.snapshot, v.changed_by, v.change, v.created_at,
                            u.name AS changed_by_name
                         FROM environment_versions v LEFT JOIN users u ON u.id = v.changed_by
                         WHERE v.environment_id = $1 ORDER BY v.version DESC",
                    )
                    .bind(&found.id),
                )
                .await?;
            rows.iter()
                .map(|row| {
                    let snapshot: Environment = serde_json::from_str(&row.text("snapshot")?)
                        .map_err(|e| StoreError::corrupt("environment version snapshot", e))?;
                    Ok(EnvironmentVersion {
                        environment_id: found.id.clone(),
                        version: row.u64("version")?,
                        snapshot,
                        changed_by: row.opt_text("changed_by")?,
                        changed_by_name: row.opt_text("changed_by_name")?,
                        change: row.text("change")?,
                        created_at: from_millis(row.int("created_at")?),
                    })
                })
                .collect::<Result<Vec<_>, OpError>>()
        })
        .await
    }
}
