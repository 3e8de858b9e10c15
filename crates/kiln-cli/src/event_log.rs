//! The run's event log on disk: one JSON object per line under
//! `$KILN_HOME/sessions/YYYY/MM/DD/`, flushed per event so a crash loses nothing
//! already shown.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use kiln_protocol::{Event, EventSink};

pub struct JsonlFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl JsonlFile {
    /// A new log for a fresh run.
    pub fn create_new(kiln_home: &Path) -> Result<Self> {
        let now = chrono::Utc::now();
        let dir = kiln_home
            .join("sessions")
            .join(now.format("%Y/%m/%d").to_string());
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}: check KILN_HOME", dir.display()))?;
        let name = format!(
            "{}-{:08x}.jsonl",
            now.format("%Y%m%dT%H%M%S"),
            std::process::id() ^ now.timestamp_subsec_nanos()
        );
        Self::open_append(&dir.join(name))
    }

    /// Append to an existing log (a resumed run).
    pub fn open_append(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open event log {}", path.display()))?;
        Ok(JsonlFile {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl EventSink for JsonlFile {
    fn emit(&self, event: &Event) {
        let Ok(mut line) = serde_json::to_string(event) else {
            return;
        };
        line.push('\n');
        let mut file = match self.file.lock() {
            Ok(file) => file,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(err) = file.write_all(line.as_bytes()) {
            tracing::error!("writing event log {}: {err}", self.path.display());
        }
    }
}

/// Read a log back; a truncated last line (a crash mid-write) is skipped with
/// a warning, any other malformed line is an error naming it.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let file = File::open(path).with_context(|| {
        format!(
            "cannot open {}: pass the path kiln printed as `log:`",
            path.display()
        )
    })?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut events = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(line) {
            Ok(event) => events.push(event),
            Err(_) if index + 1 == lines.len() => {
                tracing::warn!("{}: ignoring a truncated last line", path.display());
            }
            Err(err) => anyhow::bail!(
                "{} line {} is not a kiln event ({err}): is this a kiln event log?",
                path.display(),
                index + 1
            ),
        }
    }
    if events.is_empty() {
        anyhow::bail!("{} holds no events: nothing to resume", path.display());
    }
    Ok(events)
}

/// `--json`: the event log as JSON lines on stdout.
pub struct JsonStdout;

impl EventSink for JsonStdout {
    fn emit(&self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`kiln exec --json | head`) must not abort the run.
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}
