//! The environment a sandboxed command starts with.
//!
//! Built from an allow-list, never by removing known secrets from the host's
//! environment: a variable kiln has not heard of (a new provider's API key, a
//! CI token) stays out by default.

use std::collections::BTreeMap;

/// Host variables copied as they are: locale, terminal, time zone.
const FROM_HOST: &[&str] = &[
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_COLLATE",
    "LC_MESSAGES",
    "LC_NUMERIC",
    "LC_TIME",
    "TERM",
    "COLORTERM",
    "NO_COLOR",
    "TZ",
    // Toolchain selectors: names of versions, not credentials.
    "RUSTUP_TOOLCHAIN",
    "PYENV_VERSION",
];

/// The base environment for a command, before the policy's and the
/// request's variables are laid on top.
///
/// `home` is the command's `$HOME`; `toolchain` holds variables that point
/// toolchains at their exposed roots (`RUSTUP_HOME`, `PYENV_ROOT`, …).
pub(crate) fn base_environment(
    host: impl Fn(&str) -> Option<String>,
    home: &str,
    user: &str,
    toolchain: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for key in FROM_HOST {
        if let Some(value) = host(key) {
            env.insert((*key).to_string(), value);
        }
    }
    let path = host("PATH")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.insert("PATH".into(), path);
    env.entry("LANG".into()).or_insert_with(|| "C.UTF-8".into());
    env.entry("TERM".into()).or_insert_with(|| "dumb".into());
    env.insert("HOME".into(), home.into());
    env.insert("USER".into(), user.into());
    env.insert("LOGNAME".into(), user.into());
    env.insert("TMPDIR".into(), "/tmp".into());
    env.insert("KILN_SANDBOX".into(), "1".into());
    // CPython validates cached bytecode by the source's mtime in whole seconds
    // and its size. An agent runs the tests, patches a line into one of the
    // same length and runs them again within a second: the stale .pyc would
    // run instead of the fix. Writing no bytecode also keeps __pycache__ out
    // of the diff.
    env.insert("PYTHONDONTWRITEBYTECODE".into(), "1".into());
    for (key, value) in toolchain {
        env.insert(key.clone(), value.clone());
    }
    env
}

/// Lay `layers` over `base`, later layers winning.
pub(crate) fn layered<'a>(
    mut base: BTreeMap<String, String>,
    layers: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    for layer in layers {
        for (key, value) in layer {
            base.insert(key.clone(), value.clone());
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(key: &str) -> Option<String> {
        match key {
            "PATH" => Some("/opt/bin:/usr/bin".into()),
            "LANG" => Some("de_DE.UTF-8".into()),
            "OPENAI_API_KEY" => Some("sk-secret".into()),
            "GITHUB_TOKEN" => Some("ghp-secret".into()),
            _ => None,
        }
    }

    #[test]
    fn host_secrets_stay_out_and_basics_are_set() {
        let env = base_environment(host, "/home/me", "kiln", &BTreeMap::new());
        assert!(!env.contains_key("OPENAI_API_KEY"));
        assert!(!env.contains_key("GITHUB_TOKEN"));
        assert_eq!(env["PATH"], "/opt/bin:/usr/bin");
        assert_eq!(env["LANG"], "de_DE.UTF-8");
        assert_eq!(env["HOME"], "/home/me");
        assert_eq!(env["TMPDIR"], "/tmp");
        assert_eq!(env["TERM"], "dumb");
        assert_eq!(env["PYTHONDONTWRITEBYTECODE"], "1");
    }

    #[test]
    fn request_variables_win_over_policy_and_base() {
        let base = base_environment(host, "/h", "kiln", &BTreeMap::new());
        let policy = BTreeMap::from([("A".to_string(), "policy".to_string())]);
        let request = BTreeMap::from([("A".to_string(), "request".to_string())]);
        let env = layered(base, [&policy, &request]);
        assert_eq!(env["A"], "request");
    }
}
