//! Which repository locations an environment may name.
//!
//! The server clones an environment's repository with its own rights, so
//! the location is an attack surface: a host path or `file://` URL reads
//! the server's disk, and a URL pointing at a loopback or private address
//! makes the server probe its own network (the clone's error comes back in
//! the attempt's `reason`). [`RepoAccess`] allows, for every caller, only
//! `https`, `http`, `ssh` and `git` URLs and scp-like `user@host:path`
//! (never transport helpers such as `ext::` or `fd::`, never a value git
//! could read as an option). Host paths, `file://` URLs and hosts that are
//! or resolve to a non-public address are for admins, or for locations an
//! operator allowed with `kiln serve --allow-repo PREFIX`.
//!
//! The check runs when an environment is created and again right before
//! its mirror is cloned or fetched ([`recheck_environment`]), because a
//! host name can resolve elsewhere by then.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};

use kiln_store::{Environment, RepoCredential};
use kiln_workspace::{FetchRules, GitEnv};

use crate::error::ApiError;
use crate::state::Shared;

/// The repository locations a server accepts beyond public git URLs.
#[derive(Debug, Clone, Default)]
pub struct RepoAccess {
    allowed: Vec<AllowedPrefix>,
}

#[derive(Debug, Clone)]
enum AllowedPrefix {
    /// A directory on the server: host paths and `file://` URLs inside it.
    Dir(PathBuf),
    /// The start of a URL (`https://git.internal/`, `git@gitlab.corp:`).
    Url(String),
}

/// Why a repository location was refused. The messages repeat only what
/// the caller sent, never what the server found on its disk or network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoAccessError {
    /// Not something kiln clones for anyone (an unknown scheme, a transport
    /// helper, an option-looking value, a malformed URL).
    #[error("{0}")]
    Unsupported(String),
    /// A location only admins (or `--allow-repo`) may use.
    #[error("{0}")]
    NotAllowed(String),
}

impl From<RepoAccessError> for ApiError {
    fn from(err: RepoAccessError) -> Self {
        match err {
            RepoAccessError::Unsupported(message) => ApiError::invalid("repo", message),
            RepoAccessError::NotAllowed(message) => ApiError::Forbidden(message),
        }
    }
}

/// A location that passed the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRepo {
    /// The one git transport the location needs: `file`, `https`, `http`,
    /// `ssh` or `git`.
    pub protocol: &'static str,
    /// For an `http(s)` URL whose host name was resolved: the addresses
    /// that were checked, as values of git's `http.curloptResolve`
    /// (`host:port:addr,…`), so the clone connects to exactly those and a
    /// second DNS answer cannot send it elsewhere.
    pub curl_resolve: Option<String>,
}

/// Variables to remove from git's environment when it clones or fetches an
/// environment's repository: they would hand it the server's own ssh
/// agent, askpass helpers, proxy command or configuration.
pub const GIT_FETCH_ENV_REMOVE: &[&str] = &[
    "SSH_AUTH_SOCK",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_PROXY_COMMAND",
];

impl CheckedRepo {
    /// `-c` options to put before git's `clone`/`fetch` subcommand: only
    /// this location's transport may run (no `ext::`, and no redirect or
    /// submodule to another transport), HTTP redirects are not followed (a
    /// public server could redirect to an internal one), no credential
    /// helper runs, and the checked addresses are pinned.
    pub fn git_fetch_args(&self) -> Vec<String> {
        let mut options = vec![
            "protocol.allow=never".to_string(),
            format!("protocol.{}.allow=always", self.protocol),
            "http.followRedirects=false".to_string(),
            "credential.helper=".to_string(),
        ];
        if let Some(pin) = &self.curl_resolve {
            options.push(format!("http.curloptResolve={pin}"));
        }
        options
            .into_iter()
            .flat_map(|option| ["-c".to_string(), option])
            .collect()
    }

    /// Variables to set for git's `clone`/`fetch` so that none of the
    /// server's own credentials is offered: no global or system config
    /// (credential helpers, `url.*.insteadOf`), an empty `HOME` (no
    /// `~/.netrc`, `~/.git-credentials`), no prompts, and ssh without the
    /// server's keys, agent or config. Remove [`GIT_FETCH_ENV_REMOVE`] too.
    pub fn git_fetch_env(empty_home: &Path) -> Vec<(&'static str, String)> {
        let home = empty_home.to_string_lossy().into_owned();
        vec![
            ("GIT_CONFIG_GLOBAL", "/dev/null".into()),
            ("GIT_CONFIG_NOSYSTEM", "1".into()),
            ("HOME", home.clone()),
            ("XDG_CONFIG_HOME", home),
            ("GIT_TERMINAL_PROMPT", "0".into()),
            (
                "GIT_SSH_COMMAND",
                "ssh -F /dev/null -i /dev/null -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes".into(),
            ),
        ]
    }
}

/// Variables that hand git an environment's repository credential
/// ([`kiln_store::Store::environment_repo_credential`]) for one clone or
/// fetch of `repo`, the environment's URL as stored (without the
/// credential); pass that clean URL to git, set these after removing
/// [`GIT_FETCH_ENV_REMOVE`] (they replace its `GIT_CONFIG_COUNT`).
///
/// The credential becomes an `Authorization: Basic …` header that git sends
/// only to URLs under `repo` (`http.<repo>.extraHeader`), given through
/// `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_0`/`GIT_CONFIG_VALUE_0`: unlike a URL
/// with the credential, it is not written into the mirror's `.git/config`,
/// which every sandbox of the environment reads, and unlike `-c`, it is not
/// in git's arguments, which any local user can read in `/proc`.
///
/// Only `https`, and `http` to a loopback host (the credential never leaves
/// the machine), get one: anywhere else the header would cross the network
/// readable (or, for ssh and git URLs, mean nothing), so the fetch is
/// refused rather than sent without it. The store refuses such URLs when
/// an environment is created; this guards rows it did not check.
pub fn git_credential_env(
    repo: &str,
    credential: &RepoCredential,
) -> Result<Vec<(&'static str, String)>, RepoAccessError> {
    let refuse = || {
        Err(RepoAccessError::Unsupported(format!(
            "{repo} has a stored credential, which kiln sends only over https (or http to this machine): create the environment again with an https URL"
        )))
    };
    match parse_location(repo)? {
        Location::Remote { scheme, host, .. } => {
            let loopback = match &host {
                Host::Ip(ip) => ip.is_loopback(),
                Host::Name(name) => name == "localhost" || name.ends_with(".localhost"),
            };
            if !(scheme == "https" || (scheme == "http" && loopback)) {
                return refuse();
            }
        }
        Location::HostPath(_) => return refuse(),
    }
    Ok(vec![
        ("GIT_CONFIG_COUNT", "1".to_string()),
        ("GIT_CONFIG_KEY_0", format!("http.{repo}.extraHeader")),
        (
            "GIT_CONFIG_VALUE_0",
            format!("Authorization: {}", credential.basic_authorization()),
        ),
    ])
}

/// A repository location as git will read it.
#[derive(Debug, PartialEq, Eq)]
enum Location {
    /// An absolute path on the server, or a `file://` URL's path.
    HostPath(PathBuf),
    /// A host git connects to over the network.
    Remote {
        scheme: String,
        host: Host,
        port: u16,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

const ADMIN_HINT: &str =
    "ask an admin to create the environment, or to allow the location with `kiln serve --allow-repo PREFIX`";

impl RepoAccess {
    /// The policy with `prefixes` allowed for every caller: absolute
    /// directories (host paths and `file://` URLs inside them) or URL
    /// beginnings (`https://git.internal/`, `git@gitlab.corp:`).
    pub fn new(
        prefixes: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<RepoAccess, RepoAccessError> {
        let allowed = prefixes
            .into_iter()
            .map(|prefix| parse_prefix(prefix.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(RepoAccess { allowed })
    }

    /// Whether a caller (`admin` or not) may use `repo`. Resolves host
    /// names (blocking: call it off the async runtime's worker threads, as
    /// [`RepoAccess::check_async`] does). Admins may use any supported
    /// location; for them a host path must also be a git repository now.
    pub fn check(&self, repo: &str, admin: bool) -> Result<CheckedRepo, RepoAccessError> {
        let location = parse_location(repo)?;
        match location {
            Location::HostPath(path) => {
                if !admin && !self.allows_dir(&path) {
                    return Err(RepoAccessError::NotAllowed(format!(
                        "{repo:?} is a path on the server: only admins may use host paths and file:// URLs; {ADMIN_HINT}"
                    )));
                }
                if !is_git_repository(&path) {
                    return Err(RepoAccessError::Unsupported(format!(
                        "{repo} is not a git repository on the server: check the path, or give a git URL"
                    )));
                }
                Ok(CheckedRepo {
                    protocol: "file",
                    curl_resolve: None,
                })
            }
            Location::Remote { scheme, host, port } => {
                let protocol = match scheme.as_str() {
                    "https" => "https",
                    "http" => "http",
                    "git" => "git",
                    _ => "ssh",
                };
                if admin || self.allows_url(repo) {
                    return Ok(CheckedRepo {
                        protocol,
                        curl_resolve: None,
                    });
                }
                let (addresses, name) = match host {
                    Host::Ip(ip) => (vec![ip], None),
                    Host::Name(name) => (resolve(&name, port, repo)?, Some(name)),
                };
                if addresses.iter().any(|ip| !is_public(*ip)) {
                    return Err(RepoAccessError::NotAllowed(format!(
                        "the host of {repo:?} is or resolves to a loopback, private, link-local or unspecified address: only admins may clone from such hosts; {ADMIN_HINT}"
                    )));
                }
                let curl_resolve =
                    name.filter(|_| scheme == "http" || scheme == "https")
                        .map(|name| {
                            let list: Vec<String> = addresses
                                .iter()
                                .map(|ip| match ip {
                                    IpAddr::V4(v4) => v4.to_string(),
                                    IpAddr::V6(v6) => format!("[{v6}]"),
                                })
                                .collect();
                            format!("{name}:{port}:{}", list.join(","))
                        });
                Ok(CheckedRepo {
                    protocol,
                    curl_resolve,
                })
            }
        }
    }

    /// [`RepoAccess::check`] on a blocking thread.
    pub async fn check_async(
        &self,
        repo: &str,
        admin: bool,
    ) -> Result<CheckedRepo, RepoAccessError> {
        let policy = self.clone();
        let repo = repo.to_string();
        tokio::task::spawn_blocking(move || policy.check(&repo, admin))
            .await
            .unwrap_or_else(|err| {
                Err(RepoAccessError::NotAllowed(format!(
                    "the repository check stopped ({err}): try again"
                )))
            })
    }

    /// A path matches when it and its resolved form (symlinks followed)
    /// both lie inside an allowed directory: `ALLOWED/../etc` or a link
    /// out of it does not.
    fn allows_dir(&self, path: &Path) -> bool {
        let inside = |candidate: &Path| {
            self.allowed.iter().any(|prefix| match prefix {
                AllowedPrefix::Dir(dir) => candidate.starts_with(dir),
                AllowedPrefix::Url(_) => false,
            })
        };
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            || !inside(path)
        {
            return false;
        }
        match path.canonicalize() {
            Ok(resolved) => inside(&resolved),
            // Missing: the git-repository check refuses it next.
            Err(_) => true,
        }
    }

    /// A URL matches a prefix that ends where a URL part ends (`/` or
    /// `:`), so `https://git.internal` does not allow
    /// `https://git.internal.evil.example/` or `https://git.internal@evil/`.
    /// Dot segments and percent-encoding never match: curl would resolve
    /// `https://git.internal/team/../admin/x` outside `…/team/`.
    fn allows_url(&self, repo: &str) -> bool {
        if repo.contains("..") || repo.contains('%') {
            return false;
        }
        self.allowed.iter().any(|prefix| match prefix {
            AllowedPrefix::Url(start) => repo.strip_prefix(start.as_str()).is_some_and(|rest| {
                rest.is_empty() || start.ends_with(['/', ':']) || rest.starts_with(['/', ':'])
            }),
            AllowedPrefix::Dir(_) => false,
        })
    }
}

/// Called by the worker right before it clones or fetches an environment's
/// mirror: the environment's location, checked with its owner's rights as
/// they are now (a revoked or demoted owner loses admin-only locations).
#[allow(
    dead_code,
    reason = "the worker's checkout calls it before each clone or fetch"
)]
pub(crate) async fn recheck_environment(
    shared: &Shared,
    environment: &Environment,
) -> Result<CheckedRepo, RepoAccessError> {
    let owner_is_admin = owner_is_admin(shared, environment).await;
    shared
        .config
        .repo_access
        .check_async(&environment.repo, owner_is_admin)
        .await
}

/// Whether the environment's creator is, now, a live token of an owner or
/// admin (`Store::token_holder_is_admin`).
pub(crate) async fn owner_is_admin(shared: &Shared, environment: &Environment) -> bool {
    match shared
        .store
        .token_holder_is_admin(&environment.owner_token_id)
        .await
    {
        Ok(admin) => admin,
        Err(err) => {
            tracing::warn!("cannot read the environment owner's token: {err}");
            false
        }
    }
}

/// `reason` with every path inside the server's data directory replaced by
/// `<server data>`: git's errors name the mirror and checkout paths, which
/// tell a user how the server is laid out.
pub fn scrub_data_dir(reason: &str, data_dir: &Path) -> String {
    let mut spellings = vec![data_dir.to_string_lossy().into_owned()];
    if let Ok(resolved) = data_dir.canonicalize() {
        spellings.push(resolved.to_string_lossy().into_owned());
    }
    spellings.retain(|s| s.len() > 1);
    // The longest first, so a spelling that contains another wins.
    spellings.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = reason.to_string();
    for spelling in &spellings {
        let mut scrubbed = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(spelling.as_str()) {
            scrubbed.push_str(&rest[..at]);
            scrubbed.push_str("<server data>");
            let after = &rest[at + spelling.len()..];
            let path_end = after
                .find(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '`' | ',' | ';'))
                .unwrap_or(after.len());
            rest = &after[path_end..];
        }
        scrubbed.push_str(rest);
        out = scrubbed;
    }
    out
}

fn parse_prefix(prefix: &str) -> Result<AllowedPrefix, RepoAccessError> {
    let refuse = |why: &str| {
        Err(RepoAccessError::Unsupported(format!(
            "--allow-repo {prefix:?}: {why}"
        )))
    };
    if prefix.is_empty() {
        return refuse("give an absolute directory or the start of a git URL");
    }
    if prefix.starts_with('/') {
        let path = Path::new(prefix);
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return refuse("write the directory without `.` or `..`");
        }
        if path == Path::new("/") {
            return refuse("allowing / would let every user clone any path on the server");
        }
        return Ok(AllowedPrefix::Dir(
            path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
        ));
    }
    if let Some(path) = prefix.strip_prefix("file://") {
        return parse_prefix(path);
    }
    match parse_location(prefix) {
        Ok(Location::Remote { .. }) => Ok(AllowedPrefix::Url(prefix.to_string())),
        // A bare `host:` or `git@host:` is a prefix of scp-like locations.
        _ if prefix.ends_with(':') && !prefix.contains('/') => {
            Ok(AllowedPrefix::Url(prefix.to_string()))
        }
        _ => refuse("give an absolute directory or the start of an https, http, ssh or git URL"),
    }
}

/// Reads `repo` the way git does: `scheme://…`, `<helper>::…`, an
/// absolute path, or scp-like `[user@]host:path` (a colon before any
/// slash); anything else is a relative path.
fn parse_location(repo: &str) -> Result<Location, RepoAccessError> {
    let unsupported = |why: String| Err(RepoAccessError::Unsupported(why));
    if repo.trim().is_empty() {
        return unsupported("name a local repository path or a git URL".into());
    }
    if repo.starts_with('-') {
        return unsupported(format!(
            "{repo:?} starts with `-`, which git would read as an option: give a git URL"
        ));
    }
    if repo.chars().any(char::is_control) || repo.trim() != repo {
        return unsupported(
            "the repository location contains control characters or surrounding spaces: give a plain git URL or path".into(),
        );
    }
    if repo.starts_with('/') {
        return Ok(Location::HostPath(PathBuf::from(repo)));
    }
    let scheme_end = repo
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .unwrap_or(repo.len());
    let after_scheme = &repo[scheme_end..];
    if scheme_end > 0 && after_scheme.starts_with("::") {
        return unsupported(format!(
            "{repo:?} names git transport helper {:?}, which can run commands on the server: give an https, http, ssh or git URL",
            &repo[..scheme_end]
        ));
    }
    if scheme_end > 0 && after_scheme.starts_with("://") {
        let scheme = repo[..scheme_end].to_ascii_lowercase();
        let rest = &after_scheme[3..];
        return match scheme.as_str() {
            "file" => parse_file_url(repo, rest),
            "https" | "http" | "ssh" | "git" | "git+ssh" | "ssh+git" => {
                parse_remote_url(repo, &scheme, rest)
            }
            _ => unsupported(format!(
                "{repo:?} uses the scheme {scheme:?}: kiln clones https, http, ssh and git URLs"
            )),
        };
    }
    let first_colon = repo.find(':');
    let first_slash = repo.find('/');
    match first_colon {
        Some(colon) if first_slash.is_none_or(|slash| colon < slash) => parse_scp_like(repo),
        _ => unsupported(format!(
            "{repo:?} is a relative path: give the absolute path of the repository on the server, or a git URL"
        )),
    }
}

fn parse_file_url(repo: &str, rest: &str) -> Result<Location, RepoAccessError> {
    // `file:///path` or `file://localhost/path`; git does not decode `%`
    // the same way everywhere, so encoded paths are refused outright.
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') || path.contains(['%', '?', '#']) {
        return Err(RepoAccessError::Unsupported(format!(
            "{repo:?} is not a plain file:///absolute/path URL"
        )));
    }
    Ok(Location::HostPath(PathBuf::from(path)))
}

fn parse_remote_url(repo: &str, scheme: &str, rest: &str) -> Result<Location, RepoAccessError> {
    let malformed = |why: &str| {
        RepoAccessError::Unsupported(format!("{repo:?} is not a usable git URL ({why})"))
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // Characters URL parsers disagree on are where SSRF filters get
    // bypassed: refuse them rather than guess which reading git's will be.
    if authority.contains(['\\', '%', ' ']) || authority.matches('@').count() > 1 {
        return Err(malformed(
            "the host part has `\\`, `%`, a space or several `@`",
        ));
    }
    let host_port = match authority.rsplit_once('@') {
        Some((user, host_port)) => {
            if user.starts_with('-') {
                return Err(malformed("the user name starts with `-`"));
            }
            host_port
        }
        None => authority,
    };
    let (host, port) = split_host_port(host_port).ok_or_else(|| {
        malformed("write the host as a name, an IPv4 address or [IPv6], with an optional :port")
    })?;
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        "git" => 9418,
        _ => 22,
    };
    let port = match port {
        None => default_port,
        Some(text) => match text.parse::<u16>() {
            Ok(port) => port,
            Err(_) => return Err(malformed("the port is not a number from 0 to 65535")),
        },
    };
    let scheme = if scheme.contains("ssh") {
        "ssh"
    } else {
        scheme
    };
    Ok(Location::Remote {
        scheme: scheme.to_string(),
        host,
        port,
    })
}

fn parse_scp_like(repo: &str) -> Result<Location, RepoAccessError> {
    let malformed = || {
        Err(RepoAccessError::Unsupported(format!(
            "{repo:?} is not a usable scp-like location: write it as user@host:path"
        )))
    };
    let (user, rest) = match repo.split_once('@') {
        Some((user, rest)) if !user.contains(':') => (Some(user), rest),
        _ => (None, repo),
    };
    if user.is_some_and(|u| u.starts_with('-') || u.contains(['[', '/'])) {
        return malformed();
    }
    let host_text = if let Some(bracketed) = rest.strip_prefix('[') {
        match bracketed.split_once("]:") {
            Some((inside, _)) => format!("[{inside}]"),
            None => return malformed(),
        }
    } else {
        match rest.split_once(':') {
            Some((host, _)) => host.to_string(),
            None => return malformed(),
        }
    };
    match split_host_port(&host_text) {
        Some((host, None)) => Ok(Location::Remote {
            scheme: "ssh".into(),
            host,
            port: 22,
        }),
        _ => malformed(),
    }
}

/// `name`, `1.2.3.4`, `[::1]`, each with an optional `:port`.
fn split_host_port(text: &str) -> Option<(Host, Option<&str>)> {
    let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        return Some((Host::Ip(IpAddr::V6(inside.parse::<Ipv6Addr>().ok()?)), port));
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() || host.starts_with(['-', '.']) {
        return None;
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some((Host::Ip(IpAddr::V4(ip)), port));
    }
    let name_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if !host.chars().all(name_chars) {
        return None;
    }
    Some((Host::Name(host.to_ascii_lowercase()), port))
}

/// Every address the system resolver gives for `name` (the resolver git
/// and curl use, so `127.1` or `0x7f000001` resolve here as they would there).
fn resolve(name: &str, port: u16, repo: &str) -> Result<Vec<IpAddr>, RepoAccessError> {
    if name == "localhost" || name.ends_with(".localhost") {
        return Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    }
    let cannot = || {
        RepoAccessError::NotAllowed(format!(
            "cannot resolve the host of {repo:?} to check that it is a public address: check the name, or {ADMIN_HINT}"
        ))
    };
    let addresses: Vec<IpAddr> = (name, port)
        .to_socket_addrs()
        .map_err(|_| cannot())?
        .map(|addr| addr.ip())
        .collect();
    if addresses.is_empty() {
        return Err(cannot());
    }
    Ok(addresses)
}

/// Whether `ip` is an ordinary public unicast address (not loopback,
/// private, link-local, unique-local, shared, multicast, unspecified or
/// reserved), looking through IPv4-mapped and IPv4-embedding IPv6 forms.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_public_v4(v4);
            }
            let first = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first & 0xffc0) == 0xfec0 // site-local fec0::/10
                || (first == 0x2001 && v6.segments()[1] == 0x0db8)) // documentation
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    !(v4.is_unspecified()
        || v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_documentation()
        || a == 0 // "this network" 0.0.0.0/8
        || a >= 240 // reserved
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b))) // benchmarking 198.18.0.0/15
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) or 6to4
/// (`2002::/16`) address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[..5] == [0; 5]
        && (s[5] == 0xffff || (s[5] == 0 && !v6.is_loopback() && !v6.is_unspecified()))
    {
        return Some(low(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(low(s[1], s[2]));
    }
    None
}

fn is_git_repository(path: &Path) -> bool {
    path.join(".git").exists() || path.join("HEAD").exists()
}

/// The rules for fetching `repo`, a location that passed `checked`, into
/// a mirror under `data_dir`, with the credential its environment stores
/// (sent as a header for that URL only, from git's environment: never in
/// its arguments or in the mirror's config, which sandboxes can read).
pub(crate) fn fetch_rules(
    data_dir: &Path,
    checked: &CheckedRepo,
    repo: &str,
    credential: Option<&RepoCredential>,
) -> Result<FetchRules, String> {
    let home = data_dir.join("git-home");
    kiln_workspace::mirrors::create_private_dir(&home).map_err(|err| err.to_string())?;
    let mut set: Vec<(String, String)> = CheckedRepo::git_fetch_env(&home)
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    if let Some(credential) = credential {
        let header = git_credential_env(repo, credential).map_err(|err| err.to_string())?;
        set.extend(
            header
                .into_iter()
                .map(|(name, value)| (name.to_string(), value)),
        );
    }
    let remove = GIT_FETCH_ENV_REMOVE.iter().map(|s| s.to_string()).collect();
    Ok(FetchRules {
        options: checked.git_fetch_args(),
        env: GitEnv { set, remove },
        refspecs: Vec::new(),
    })
}

#[cfg(test)]
#[path = "repo_access_tests.rs"]
mod tests;
