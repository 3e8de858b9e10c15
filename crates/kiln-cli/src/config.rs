//! kiln's configuration: `$KILN_HOME/config.toml`, then `.kiln/config.toml` at
//! the project root, then `-c key=value` overrides, each layer merged over the
//! previous one key by key. The keys follow what Codex users already write
//! (`model`, `model_provider`, `[model_providers.NAME]`, `project_doc_*`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_model::ProviderConfig;
use serde::Deserialize;
use toml::Value;

/// The provider used when the configuration names none.
pub const DEFAULT_PROVIDER: &str = "openai";

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub model: String,
    pub model_provider: String,
    pub model_providers: BTreeMap<String, ProviderConfig>,
    /// The model's context window in tokens; compaction starts before it is full.
    pub model_context_window: Option<u64>,
    /// Byte budget shared by all AGENTS.md files.
    pub project_doc_max_bytes: usize,
    /// Names tried after AGENTS.override.md and AGENTS.md in each directory.
    pub project_doc_fallback_filenames: Vec<String>,
    pub limits: LimitsConfig,
    pub sandbox: SandboxConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: "gpt-5-codex".into(),
            model_provider: DEFAULT_PROVIDER.into(),
            model_providers: BTreeMap::new(),
            model_context_window: None,
            project_doc_max_bytes: 32 * 1024,
            project_doc_fallback_filenames: Vec::new(),
            limits: LimitsConfig::default(),
            sandbox: SandboxConfig::default(),
        }
    }
}

/// Budgets of one run; unset keys keep the agent's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_turns: Option<u32>,
    pub max_total_tokens: Option<u64>,
    /// Wall-clock budget of one run, in seconds.
    pub wall_clock_secs: Option<u64>,
    /// Default timeout of one shell command, in seconds.
    pub command_timeout_secs: Option<u64>,
    /// The longest timeout the model may ask for, in seconds.
    pub max_command_timeout_secs: Option<u64>,
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

/// Load the layered configuration for a run in `cwd`.
pub fn load(kiln_home: &Path, cwd: &Path, overrides: &[String]) -> Result<Config> {
    let mut merged = Value::Table(Default::default());
    let layers = [
        kiln_home.join("config.toml"),
        project_root(cwd).join(".kiln").join("config.toml"),
    ];
    for path in layers {
        if let Some(layer) = read_layer(&path)? {
            merge(&mut merged, layer);
        }
    }
    for raw in overrides {
        merge(&mut merged, parse_override(raw)?);
    }
    merged
        .try_into()
        .map_err(|err: toml::de::Error| anyhow::anyhow!("invalid configuration: {err}"))
        .context("fix the key in config.toml or the -c override that sets it")
}

fn read_layer(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let table: toml::Table = toml::from_str(&text).map_err(|err| {
        anyhow::anyhow!(
            "{} is not valid TOML: {err}fix that line or move the file aside",
            path.display()
        )
    })?;
    Ok(Some(Value::Table(table)))
}

/// `a.b.c=value`: the value is TOML (`42`, `true`, `"text"`, `[1,2]`); a bare
/// word that is not TOML is taken as a string, as users type `-c model=o3`.
fn parse_override(raw: &str) -> Result<Value> {
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
    let nested = key.rsplit('.').fold(parsed, |inner, part| {
        let mut table = toml::Table::new();
        table.insert(part.trim().to_string(), inner);
        Value::Table(table)
    });
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
