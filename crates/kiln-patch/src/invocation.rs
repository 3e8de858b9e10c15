//! Recognising a shell command that runs `apply_patch`, as models trained on Codex
//! often write it instead of calling the tool, so the agent can apply it itself.
//!
//! Recognised shapes (`applypatch` is accepted as the command name too):
//!
//! ```text
//! apply_patch <<'EOF'          (also <<EOF, <<"EOF", <<-EOF, any delimiter word)
//! *** Begin Patch
//! ...
//! *** End Patch
//! EOF
//! apply_patch '*** Begin Patch ... *** End Patch'     (single or double quotes)
//! cd some/dir && apply_patch ...                       (any of the above)
//! ```
//!
//! Anything else (pipes, further commands after the patch, unquoted arguments) is
//! not recognised, so it runs as an ordinary shell command.

/// A patch found in a shell command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellPatch {
    /// The patch text (the heredoc body or the quoted argument, unquoted).
    pub patch: String,
    /// The directory of a leading `cd DIR &&`, relative to the command's working
    /// directory; the patch's paths are relative to it.
    pub workdir: Option<String>,
}

/// Returns the patch a shell script applies with `apply_patch`, if that is all the
/// script does (optionally after `cd DIR &&`).
///
/// ```
/// let script = "cd app && apply_patch <<'EOF'\n*** Begin Patch\n*** Delete File: a\n*** End Patch\nEOF\n";
/// let found = kiln_patch::patch_from_shell_command(script).unwrap();
/// assert_eq!(found.workdir.as_deref(), Some("app"));
/// assert_eq!(found.patch, "*** Begin Patch\n*** Delete File: a\n*** End Patch\n");
/// ```
pub fn patch_from_shell_command(script: &str) -> Option<ShellPatch> {
    let mut rest = script.trim_start();
    let mut workdir = None;
    if let Some(after_cd) = rest.strip_prefix("cd") {
        if !after_cd.starts_with([' ', '\t']) {
            return None;
        }
        let (dir, after_dir) = shell_word(after_cd.trim_start())?;
        workdir = Some(dir);
        rest = after_dir.trim_start().strip_prefix("&&")?.trim_start();
    }
    let rest = rest
        .strip_prefix("apply_patch")
        .or_else(|| rest.strip_prefix("applypatch"))?;
    if !rest.starts_with([' ', '\t', '<']) {
        return None;
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    let patch = if let Some(heredoc) = rest.strip_prefix("<<") {
        heredoc_body(heredoc)?
    } else {
        let (argument, after) = quoted(rest)?;
        if !after.trim().is_empty() {
            return None;
        }
        argument
    };
    Some(ShellPatch { patch, workdir })
}

/// The body of a heredoc whose `<<` has been consumed; the terminator line must be
/// the end of the script.
fn heredoc_body(heredoc: &str) -> Option<String> {
    let (strip_tabs, heredoc) = match heredoc.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, heredoc),
    };
    let (delimiter, after) = shell_word(heredoc.trim_start_matches([' ', '\t']))?;
    let (first_line_rest, body) = after.split_once('\n')?;
    if !first_line_rest.trim().is_empty() || delimiter.is_empty() {
        return None;
    }
    let mut patch = String::with_capacity(body.len());
    let mut lines = body.split_inclusive('\n');
    for line in lines.by_ref() {
        let line = if strip_tabs {
            line.trim_start_matches('\t')
        } else {
            line
        };
        if line.trim_end_matches(['\n', '\r']) == delimiter {
            // Only whitespace may follow the terminator.
            return lines.all(|line| line.trim().is_empty()).then_some(patch);
        }
        patch.push_str(line);
    }
    None
}

/// One shell word at the start of `text`: quoted, or bare up to whitespace, `&` or `;`.
fn shell_word(text: &str) -> Option<(String, &str)> {
    if text.starts_with(['\'', '"']) {
        return quoted(text);
    }
    let end = text
        .find(|c: char| c.is_whitespace() || matches!(c, '&' | ';' | '|'))
        .unwrap_or(text.len());
    (end > 0).then(|| (text[..end].to_string(), &text[end..]))
}

/// A single- or double-quoted string at the start of `text`, unquoted as the shell
/// would, and the text after it.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut chars = text.char_indices();
    let (_, quote) = chars.next()?;
    let mut value = String::new();
    match quote {
        '\'' => {
            let end = text[1..].find('\'')? + 1;
            value.push_str(&text[1..end]);
            Some((value, &text[end + 1..]))
        }
        '"' => {
            while let Some((index, c)) = chars.next() {
                match c {
                    '"' => return Some((value, &text[index + 1..])),
                    '\\' => {
                        let (_, escaped) = chars.next()?;
                        // Inside double quotes a backslash escapes only these.
                        if !matches!(escaped, '"' | '\\' | '$' | '`' | '\n') {
                            value.push('\\');
                        }
                        if escaped != '\n' {
                            value.push(escaped);
                        }
                    }
                    other => value.push(other),
                }
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
#[path = "invocation_tests.rs"]
mod tests;
