//! The title and body of a task's pull request, written from the attempt
//! it proposes: Summary (the final message), Changes (diff stat and file
//! list), Testing (each check kiln ran and its result), links back to the
//! task, and a footer naming kiln and the attempt.
//!
//! The final message and file names come from the model and the
//! repository: they are put in as text (file names and commands in code
//! spans), cut to sizes every forge accepts, and the environment's secrets
//! are redacted from the whole.

use kiln_protocol::api::{Attempt, Task};
use kiln_protocol::CheckResult;

/// Titles longer than this are cut (git's and the forges' convention).
pub(crate) const MAX_TITLE_CHARS: usize = 72;
/// The summary is cut here; GitHub refuses bodies over 65,536 characters.
const MAX_SUMMARY_CHARS: usize = 20_000;
/// Files listed at most; the rest are counted.
const MAX_FILES_LISTED: usize = 100;

/// The title: the prompt's first line, else the final message's, trimmed
/// and cut to [`MAX_TITLE_CHARS`].
pub(crate) fn title(task: &Task, attempt: &Attempt) -> String {
    let first_line = |text: &str| {
        text.lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .map(str::to_string)
    };
    let line = first_line(&task.prompt)
        .or_else(|| attempt.final_message.as_deref().and_then(first_line))
        .unwrap_or_else(|| format!("kiln task {}", task.id));
    let line: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    cut(&line, MAX_TITLE_CHARS)
}

/// The body, in Markdown. `diff` is the attempt's stored diff (for the
/// file list); `task_link` is `{public_url}/api/tasks/{id}` when the server
/// knows its public URL.
pub(crate) fn body(
    task: &Task,
    attempt: &Attempt,
    diff: Option<&str>,
    task_link: Option<&str>,
) -> String {
    let mut out = String::new();
    out.push_str("## Summary\n\n");
    match attempt.final_message.as_deref().map(str::trim) {
        Some(message) if !message.is_empty() => {
            out.push_str(&cut(message, MAX_SUMMARY_CHARS));
            out.push('\n');
        }
        _ => out.push_str("The attempt left no final message.\n"),
    }

    out.push_str("\n## Changes\n\n");
    if let Some(stat) = &attempt.diff_stat {
        out.push_str(&format!(
            "{} file(s) changed, +{} −{}\n",
            stat.files_changed, stat.insertions, stat.deletions
        ));
    }
    let files = diff.map(changed_files).unwrap_or_default();
    if !files.is_empty() {
        out.push('\n');
        for file in files.iter().take(MAX_FILES_LISTED) {
            out.push_str(&format!("- {}\n", code_span(file)));
        }
        if files.len() > MAX_FILES_LISTED {
            out.push_str(&format!(
                "- … and {} more\n",
                files.len() - MAX_FILES_LISTED
            ));
        }
    }

    out.push_str("\n## Testing\n\n");
    if attempt.checks.is_empty() {
        out.push_str("kiln ran no checks: neither the repository nor the environment names any.\n");
    } else {
        out.push_str("Checks kiln ran itself after the agent's last turn:\n\n");
        for check in &attempt.checks {
            out.push_str(&check_line(check));
        }
    }

    out.push_str("\n## Task\n\n");
    match task_link {
        Some(link) => out.push_str(&format!("Task {}: {link}\n", code_span(&task.id))),
        None => out.push_str(&format!(
            "Task {} (`kiln task show {}`)\n",
            code_span(&task.id),
            task.id
        )),
    }
    out.push_str(&format!(
        "\n---\nOpened by kiln from attempt {} of task {}{}.\n",
        attempt.n,
        task.id,
        attempt
            .commit_sha
            .as_deref()
            .map(|sha| format!(", commit {sha}"))
            .unwrap_or_default()
    ));
    out
}

fn check_line(check: &CheckResult) -> String {
    let verdict = if check.passed {
        "passed".to_string()
    } else if check.timed_out {
        "failed (timed out)".to_string()
    } else {
        match (&check.reason, check.exit_code) {
            (Some(reason), _) => format!("failed ({})", one_line(reason)),
            (None, Some(code)) => format!("failed (exit {code})"),
            (None, None) => "failed".to_string(),
        }
    };
    format!(
        "- {} **{}** {}: {verdict} in {:.1} s\n",
        if check.passed { "✅" } else { "❌" },
        one_line(&check.name),
        code_span(&check.command),
        check.duration_ms as f64 / 1000.0
    )
}

/// The paths a unified diff changes, in order, once each.
pub(crate) fn changed_files(diff: &str) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    for line in diff.lines() {
        let Some(rest) = line.strip_prefix("diff --git ") else {
            continue;
        };
        // `a/old b/new`: the new name is after the last " b/".
        let path = rest
            .rsplit_once(" b/")
            .map(|(_, new)| new)
            .unwrap_or(rest)
            .to_string();
        if !files.contains(&path) {
            files.push(path);
        }
    }
    files
}

/// `text` as a Markdown code span that its own backticks cannot end.
fn code_span(text: &str) -> String {
    let text = one_line(text);
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{text}{pad}{fence}")
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `text` cut to `max` characters, ending in `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}
