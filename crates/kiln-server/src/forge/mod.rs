//! Forges: opening and updating a task's pull (merge) request through a
//! forge's REST API. GitHub, GitLab and Forgejo/Gitea each get a module
//! that knows its paths, headers and bodies; this one holds what they
//! share: the client, the HTTP exchange, and the errors, which name the
//! forge, its HTTP status and its own message, and never the token.
//!
//! The forge's answers are untrusted: only the number and the page URL are
//! taken from them, and its messages are cut short, stripped of control
//! characters and of the token before anyone sees them.

pub(crate) mod base;
mod forgejo;
mod github;
mod gitlab;
pub(crate) mod proposal;

use std::time::Duration;

use kiln_protocol::{ForgeConfig, ForgeKind};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// The longest forge message passed on.
const MAX_FORGE_MESSAGE: usize = 500;
/// How long one forge request may take.
const FORGE_TIMEOUT: Duration = Duration::from_secs(30);

/// What kiln asks the forge for: a pull request from `head` into `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proposal {
    pub(crate) title: String,
    pub(crate) body: String,
    /// The branch kiln pushed (`kiln/<task>`).
    pub(crate) head: String,
    /// The branch it should merge into.
    pub(crate) base: String,
    pub(crate) draft: bool,
}

/// A pull request as the forge identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForgePull {
    /// GitHub's and Forgejo's `number`, GitLab's `iid`.
    pub(crate) number: u64,
    /// The page people open.
    pub(crate) url: String,
}

/// Why the forge did not do what kiln asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForgeError {
    /// The environment's forge settings cannot be used as given.
    #[error("the environment's forge setting is unusable: {0}")]
    Config(String),
    /// 401 or 403: the token is wrong, expired, or lacks a scope.
    #[error("{forge} refused the token in secret {token_secret} (HTTP {status}: {message}): check that it is valid and has {scopes}")]
    Denied {
        forge: ForgeKind,
        status: u16,
        message: String,
        token_secret: String,
        scopes: &'static str,
    },
    /// 404: the repository does not exist, or the token cannot see it.
    #[error("{forge} has no repository {repo} that the token in secret {token_secret} can see (HTTP 404: {message}): check forge.repo and forge.api_url, and that the token has access to it")]
    NotFound {
        forge: ForgeKind,
        repo: String,
        message: String,
        token_secret: String,
    },
    /// 409 or 422: the branch is protected, a pull request exists, the
    /// branch has no commits ahead of the base, …
    #[error("{forge} rejected the pull request (HTTP {status}: {message})")]
    Rejected {
        forge: ForgeKind,
        status: u16,
        message: String,
    },
    /// 429, or 403 with the rate-limit headers.
    #[error("{forge} rate-limited kiln (HTTP {status}: {message}): try again {}", retry_hint(*retry_after_secs))]
    RateLimited {
        forge: ForgeKind,
        status: u16,
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// Any other answer kiln cannot use.
    #[error("{forge} answered HTTP {status}: {message}")]
    Unexpected {
        forge: ForgeKind,
        status: u16,
        message: String,
    },
    /// No answer at all.
    #[error("cannot reach {forge} at {api_url}: {reason}")]
    Unreachable {
        forge: ForgeKind,
        api_url: String,
        reason: String,
    },
}

fn retry_hint(after: Option<u64>) -> String {
    match after {
        Some(secs) => format!("in {secs} s"),
        None => "later".to_string(),
    }
}

/// One environment's forge, with its token. The token is only ever put in
/// a request header.
pub(crate) struct Forge {
    kind: ForgeKind,
    api_url: Url,
    /// `owner/name` (GitLab: `group/subgroup/name`), checked.
    repo: String,
    token: String,
    token_secret: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Forge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forge")
            .field("kind", &self.kind)
            .field("api_url", &self.api_url.as_str())
            .field("repo", &self.repo)
            .field("token_secret", &self.token_secret)
            .finish_non_exhaustive()
    }
}

/// The public service's API when `api_url` is not given.
pub(crate) fn default_api_url(kind: ForgeKind) -> &'static str {
    match kind {
        ForgeKind::Github => "https://api.github.com",
        ForgeKind::Gitlab => "https://gitlab.com/api/v4",
        // Forgejo has no single public service; Codeberg is the public
        // instance most people mean. Self-hosters give api_url.
        ForgeKind::Forgejo => "https://codeberg.org/api/v1",
    }
}

/// The HTTP client for one environment's forge: no redirects (a public
/// forge could send kiln on to an internal address, or the token to
/// another host), and, when the API's host name was checked as public,
/// connections only to the addresses that were checked (`curl_resolve`,
/// `host:port:addr,…` as [`crate::CheckedRepo`] gives it), so that a second
/// DNS answer cannot point it elsewhere.
pub(crate) fn http_client(curl_resolve: Option<&str>) -> Result<reqwest::Client, ForgeError> {
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(pin) = curl_resolve {
        let mut parts = pin.splitn(3, ':');
        let (Some(host), Some(port), Some(list)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(ForgeError::Config(format!(
                "cannot pin the forge's addresses ({pin})"
            )));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| ForgeError::Config(format!("cannot pin the forge's addresses ({pin})")))?;
        let addresses: Vec<std::net::SocketAddr> = list
            .split(',')
            .filter_map(|address| {
                address
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .ok()
            })
            .map(|ip| std::net::SocketAddr::new(ip, port))
            .collect();
        builder = builder.resolve_to_addrs(host, &addresses);
    }
    builder
        .build()
        .map_err(|e| ForgeError::Config(format!("cannot set up the forge's HTTP client: {e}")))
}

impl Forge {
    /// A client for `config`'s forge with `token` (the value of the
    /// environment secret `config.token_secret`).
    pub(crate) fn new(
        config: &ForgeConfig,
        token: String,
        http: reqwest::Client,
    ) -> Result<Forge, ForgeError> {
        let raw = config
            .api_url
            .as_deref()
            .unwrap_or_else(|| default_api_url(config.kind));
        let api_url = Url::parse(raw.trim_end_matches('/'))
            .map_err(|e| ForgeError::Config(format!("forge.api_url {raw:?} is not a URL: {e}")))?;
        if !matches!(api_url.scheme(), "https" | "http") || api_url.cannot_be_a_base() {
            return Err(ForgeError::Config(format!(
                "forge.api_url {raw:?} is not an http(s) URL"
            )));
        }
        if !api_url.username().is_empty() || api_url.password().is_some() {
            return Err(ForgeError::Config(format!(
                "forge.api_url {:?} carries a credential: put the token in the secret forge.token_secret names instead",
                api_url.host_str().unwrap_or_default()
            )));
        }
        let repo = check_repo(config.kind, &config.repo)?;
        if token.trim().is_empty() {
            return Err(ForgeError::Config(format!(
                "the secret {} (forge.token_secret) is empty: store the forge token in it",
                config.token_secret
            )));
        }
        Ok(Forge {
            kind: config.kind,
            api_url,
            repo,
            token: token.trim().to_string(),
            token_secret: config.token_secret.clone(),
            http,
        })
    }

    pub(crate) fn kind(&self) -> ForgeKind {
        self.kind
    }

    /// The open pull request from `head`, if the forge has one (kiln's
    /// record may be missing it: a crash between the forge's answer and
    /// the store's write, or a store restored from backup).
    pub(crate) async fn find_open(&self, head: &str) -> Result<Option<ForgePull>, ForgeError> {
        match self.kind {
            ForgeKind::Github => github::find_open(self, head).await,
            ForgeKind::Gitlab => gitlab::find_open(self, head).await,
            ForgeKind::Forgejo => forgejo::find_open(self, head).await,
        }
    }

    pub(crate) async fn create(&self, proposal: &Proposal) -> Result<ForgePull, ForgeError> {
        match self.kind {
            ForgeKind::Github => github::create(self, proposal).await,
            ForgeKind::Gitlab => gitlab::create(self, proposal).await,
            ForgeKind::Forgejo => forgejo::create(self, proposal).await,
        }
    }

    /// Rewrites the title and body of pull request `number`.
    pub(crate) async fn update(
        &self,
        number: u64,
        proposal: &Proposal,
    ) -> Result<ForgePull, ForgeError> {
        match self.kind {
            ForgeKind::Github => github::update(self, number, proposal).await,
            ForgeKind::Gitlab => gitlab::update(self, number, proposal).await,
            ForgeKind::Forgejo => forgejo::update(self, number, proposal).await,
        }
    }

    /// The repository's path parts (`owner`, `name`; GitLab: every group).
    fn repo_parts(&self) -> impl Iterator<Item = &str> {
        self.repo.split('/')
    }

    /// `repos/{owner}/{repo}/pulls[/{number}]`: the pull-request routes,
    /// which GitHub and Forgejo/Gitea name alike.
    fn repo_pulls_endpoint(&self, number: Option<&str>) -> Url {
        self.endpoint(
            ["repos"]
                .into_iter()
                .chain(self.repo_parts())
                .chain(["pulls"])
                .chain(number),
        )
    }

    /// `api_url` with `segments` appended, each percent-encoded as one
    /// segment (a GitLab project path becomes `group%2Fname`).
    fn endpoint<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> Url {
        let mut url = self.api_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends one request with the forge's headers and returns the JSON
    /// answer of a 2xx, or the error the answer means.
    async fn exchange(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, ForgeError> {
        let mut request = self
            .http
            .request(method, url)
            .timeout(FORGE_TIMEOUT)
            .headers(self.headers());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| ForgeError::Unreachable {
            forge: self.kind,
            api_url: self.api_url.to_string(),
            // reqwest names the URL, which holds no credential (checked in new).
            reason: self.scrub(&e.to_string()),
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| ForgeError::Unexpected {
                forge: self.kind,
                status: status.as_u16(),
                message: format!("the answer is not JSON ({e})"),
            });
        }
        Err(self.error_for(status, &headers, &text))
    }

    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        // GitHub refuses requests without one; the others log it.
        headers.insert(
            reqwest::header::USER_AGENT,
            HeaderValue::from_static(concat!("kiln/", env!("CARGO_PKG_VERSION"))),
        );
        let (name, value, accept) = match self.kind {
            ForgeKind::Github => (
                "authorization",
                format!("Bearer {}", self.token),
                "application/vnd.github+json",
            ),
            ForgeKind::Gitlab => ("private-token", self.token.clone(), "application/json"),
            ForgeKind::Forgejo => (
                "authorization",
                format!("token {}", self.token),
                "application/json",
            ),
        };
        headers.insert(reqwest::header::ACCEPT, HeaderValue::from_static(accept));
        if self.kind == ForgeKind::Github {
            headers.insert(
                "x-github-api-version",
                HeaderValue::from_static("2022-11-28"),
            );
        }
        // A token with bytes a header cannot hold is sent as none: the
        // forge's 401 then names the secret.
        if let Ok(mut value) = HeaderValue::from_str(&value) {
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        headers
    }

    fn error_for(&self, status: StatusCode, headers: &HeaderMap, text: &str) -> ForgeError {
        let forge = self.kind;
        let code = status.as_u16();
        let message = self.scrub(&forge_message(text));
        let header_u64 = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let rate_limited = code == 429
            || (code == 403
                && (header_u64("x-ratelimit-remaining") == Some(0)
                    || headers.contains_key(reqwest::header::RETRY_AFTER)));
        if rate_limited {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let retry_after_secs = header_u64("retry-after").or_else(|| {
                header_u64("x-ratelimit-reset")
                    .or_else(|| header_u64("ratelimit-reset"))
                    .map(|at| at.saturating_sub(now))
            });
            return ForgeError::RateLimited {
                forge,
                status: code,
                message,
                retry_after_secs,
            };
        }
        match code {
            401 | 403 => ForgeError::Denied {
                forge,
                status: code,
                message,
                token_secret: self.token_secret.clone(),
                scopes: required_scopes(forge),
            },
            404 => ForgeError::NotFound {
                forge,
                repo: self.repo.clone(),
                message,
                token_secret: self.token_secret.clone(),
            },
            409 | 422 => ForgeError::Rejected {
                forge,
                status: code,
                message,
            },
            _ => ForgeError::Unexpected {
                forge,
                status: code,
                message,
            },
        }
    }

    /// `text` without the token (a forge may echo what it was sent) or
    /// control characters, and cut to [`MAX_FORGE_MESSAGE`].
    fn scrub(&self, text: &str) -> String {
        let without_token = text.replace(&self.token, "[redacted]");
        let mut clean: String = without_token
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_FORGE_MESSAGE)
            .collect();
        if without_token.chars().count() > MAX_FORGE_MESSAGE {
            clean.push('…');
        }
        clean
    }
}

/// The scopes a token needs, as each forge names them (docs/pull-requests.md).
fn required_scopes(kind: ForgeKind) -> &'static str {
    match kind {
        ForgeKind::Github => {
            "Contents read/write and Pull requests read/write (fine-grained) or the repo scope (classic)"
        }
        ForgeKind::Gitlab => "the api scope (at least Developer role on the project)",
        ForgeKind::Forgejo => "the write:repository scope",
    }
}

/// The forge's own explanation from an error body: GitHub's `message` and
/// `errors[].message`, GitLab's `message` (a string, a list, or fields
/// with lists) or `error`, Forgejo's `message`; the raw text otherwise.
fn forge_message(text: &str) -> String {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        let trimmed = text.trim();
        return if trimmed.is_empty() {
            "no message".to_string()
        } else {
            trimmed.to_string()
        };
    };
    let mut parts = Vec::new();
    for key in ["message", "error", "error_description"] {
        if let Some(found) = value.get(key) {
            flatten_message(found, None, &mut parts);
        }
    }
    if let Some(Value::Array(errors)) = value.get("errors") {
        for error in errors {
            match error.get("message") {
                Some(message) => flatten_message(message, None, &mut parts),
                None => flatten_message(error, None, &mut parts),
            }
        }
    }
    if parts.is_empty() {
        "no message".to_string()
    } else {
        parts.join("; ")
    }
}

fn flatten_message(value: &Value, field: Option<&str>, out: &mut Vec<String>) {
    match value {
        Value::String(text) => out.push(match field {
            Some(field) => format!("{field} {text}"),
            None => text.clone(),
        }),
        Value::Array(items) => items.iter().for_each(|v| flatten_message(v, field, out)),
        Value::Object(fields) => fields
            .iter()
            .for_each(|(name, v)| flatten_message(v, Some(name), out)),
        Value::Null => {}
        other => out.push(other.to_string()),
    }
}

/// `repo` checked as a path on `kind`: `owner/name` on GitHub and Forgejo,
/// `group[/subgroup…]/name` on GitLab, each part a plain name (so that no
/// part can climb out of the API path it is put in).
fn check_repo(kind: ForgeKind, repo: &str) -> Result<String, ForgeError> {
    let repo = repo.trim().trim_end_matches(".git");
    let parts: Vec<&str> = repo.split('/').collect();
    let count_ok = match kind {
        ForgeKind::Gitlab => parts.len() >= 2,
        ForgeKind::Github | ForgeKind::Forgejo => parts.len() == 2,
    };
    let part_ok = |part: &&str| {
        !part.is_empty()
            && *part != "."
            && *part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !count_ok || !parts.iter().all(part_ok) {
        let shape = match kind {
            ForgeKind::Gitlab => "\"group/name\" (subgroups allowed)",
            ForgeKind::Github | ForgeKind::Forgejo => "\"owner/name\"",
        };
        return Err(ForgeError::Config(format!(
            "forge.repo {repo:?} is not a {} repository path: give it as {shape}, letters, digits, '-', '_' and '.' only",
            kind
        )));
    }
    Ok(repo.to_string())
}

/// A number from the forge's answer, or the error saying it is missing.
fn answer_number(forge: ForgeKind, answer: &Value, key: &str) -> Result<u64, ForgeError> {
    answer
        .get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| ForgeError::Unexpected {
            forge,
            status: 200,
            message: format!("the answer has no numeric {key:?}"),
        })
}

/// The page URL from the forge's answer: only an http(s) URL is taken, so
/// that a hostile answer cannot hand clients a `javascript:` link.
fn answer_url(forge: ForgeKind, answer: &Value, key: &str) -> Result<String, ForgeError> {
    answer
        .get(key)
        .and_then(Value::as_str)
        .and_then(|text| Url::parse(text).ok())
        .filter(|url| matches!(url.scheme(), "https" | "http"))
        .map(String::from)
        .ok_or_else(|| ForgeError::Unexpected {
            forge,
            status: 200,
            message: format!("the answer has no http(s) {key:?}"),
        })
}

#[cfg(test)]
#[path = "forge_tests.rs"]
mod tests;
