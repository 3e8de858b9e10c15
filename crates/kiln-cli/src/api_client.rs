//! The HTTP client the `kiln task|env|token|user|team|audit|quota` subcommands share: where the
//! server is, the bearer token, typed calls that return the API's types
//! (`kiln_protocol::api`), the task event stream read with kiln's one SSE
//! parser, and errors that say what to do.

use std::collections::VecDeque;

use anyhow::{anyhow, bail, Context, Result};
use kiln_protocol::api::{
    CancelOutcome, Environment, EnvironmentList, MessageList, NewEnvironment, NewMessage, NewTask,
    TaskDetail, TaskPage, TaskQuery, TaskStreamItem,
};
use kiln_protocol::sse::SseParser;
use kiln_protocol::teams::{
    AuditPage, AuditQuery, EnvironmentPatch, EnvironmentVersionList, NewTeam, NewUser, Quota,
    QuotaScope, QuotaStatus, SecretValue, SetMember, Team, TeamList, TeamRole, User, UserList,
    UserPatch,
};
use kiln_protocol::{NewPullRequest, PullRequest};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Server and credentials, from flags or the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The kiln server's URL.
    #[arg(
        long,
        global = true,
        env = "KILN_SERVER",
        default_value = "http://127.0.0.1:7878"
    )]
    pub server: String,
    /// API token (prefer the KILN_TOKEN variable: flags show up in `ps`).
    #[arg(long, global = true, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the server's JSON instead of the readable view.
    #[arg(long, global = true)]
    pub json: bool,
}

pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// A typed answer and the JSON text it came from, for `--json`, which
/// prints what the server said rather than what this client understood.
pub struct Answer<T> {
    pub value: T,
    body: String,
}

impl<T> Answer<T> {
    /// Prints the server's JSON, pretty, on stdout.
    pub fn print_json(&self) {
        match serde_json::from_str::<Value>(&self.body) {
            Ok(value) => print_json(&value),
            Err(_) => println!("{}", self.body),
        }
    }
}

/// Which events `GET /api/tasks/{id}/events` sends.
/// `GET /api/tasks/{id}/attempts/{n}/bundle`'s answer.
pub struct AttemptBundle {
    pub base: String,
    pub commit: String,
    pub branch: String,
    /// A git bundle of the attempt's commits, without the base's history.
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct EventsQuery {
    pub attempt: Option<u32>,
    /// Only events after this id.
    pub after: Option<i64>,
    /// Keep the stream open until the task finishes.
    pub follow: bool,
}

impl ApiClient {
    pub fn new(args: &ServerArgs) -> Result<Self> {
        let base = args.server.trim_end_matches('/').to_string();
        let token = match args.token.clone().filter(|t| !t.trim().is_empty()) {
            Some(token) => token,
            None => match credentials::token_for(&base)? {
                Some(token) => token,
                None => bail!(
                    "no API token for {base}: run `kiln login --server {base}` (single sign-on), \
                     or set KILN_TOKEN (the admin token is printed at the first start of \
                     `kiln serve`; `kiln token create NAME` makes more)"
                ),
            },
        };
        reqwest::Url::parse(&base).with_context(|| {
            format!("--server / KILN_SERVER {base:?} is not a URL: use e.g. http://127.0.0.1:7878")
        })?;
        Ok(ApiClient {
            http: reqwest::Client::new(),
            base,
            token,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// A request to the API path made of `segments`, each percent-encoded,
    /// so that an id given on the command line (`../tokens`) stays one
    /// segment and cannot reach another route.
    fn request_to(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<reqwest::RequestBuilder> {
        if let Some(bad) = segments
            .iter()
            .find(|s| s.is_empty() || **s == "." || **s == "..")
        {
            bail!("{bad:?} is not an id: use the id kiln printed (e.g. t_… for a task)");
        }
        let mut url = reqwest::Url::parse(&self.base)
            .with_context(|| format!("the server URL {:?} is not a URL", self.base))?;
        url.path_segments_mut()
            .map_err(|()| anyhow!("the server URL {:?} cannot have a path", self.base))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(self.http.request(method, url).bearer_auth(&self.token))
    }

    pub async fn send(&self, builder: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = builder.send().await.with_context(|| {
            format!(
                "cannot reach the kiln server at {}: start `kiln serve` or set --server / KILN_SERVER",
                self.base
            )
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        bail!("the server refused ({status}): {message}")
    }

    async fn typed<T: DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Answer<T>> {
        let response = self.send(builder).await?;
        let body = response
            .text()
            .await
            .with_context(|| format!("reading {what} from the server"))?;
        let value = serde_json::from_str(&body).with_context(|| {
            format!(
                "the server's answer is not {what} as this kiln knows it \
                 (is the server another version of kiln?)"
            )
        })?;
        Ok(Answer { value, body })
    }

    pub async fn create_task(&self, new: &NewTask) -> Result<Answer<TaskDetail>> {
        let request = self
            .request_to(reqwest::Method::POST, &["api", "tasks"], &[])?
            .json(new);
        self.typed(request, "a task").await
    }

    pub async fn get_task(&self, id: &str) -> Result<Answer<TaskDetail>> {
        let request = self.request_to(reqwest::Method::GET, &["api", "tasks", id], &[])?;
        self.typed(request, "a task").await
    }

    pub async fn list_tasks(&self, query: &TaskQuery) -> Result<Answer<TaskPage>> {
        let mut pairs = Vec::new();
        if let Some(status) = query.status {
            pairs.push(("status", status.to_string()));
        }
        if let Some(limit) = query.limit {
            pairs.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &query.cursor {
            pairs.push(("cursor", cursor.clone()));
        }
        if let Some(scope) = &query.scope {
            pairs.push(("scope", scope.clone()));
        }
        let request = self.request_to(reqwest::Method::GET, &["api", "tasks"], &pairs)?;
        self.typed(request, "a page of tasks").await
    }

    /// An attempt's diff, as text.
    pub async fn attempt_diff(&self, id: &str, attempt: u32) -> Result<String> {
        let n = attempt.to_string();
        let request = self.request_to(
            reqwest::Method::GET,
            &["api", "tasks", id, "attempts", &n, "diff"],
            &[],
        )?;
        let response = self.send(request).await?;
        Ok(response.text().await?)
    }

    /// An attempt's commits as a git bundle (`base..branch`), with the base,
    /// the commit and the branch the server names in its headers.
    pub async fn attempt_bundle(&self, id: &str, attempt: u32) -> Result<AttemptBundle> {
        let n = attempt.to_string();
        let request = self.request_to(
            reqwest::Method::GET,
            &["api", "tasks", id, "attempts", &n, "bundle"],
            &[],
        )?;
        let response = self.send(request).await?;
        let header = |name: &str| -> Result<String> {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| {
                    anyhow!("the server's bundle has no {name} header (is the server another version of kiln?)")
                })
        };
        let (base, commit, branch) = (
            header("kiln-base-commit")?,
            header("kiln-commit")?,
            header("kiln-branch")?,
        );
        let bytes = response
            .bytes()
            .await
            .context("reading the attempt's bundle from the server")?;
        Ok(AttemptBundle {
            base,
            commit,
            branch,
            bytes: bytes.to_vec(),
        })
    }

    pub async fn cancel_task(&self, id: &str) -> Result<Answer<CancelOutcome>> {
        let request = self
            .request_to(reqwest::Method::POST, &["api", "tasks", id, "cancel"], &[])?
            .json(&serde_json::json!({}));
        self.typed(request, "the outcome of a cancellation").await
    }

    /// Marks attempt `n` preferred, or (`prefer` false) clears the mark
    /// when it holds it.
    pub async fn prefer_attempt(
        &self,
        id: &str,
        n: u32,
        prefer: bool,
    ) -> Result<Answer<TaskDetail>> {
        let n = n.to_string();
        let method = if prefer {
            reqwest::Method::POST
        } else {
            reqwest::Method::DELETE
        };
        let request =
            self.request_to(method, &["api", "tasks", id, "attempts", &n, "prefer"], &[])?;
        self.typed(request, "a task").await
    }

    pub async fn send_message(
        &self,
        id: &str,
        message: &NewMessage,
    ) -> Result<Answer<MessageList>> {
        let request = self
            .request_to(
                reqwest::Method::POST,
                &["api", "tasks", id, "messages"],
                &[],
            )?
            .json(message);
        self.typed(request, "the messages sent").await
    }

    /// Opens the task's pull request, or updates the one it has.
    pub async fn open_pull_request(
        &self,
        id: &str,
        request: &NewPullRequest,
    ) -> Result<Answer<PullRequest>> {
        let request = self
            .request_to(reqwest::Method::POST, &["api", "tasks", id, "pr"], &[])?
            .json(request);
        self.typed(request, "a pull request").await
    }

    /// Shares a task with its team (`shared`), or makes it private again.
    pub async fn share_task(&self, id: &str, shared: bool) -> Result<Answer<TaskDetail>> {
        let method = if shared {
            reqwest::Method::POST
        } else {
            reqwest::Method::DELETE
        };
        let request = self.request_to(method, &["api", "tasks", id, "share"], &[])?;
        self.typed(request, "a task").await
    }

    pub async fn me(&self) -> Result<Answer<User>> {
        let request = self.request_to(reqwest::Method::GET, &["api", "me"], &[])?;
        self.typed(request, "a user").await
    }

    pub async fn list_users(&self) -> Result<Answer<UserList>> {
        let request = self.request_to(reqwest::Method::GET, &["api", "users"], &[])?;
        self.typed(request, "a list of users").await
    }

    pub async fn create_user(&self, new: &NewUser) -> Result<Answer<User>> {
        let request = self
            .request_to(reqwest::Method::POST, &["api", "users"], &[])?
            .json(new);
        self.typed(request, "a user").await
    }

    pub async fn get_user(&self, user: &str) -> Result<Answer<User>> {
        let request = self.request_to(reqwest::Method::GET, &["api", "users", user], &[])?;
        self.typed(request, "a user").await
    }

    pub async fn update_user(&self, user: &str, patch: &UserPatch) -> Result<Answer<User>> {
        let request = self
            .request_to(reqwest::Method::PATCH, &["api", "users", user], &[])?
            .json(patch);
        self.typed(request, "a user").await
    }

    pub async fn list_teams(&self) -> Result<Answer<TeamList>> {
        let request = self.request_to(reqwest::Method::GET, &["api", "teams"], &[])?;
        self.typed(request, "a list of teams").await
    }

    pub async fn create_team(&self, new: &NewTeam) -> Result<Answer<Team>> {
        let request = self
            .request_to(reqwest::Method::POST, &["api", "teams"], &[])?
            .json(new);
        self.typed(request, "a team").await
    }

    pub async fn get_team(&self, team: &str) -> Result<Answer<Team>> {
        let request = self.request_to(reqwest::Method::GET, &["api", "teams", team], &[])?;
        self.typed(request, "a team").await
    }

    /// Gives `user` `role` in `team`, or (`role` `None`) takes them out.
    pub async fn set_member(
        &self,
        team: &str,
        user: &str,
        role: Option<TeamRole>,
    ) -> Result<Answer<Team>> {
        let path = ["api", "teams", team, "members", user];
        let request = match role {
            Some(role) => self
                .request_to(reqwest::Method::PUT, &path, &[])?
                .json(&SetMember { role }),
            None => self.request_to(reqwest::Method::DELETE, &path, &[])?,
        };
        self.typed(request, "a team").await
    }

    pub async fn create_environment(&self, new: &NewEnvironment) -> Result<Answer<Environment>> {
        let request = self
            .request_to(reqwest::Method::POST, &["api", "environments"], &[])?
            .json(new);
        self.typed(request, "an environment").await
    }

    pub async fn list_environments(&self) -> Result<Answer<EnvironmentList>> {
        let request = self.request_to(reqwest::Method::GET, &["api", "environments"], &[])?;
        self.typed(request, "a list of environments").await
    }

    /// One environment by id, name or `team/name`.
    pub async fn get_environment(&self, id: &str) -> Result<Answer<Environment>> {
        let request = self.request_to(reqwest::Method::GET, &["api", "environments", id], &[])?;
        self.typed(request, "an environment").await
    }

    pub async fn update_environment(
        &self,
        id: &str,
        patch: &EnvironmentPatch,
    ) -> Result<Answer<Environment>> {
        let request = self
            .request_to(reqwest::Method::PATCH, &["api", "environments", id], &[])?
            .json(patch);
        self.typed(request, "an environment").await
    }

    pub async fn delete_environment(&self, id: &str) -> Result<()> {
        let request =
            self.request_to(reqwest::Method::DELETE, &["api", "environments", id], &[])?;
        self.send(request).await?;
        Ok(())
    }

    pub async fn set_environment_secret(&self, id: &str, name: &str, value: &str) -> Result<()> {
        let request = self
            .request_to(
                reqwest::Method::PUT,
                &["api", "environments", id, "secrets", name],
                &[],
            )?
            .json(&SecretValue {
                value: value.to_string(),
            });
        self.send(request).await?;
        Ok(())
    }

    pub async fn remove_environment_secret(&self, id: &str, name: &str) -> Result<()> {
        let request = self.request_to(
            reqwest::Method::DELETE,
            &["api", "environments", id, "secrets", name],
            &[],
        )?;
        self.send(request).await?;
        Ok(())
    }

    /// Every version of an environment, newest first.
    pub async fn environment_versions(&self, id: &str) -> Result<Answer<EnvironmentVersionList>> {
        let request = self.request_to(
            reqwest::Method::GET,
            &["api", "environments", id, "versions"],
            &[],
        )?;
        self.typed(request, "an environment's versions").await
    }

    /// Opens the task's event stream.
    pub async fn events(&self, id: &str, query: &EventsQuery) -> Result<TaskEvents> {
        let mut pairs = vec![("follow", query.follow.to_string())];
        if let Some(n) = query.attempt {
            pairs.push(("attempt", n.to_string()));
        }
        if let Some(after) = query.after {
            pairs.push(("after", after.to_string()));
        }
        let request = self
            .request_to(
                reqwest::Method::GET,
                &["api", "tasks", id, "events"],
                &pairs,
            )?
            .header("accept", "text/event-stream");
        let response = self.send(request).await?;
        Ok(TaskEvents {
            response,
            parser: SseParser::new(),
            ready: VecDeque::new(),
        })
    }

    /// A page of the audit trail, newest first (admins).
    pub async fn audit_page(&self, query: &AuditQuery) -> Result<Answer<AuditPage>> {
        let mut pairs = audit_filter_pairs(query);
        if let Some(limit) = query.limit {
            pairs.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &query.cursor {
            pairs.push(("cursor", cursor.clone()));
        }
        let request = self.request_to(reqwest::Method::GET, &["api", "audit"], &pairs)?;
        self.typed(request, "a page of the audit trail").await
    }

    /// The filtered audit trail as JSON lines, oldest first (admins): the
    /// response, to read a chunk at a time.
    pub async fn audit_export(&self, query: &AuditQuery) -> Result<reqwest::Response> {
        let pairs = audit_filter_pairs(query);
        let request = self.request_to(reqwest::Method::GET, &["api", "audit", "export"], &pairs)?;
        self.send(request).await
    }

    /// The quota of a team or user (`target`: id or name) and its use now.
    pub async fn quota(&self, scope: QuotaScope, target: &str) -> Result<Answer<QuotaStatus>> {
        let request = self.request_to(
            reqwest::Method::GET,
            &["api", quota_collection(scope), target, "quota"],
            &[],
        )?;
        self.typed(request, "a quota").await
    }

    /// Replaces the quota of a team or user (admin).
    pub async fn set_quota(
        &self,
        scope: QuotaScope,
        target: &str,
        quota: &Quota,
    ) -> Result<Answer<QuotaStatus>> {
        let request = self
            .request_to(
                reqwest::Method::PUT,
                &["api", quota_collection(scope), target, "quota"],
                &[],
            )?
            .json(quota);
        self.typed(request, "a quota").await
    }

    // The untyped calls below serve `kiln token` until it has typed ones.

    pub async fn get(&self, path: &str) -> Result<Value> {
        let response = self.send(self.request(reqwest::Method::GET, path)).await?;
        Ok(response.json().await?)
    }

    pub async fn get_query(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        let response = self
            .send(self.request(reqwest::Method::GET, path).query(query))
            .await?;
        Ok(response.json().await?)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let response = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        Ok(response.json().await?)
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        let response = self
            .send(self.request(reqwest::Method::DELETE, path))
            .await?;
        Ok(response.json().await?)
    }
}

/// The query string of an audit query's filters (not its page).
fn audit_filter_pairs(query: &AuditQuery) -> Vec<(&'static str, String)> {
    let mut pairs = Vec::new();
    let texts = [
        ("actor", &query.actor),
        ("action", &query.action),
        ("team", &query.team),
        ("target", &query.target),
    ];
    for (key, value) in texts {
        if let Some(value) = value {
            pairs.push((key, value.clone()));
        }
    }
    let times = [("since", query.since), ("until", query.until)];
    for (key, value) in times {
        if let Some(value) = value {
            pairs.push((
                key,
                value.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ));
        }
    }
    pairs
}

fn quota_collection(scope: QuotaScope) -> &'static str {
    match scope {
        QuotaScope::Team => "teams",
        QuotaScope::User => "users",
    }
}

/// One frame of a task's event stream, decoded, with its JSON as sent.
pub struct TaskEvent {
    pub item: TaskStreamItem,
    pub data: String,
}

/// A task's event stream as it arrives (see [`ApiClient::events`]).
pub struct TaskEvents {
    response: reqwest::Response,
    parser: SseParser,
    ready: VecDeque<TaskEvent>,
}

impl TaskEvents {
    /// The next frame, or `None` once the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<TaskEvent>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            let Some(chunk) = self
                .response
                .chunk()
                .await
                .context("the event stream broke off")?
            else {
                return Ok(None);
            };
            for frame in self.parser.feed(&chunk)? {
                let item = TaskStreamItem::from_frame(&frame)?;
                self.ready.push_back(TaskEvent {
                    item,
                    data: frame.data,
                });
            }
        }
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// `$KILN_HOME/credentials.toml`: the tokens `kiln login` got, one per
/// server (`[servers."URL"] token = …`), readable by the user alone.
pub mod credentials {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::path::PathBuf;

    use anyhow::{bail, Context, Result};
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Serialize};

    pub const FILE_NAME: &str = "credentials.toml";

    /// One server's sign-in.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ServerCredentials {
        pub token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub token_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub expires_at: Option<DateTime<Utc>>,
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Credentials {
        #[serde(default)]
        pub servers: BTreeMap<String, ServerCredentials>,
    }

    pub fn path() -> Result<PathBuf> {
        Ok(crate::config::kiln_home()?.join(FILE_NAME))
    }

    /// The servers' URLs are kept without a trailing slash.
    pub fn key(server: &str) -> String {
        server.trim_end_matches('/').to_string()
    }

    pub fn load() -> Result<Credentials> {
        let path = path()?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Credentials::default())
            }
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        toml::from_str(&text).with_context(|| {
            format!(
                "{} is not a kiln credentials file: fix it, or delete it and run `kiln login` again",
                path.display()
            )
        })
    }

    /// Writes the file with mode 0600 (through a private temporary file
    /// renamed over it, so that no reader sees half a file and the token is
    /// never readable by others, not even for a moment).
    pub fn save(credentials: &Credentials) -> Result<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = path()?;
        let dir = path
            .parent()
            .context("the credentials file has no directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let text = toml::to_string(credentials).context("cannot write the credentials as TOML")?;
        let temp = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", temp.display()))?;
        std::fs::rename(&temp, &path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(path)
    }

    /// The stored token for `server`, unless it has expired (then the
    /// error says to sign in again).
    pub fn token_for(server: &str) -> Result<Option<String>> {
        // Without a home there is no credentials file, and the error to
        // show is the missing token's.
        if crate::config::kiln_home().is_err() {
            return Ok(None);
        }
        let credentials = load()?;
        let Some(entry) = credentials.servers.get(&key(server)) else {
            return Ok(None);
        };
        if let Some(expires) = entry.expires_at {
            if expires <= Utc::now() {
                bail!(
                    "your sign-in to {} expired on {}: run `kiln login --server {}` again",
                    key(server),
                    expires.format("%Y-%m-%d %H:%M UTC"),
                    key(server)
                );
            }
        }
        Ok(Some(entry.token.clone()))
    }
}
