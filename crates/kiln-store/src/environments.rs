//! Environments: where and how attempts run. Secrets are stored with the
//! environment, sealed under the store's key (`secrets.rs`), and only
//! [`Store::environment_secrets`] returns their values. A credential in the
//! repository URL is split out and sealed the same way (`repo_url.rs`); only
//! [`Store::environment_repo_credential`] returns it.

use std::collections::BTreeMap;

use kiln_protocol::api::{Environment, NewEnvironment};
use kiln_protocol::{usd_from_micros, CheckSpec, ForgeConfig};
use serde::{Deserialize, Serialize};

use crate::clock::from_millis;
use crate::db::{query, DbRow, Tx};
use crate::error::{OpError, Result, StoreError};
use crate::repo_url::{self, RepoCredential};
use crate::secrets::{self, Sealed};
use crate::tokens::Principal;
use crate::Store;

/// The columns [`environment_from_row`] reads, as a literal for `concat!`.
macro_rules! select_environment {
    () => {
        "SELECT id, owner_token_id, name, repo, base_branch, setup_script,
            env_json, secrets_json, repo_credential, network, image, settings_json,
            created_at, team_id, version, updated_at, deleted_at,
            (SELECT teams.name FROM teams WHERE teams.id = environments.team_id) AS team_name
            FROM environments "
    };
}

fn environment_from_row(row: &DbRow) -> Result<Environment, OpError> {
    let env = parse_map("environment variables", &row.text("env_json")?)?;
    let secret_names = secrets::names(&row.text("secrets_json")?)?;
    // A row from before credentials were split out (opened without a key,
    // so not yet sealed) still never shows its credential.
    let repo = repo_url::split(&row.text("repo")?);
    let repo_has_credential =
        repo.credential.is_some() || !secrets::names(&row.text("repo_credential")?)?.is_empty();
    let settings = settings_of(row)?;
    Ok(Environment {
        id: row.text("id")?,
        owner_token_id: row.text("owner_token_id")?,
        team_id: row.opt_text("team_id")?,
        team_name: row.opt_text("team_name")?,
        version: row.u64("version")?,
        name: row.text("name")?,
        repo: repo.clean,
        repo_has_credential,
        base_branch: row.opt_text("base_branch")?,
        setup_script: row.opt_text("setup_script")?,
        env,
        secret_names,
        network: row.bool("network")?,
        image: row.opt_text("image")?,
        checks: settings.checks,
        forge: settings.forge,
        webhook_url: settings.webhook_url,
        budget_usd: settings.budget_microusd.map(usd_from_micros),
        created_at: from_millis(row.int("created_at")?),
        updated_at: row.opt_int("updated_at")?.map(from_millis),
    })
}

/// Records version `environment.version` of an environment as it is now:
/// the snapshot (secret names only), who changed it and what changed.
pub(crate) async fn record_version_in(
    tx: &mut Tx,
    environment: &Environment,
    changed_by: Option<&str>,
    change: &str,
    now_ms: i64,
) -> Result<(), OpError> {
    let snapshot = serde_json::to_string(environment)
        .map_err(|e| StoreError::invalid("environment snapshot", e.to_string()))?;
    tx.execute(
        query(
            "INSERT INTO environment_versions (environment_id, version, snapshot, changed_by,
                change, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(environment.id.as_str())
        .bind(i64::try_from(environment.version).unwrap_or(i64::MAX))
        .bind(snapshot)
        .bind(changed_by)
        .bind(change)
        .bind(now_ms),
    )
    .await?;
    Ok(())
}

/// Version 1 of every environment that has no version yet (those created
/// before versions existed), at their creation time.
pub(crate) async fn record_initial_versions_in(store: &Store, tx: &mut Tx) -> Result<(), OpError> {
    let _ = store;
    let rows = tx
        .fetch_all(query(concat!(
            select_environment!(),
            "WHERE NOT EXISTS (SELECT 1 FROM environment_versions v
                WHERE v.environment_id = environments.id) ORDER BY id"
        )))
        .await?;
    for row in &rows {
        let environment = environment_from_row(row)?;
        let created = row.int("created_at")?;
        record_version_in(tx, &environment, None, "created", created).await?;
    }
    Ok(())
}

/// The row of an environment `who` may reach by id, by name among their
/// teams' live environments, or by `team/name`; `None` when there is none.
/// An ambiguous name (several of the caller's teams have it) is an error
/// listing the `team/name` choices.
pub(crate) async fn find_environment_in(
    db: &crate::db::Db,
    who: &Principal,
    id_or_name: &str,
) -> Result<Option<DbRow>, OpError> {
    if let Some(row) = db
        .fetch_optional(
            query(concat!(
                select_environment!(),
                "WHERE id = $1 AND deleted_at IS NULL"
            ))
            .bind(id_or_name),
        )
        .await?
    {
        return Ok(Some(row));
    }
    let (team, name) = match id_or_name.split_once('/') {
        Some((team, name)) => (Some(team), name),
        None => (None, id_or_name),
    };
    let rows = db
        .fetch_all(
            query(concat!(
                select_environment!(),
                "WHERE name = $1 AND deleted_at IS NULL
                   AND ($2 IS NULL OR team_id IN (SELECT id FROM teams WHERE name = $2 OR id = $2))
                   AND ($3 OR team_id IN (SELECT team_id FROM team_members WHERE user_id = $4)
                        OR owner_token_id = $5)
                 ORDER BY id"
            ))
            .bind(name)
            .bind(team)
            .bind(who.admin)
            .bind(who.user_id.as_deref())
            .bind(&who.token_id),
        )
        .await?;
    if rows.len() > 1 {
        // An admin sees every team's: prefer the caller's own teams' ones.
        let mine: Vec<usize> = (0..rows.len())
            .filter(|&i| {
                rows[i]
                    .opt_text("team_id")
                    .ok()
                    .flatten()
                    .is_some_and(|team| who.team_role(&team).is_some())
            })
            .collect();
        if let [only] = mine[..] {
            return Ok(rows.into_iter().nth(only));
        }
        let choices: Vec<String> = rows
            .iter()
            .map(|row| {
                format!(
                    "{}/{}",
                    row.opt_text("team_name").ok().flatten().unwrap_or_default(),
                    name
                )
            })
            .collect();
        return Err(StoreError::invalid(
            "environment",
            format!(
                "{name:?} names environments in several teams: use one of {}",
                choices.join(", ")
            ),
        )
        .into());
    }
    Ok(rows.into_iter().next())
}

/// `environments.settings_json`: what environments gained after their
/// first columns (issue 12), kept as one JSON object so that a new setting
/// needs no migration.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Settings {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checks: Vec<CheckSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forge: Option<ForgeConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget_microusd: Option<u64>,
}

/// The settings of an environment row that selected `settings_json`.
fn settings_of(row: &DbRow) -> Result<Settings, OpError> {
    Ok(serde_json::from_str(&row.text("settings_json")?)
        .map_err(|e| StoreError::corrupt("environment settings", e))?)
}

/// The URL of the environment's outgoing webhook, read in `tx` (the
/// transaction that queues deliveries to it); `None` when it has none.
pub(crate) async fn webhook_url_in(
    tx: &mut Tx,
    environment_id: &str,
) -> Result<Option<String>, OpError> {
    let row = tx
        .fetch_optional(
            query("SELECT settings_json FROM environments WHERE id = $1").bind(environment_id),
        )
        .await?
        .ok_or_else(|| StoreError::not_found(format!("environment {environment_id}")))?;
    Ok(settings_of(&row)?.webhook_url)
}

/// An environment's outgoing webhook with its secret, for the server's
/// deliveries only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: String,
}

const WEBHOOK_SECRET_NAME: &str = "webhook";

fn parse_map(what: &'static str, json: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::corrupt(what, e))
}

impl Store {
    /// Creates an environment in a team (`new.team`, or the one team where
    /// `owner` is a maintainer); only the team's maintainers (and admins)
    /// may. Names are unique per team. Records version 1 and the audit event.
    pub async fn create_environment(
        &self,
        owner: &Principal,
        new: &NewEnvironment,
    ) -> Result<Environment> {
        validate(new)?;
        let (team_id, team_name) = self
            .team_for_new_environment(owner, new.team.as_deref())
            .await?;
        crate::access::check_environment(
            owner,
            Some(&team_id),
            new.name.trim(),
            crate::access::EnvironmentAction::Manage,
        )?;
        let repo = repo_url::split(new.repo.trim());
        repo.check_new()?;
        let env_json = to_json(&new.env)?;
        let settings = Settings {
            checks: new.checks.clone(),
            forge: new.forge.clone(),
            webhook_url: new.webhook.as_ref().map(|w| w.url.trim().to_string()),
            budget_microusd: crate::tasks::budget_micros("budget_usd", new.budget_usd)?
                .map(|m| m as u64),
        };
        let settings_json = serde_json::to_string(&settings)
            .map_err(|e| StoreError::invalid("settings", e.to_string()))?;
        self.run("create environment", || async {
            let id = self.new_id("env_");
            // Sealed per try: the id is the associated data.
            let secrets_json = secrets::seal(self.inner.secret_key.as_ref(), &id, &new.secrets)?;
            let repo_credential = seal_repo_credential(
                self.inner.secret_key.as_ref(),
                &id,
                repo.credential.as_ref(),
            )?;
            let webhook_secret = match &new.webhook {
                Some(webhook) => Some(secrets::seal_as(
                    Sealed::WebhookSecret,
                    self.inner.secret_key.as_ref(),
                    &id,
                    &BTreeMap::from([(WEBHOOK_SECRET_NAME.to_string(), webhook.secret.clone())]),
                )?),
                None => None,
            };
            let mut tx = self.begin().await?;
            let inserted = tx
                .execute(
                    query(
                        "INSERT INTO environments (id, owner_token_id, name, repo, base_branch,
                            setup_script, env_json, secrets_json, repo_credential, network,
                            image, created_at, settings_json, webhook_secret, team_id, version,
                            updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                            $15, 1, $12)",
                    )
                    .bind(&id)
                    .bind(&owner.token_id)
                    .bind(new.name.trim())
                    .bind(&repo.clean)
                    .bind(new.base_branch.as_deref())
                    .bind(new.setup_script.as_deref())
                    .bind(&env_json)
                    .bind(&secrets_json)
                    .bind(&repo_credential)
                    .bind(new.network)
                    .bind(new.image.as_deref())
                    .bind(self.now_ms())
                    .bind(&settings_json)
                    .bind(webhook_secret)
                    .bind(&team_id),
                )
                .await;
            match inserted {
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    return Err(StoreError::Conflict {
                        message: format!(
                            "team {team_name} has an environment named {:?} already; choose \
                             another name",
                            new.name.trim()
                        ),
                    }
                    .into())
                }
                other => other?,
            };
            let row = tx
                .fetch_one(query(concat!(select_environment!(), "WHERE id = $1")).bind(&id))
                .await?;
            let environment = environment_from_row(&row)?;
            let now = self.now_ms();
            record_version_in(
                &mut tx,
                &environment,
                owner.user_id.as_deref(),
                "created",
                now,
            )
            .await?;
            crate::audit::audit_in(
                &mut tx,
                owner,
                "environment.created",
                crate::AuditSubject::new("environment", &id).in_team(Some(&team_id)),
                serde_json::json!({
                    "name": environment.name,
                    "repo": environment.repo,
                    "secret_names": environment.secret_names,
                }),
                now,
            )
            .await?;
            self.commit(tx, Vec::new()).await?;
            Ok(environment)
        })
        .await
    }

    /// The live environments of `who`'s teams (every one for an admin).
    pub async fn list_environments(&self, who: &Principal) -> Result<Vec<Environment>> {
        self.run("list environments", || async {
            let rows = self
                .inner
                .db
                .fetch_all(
                    query(concat!(
                        select_environment!(),
                        "WHERE deleted_at IS NULL AND ($1
                            OR team_id IN (SELECT team_id FROM team_members WHERE user_id = $2))
                         ORDER BY id"
                    ))
                    .bind(who.admin)
                    .bind(who.user_id.as_deref()),
                )
                .await?;
            rows.iter().map(environment_from_row).collect()
        })
        .await
    }

    /// An environment `who` may read, by id, by name among their teams'
    /// environments, or as `team/name`.
    pub async fn environment(&self, who: &Principal, id_or_name: &str) -> Result<Environment> {
        self.environment_for(who, id_or_name, crate::access::EnvironmentAction::Read)
            .await
    }

    /// An environment `who` may do `action` on: "not found" outside their
    /// teams, "forbidden" (naming the role needed) when their role is short.
    pub async fn environment_for(
        &self,
        who: &Principal,
        id_or_name: &str,
        action: crate::access::EnvironmentAction,
    ) -> Result<Environment> {
        self.run("get environment", || async {
            let row = find_environment_in(&self.inner.db, who, id_or_name)
                .await?
                .ok_or_else(|| StoreError::not_found(format!("environment {id_or_name}")))?;
            let environment = environment_from_row(&row)?;
            crate::access::check_environment(
                who,
                environment.team_id.as_deref(),
                &environment.name,
                action,
            )?;
            Ok(environment)
        })
        .await
    }

    /// The team a new environment goes to: `requested` (a team id or name)
    /// or, without one, the only team where `who` is a maintainer.
    async fn team_for_new_environment(
        &self,
        who: &Principal,
        requested: Option<&str>,
    ) -> Result<(String, String)> {
        if let Some(team) = requested.map(str::trim).filter(|t| !t.is_empty()) {
            return self
                .run("find team", || async {
                    let row = self
                        .inner
                        .db
                        .fetch_optional(
                            query("SELECT id, name FROM teams WHERE id = $1 OR name = $1")
                                .bind(team),
                        )
                        .await?;
                    match row {
                        Some(row) => Ok((row.text("id")?, row.text("name")?)),
                        None => Err(StoreError::not_found(format!("team {team}")).into()),
                    }
                })
                .await;
        }
        let maintained: Vec<_> = who.maintained_teams().collect();
        match maintained[..] {
            [only] => Ok((only.team_id.clone(), only.team_name.clone())),
            [] => Err(StoreError::invalid(
                "team",
                "you maintain no team: name the team (`team`, `kiln env add --team`) or ask an \
                 admin to make you a maintainer of one",
            )),
            _ => Err(StoreError::invalid(
                "team",
                format!(
                    "you maintain several teams ({}): say which one with `team` (`kiln env add --team`)",
                    maintained
                        .iter()
                        .map(|m| m.team_name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// The setup-only secrets of an environment, for the worker that runs
    /// its setup script. Never return these to an API client.
    ///
    /// Fails, naming the environment, when the secrets were sealed under
    /// another key ([`StoreError::SecretKeyMismatch`]) or a sealed value was
    /// altered or moved in the database ([`StoreError::SecretTampered`]);
    /// never returns a partial or empty map in their place.
    pub async fn environment_secrets(
        &self,
        environment_id: &str,
    ) -> Result<BTreeMap<String, String>> {
        self.run("read environment secrets", || async {
            let row = self
                .inner
                .db
                .fetch_optional(
                    query("SELECT secrets_json FROM environments WHERE id = $1")
                        .bind(environment_id),
                )
                .await?
                .ok_or_else(|| StoreError::not_found(format!("environment {environment_id}")))?;
            Ok(secrets::open(
                self.inner.secret_key.as_ref(),
                environment_id,
                &row.text("secrets_json")?,
            )?)
        })
        .await
    }

    /// The environment's outgoing webhook and its signing secret, for the
    /// server's deliveries; `None` when it has none. Never return the secret
    /// to an API client. Fails like [`Store::environment_secrets`].
    pub async fn environment_webhook(&self, environment_id: &str) -> Result<Option<WebhookTarget>> {
        self.run("read the environment's webhook", || async {
            let row = self
                .inner
                .db
                .fetch_optional(
                    query("SELECT settings_json, webhook_secret FROM environments WHERE id = $1")
                        .bind(environment_id),
                )
                .await?
                .ok_or_else(|| StoreError::not_found(format!("environment {environment_id}")))?;
            let settings = settings_of(&row)?;
            let (Some(url), Some(sealed)) = (settings.webhook_url, row.opt_text("webhook_secret")?)
            else {
                return Ok(None);
            };
            let mut values = secrets::open_as(
                Sealed::WebhookSecret,
                self.inner.secret_key.as_ref(),
                environment_id,
                &sealed,
            )?;
            let secret = values.remove(WEBHOOK_SECRET_NAME).unwrap_or_default();
            Ok(Some(WebhookTarget { url, secret }))
        })
        .await
    }

    /// The credential that came in the environment's repository URL, for
    /// the server's own clone or fetch of [`Environment::repo`] (see
    /// `RepoCredential::basic_authorization`); `None` when it had none.
    /// Never return it to an API client or put it where the sandbox reads.
    ///
    /// Fails like [`Store::environment_secrets`] when it was sealed under
    /// another key or altered in the database.
    pub async fn environment_repo_credential(
        &self,
        environment_id: &str,
    ) -> Result<Option<RepoCredential>> {
        self.run("read the environment's repository credential", || async {
            let row = self
                .inner
                .db
                .fetch_optional(
                    query("SELECT repo, repo_credential FROM environments WHERE id = $1")
                        .bind(environment_id),
                )
                .await?
                .ok_or_else(|| StoreError::not_found(format!("environment {environment_id}")))?;
            let parts = secrets::open_as(
                Sealed::RepoCredential,
                self.inner.secret_key.as_ref(),
                environment_id,
                &row.text("repo_credential")?,
            )?;
            if !parts.is_empty() {
                return Ok(Some(RepoCredential::from_parts(parts)));
            }
            // Not split yet: written before credentials were split out and
            // opened since only without a key.
            Ok(repo_url::split(&row.text("repo")?).credential)
        })
        .await
    }

    /// Splits the credential out of every environment's `repo` still
    /// carrying one (written before credentials were split out) and seals it
    /// under this store's key. [`Store::open`] runs it when given a key;
    /// running it again is harmless. Returns the environments it changed.
    pub async fn seal_repo_url_credentials(&self) -> Result<Vec<String>> {
        let key = self
            .inner
            .secret_key
            .as_ref()
            .ok_or(StoreError::NoSecretKey)?;
        let rows = self
            .run("read environment repositories", || async {
                let rows = self
                    .inner
                    .db
                    .fetch_all(query(
                        "SELECT id, repo, repo_credential FROM environments ORDER BY id",
                    ))
                    .await?;
                let mut found = Vec::new();
                for row in rows {
                    found.push((
                        row.text("id")?,
                        row.text("repo")?,
                        row.text("repo_credential")?,
                    ));
                }
                Ok(found)
            })
            .await?;
        let mut sealed_ids = Vec::new();
        for (id, stored_repo, stored_credential) in rows {
            let split = repo_url::split(&stored_repo);
            let Some(credential) = &split.credential else {
                continue;
            };
            // A credential sealed already wins over one left in the URL: it
            // is the one the environment was created (or last sealed) with.
            let already = secrets::names(&stored_credential).is_ok_and(|n| !n.is_empty());
            let sealed = if already {
                stored_credential.clone()
            } else {
                seal_repo_credential(Some(key), &id, Some(credential))?
            };
            let updated = self
                .run("seal an environment's repository credential", || async {
                    let mut tx = self.begin().await?;
                    // Guarded by the old text: a concurrent writer (another
                    // server on the same PostgreSQL) wins.
                    let updated = tx
                        .execute(
                            query(
                                "UPDATE environments SET repo = $1, repo_credential = $2
                                 WHERE id = $3 AND repo = $4 AND repo_credential = $5",
                            )
                            .bind(&split.clean)
                            .bind(&sealed)
                            .bind(&id)
                            .bind(&stored_repo)
                            .bind(&stored_credential),
                        )
                        .await?;
                    self.commit(tx, Vec::new()).await?;
                    Ok(updated)
                })
                .await?;
            if updated == 1 {
                sealed_ids.push(id);
            }
        }
        if !sealed_ids.is_empty() {
            tracing::info!(
                environments = ?sealed_ids,
                "moved credentials out of repository URLs into sealed storage"
            );
        }
        Ok(sealed_ids)
    }

    /// Seals every environment's secrets still stored in plaintext (written
    /// before secrets were encrypted, or by a store without a key) under this
    /// store's key, and reports environments sealed under another key.
    /// [`Store::open`] runs it when given a key; running it again is harmless.
    pub async fn seal_plaintext_secrets(&self) -> Result<SealReport> {
        let key = self
            .inner
            .secret_key
            .as_ref()
            .ok_or(StoreError::NoSecretKey)?;
        let rows = self
            .run("read environment secrets", || async {
                let rows = self
                    .inner
                    .db
                    .fetch_all(query(
                        "SELECT id, secrets_json FROM environments ORDER BY id",
                    ))
                    .await?;
                let mut pairs = Vec::with_capacity(rows.len());
                for row in rows {
                    pairs.push((row.text("id")?, row.text("secrets_json")?));
                }
                Ok(pairs)
            })
            .await?;
        let mut report = SealReport::default();
        for (id, stored) in rows {
            let plaintext = match secrets::key_id(&stored) {
                Ok(Some(stored_under)) => {
                    if stored_under != key.id() {
                        report.other_key.push(id);
                    }
                    continue;
                }
                Ok(None) => match secrets::open(None, &id, &stored) {
                    Ok(plaintext) => plaintext,
                    Err(_) => {
                        report.unreadable.push(id);
                        continue;
                    }
                },
                Err(_) => {
                    report.unreadable.push(id);
                    continue;
                }
            };
            if plaintext.is_empty() {
                continue;
            }
            let sealed = secrets::seal(Some(key), &id, &plaintext)?;
            // Guarded by the old text: a concurrent writer (another server on
            // the same PostgreSQL) wins, and nothing is sealed twice.
            let updated = self
                .run("seal environment secrets", || async {
                    let mut tx = self.begin().await?;
                    let updated = tx
                        .execute(
                            query(
                                "UPDATE environments SET secrets_json = $1
                                 WHERE id = $2 AND secrets_json = $3",
                            )
                            .bind(&sealed)
                            .bind(&id)
                            .bind(&stored),
                        )
                        .await?;
                    self.commit(tx, Vec::new()).await?;
                    Ok(updated)
                })
                .await?;
            if updated == 1 {
                report.sealed.push(id);
            }
        }
        if !report.sealed.is_empty() {
            tracing::info!(
                environments = ?report.sealed,
                "sealed environment secrets that were stored in plaintext"
            );
        }
        if !report.other_key.is_empty() {
            tracing::warn!(
                environments = ?report.other_key,
                "environment secrets were sealed under another secret key; their setup scripts will fail until it is back: {}",
                key.recovery_hint()
            );
        }
        if !report.unreadable.is_empty() {
            tracing::warn!(
                environments = ?report.unreadable,
                "environment secrets are unreadable (edited by hand or written by an incompatible kiln)"
            );
        }
        Ok(report)
    }
}

/// What [`Store::seal_plaintext_secrets`] found, by environment id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealReport {
    /// Plaintext secrets sealed by this call.
    pub sealed: Vec<String>,
    /// Sealed under another key: their setup scripts fail until it is back.
    pub other_key: Vec<String>,
    /// Neither plaintext JSON nor a sealed form this kiln reads.
    pub unreadable: Vec<String>,
}

/// The `repo_credential` column for `credential`: `{}` without one.
fn seal_repo_credential(
    key: Option<&secrets::SecretKey>,
    environment_id: &str,
    credential: Option<&RepoCredential>,
) -> Result<String, StoreError> {
    let parts = credential.map(RepoCredential::to_parts).unwrap_or_default();
    secrets::seal_as(Sealed::RepoCredential, key, environment_id, &parts)
}

fn to_json(map: &BTreeMap<String, String>) -> Result<String> {
    serde_json::to_string(map).map_err(|e| StoreError::invalid("env", e.to_string()))
}

fn validate(new: &NewEnvironment) -> Result<()> {
    let name = new.name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            "name",
            "an environment name must be 1 to 100 printable characters",
        ));
    }
    if new.repo.trim().is_empty() {
        return Err(StoreError::invalid(
            "repo",
            "give the repository as a local path or a git URL",
        ));
    }
    validate_checks(&new.checks)?;
    if let Some(forge) = &new.forge {
        if forge.repo.trim().is_empty() || forge.repo.split('/').any(|part| part.trim().is_empty())
        {
            return Err(StoreError::invalid(
                "forge",
                format!(
                    "forge.repo {:?} is not a repository: give it as \"owner/name\"",
                    forge.repo
                ),
            ));
        }
        if !new.secrets.contains_key(&forge.token_secret) {
            return Err(StoreError::invalid(
                "forge",
                format!(
                    "forge.token_secret names {:?}, which is not one of the environment's secrets: \
                     add the forge token under that name in \"secrets\"",
                    forge.token_secret
                ),
            ));
        }
        if let Some(api_url) = &forge.api_url {
            if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
                return Err(StoreError::invalid(
                    "forge",
                    format!("forge.api_url {api_url:?} is not an http(s) URL"),
                ));
            }
        }
    }
    if let Some(webhook) = &new.webhook {
        let url = webhook.url.trim();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(StoreError::invalid(
                "webhook",
                format!("webhook.url {url:?} is not an http(s) URL"),
            ));
        }
        if webhook.secret.len() < 16 {
            return Err(StoreError::invalid(
                "webhook",
                "webhook.secret is shorter than 16 characters: use a long random string \
                 (e.g. `openssl rand -hex 32`)",
            ));
        }
    }
    for (field, map) in [("env", &new.env), ("secrets", &new.secrets)] {
        if let Some(bad) = map.keys().find(|k| !is_variable_name(k)) {
            return Err(StoreError::invalid(
                field,
                format!("{bad:?} is not a variable name (letters, digits and _, not starting with a digit)"),
            ));
        }
    }
    Ok(())
}

/// Check names are unique and commands are not empty.
pub fn validate_checks(checks: &[CheckSpec]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for check in checks {
        let name = check.name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(StoreError::invalid(
                "checks",
                format!(
                    "check name {:?} must be 1 to 64 printable characters",
                    check.name
                ),
            ));
        }
        if !seen.insert(name) {
            return Err(StoreError::invalid(
                "checks",
                format!("two checks are named {name:?}: give each its own name"),
            ));
        }
        if check.command.trim().is_empty() {
            return Err(StoreError::invalid(
                "checks",
                format!("check {name:?} has an empty command"),
            ));
        }
        if check.timeout_secs == Some(0) {
            return Err(StoreError::invalid(
                "checks",
                format!("check {name:?} has timeout_secs 0: give a number of seconds above 0"),
            ));
        }
    }
    Ok(())
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
