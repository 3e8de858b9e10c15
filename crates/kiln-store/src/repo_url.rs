//! Credentials in a repository URL (`https://user:TOKEN@host/repo.git`).
//!
//! An environment's `repo` is shown to every client of the API, written into
//! events, errors and the mirror's `.git/config`, which the sandbox can
//! read. So the user information of a URL is split out when the environment
//! is created ([`split`]): the `repo` kept in the clear is the URL without
//! it, and the credential is sealed beside it like the setup secrets
//! (`secrets.rs`). The worker gets it back with
//! [`crate::Store::environment_repo_credential`] and hands it to git for the
//! one clone or fetch that needs it.
//!
//! What counts as a credential:
//!
//! - in an `https` or `http` URL, the whole user information: hosts take a
//!   token as the user name (`https://TOKEN@github.com/…`) as often as as
//!   the password;
//! - in any other `scheme://` URL, a password (`ssh://git:pw@host/…`); a
//!   bare user name there is the login name ssh needs, not a secret, and
//!   stays in the URL.
//!
//! Scp-like locations (`git@host:repo.git`) only ever carry a login name.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::error::StoreError;

/// The user name and password (or token) a repository URL carried.
/// `Debug` shows neither: a host may take the token as the user name.
#[derive(Clone, PartialEq, Eq)]
pub struct RepoCredential {
    username: String,
    password: Option<String>,
}

impl fmt::Debug for RepoCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoCredential").finish_non_exhaustive()
    }
}

/// Names under which the two parts are sealed (and shown by a redactor).
pub(crate) const USERNAME: &str = "username";
pub(crate) const PASSWORD: &str = "password";

impl RepoCredential {
    pub fn new(username: impl Into<String>, password: Option<String>) -> RepoCredential {
        RepoCredential {
            username: username.into(),
            password,
        }
    }

    /// The user name, percent-decoded.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password or token, percent-decoded; `None` when the URL had only
    /// a user name.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The value of an HTTP `Authorization` header presenting this
    /// credential: `Basic base64(user:password)`, as git itself would send
    /// for a URL carrying it.
    pub fn basic_authorization(&self) -> String {
        let pair = format!(
            "{}:{}",
            self.username,
            self.password.as_deref().unwrap_or_default()
        );
        format!("Basic {}", STANDARD.encode(pair))
    }

    /// (name, value) pairs for a secret redactor (`kiln_agent::Redactor`),
    /// which also finds them inside the base64 of `user:password`. The user
    /// name is among them: a host may take the token as the user name.
    pub fn redaction_values(&self) -> Vec<(&'static str, String)> {
        let mut values = vec![("REPO_URL_USERNAME", self.username.clone())];
        if let Some(password) = &self.password {
            values.push(("REPO_URL_PASSWORD", password.clone()));
        }
        values
    }

    pub(crate) fn from_parts(mut parts: std::collections::BTreeMap<String, String>) -> Self {
        RepoCredential {
            username: parts.remove(USERNAME).unwrap_or_default(),
            password: parts.remove(PASSWORD),
        }
    }

    pub(crate) fn to_parts(&self) -> std::collections::BTreeMap<String, String> {
        let mut parts = std::collections::BTreeMap::new();
        parts.insert(USERNAME.to_string(), self.username.clone());
        if let Some(password) = &self.password {
            parts.insert(PASSWORD.to_string(), password.clone());
        }
        parts
    }
}

/// A repository location with its credential taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitRepo {
    /// The location without the credential: what is stored in the clear.
    pub(crate) clean: String,
    pub(crate) credential: Option<RepoCredential>,
    /// The URL's scheme, lower case, when it has one with a credential.
    scheme: String,
    host: String,
}

/// `repo` without the credential it carries (see the module documentation),
/// for showing or checking a location someone typed with one.
pub fn repo_without_credential(repo: &str) -> String {
    split(repo).clean
}

/// Splits the credential out of `repo`. Locations without one, and anything
/// that is not a `scheme://` URL, come back unchanged.
pub(crate) fn split(repo: &str) -> SplitRepo {
    let unchanged = || SplitRepo {
        clean: repo.to_string(),
        credential: None,
        scheme: String::new(),
        host: String::new(),
    };
    let Some((scheme, rest)) = repo.split_once("://") else {
        return unchanged();
    };
    let valid_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return unchanged();
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    // The last `@` ends the user information, as URL parsers read it; a
    // password may contain a raw `@` that the user forgot to encode.
    let Some((userinfo, host_port)) = authority.rsplit_once('@') else {
        return unchanged();
    };
    let scheme_lower = scheme.to_ascii_lowercase();
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    let is_http = matches!(scheme_lower.as_str(), "https" | "http");
    let host = host_port_host(host_port);
    if is_http {
        let credential = (!userinfo.is_empty()).then(|| RepoCredential {
            username: percent_decode(user),
            password: password.map(percent_decode),
        });
        SplitRepo {
            clean: format!("{scheme}://{host_port}{path}"),
            credential,
            scheme: scheme_lower,
            host,
        }
    } else if let Some(password) = password {
        SplitRepo {
            clean: format!("{scheme}://{user}@{host_port}{path}"),
            credential: Some(RepoCredential {
                username: percent_decode(user),
                password: Some(percent_decode(password)),
            }),
            scheme: scheme_lower,
            host,
        }
    } else {
        unchanged()
    }
}

impl SplitRepo {
    /// Refuses a credential kiln would have to send where it can be read on
    /// the way: anything but https, except http to this machine.
    pub(crate) fn check_new(&self) -> Result<(), StoreError> {
        if self.credential.is_none() {
            return Ok(());
        }
        match self.scheme.as_str() {
            "https" => Ok(()),
            "http" if is_loopback_host(&self.host) => Ok(()),
            "http" => Err(StoreError::invalid(
                "repo",
                format!(
                    "{} carries a user name or token over plain http, which anyone on the way could read: use an https URL",
                    self.clean
                ),
            )),
            _ => Err(StoreError::invalid(
                "repo",
                format!(
                    "{} carries a password, which kiln sends only over https: use an https URL with a token, or a {} URL without a password",
                    self.clean, self.scheme
                ),
            )),
        }
    }
}

/// The host of `host[:port]` or `[v6][:port]`, lower case.
fn host_port_host(host_port: &str) -> String {
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host.to_ascii_lowercase()
}

fn is_loopback_host(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// `%XX` decoded as git decodes a URL's user information; a `%` not followed
/// by two hex digits stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[path = "repo_url_tests.rs"]
mod tests;
