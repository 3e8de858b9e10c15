//! Pushing an attempt's commit to a remote branch (for pull requests).
//!
//! The credential never appears in git's argv (which `ps` shows to every
//! user of the machine) nor in a URL: it goes to git as an
//! `http.<url>.extraHeader` through `GIT_CONFIG_*` variables of git's own
//! process, only for https (or http to this machine), and is cut out of
//! every error message. Only file, ssh, http and https transports are
//! allowed (no `ext::` commands), redirects are not followed (a redirect
//! would take the header to another host), and nothing prompts.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::apply::is_commit_id;
use crate::git::{git_command, output_of, GitError};

/// How kiln proves itself to an https remote.
#[derive(Clone)]
pub struct PushAuth {
    /// The `Authorization` header's value.
    authorization: String,
    /// What no error message may show.
    secrets: Vec<String>,
}

impl std::fmt::Debug for PushAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PushAuth(<redacted>)")
    }
}

impl PushAuth {
    /// HTTP Basic with `username` and `password` (a forge token is usually
    /// the password: `x-access-token` on GitHub, `oauth2` on GitLab, the
    /// user's name on Forgejo).
    pub fn basic(username: &str, password: &str) -> Self {
        let encoded = STANDARD.encode(format!("{username}:{password}"));
        let mut secrets = vec![encoded.clone(), password.to_string()];
        if password.is_empty() {
            // A token given as the user name.
            secrets.push(username.to_string());
        }
        PushAuth {
            authorization: format!("Basic {encoded}"),
            secrets,
        }
    }

    /// A ready `Authorization` header value, such as `Bearer <token>` or
    /// kiln-store's `RepoCredential::basic_authorization()`.
    pub fn header(value: &str) -> Self {
        let mut secrets = vec![value.to_string()];
        if let Some((_, credential)) = value.split_once(' ') {
            secrets.push(credential.trim().to_string());
            if let Ok(decoded) = STANDARD.decode(credential.trim()) {
                let decoded = String::from_utf8_lossy(&decoded).into_owned();
                if let Some((user, password)) = decoded.split_once(':') {
                    secrets.push(password.to_string());
                    if password.is_empty() {
                        secrets.push(user.to_string());
                    }
                }
            }
        }
        PushAuth {
            authorization: value.to_string(),
            secrets,
        }
    }

    fn redact(&self, text: &str) -> String {
        let mut secrets: Vec<&str> = self
            .secrets
            .iter()
            .map(String::as_str)
            .filter(|s| s.len() >= 4)
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = text.to_string();
        for secret in secrets {
            out = out.replace(secret, "<redacted>");
        }
        out
    }
}

/// Why a push failed. Messages never hold the credential.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot push: {0}")]
    Invalid(String),
    #[error("the remote's branch {remote_branch} has commits this push does not have (non-fast-forward): push with force to replace it, or push to another branch")]
    NonFastForward { remote_branch: String },
    #[error("the remote refused branch {remote_branch}: {reason}; it may be protected: push to another branch, or ask the repository's owner")]
    Rejected {
        remote_branch: String,
        reason: String,
    },
    #[error("{remote} refused kiln's credentials ({detail}): check the token and that its scopes allow pushing")]
    AuthFailed { remote: String, detail: String },
    #[error("cannot reach {remote} ({detail}): check the URL, and that the host is up and reachable from the kiln server")]
    Unreachable { remote: String, detail: String },
    #[error("pushing to {remote} failed: {detail}")]
    Failed { remote: String, detail: String },
    #[error(transparent)]
    Git(#[from] GitError),
}

/// Pushes `commit` (in the repository whose git directory is
/// `repo_git_dir`) to `refs/heads/<remote_branch>` of `remote_url` (a
/// `file://` URL or absolute path, `ssh://` or `user@host:path`, `https://`,
/// or `http://` to this machine), replacing what is there only if `force`.
/// `auth` is for https (and http to this machine) only; ssh uses the
/// server's own keys.
pub fn push_branch(
    repo_git_dir: &Path,
    commit: &str,
    remote_url: &str,
    remote_branch: &str,
    auth: Option<&PushAuth>,
    force: bool,
) -> Result<(), PushError> {
    let shown = display_url(remote_url);
    let redact = |text: &str| {
        let text = text.replace(remote_url, &shown);
        match auth {
            Some(auth) => auth.redact(&text),
            None => text,
        }
    };
    if !is_commit_id(commit) {
        return Err(PushError::Invalid(format!(
            "{commit:?} is not a full commit id"
        )));
    }
    let transport =
        transport_of(remote_url).map_err(|reason| PushError::Invalid(redact(&reason)))?;
    if auth.is_some() && !transport.takes_http_auth() {
        return Err(PushError::Invalid(format!(
            "{shown}: credentials are sent only over https (or http to this machine); an ssh remote uses the server's ssh keys"
        )));
    }
    let refname = format!("refs/heads/{remote_branch}");
    let mut check = git_command(repo_git_dir, None);
    check.args(["check-ref-format", &refname]);
    if remote_branch.starts_with('-') || !output_of(check)?.status.success() {
        return Err(PushError::Invalid(format!(
            "{remote_branch:?} is not a valid branch name"
        )));
    }
    let mut exists = git_command(repo_git_dir, None);
    exists.args(["cat-file", "-e", &format!("{commit}^{{commit}}")]);
    if !output_of(exists)?.status.success() {
        return Err(PushError::Invalid(format!(
            "commit {commit} is not in the repository it is pushed from"
        )));
    }

    let mut command = git_command(repo_git_dir, None);
    command
        .args([
            "-c",
            "credential.helper=",
            "-c",
            "http.followRedirects=false",
        ])
        .env("GIT_ALLOW_PROTOCOL", "file:ssh:http:https")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .stdin(std::process::Stdio::null());
    if let Some(auth) = auth {
        command
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", format!("http.{remote_url}.extraHeader"))
            .env(
                "GIT_CONFIG_VALUE_0",
                format!("Authorization: {}", auth.authorization),
            );
    }
    let refspec = format!("{}{commit}:{refname}", if force { "+" } else { "" });
    command.args([
        "push",
        "--porcelain",
        "--no-verify",
        "--end-of-options",
        remote_url,
        &refspec,
    ]);
    let output = output_of(command)?;
    let stdout = redact(&String::from_utf8_lossy(&output.stdout));
    let stderr = redact(&String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        return Ok(());
    }
    Err(classify(&shown, remote_branch, &stdout, &stderr))
}

/// The porcelain line for our ref names a rejection; otherwise stderr says
/// whether the remote could not be reached or refused the credentials.
fn classify(remote: &str, remote_branch: &str, stdout: &str, stderr: &str) -> PushError {
    let rejected = stdout
        .lines()
        .find(|line| line.starts_with('!'))
        .and_then(|line| line.split('\t').nth(2));
    if let Some(summary) = rejected {
        if summary.contains("non-fast-forward") || summary.contains("fetch first") {
            return PushError::NonFastForward {
                remote_branch: remote_branch.to_string(),
            };
        }
        let remote_says: Vec<&str> = stderr
            .lines()
            .filter_map(|line| line.strip_prefix("remote: "))
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        let reason = if remote_says.is_empty() {
            summary.to_string()
        } else {
            format!("{summary}: {}", remote_says.join(" "))
        };
        return PushError::Rejected {
            remote_branch: remote_branch.to_string(),
            reason,
        };
    }
    let detail = last_line(stderr);
    let lower = stderr.to_ascii_lowercase();
    let remote = remote.to_string();
    if [
        "authentication failed",
        "returned error: 401",
        "returned error: 403",
        "could not read username",
        "could not read password",
        "permission denied (publickey",
        "terminal prompts disabled",
    ]
    .iter()
    .any(|sign| lower.contains(sign))
    {
        return PushError::AuthFailed { remote, detail };
    }
    if [
        "could not resolve host",
        "failed to connect",
        "connection refused",
        "connection timed out",
        "does not appear to be a git repository",
        "could not read from remote repository",
        "returned error: 404",
        "not found",
        "no route to host",
    ]
    .iter()
    .any(|sign| lower.contains(sign))
    {
        return PushError::Unreachable { remote, detail };
    }
    PushError::Failed { remote, detail }
}

fn last_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            line.trim_start_matches("fatal: ")
                .trim_start_matches("error: ")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    File,
    Ssh,
    Https,
    LoopbackHttp,
}

impl Transport {
    fn takes_http_auth(self) -> bool {
        matches!(self, Transport::Https | Transport::LoopbackHttp)
    }
}

/// Which transport git will use for `url`, refusing the ones kiln does not
/// push over and URLs that carry a password.
fn transport_of(url: &str) -> Result<Transport, String> {
    // `<transport>::<address>` runs a remote helper (`ext::` runs a command).
    let helper = url
        .find("::")
        .is_some_and(|at| url.find("://").is_none_or(|scheme| at < scheme));
    if url.starts_with('-') || helper {
        return Err(format!("{url}: not a repository URL kiln pushes to"));
    }
    if url.starts_with('/') {
        return Ok(Transport::File);
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        // scp-like `user@host:path` is ssh; anything else is not a remote.
        return match url.split_once(':') {
            Some((host, _)) if !host.is_empty() && !host.contains('/') => Ok(Transport::Ssh),
            _ => Err(format!(
                "{url}: use an absolute path, a file://, ssh:// or https:// URL, or user@host:path"
            )),
        };
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    {
        return Err(
            "the URL carries a password: give the credential as push auth instead, so that it never shows in a process list"
                .to_string(),
        );
    }
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(bracketed) = host.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default()
    };
    match scheme.to_ascii_lowercase().as_str() {
        "file" => Ok(Transport::File),
        "ssh" | "git+ssh" | "ssh+git" => Ok(Transport::Ssh),
        "https" => Ok(Transport::Https),
        "http" if is_loopback(host) => Ok(Transport::LoopbackHttp),
        "http" => Err(format!(
            "{url}: plain http is allowed only to this machine: use https"
        )),
        other => Err(format!(
            "{url}: kiln does not push over {other}://: use file, ssh or https"
        )),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `url` without any user information (a user name may be a token).
fn display_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{path}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_are_named_and_unsafe_ones_refused() {
        assert_eq!(transport_of("/srv/app.git"), Ok(Transport::File));
        assert_eq!(transport_of("file:///srv/app.git"), Ok(Transport::File));
        assert_eq!(transport_of("git@host:o/r.git"), Ok(Transport::Ssh));
        assert_eq!(transport_of("ssh://git@host/o/r"), Ok(Transport::Ssh));
        assert_eq!(transport_of("https://host/o/r"), Ok(Transport::Https));
        assert_eq!(
            transport_of("http://127.0.0.1:8080/r"),
            Ok(Transport::LoopbackHttp)
        );
        assert_eq!(
            transport_of("http://[::1]:8080/r"),
            Ok(Transport::LoopbackHttp)
        );
        for bad in [
            "http://example.com/r",
            "ext::sh -c touch% /tmp/x",
            "-uhack",
            "https://u:token@host/r",
            "relative/path",
            "ftp://host/r",
        ] {
            assert!(transport_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_user_name_in_a_url_is_not_shown() {
        assert_eq!(
            display_url("https://tok123@host/o/r"),
            "https://host/o/r".to_string()
        );
        assert_eq!(display_url("git@host:o/r"), "git@host:o/r".to_string());
    }

    #[test]
    fn every_spelling_of_the_credential_is_redacted() {
        let auth = PushAuth::basic("x-access-token", "ghp_secret123");
        let header = auth.authorization.clone();
        let text = format!("got {header} and ghp_secret123 and {}", &header[6..]);
        let redacted = auth.redact(&text);
        assert!(!redacted.contains("ghp_secret123"), "{redacted}");
        assert!(!redacted.contains(&header[6..]), "{redacted}");
        let from_header = PushAuth::header(&header);
        assert!(!from_header.redact(&text).contains("ghp_secret123"));
        assert_eq!(format!("{auth:?}"), "PushAuth(<redacted>)");
    }

    #[test]
    fn porcelain_rejections_are_told_apart() {
        let nff = classify(
            "r",
            "b",
            "To r\n!\tabc:refs/heads/b\t[rejected] (non-fast-forward)\nDone\n",
            "",
        );
        assert!(matches!(nff, PushError::NonFastForward { .. }), "{nff}");
        let hook = classify(
            "r",
            "b",
            "To r\n!\tabc:refs/heads/b\t[remote rejected] (pre-receive hook declined)\nDone\n",
            "remote: main is protected\n",
        );
        assert!(
            matches!(&hook, PushError::Rejected { reason, .. } if reason.contains("main is protected")),
            "{hook}"
        );
    }
}
