//! Which keys each configuration table knows, and the error for one it does
//! not: the file (or `-c` flag), the key, and the closest known key, so that
//! `modle = …` or a provider's `base_ur` is caught instead of ignored.

use anyhow::{bail, Result};
use kiln_model::ProviderConfig;

/// What shape a configuration table has, to find keys that mean nothing.
enum Shape {
    /// A value, or a table whose keys are the user's own (headers, query
    /// parameters).
    Value,
    Table(&'static [(&'static str, Shape)]),
    /// Tables named by the user (`[model_providers.NAME]`,
    /// `[projects."PATH"]`), each with these keys, all values.
    Named(&'static [&'static str]),
}

const LIMITS_KEYS: &[(&str, Shape)] = &[
    ("max_turns", Shape::Value),
    ("max_total_tokens", Shape::Value),
    ("max_cost_usd", Shape::Value),
    ("wall_clock_secs", Shape::Value),
    ("command_timeout_secs", Shape::Value),
    ("max_command_timeout_secs", Shape::Value),
    ("check_fix_turns", Shape::Value),
    ("check_timeout_secs", Shape::Value),
];

const SANDBOX_KEYS: &[(&str, Shape)] = &[
    ("backend", Shape::Value),
    ("network", Shape::Value),
    ("memory", Shape::Value),
    ("max_processes", Shape::Value),
    ("readable_paths", Shape::Value),
    ("writable_paths", Shape::Value),
];

const TOP_KEYS: &[(&str, Shape)] = &[
    ("model", Shape::Value),
    ("model_provider", Shape::Value),
    ("model_providers", Shape::Named(ProviderConfig::KEYS)),
    (
        "model_prices",
        Shape::Named(&["input", "cached_input", "output"]),
    ),
    ("model_context_window", Shape::Value),
    ("project_doc_max_bytes", Shape::Value),
    ("project_doc_fallback_filenames", Shape::Value),
    ("limits", Shape::Table(LIMITS_KEYS)),
    ("sandbox", Shape::Table(SANDBOX_KEYS)),
    ("projects", Shape::Named(&["trust_level"])),
];

/// Refuse every key no table knows, naming `source`, the key and the
/// closest known key.
pub fn check_known_keys(layer: &toml::Table, source: &str) -> Result<()> {
    let mut unknown = Vec::new();
    find_unknown(layer, TOP_KEYS, "", &mut unknown);
    let Some(first) = unknown.first() else {
        return Ok(());
    };
    let mut message = format!("{source}: unknown key `{}`", first.path);
    match &first.closest {
        Some(closest) => message.push_str(&format!(": did you mean `{closest}`?")),
        None => message.push_str(&format!(
            "; the keys known there are {}",
            first.known.join(", ")
        )),
    }
    if unknown.len() > 1 {
        let rest: Vec<String> = unknown[1..]
            .iter()
            .map(|key| format!("`{}`", key.path))
            .collect();
        message.push_str(&format!(" (also unknown: {})", rest.join(", ")));
    }
    message.push_str(" Fix the key or remove it (docs/configuration.md lists them all).");
    bail!(message)
}

/// Every key of `layer` as a dotted path down to its values
/// (`sandbox.backend`, `model_providers.x.base_url`); a table of the user's
/// own keys (`http_headers`) is one value.
pub fn dotted_keys(layer: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    collect_dotted(layer, TOP_KEYS, "", &mut out);
    out
}

fn collect_dotted(
    table: &toml::Table,
    shape: &[(&'static str, Shape)],
    prefix: &str,
    out: &mut Vec<String>,
) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        let known = shape.iter().find(|(known, _)| known == key);
        match (known, value.as_table()) {
            (Some((_, Shape::Table(inner))), Some(value)) => {
                collect_dotted(value, inner, &format!("{path}."), out)
            }
            (Some((_, Shape::Named(_))), Some(named)) => {
                for (name, entry) in named {
                    let entry_path = format!("{path}.{}", toml_path_part(name));
                    match entry.as_table() {
                        Some(entry) if !entry.is_empty() => out.extend(
                            entry
                                .keys()
                                .map(|entry_key| format!("{entry_path}.{entry_key}")),
                        ),
                        _ => out.push(entry_path),
                    }
                }
            }
            _ => out.push(path),
        }
    }
}

struct UnknownKey {
    path: String,
    closest: Option<String>,
    known: Vec<&'static str>,
}

fn find_unknown(
    table: &toml::Table,
    shape: &[(&'static str, Shape)],
    prefix: &str,
    out: &mut Vec<UnknownKey>,
) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    };
    for (key, value) in table {
        match shape.iter().find(|(known, _)| known == key) {
            Some((_, Shape::Table(inner))) => {
                if let Some(value) = value.as_table() {
                    find_unknown(value, inner, &join(key), out);
                }
            }
            Some((_, Shape::Named(keys))) => {
                let Some(named) = value.as_table() else {
                    continue;
                };
                for (name, entry) in named {
                    let Some(entry) = entry.as_table() else {
                        continue;
                    };
                    for entry_key in entry.keys() {
                        if !keys.contains(&entry_key.as_str()) {
                            out.push(UnknownKey {
                                path: format!("{}.{}.{entry_key}", join(key), toml_path_part(name)),
                                closest: closest(entry_key, keys.iter().copied()),
                                known: keys.to_vec(),
                            });
                        }
                    }
                }
            }
            Some((_, Shape::Value)) => {}
            None => {
                let known: Vec<&'static str> = shape.iter().map(|(known, _)| *known).collect();
                out.push(UnknownKey {
                    path: join(key),
                    closest: closest(key, known.iter().copied()),
                    known,
                });
            }
        }
    }
}

/// A table name as it is written in a dotted key: bare when it can be.
fn toml_path_part(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_string()
    } else {
        toml::Value::String(name.to_string()).to_string()
    }
}

/// The known key nearest to `key` by edit distance (a swap of two letters
/// counts once), when it is near enough to be a typo of it.
fn closest<'a>(key: &str, known: impl Iterator<Item = &'a str>) -> Option<String> {
    let limit = (key.chars().count() / 3).max(2);
    known
        .map(|candidate| (edit_distance(key, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.to_string())
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and transpositions of neighbours.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}
