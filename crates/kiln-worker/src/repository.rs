//! The attempt's repository on the server: where git fetches it from and
//! pushes the attempt's branch back to, and how git authenticates there.
//!
//! The lease token reaches git only through its environment, as an
//! `Authorization: Bearer` header for the attempt's git URL
//! (`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_0`/`GIT_CONFIG_VALUE_0`), never in a
//! URL, an argument or the mirror's config, which the attempt's sandbox can
//! read. git takes nothing else from the machine: no global or system
//! config, an empty `HOME`, no credential helper, no prompts, no redirects,
//! and no transport but the server's.

use std::path::Path;

use kiln_protocol::worker::WorkerClaim;
use kiln_workspace::{GitEnv, GitError, Repo};

/// Variables removed from git's environment: they would lend git the
/// worker machine's own credentials or config.
const REMOVED_FROM_GIT_ENV: &[&str] = &[
    "SSH_AUTH_SOCK",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "GIT_CONFIG_PARAMETERS",
    "GIT_PROXY_COMMAND",
    "GIT_DIR",
    "GIT_WORK_TREE",
];

/// How git reaches one attempt's repository on the server.
#[derive(Clone)]
pub struct AttemptRemote {
    /// `{server}{git_path}`: no credential in it.
    pub url: String,
    /// `-c` options to put before git's subcommand.
    pub options: Vec<String>,
    /// The environment carrying the lease token.
    pub env: GitEnv,
    /// `kiln/<task>/<n>`, the only branch the server lets this attempt push.
    pub branch: String,
}

impl std::fmt::Debug for AttemptRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptRemote")
            .field("url", &self.url)
            .field("branch", &self.branch)
            .finish_non_exhaustive()
    }
}

impl AttemptRemote {
    /// The remote of `claim` on the server at `server` (no trailing `/`);
    /// `git_home` is an empty directory only the worker can read.
    pub fn new(server: &str, claim: &WorkerClaim, git_home: &Path) -> Self {
        let url = format!("{server}{}", claim.repository.git_path);
        let scheme = if url.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        let options = [
            "protocol.allow=never".to_string(),
            format!("protocol.{scheme}.allow=always"),
            "http.followRedirects=false".to_string(),
            "credential.helper=".to_string(),
        ]
        .into_iter()
        .flat_map(|option| ["-c".to_string(), option])
        .collect();
        let home = git_home.to_string_lossy().into_owned();
        let set = vec![
            ("GIT_CONFIG_GLOBAL".to_string(), "/dev/null".to_string()),
            ("GIT_CONFIG_NOSYSTEM".to_string(), "1".to_string()),
            ("HOME".to_string(), home.clone()),
            ("XDG_CONFIG_HOME".to_string(), home),
            ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
            ("GIT_CONFIG_COUNT".to_string(), "1".to_string()),
            // Scoped to the attempt's URL: git sends it nowhere else.
            (
                "GIT_CONFIG_KEY_0".to_string(),
                format!("http.{url}.extraHeader"),
            ),
            (
                "GIT_CONFIG_VALUE_0".to_string(),
                format!("Authorization: Bearer {}", claim.lease_token),
            ),
        ];
        AttemptRemote {
            url,
            options,
            env: GitEnv {
                set,
                remove: REMOVED_FROM_GIT_ENV.iter().map(|s| s.to_string()).collect(),
            },
            branch: claim.repository.branch.clone(),
        }
    }

    /// Pushes the attempt's branch from `mirror` (where the checkout's
    /// commits are) to the server, replacing what an earlier run pushed.
    pub fn push_branch(&self, mirror: &Path) -> Result<(), GitError> {
        let refspec = format!("+refs/heads/{0}:refs/heads/{0}", self.branch);
        let mut args = self.options.clone();
        args.extend(
            ["push", "--quiet", "--no-verify", "--", &self.url, &refspec].map(String::from),
        );
        Repo::at(mirror).git_with_env(&args, &self.env)?;
        Ok(())
    }
}
