//! People, teams, roles, environment versions, quotas and the audit trail:
//! the bodies of the HTTP API's team routes (docs/roles.md, docs/audit.md).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A user's server-wide role. `owner` and `admin` manage the server, users,
/// teams and quotas and see everything; only an owner grants or removes
/// `owner` and `admin`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ServerRole {
    Owner,
    Admin,
    #[default]
    User,
}

impl ServerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerRole::Owner => "owner",
            ServerRole::Admin => "admin",
            ServerRole::User => "user",
        }
    }

    /// Owners and admins administer the server.
    pub fn is_admin(self) -> bool {
        matches!(self, ServerRole::Owner | ServerRole::Admin)
    }
}

/// A user's role in one team.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TeamRole {
    /// Changes the team's environments, their secrets and automations, and
    /// sees every task of the team.
    Maintainer,
    /// Runs tasks on the team's environments and follows them up.
    Member,
    /// Reads the team's shared tasks and their results.
    Viewer,
}

impl TeamRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TeamRole::Maintainer => "maintainer",
            TeamRole::Member => "member",
            TeamRole::Viewer => "viewer",
        }
    }

    /// Whether this role may run and follow up tasks.
    pub fn may_run(self) -> bool {
        matches!(self, TeamRole::Maintainer | TeamRole::Member)
    }
}

/// An unknown role name, with the names that exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRole(pub String);

impl fmt::Display for UnknownRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown role {:?}: use owner, admin or user for a server role and maintainer, member or viewer in a team",
            self.0
        )
    }
}

impl std::error::Error for UnknownRole {}

impl FromStr for ServerRole {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        match s {
            "owner" => Ok(ServerRole::Owner),
            "admin" => Ok(ServerRole::Admin),
            "user" => Ok(ServerRole::User),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

impl FromStr for TeamRole {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        match s {
            "maintainer" => Ok(TeamRole::Maintainer),
            "member" => Ok(TeamRole::Member),
            "viewer" => Ok(TeamRole::Viewer),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

impl fmt::Display for ServerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for TeamRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One team a user belongs to, and the role they have in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Membership {
    pub team_id: String,
    pub team_name: String,
    pub role: TeamRole,
    /// `local` (an admin set it) or `oidc` (from the provider's groups at sign-in).
    #[serde(default = "local")]
    pub source: String,
}

fn local() -> String {
    "local".to_string()
}

/// A quota: `None` means no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Quota {
    /// Most attempts running at once.
    #[serde(default)]
    pub max_concurrent_attempts: Option<u32>,
    /// Most US dollars spent per calendar month (UTC).
    #[serde(default)]
    pub monthly_budget_usd: Option<f64>,
}

/// A person, as `GET /api/users` and `GET /api/me` show them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct User {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    pub role: ServerRole,
    #[serde(default)]
    pub teams: Vec<Membership>,
    /// The single sign-on issuer the user signs in with, if any.
    #[serde(default)]
    pub oidc_issuer: Option<String>,
    #[serde(default)]
    pub quota: Quota,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub disabled_at: Option<DateTime<Utc>>,
}

/// `POST /api/users`: `{name, email?, role?}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NewUser {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub role: Option<ServerRole>,
}

/// `PATCH /api/users/{id}`: what changes (absent fields stay).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserPatch {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub role: Option<ServerRole>,
    /// `true` disables the user (their tokens stop working); `false` enables.
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// `GET /api/users`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserList {
    pub users: Vec<User>,
}

/// A team member as a team lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TeamMember {
    pub user_id: String,
    pub user_name: String,
    pub role: TeamRole,
    #[serde(default = "local")]
    pub source: String,
}

/// A team.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Team {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub members: Vec<TeamMember>,
    #[serde(default)]
    pub quota: Quota,
    pub created_at: DateTime<Utc>,
}

/// `POST /api/teams`: `{name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NewTeam {
    pub name: String,
}

/// `GET /api/teams`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TeamList {
    pub teams: Vec<Team>,
}

/// `PUT /api/teams/{id}/members/{user}`: `{role}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SetMember {
    pub role: TeamRole,
}

/// `PATCH /api/environments/{id}`: the fields that change; an absent field
/// stays as it is, `null` clears an optional one. Secrets change through
/// `PUT`/`DELETE /api/environments/{id}/secrets/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EnvironmentPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub base_branch: Option<Option<String>>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub setup_script: Option<Option<String>>,
    /// Replaces every variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<bool>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub image: Option<Option<String>>,
    /// Replaces the environment's checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<crate::CheckSpec>>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<crate::ForgeConfig>")]
    pub forge: Option<Option<crate::ForgeConfig>>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<crate::WebhookConfig>")]
    pub webhook: Option<Option<crate::WebhookConfig>>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<f64>")]
    pub budget_usd: Option<Option<f64>>,
}

/// `PUT /api/environments/{id}/secrets/{name}`: `{value}` (write-only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretValue {
    pub value: String,
}

/// One version of an environment: what it was, who changed it and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EnvironmentVersion {
    pub environment_id: String,
    pub version: u64,
    /// The environment as it was at this version (secret names only).
    pub snapshot: crate::api::Environment,
    #[serde(default)]
    pub changed_by: Option<String>,
    /// `created`, `updated: setup_script, env`, `secret set: TOKEN`, `deleted`…
    pub change: String,
    pub created_at: DateTime<Utc>,
}

/// `GET /api/environments/{id}/versions`, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EnvironmentVersionList {
    pub versions: Vec<EnvironmentVersion>,
}

/// Who did something, as the audit trail records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuditActor {
    /// `None` for the server itself (e.g. a sign-in that failed before
    /// anyone was known).
    pub user_id: Option<String>,
    pub user_name: String,
    pub token_id: Option<String>,
}

/// What an action was done to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuditTarget {
    /// `user`, `team`, `token`, `environment`, `task`, `server`.
    pub kind: String,
    pub id: Option<String>,
}

/// One line of the audit trail (and of its JSON lines export).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditEvent {
    /// Increasing in commit order.
    pub id: i64,
    pub ts: DateTime<Utc>,
    pub actor: AuditActor,
    /// The client's address.
    pub origin: Option<String>,
    /// e.g. `task.created`; the list is in docs/audit.md.
    pub action: String,
    pub target: AuditTarget,
    pub team_id: Option<String>,
    /// What changed; never a secret value.
    pub details: serde_json::Value,
}

/// `GET /api/audit?actor=&action=&team=&target=&since=&until=&limit=&cursor=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct AuditQuery {
    /// A user id or name.
    pub actor: Option<String>,
    /// An action, or a prefix ending in `.` (`task.`).
    pub action: Option<String>,
    /// A team id or name.
    pub team: Option<String>,
    /// A target id (task, environment, user, team or token id).
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// 1 to 1000; `None` means 100.
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Audit events newest first, and the cursor of the next page if any.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    pub next_cursor: Option<String>,
}

/// Absent (`None`), `null` (`Some(None)`) or a value (`Some(Some(v))`).
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(
        value: &Option<Option<T>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(deserializer).map(Some)
    }
}
