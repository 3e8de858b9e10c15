//! One agent session against the scripted server, and reading its JSON
//! event stream: when each command began and ended, as seen by the harness.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::process::{run_measured, Line, Measured};
use crate::tools::{Tool, Tools};

/// Longest any single agent session may take before it counts as hung.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(300);

/// Where one run keeps its files.
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    /// A fresh, empty directory `work/<name>`.
    pub fn fresh(work: &Path, name: &str) -> Result<Self> {
        let root = work.join(name);
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::create_dir_all(&root)?;
        Ok(RunDir { root })
    }

    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    pub fn stderr(&self) -> PathBuf {
        self.root.join("stderr.txt")
    }

    /// The last lines of the tool's stderr, for failure reports.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.stderr()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        lines
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" / ")
            .chars()
            .take(400)
            .collect()
    }

    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Run `tool exec` on `repo` with the scripted turns in `script`.
pub fn run_session(
    tools: &Tools,
    tool: Tool,
    script: &Path,
    repo: &Path,
    run: &RunDir,
    extra: &[&str],
    prompt: &str,
) -> Result<Measured> {
    let server = tools.start_server(script)?;
    std::fs::create_dir_all(run.home())?;
    let command = tools.exec_command(tool, repo, &run.home(), &server.base_url, prompt, extra);
    let measured = run_measured(command, &run.stderr(), SESSION_TIMEOUT, true)?;
    drop(server);
    // Kept beside stderr so a failed run can be read afterwards (--keep).
    let mut events = String::new();
    for line in &measured.stdout {
        events.push_str(&line.text);
        events.push('\n');
    }
    std::fs::write(run.root.join("stdout.jsonl"), events)?;
    Ok(measured)
}

/// When each command of the session began and ended (harness clock, from
/// the spawn), in order. An end is `None` if the stream stopped first.
pub fn command_spans(tool: Tool, lines: &[Line]) -> Vec<(Duration, Option<Duration>)> {
    let (begin, end): (&[&str], &[&str]) = match tool {
        Tool::Kiln => (&[r#""type":"exec.begin""#], &[r#""type":"exec.end""#]),
        Tool::Codex => (
            &[r#""type":"item.started""#, r#""command_execution""#],
            &[r#""type":"item.completed""#, r#""command_execution""#],
        ),
    };
    let matches = |line: &Line, needles: &[&str]| needles.iter().all(|n| line.text.contains(n));
    let mut spans: Vec<(Duration, Option<Duration>)> = Vec::new();
    for line in lines {
        if matches(line, begin) {
            spans.push((line.at, None));
        } else if matches(line, end) {
            if let Some(open) = spans.iter_mut().find(|(_, end)| end.is_none()) {
                open.1 = Some(line.at);
            }
        }
    }
    spans
}

/// When the final assistant message arrived (harness clock, from the spawn).
pub fn final_message_at(tool: Tool, lines: &[Line]) -> Option<Duration> {
    let needles: &[&str] = match tool {
        Tool::Kiln => &[r#""type":"message""#, r#""role":"assistant""#],
        Tool::Codex => &[r#""type":"item.completed""#, r#""type":"agent_message""#],
    };
    lines
        .iter()
        .rev()
        .find(|line| needles.iter().all(|n| line.text.contains(n)))
        .map(|line| line.at)
}

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
