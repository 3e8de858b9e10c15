//! kiln's configuration: `$KILN_HOME/config.toml`, then `.kiln/config.toml` at
//! the project root, then `-c key=value` overrides, each layer merged over the
//! previous one key by key. The keys follow what Codex users already write
//! (`model`, `model_provider`, `[model_providers.NAME]`, `project_doc_*`,
//! `[projects."PATH"] trust_level`).
//!
//! The repository's file is written by whoever wrote the repository (or by
//! the agent in an earlier run), so unless the user's own file trusts the
//! project it may only set keys that can neither weaken the sandbox nor
//! send the model key anywhere: see [`REPOSITORY_KEYS`]. Every unknown key,
//! in any layer, is an error naming the closest known one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_model::{ModelPrice, PriceTable, ProviderConfig};

use crate::config_keys::{check_known_keys, dotted_keys};
use serde::Deserialize;
use toml::Value;

/// The provider used when the configuration names none.
pub const DEFAULT_PROVIDER: &str = "openai";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub model: String,
    pub model_provider: String,
    pub model_providers: BTreeMap<String, ProviderConfig>,
    /// `[model_prices."NAME"] input, cached_input, output`: US dollars per
    /// million tokens, over kiln's built-in prices. Only the user's own file
    /// (or `-c`) may set them: a repository's prices could void a budget.
    pub model_prices: BTreeMap<String, ModelPrice>,
    /// The model's context window in tokens; compaction starts before it is full.
    pub model_context_window: Option<u64>,
    /// Byte budget shared by all AGENTS.md files.
    pub project_doc_max_bytes: usize,
    /// Names tried after AGENTS.override.md and AGENTS.md in each directory.
    pub project_doc_fallback_filenames: Vec<String>,
    pub limits: LimitsConfig,
    pub sandbox: SandboxConfig,
    /// Per-project settings of the user's own file, keyed by absolute path.
    pub projects: BTreeMap<String, ProjectConfig>,
}

/// `[projects."/abs/path"]` in the user's own file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectConfig {
    /// `trusted`: the project's `.kiln/config.toml` may set every key.
    pub trust_level: Option<TrustLevel>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustLevel {
    Trusted,
    Untrusted,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: "gpt-5-codex".into(),
            model_provider: DEFAULT_PROVIDER.into(),
            model_providers: BTreeMap::new(),
            model_prices: BTreeMap::new(),
            model_context_window: None,
            project_doc_max_bytes: 32 * 1024,
            project_doc_fallback_filenames: Vec::new(),
            limits: LimitsConfig::default(),
            sandbox: SandboxConfig::default(),
            projects: BTreeMap::new(),
        }
    }
}

/// Budgets of one run; unset keys keep the agent's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_turns: Option<u32>,
    pub max_total_tokens: Option<u64>,
    /// US dollars one run may cost at the model's price (see `model_prices`).
    pub max_cost_usd: Option<f64>,
    /// Wall-clock budget of one run, in seconds.
    pub wall_clock_secs: Option<u64>,
    /// Default timeout of one shell command, in seconds.
    pub command_timeout_secs: Option<u64>,
    /// The longest timeout the model may ask for, in seconds.
    pub max_command_timeout_secs: Option<u64>,
    /// Turns the model gets to fix a failing check (docs/checks.md).
    pub check_fix_turns: Option<u32>,
    /// Timeout of a check, in seconds: the default and the most a check's
    /// own `timeout_secs` may ask for.
    pub check_timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// `bwrap` (default) or `none`.
    pub backend: String,
    /// Network in the agent phase (off by default).
    pub network: bool,
    /// Memory limit per command, e.g. "4GiB".
    pub memory: Option<String>,
    pub max_processes: Option<u64>,
    pub readable_paths: Vec<PathBuf>,
    pub writable_paths: Vec<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            backend: "bwrap".into(),
            network: false,
            memory: None,
            max_processes: None,
            readable_paths: Vec::new(),
            writable_paths: Vec::new(),
        }
    }
}

impl Config {
    /// The provider `model_provider` names: a `[model_providers.NAME]` table,
    /// else a built-in one (`openai`, `ollama`, `lmstudio`).
    pub fn provider(&self) -> Result<ProviderConfig> {
        let name = self.model_provider.as_str();
        if let Some(configured) = self.model_providers.get(name) {
            let mut provider = configured.clone();
            if provider.name.is_empty() {
                provider.name = name.to_string();
            }
            return Ok(provider);
        }
        ProviderConfig::builtin(name).with_context(|| {
            format!(
                "unknown model_provider {name:?}: add a [model_providers.{name}] table with base_url \
                 (and wire_api, env_key), or use one of openai, ollama, lmstudio"
            )
        })
    }

    /// kiln's built-in prices with the user's `[model_prices]` over them.
    pub fn price_table(&self) -> Result<PriceTable> {
        PriceTable::builtin()
            .with_overrides(&self.model_prices)
            .map_err(|err| anyhow::anyhow!("{err}: fix that price in your config.toml"))
    }

    /// What deserializing cannot check: prices and budgets that are numbers
    /// but not amounts of money.
    fn validate(&self) -> Result<()> {
        self.price_table()?;
        if let Some(budget) = self.limits.max_cost_usd {
            if !budget.is_finite() || budget <= 0.0 {
                bail!(
                    "limits.max_cost_usd = {budget} is not a budget: give a positive number of \
                     US dollars, e.g. 2.5"
                );
            }
        }
        Ok(())
    }
}

/// `$KILN_HOME`, or `~/.kiln`.
pub fn kiln_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("KILN_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".kiln")),
        None => {
            bail!("neither KILN_HOME nor HOME is set: set KILN_HOME to a directory kiln may write")
        }
    }
}

/// The nearest ancestor of `cwd` holding `.git` (file or directory), else `cwd`.
pub fn project_root(cwd: &Path) -> PathBuf {
    kiln_agent::project_root(cwd).unwrap_or_else(|| cwd.to_path_buf())
}

/// What an untrusted repository's `.kiln/config.toml` may set: which model
/// (on the user's own provider, with the user's own key), how AGENTS.md is
/// read, and budgets, which it may only lower ([`tighten_only_defaults`]). Never the
/// sandbox, a provider, or which provider: those could run commands without
/// isolation or send the user's key and variables to the repository's URL.
pub const REPOSITORY_KEYS: &[&str] = &[
    "checks",
    "model",
    "model_context_window",
    "project_doc_max_bytes",
    "project_doc_fallback_filenames",
    "limits.max_turns",
    "limits.max_total_tokens",
    "limits.max_cost_usd",
    "limits.wall_clock_secs",
    "limits.command_timeout_secs",
    "limits.max_command_timeout_secs",
];

/// Keys an untrusted repository may only lower, with the value that holds
/// when no layer before it sets one (`None`: unlimited).
fn tighten_only_defaults() -> [(&'static str, Option<i64>); 6] {
    let agent = kiln_agent::Limits::default();
    let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).ok();
    [
        (
            "model_context_window",
            i64::try_from(agent.context_window).ok(),
        ),
        ("limits.max_turns", Some(i64::from(agent.max_turns))),
        ("limits.max_total_tokens", None),
        ("limits.wall_clock_secs", None),
        ("limits.command_timeout_secs", secs(agent.command_timeout)),
        (
            "limits.max_command_timeout_secs",
            secs(agent.max_command_timeout),
        ),
    ]
}

/// Amounts an untrusted repository may only lower; none by default (unlimited).
const TIGHTEN_ONLY_AMOUNTS: [&str; 1] = ["limits.max_cost_usd"];

/// Files read from a repository are small; anything larger is not a
/// configuration file.
const REPOSITORY_FILE_MAX_BYTES: u64 = 64 * 1024;

/// Load the layered configuration for a run in `cwd`; the project's
/// `.kiln/config.toml` is the repository's, trusted only as the user's own
/// file says.
pub fn load(kiln_home: &Path, cwd: &Path, overrides: &[String]) -> Result<Config> {
    load_layers(kiln_home, &project_root(cwd), false, overrides)
}

/// Load the configuration of `kiln serve`: `DATA/.kiln/config.toml` is the
/// operator's own file, not a repository's, so every key is allowed there.
pub fn load_for_server(kiln_home: &Path, data_dir: &Path, overrides: &[String]) -> Result<Config> {
    load_layers(kiln_home, data_dir, true, overrides)
}

fn load_layers(
    kiln_home: &Path,
    root: &Path,
    root_is_trusted: bool,
    overrides: &[String],
) -> Result<Config> {
    let user_path = kiln_home.join("config.toml");
    let mut merged = Value::Table(Default::default());
    if let Some(user) = read_user_layer(&user_path)? {
        check_known_keys(&user, &user_path.display().to_string())?;
        merge(&mut merged, Value::Table(user));
    }

    // Run in a home directory outside any repository (`--skip-git-repo-check`),
    // the "project's" file is the user's own, already read.
    let same_file = |a: &Path, b: &Path| {
        a.canonicalize()
            .ok()
            .is_some_and(|a| b.canonicalize().ok() == Some(a))
    };
    let repository_path = root.join(".kiln").join("config.toml");
    let repository = if same_file(&repository_path, &user_path) {
        None
    } else {
        read_repository_layer(root)?
    };
    if let Some(mut repository) = repository {
        let source = repository_path.display().to_string();
        // The repository's checks are read by the agent itself, from the
        // workspace of each attempt (docs/checks.md): here they are only
        // checked, so that a mistake stops `kiln exec` before it starts.
        if let Some(checks) = repository.remove("checks") {
            kiln_agent::checks::checks_from_toml_value(&checks, &source)
                .map_err(|err| anyhow::anyhow!("{err}"))?;
        }
        check_known_keys(&repository, &source)?;
        let repository = if root_is_trusted {
            repository
        } else if project_is_trusted(&merged, root) {
            if repository.contains_key("projects") {
                bail!(
                    "{source} sets `projects`: only your own {} may say which projects are \
                     trusted; remove the table from the repository's file",
                    user_path.display()
                );
            }
            repository
        } else {
            untrusted_layer(repository, &merged, &source, root, &user_path)?
        };
        merge(&mut merged, Value::Table(repository));
    }

    for raw in overrides {
        let layer = parse_override(raw)?;
        check_known_keys(&layer, &format!("-c {raw}"))?;
        merge(&mut merged, Value::Table(layer));
    }
    let config: Config = merged
        .try_into()
        .map_err(|err: toml::de::Error| anyhow::anyhow!("invalid configuration: {err}"))
        .context("fix the key in config.toml or the -c override that sets it")?;
    config.validate()?;
    Ok(config)
}

fn read_user_layer(path: &Path) -> Result<Option<toml::Table>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    parse_layer(&text, path).map(Some)
}

fn parse_layer(text: &str, path: &Path) -> Result<toml::Table> {
    toml::from_str(text).map_err(|err| {
        anyhow::anyhow!(
            "{} is not valid TOML: {err}fix that line or move the file aside",
            path.display()
        )
    })
}

fn read_repository_layer(root: &Path) -> Result<Option<toml::Table>> {
    let path = root.join(".kiln").join("config.toml");
    match read_repository_file(root, ".kiln/config.toml")? {
        Some(text) => parse_layer(&text, &path).map(Some),
        None => Ok(None),
    }
}

/// Read `root/relative` through kiln's one confined reader
/// ([`kiln_agent::workspace_file`]): a regular file inside the repository
/// (a committed `.kiln -> /etc` or `config.toml -> ~/.ssh/id_ed25519` is
/// refused), at most [`REPOSITORY_FILE_MAX_BYTES`]. `Ok(None)` when it does
/// not exist.
pub fn read_repository_file(root: &Path, relative: &str) -> Result<Option<String>> {
    let path = root.join(relative);
    let limit = usize::try_from(REPOSITORY_FILE_MAX_BYTES).unwrap_or(usize::MAX);
    let file = match kiln_agent::workspace_file::read(root, relative, limit) {
        Ok(file) => file,
        Err(err) if err.is_not_found() => return Ok(None),
        Err(err) => bail!("cannot use {}: {err}", path.display()),
    };
    if file.size > REPOSITORY_FILE_MAX_BYTES {
        bail!(
            "{} is larger than {} KiB: a configuration file this size is not one; shorten it",
            path.display(),
            REPOSITORY_FILE_MAX_BYTES / 1024
        );
    }
    String::from_utf8(file.bytes)
        .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))
        .map(Some)
}

/// Whether the user's own layers say `[projects."<root>"] trust_level = "trusted"`.
fn project_is_trusted(user: &Value, root: &Path) -> bool {
    let Some(projects) = user.get("projects").and_then(Value::as_table) else {
        return false;
    };
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    projects.iter().any(|(path, project)| {
        let trusted = project.get("trust_level").and_then(Value::as_str) == Some("trusted");
        let path = Path::new(path);
        trusted && path.canonicalize().unwrap_or_else(|_| path.to_path_buf()) == root
    })
}

/// The repository's layer when the project is not trusted: refused when it
/// sets any key outside [`REPOSITORY_KEYS`]; budgets lowered only.
fn untrusted_layer(
    mut layer: toml::Table,
    before: &Value,
    source: &str,
    root: &Path,
    user_path: &Path,
) -> Result<toml::Table> {
    let mut refused = dotted_keys(&layer);
    refused.retain(|key| !REPOSITORY_KEYS.contains(&key.as_str()));
    if !refused.is_empty() {
        let listed = refused
            .iter()
            .map(|key| format!("`{key}`"))
            .collect::<Vec<_>>()
            .join(", ");
        bail!(
            "{source} sets {listed}, which a repository may not set: it could weaken the \
             sandbox or send your model key elsewhere (a repository may set only {}). Set it in \
             your own {} (or with -c KEY=VALUE), or, if you trust this repository, add to \
             {}: [projects.{}] trust_level = \"trusted\"",
            REPOSITORY_KEYS.join(", "),
            user_path.display(),
            user_path.display(),
            toml_key(&root.display().to_string()),
        );
    }
    for (key, default) in tighten_only_defaults() {
        let Some(wanted) = get_path(&Value::Table(layer.clone()), key).and_then(Value::as_integer)
        else {
            continue;
        };
        let ceiling = get_path(before, key)
            .and_then(Value::as_integer)
            .or(default);
        if let Some(ceiling) = ceiling.filter(|ceiling| wanted > *ceiling) {
            set_path(&mut layer, key, Value::Integer(ceiling));
        }
    }
    // Money is not counted in whole units: the same rule for a number of dollars.
    for key in TIGHTEN_ONLY_AMOUNTS {
        let as_number = |value: &Value| value.as_float().or(value.as_integer().map(|i| i as f64));
        let Some(wanted) = get_path(&Value::Table(layer.clone()), key).and_then(as_number) else {
            continue;
        };
        if let Some(ceiling) = get_path(before, key).and_then(as_number) {
            if wanted > ceiling || wanted.is_nan() {
                set_path(&mut layer, key, Value::Float(ceiling));
            }
        }
    }
    Ok(layer)
}

fn toml_key(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

fn get_path<'a>(value: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted
        .split('.')
        .try_fold(value, |value, part| value.get(part))
}

fn set_path(table: &mut toml::Table, dotted: &str, new: Value) {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let Some(last) = parts.pop() else {
        return;
    };
    let mut table = table;
    for part in parts {
        match table.get_mut(part).and_then(Value::as_table_mut) {
            Some(inner) => table = inner,
            None => return,
        }
    }
    table.insert(last.to_string(), new);
}

/// `a.b.c=value`: the value is TOML (`42`, `true`, `"text"`, `[1,2]`); a bare
/// word that is not TOML is taken as a string, as users type `-c model=o3`.
fn parse_override(raw: &str) -> Result<toml::Table> {
    let Some((key, value)) = raw.split_once('=') else {
        bail!("-c {raw:?} is not key=value: write for example -c model=gpt-5-codex");
    };
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|part| part.trim().is_empty()) {
        bail!("-c {raw:?} has an empty key: write for example -c limits.max_turns=20");
    }
    let value = value.trim();
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| Value::String(value.to_string()));
    let mut parts = key.rsplit('.');
    let innermost = parts.next().unwrap_or(key).trim().to_string();
    let mut nested = toml::Table::from_iter([(innermost, parsed)]);
    for part in parts {
        nested = toml::Table::from_iter([(part.trim().to_string(), Value::Table(nested))]);
    }
    Ok(nested)
}

/// Merge `overlay` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Table(base), Value::Table(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
