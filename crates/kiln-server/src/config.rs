//! How a server runs attempts: the model provider, the agent and sandbox
//! templates each attempt starts from, and the worker pool's knobs.

use std::path::PathBuf;
use std::time::Duration;

use kiln_agent::AgentConfig;
use kiln_model::ProviderConfig;
use kiln_protocol::teams::TeamRole;
use kiln_sandbox::SandboxPolicy;

use crate::repo_access::RepoAccess;

/// Largest request body the API accepts.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// How much of the server one client may hold, so that slow or greedy
/// clients cannot starve the others (or `/healthz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A connection that has not sent a request's complete headers within
    /// this time (including an idle keep-alive connection) is closed.
    pub header_read_timeout: Duration,
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Connections open at once from one IP address; more are answered
    /// 429 and closed.
    pub max_connections_per_ip: usize,
    /// Event streams (`GET /api/tasks/{id}/events`) open at once per token;
    /// more are answered 429.
    pub max_streams_per_token: usize,
    /// How often an open event stream checks that its token still works
    /// (a revocation on this server ends the stream at once).
    pub token_recheck: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_ip: 64,
            max_streams_per_token: 16,
            token_recheck: Duration::from_secs(30),
        }
    }
}

/// Who may read `GET /metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Admin tokens only.
    #[default]
    Admin,
    /// Admin tokens, and this dedicated token (for a scraper).
    AdminOrToken(String),
    /// Anyone who can reach the port (`--metrics-public`).
    Public,
}

/// How outgoing webhooks are delivered (docs/webhooks.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// The waits before the 2nd, 3rd, … try of a delivery that failed; once
    /// they are used up the delivery is `failed`. Five tries by default.
    pub retry_delays: Vec<Duration>,
    /// One try's limit, from connecting to the end of the answer.
    pub timeout: Duration,
    /// How often the queue is looked at for due deliveries.
    pub poll: Duration,
}

impl Default for WebhookDelivery {
    fn default() -> Self {
        WebhookDelivery {
            retry_delays: [10, 60, 300, 1800]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            timeout: Duration::from_secs(10),
            poll: Duration::from_secs(1),
        }
    }
}

/// Everything [`crate::Server`] needs besides the store.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where mirrors (`mirrors/`) and per-attempt checkouts (`checkouts/`) live.
    pub data_dir: PathBuf,
    /// The model provider every attempt talks to.
    pub provider: ProviderConfig,
    /// The agent settings each attempt starts from; `cwd`, `mode` and (when
    /// the task names one) `model` are replaced per attempt.
    pub agent: AgentConfig,
    /// The sandbox each attempt starts from; workspace, read-only, network,
    /// variables and image are set per attempt from its task and environment.
    pub sandbox: SandboxPolicy,
    /// Attempts that run at once.
    pub max_parallel: usize,
    /// How long a claim lasts without a heartbeat (renewed every third of it).
    pub lease: Duration,
    /// How long a stopping server lets running attempts finish; those still
    /// running then are left to the next start (or another worker).
    pub drain: Duration,
    /// Claims an attempt gets before an interruption fails it.
    pub max_tries: u32,
    pub body_limit: usize,
    /// Which repository locations environments may name (see
    /// [`crate::RepoAccess`]).
    pub repo_access: RepoAccess,
    pub limits: ConnectionLimits,
    pub metrics_access: MetricsAccess,
    /// Run the in-process worker pool (`false`: `kiln serve
    /// --no-local-workers`, only remote `kiln worker`s run attempts; the
    /// expired-lease sweep runs either way).
    pub local_workers: bool,
    /// Outgoing webhooks' retry schedule and timeouts.
    pub webhooks: WebhookDelivery,
    /// The URL people reach this server at (`kiln serve --public-url`):
    /// pull requests link back to their task under it. `None`: no link.
    pub public_url: Option<String>,
    /// Single sign-on (`--oidc-issuer`); needs `public_url` for its
    /// redirect URI.
    pub oidc: Option<OidcConfig>,
}

impl ServerConfig {
    /// Defaults for one machine: 4 parallel attempts, 60 s leases, 3 tries.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        provider: ProviderConfig,
        agent: AgentConfig,
        sandbox: SandboxPolicy,
    ) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            provider,
            agent,
            sandbox,
            max_parallel: 4,
            lease: Duration::from_secs(60),
            drain: Duration::from_secs(30),
            max_tries: 3,
            body_limit: DEFAULT_BODY_LIMIT,
            repo_access: RepoAccess::default(),
            limits: ConnectionLimits::default(),
            metrics_access: MetricsAccess::default(),
            local_workers: true,
            webhooks: WebhookDelivery::default(),
            public_url: None,
            oidc: None,
        }
    }
}

/// What members of a provider group get (`--oidc-map GROUP=TEAM:ROLE` or
/// `--oidc-map GROUP=admin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupGrant {
    /// A membership of this team, created if missing.
    Team { team: String, role: TeamRole },
    /// The server role admin.
    Admin,
}

/// One `--oidc-map` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMapping {
    pub group: String,
    pub grant: GroupGrant,
}

impl std::str::FromStr for GroupMapping {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = "use GROUP=TEAM:ROLE (ROLE maintainer, member or viewer) or GROUP=admin";
        let (group, grant) = text
            .rsplit_once('=')
            .ok_or_else(|| format!("{text:?} has no `=`: {usage}"))?;
        if group.trim().is_empty() {
            return Err(format!("{text:?} names no group: {usage}"));
        }
        let grant = if grant == "admin" {
            GroupGrant::Admin
        } else {
            let (team, role) = grant
                .split_once(':')
                .ok_or_else(|| format!("{text:?} names no role after the team: {usage}"))?;
            let role: TeamRole = role
                .parse()
                .map_err(|_| format!("{role:?} in {text:?} is not a team role: {usage}"))?;
            if !kiln_store::valid_name(team) {
                return Err(format!(
                    "{team:?} in {text:?} is not a team name: use lowercase letters, digits, `.`, `_` and `-`, starting with a letter or digit"
                ));
            }
            GroupGrant::Team {
                team: team.to_string(),
                role,
            }
        };
        Ok(GroupMapping {
            group: group.to_string(),
            grant,
        })
    }
}

/// Single sign-on with an OpenID Connect provider (`kiln serve
/// --oidc-issuer …`, docs/sso.md).
#[derive(Clone)]
pub struct OidcConfig {
    /// Exactly the issuer the provider's discovery document names.
    pub issuer: String,
    pub client_id: String,
    /// From the environment, never a flag (flags show in `ps`).
    pub client_secret: String,
    pub scopes: Vec<String>,
    /// The ID token claim that lists the user's groups.
    pub groups_claim: String,
    pub group_map: Vec<GroupMapping>,
    /// Let in users whose groups map to nothing (they get no team).
    pub allow_unmapped: bool,
    /// Lifetime of the tokens `kiln login` gets.
    pub token_days: u32,
}

impl OidcConfig {
    pub fn new(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        OidcConfig {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            scopes: ["openid", "profile", "email"].map(String::from).to_vec(),
            groups_claim: "groups".into(),
            group_map: Vec::new(),
            allow_unmapped: false,
            token_days: 30,
        }
    }
}

impl std::fmt::Debug for OidcConfig {
    // The client secret stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("groups_claim", &self.groups_claim)
            .field("group_map", &self.group_map)
            .field("allow_unmapped", &self.allow_unmapped)
            .field("token_days", &self.token_days)
            .finish()
    }
}
