//! Which checks kiln runs itself after the agent's last turn (docs/checks.md):
//! the repository's (`[[checks]]` in `.kiln/config.toml`, the `Checks`
//! section of the root `AGENTS.md`) merged with the caller's (an
//! environment's, `kiln exec --check`).
//!
//! Both repository files are untrusted: they are read through
//! [`workspace_file`](crate::workspace_file) (regular files inside the
//! workspace, bounded), before the agent's first turn, so that nothing the
//! agent writes during the attempt changes what it is checked against.

use std::collections::BTreeSet;
use std::path::Path;

use kiln_protocol::CheckSpec;

use crate::workspace_file;

/// The repository's configuration file, relative to its root.
pub const CHECKS_FILE: &str = ".kiln/config.toml";

/// The file whose `Checks` section names checks, relative to the root.
pub const CHECKS_AGENTS_FILE: &str = "AGENTS.md";

/// Checks one attempt runs at most; the rest are dropped with a warning.
pub const MAX_CHECKS: usize = 20;

/// Bytes of `.kiln/config.toml` or `AGENTS.md` read to find checks; a
/// configuration file larger than this is not one.
pub const CHECKS_FILE_MAX_BYTES: usize = 64 * 1024;

/// Longest check name.
pub const MAX_CHECK_NAME_CHARS: usize = 64;

/// Longest check command, in bytes.
pub const MAX_CHECK_COMMAND_BYTES: usize = 8 * 1024;

/// The keys a `[[checks]]` table may have.
const CHECK_KEYS: [&str; 3] = ["name", "command", "timeout_secs"];

/// The checks of an attempt and what the reader wants people to know about
/// how they were found (a file refused, a check replaced or dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveredChecks {
    pub checks: Vec<CheckSpec>,
    pub warnings: Vec<String>,
}

/// A check as written is not one kiln can run. The message names the file,
/// the check and the key, and says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChecksError(String);

/// The checks of the workspace at `root` merged with `configured` (an
/// environment's or the caller's, which win on a name both use), at most
/// [`MAX_CHECKS`]. A repository file that cannot be used is a warning: the
/// other sources still count.
pub fn discover_checks(root: &Path, configured: &[CheckSpec]) -> DiscoveredChecks {
    let mut warnings = Vec::new();
    let from_config = match read_repository_text(root, CHECKS_FILE) {
        Ok(Some(text)) => match checks_from_config_toml(&text, CHECKS_FILE) {
            Ok(checks) => checks,
            Err(err) => {
                warnings.push(format!("{err}; the file's checks were not run"));
                Vec::new()
            }
        },
        Ok(None) => Vec::new(),
        Err(problem) => {
            warnings.push(problem);
            Vec::new()
        }
    };
    let from_agents = match read_repository_text(root, CHECKS_AGENTS_FILE) {
        Ok(Some(text)) => checks_from_agents_md(&text),
        Ok(None) => Vec::new(),
        Err(problem) => {
            warnings.push(problem);
            Vec::new()
        }
    };
    let (repository, shadowed) = merge_named(from_config, from_agents);
    for name in shadowed {
        warnings.push(format!(
            "the check `{name}` of {CHECKS_AGENTS_FILE} is also in {CHECKS_FILE}; \
             the one in {CHECKS_FILE} runs"
        ));
    }
    let (mut checks, replaced) = merge_named(configured.to_vec(), repository);
    for name in replaced {
        warnings.push(format!(
            "the repository's check `{name}` is replaced by the check of that name given to kiln \
             (the environment's, or `kiln exec --check`)"
        ));
    }
    if checks.len() > MAX_CHECKS {
        let dropped: Vec<String> = checks
            .drain(MAX_CHECKS..)
            .map(|check| format!("`{}`", check.name))
            .collect();
        warnings.push(format!(
            "only the first {MAX_CHECKS} checks run; left out: {}. Combine checks into \
             fewer commands",
            dropped.join(", ")
        ));
    }
    DiscoveredChecks { checks, warnings }
}

/// `first` followed by those of `second` whose name `first` does not use,
/// and the names of the checks of `second` left out.
fn merge_named(first: Vec<CheckSpec>, second: Vec<CheckSpec>) -> (Vec<CheckSpec>, Vec<String>) {
    let names: BTreeSet<String> = first.iter().map(|c| c.name.clone()).collect();
    let mut merged = first;
    let mut left_out = Vec::new();
    for check in second {
        if names.contains(&check.name) {
            left_out.push(check.name);
        } else {
            merged.push(check);
        }
    }
    (merged, left_out)
}

/// The text of a repository file through the confined reader; `Ok(None)`
/// when there is none, `Err` (a warning) when it is refused or too large.
fn read_repository_text(root: &Path, relative: &str) -> Result<Option<String>, String> {
    let file = match workspace_file::read(root, relative, CHECKS_FILE_MAX_BYTES) {
        Ok(file) => file,
        Err(err) if err.is_not_found() || err.is_directory() => return Ok(None),
        Err(err) => return Err(format!("{err}; its checks were not run")),
    };
    if file.is_truncated() && relative == CHECKS_FILE {
        return Err(format!(
            "{relative} is larger than {} KiB: a configuration file this size is not one, \
             and its checks were not run; shorten it",
            CHECKS_FILE_MAX_BYTES / 1024
        ));
    }
    let text = String::from_utf8_lossy(&file.bytes).into_owned();
    // AGENTS.md is mostly prose: the first part of a long one is still read.
    Ok(Some(if file.is_truncated() {
        cut_to_last_line(text)
    } else {
        text
    }))
}

/// A text cut at a byte limit ends at its last whole line.
fn cut_to_last_line(mut text: String) -> String {
    match text.rfind('\n') {
        Some(end) => text.truncate(end + 1),
        None => text.clear(),
    }
    text
}

/// The `[[checks]]` of a `.kiln/config.toml` (`source` names it in errors);
/// every other key of the file is someone else's to check.
pub fn checks_from_config_toml(text: &str, source: &str) -> Result<Vec<CheckSpec>, ChecksError> {
    let table: toml::Table = toml::from_str(text).map_err(|err| {
        ChecksError(format!(
            "{source} is not valid TOML: {}; fix that line",
            err.message()
        ))
    })?;
    match table.get("checks") {
        Some(value) => checks_from_toml_value(value, source),
        None => Ok(Vec::new()),
    }
}

/// The checks in the value of a `checks` key: an array of tables with
/// `name`, `command` and optional `timeout_secs`.
pub fn checks_from_toml_value(
    value: &toml::Value,
    source: &str,
) -> Result<Vec<CheckSpec>, ChecksError> {
    let shape = || {
        ChecksError(format!(
            "{source}: `checks` must be a list of tables, each written as [[checks]] with \
             name = \"…\", command = \"…\" and optionally timeout_secs = N"
        ))
    };
    let entries = value.as_array().ok_or_else(shape)?;
    let mut checks = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let table = entry.as_table().ok_or_else(shape)?;
        let at = match table.get("name").and_then(toml::Value::as_str) {
            Some(name) => format!("{source}: check `{name}` (checks[{index}])"),
            None => format!("{source}: checks[{index}]"),
        };
        if let Some(unknown) = table.keys().find(|k| !CHECK_KEYS.contains(&k.as_str())) {
            return Err(ChecksError(format!(
                "{at} has the unknown key `{unknown}`; a check has only {}",
                CHECK_KEYS.join(", ")
            )));
        }
        let text = |key: &str| -> Result<String, ChecksError> {
            match table.get(key) {
                Some(toml::Value::String(text)) => Ok(text.clone()),
                Some(_) => Err(ChecksError(format!("{at}: `{key}` must be a string"))),
                None => Err(ChecksError(format!(
                    "{at} has no `{key}`; add {key} = \"…\""
                ))),
            }
        };
        let name = text("name")?;
        let command = text("command")?;
        let timeout_secs = match table.get("timeout_secs") {
            None => None,
            Some(toml::Value::Integer(secs)) if *secs > 0 => Some(*secs as u64),
            Some(_) => {
                return Err(ChecksError(format!(
                    "{at}: `timeout_secs` must be a whole number of seconds above 0"
                )))
            }
        };
        let check = CheckSpec {
            name: name.trim().to_string(),
            command,
            timeout_secs,
        };
        validate_check(&check).map_err(|problem| ChecksError(format!("{at}: {problem}")))?;
        checks.push(check);
    }
    validate_checks(&checks).map_err(|problem| ChecksError(format!("{source}: {problem}")))?;
    Ok(checks)
}

/// Whether kiln can run `check`: a printable name of 1 to
/// [`MAX_CHECK_NAME_CHARS`] characters, a command that is not empty and at
/// most [`MAX_CHECK_COMMAND_BYTES`], a timeout above 0.
pub fn validate_check(check: &CheckSpec) -> Result<(), String> {
    let name = check.name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_CHECK_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "the check name {:?} must be 1 to {MAX_CHECK_NAME_CHARS} printable characters",
            check.name
        ));
    }
    if check.command.trim().is_empty() {
        return Err(format!("the check `{name}` has an empty command"));
    }
    if check.command.len() > MAX_CHECK_COMMAND_BYTES {
        return Err(format!(
            "the check `{name}` has a command of {} bytes; at most {MAX_CHECK_COMMAND_BYTES} \
             are allowed: put a long command in a script",
            check.command.len()
        ));
    }
    if check.timeout_secs == Some(0) {
        return Err(format!(
            "the check `{name}` has timeout_secs 0: give a number of seconds above 0"
        ));
    }
    Ok(())
}

/// Every check valid and no two with one name.
pub fn validate_checks(checks: &[CheckSpec]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for check in checks {
        validate_check(check)?;
        if !seen.insert(check.name.trim()) {
            return Err(format!(
                "two checks are named `{}`: give each its own name",
                check.name.trim()
            ));
        }
    }
    Ok(())
}

/// `name=command` as `kiln exec --check` takes it.
pub fn parse_check_flag(raw: &str) -> Result<CheckSpec, String> {
    let Some((name, command)) = raw.split_once('=') else {
        return Err(format!(
            "--check {raw:?} is not name=command: write for example --check 'tests=make test'"
        ));
    };
    let check = CheckSpec {
        name: name.trim().to_string(),
        command: command.to_string(),
        timeout_secs: None,
    };
    validate_check(&check).map_err(|problem| format!("--check {raw:?}: {problem}"))?;
    Ok(check)
}

/// The checks an `AGENTS.md` names: the bullet items of its section headed
/// `Checks` (any level, any case), each ``- name: `command` `` or
/// ``- `command` `` (named by its command). The section ends at the next
/// heading of the same or a higher level; any other line in it is prose.
/// Headings inside fenced code blocks are not headings. Items with an
/// invalid name or command, or a name already used, are skipped.
pub fn checks_from_agents_md(text: &str) -> Vec<CheckSpec> {
    let mut checks: Vec<CheckSpec> = Vec::new();
    let mut section_level: Option<usize> = None;
    let mut fence: Option<(char, usize)> = None;
    for line in text.lines() {
        let trimmed = strip_indent(line, 3);
        if let Some((marker, length)) = fence {
            if fence_marker(trimmed).is_some_and(|(m, l, bare)| m == marker && l >= length && bare)
            {
                fence = None;
            }
            continue;
        }
        if let Some((marker, length, _)) = fence_marker(trimmed) {
            fence = Some((marker, length));
            continue;
        }
        if let Some((level, heading)) = heading(trimmed) {
            match section_level {
                Some(open) if level > open => {}
                _ => {
                    section_level = heading.eq_ignore_ascii_case("checks").then_some(level);
                }
            }
            continue;
        }
        if section_level.is_none() {
            continue;
        }
        // A nested item (indented two or more) belongs to the item above it.
        let Some(item) = bullet(strip_indent(line, 1)) else {
            continue;
        };
        let Some(check) = check_from_item(item) else {
            continue;
        };
        if validate_check(&check).is_ok() && checks.iter().all(|c| c.name != check.name) {
            checks.push(check);
        }
    }
    checks
}

/// `line` without up to `max` leading spaces; `None`-like (the line as is,
/// indented) when it has more, which makes it no heading, fence or item of
/// the top level.
fn strip_indent(line: &str, max: usize) -> &str {
    let spaces = line.len() - line.trim_start_matches(' ').len();
    if spaces <= max {
        &line[spaces..]
    } else {
        line
    }
}

/// A fence line: its character, its length, and whether nothing but
/// spaces follows it (only such a line closes a block).
fn fence_marker(line: &str) -> Option<(char, usize, bool)> {
    let marker = line.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let length = line.chars().take_while(|c| *c == marker).count();
    (length >= 3).then(|| (marker, length, line[length..].trim().is_empty()))
}

/// An ATX heading: its level and its text without closing `#`s.
fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.chars().take_while(|c| *c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &line[level..];
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    let text = rest.trim();
    let text = text.trim_end_matches('#');
    Some((level, text.trim()))
}

/// The text of a top-level bullet item (`- `, `* `, `+ `).
fn bullet(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("- ")
        .or_else(|| line.strip_prefix("* "))
        .or_else(|| line.strip_prefix("+ "))?;
    Some(rest.trim())
}

/// ``name: `command` `` or `` `command` ``; anything after the code span is a
/// comment. `None` for an item of prose.
fn check_from_item(item: &str) -> Option<CheckSpec> {
    let (name, code) = if item.starts_with('`') {
        (None, item)
    } else {
        let (name, rest) = item.split_once(':')?;
        if name.contains('`') {
            return None;
        }
        (Some(name.trim()), rest.trim_start())
    };
    let command = code_span(code)?;
    let name = match name {
        Some(name) => name.to_string(),
        None => command.chars().take(MAX_CHECK_NAME_CHARS).collect(),
    };
    Some(CheckSpec {
        name: name.trim().to_string(),
        command: command.to_string(),
        timeout_secs: None,
    })
}

/// The content of the code span `text` starts with (a run of backticks, up
/// to a run of the same length), one padding space each side removed.
fn code_span(text: &str) -> Option<&str> {
    let ticks = text.chars().take_while(|c| *c == '`').count();
    if ticks == 0 {
        return None;
    }
    let body = &text[ticks..];
    let mut search = 0;
    while let Some(found) = body[search..].find('`') {
        let start = search + found;
        let run = body[start..].chars().take_while(|c| *c == '`').count();
        if run == ticks {
            let inner = &body[..start];
            let inner = match (inner.strip_prefix(' '), ticks > 1) {
                (Some(stripped), true) => stripped.strip_suffix(' ').unwrap_or(stripped),
                _ => inner,
            };
            return Some(inner.trim());
        }
        search = start + run;
    }
    None
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
