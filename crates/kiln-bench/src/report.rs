//! The results: one row per measured quantity, printed as a table and saved
//! as JSON for history.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// One line of the results table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub benchmark: String,
    pub metric: String,
    pub unit: String,
    pub kiln: Option<f64>,
    pub codex: Option<f64>,
    /// The same work without any agent (plain `true`, a direct `grep`).
    pub baseline: Option<f64>,
    /// kiln / codex.
    pub ratio: Option<f64>,
    pub target: Option<Target>,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub text: String,
    /// `None` when there was nothing to compare (a failed or missing side).
    pub met: Option<bool>,
}

impl Row {
    pub fn new(benchmark: &str, metric: &str, unit: &str) -> Self {
        Row {
            benchmark: benchmark.to_string(),
            metric: metric.to_string(),
            unit: unit.to_string(),
            kiln: None,
            codex: None,
            baseline: None,
            ratio: None,
            target: None,
            note: String::new(),
        }
    }

    pub fn kiln(mut self, value: Option<f64>) -> Self {
        self.kiln = value;
        self.update_ratio();
        self
    }

    pub fn codex(mut self, value: Option<f64>) -> Self {
        self.codex = value;
        self.update_ratio();
        self
    }

    pub fn baseline(mut self, value: Option<f64>) -> Self {
        self.baseline = value;
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// Target: kiln / codex at most `max_ratio`.
    pub fn target_ratio(mut self, max_ratio: f64) -> Self {
        let text = if max_ratio == 1.0 {
            "kiln <= codex".to_string()
        } else {
            format!("kiln/codex <= {max_ratio}")
        };
        self.target = Some(Target {
            text,
            met: self.ratio.map(|ratio| ratio <= max_ratio),
        });
        self
    }

    /// Target: kiln's value below `limit` (in the row's unit).
    pub fn target_below(mut self, limit: f64) -> Self {
        self.target = Some(Target {
            text: format!("< {limit} {}", self.unit),
            met: self.kiln.map(|value| value < limit),
        });
        self
    }

    fn update_ratio(&mut self) {
        self.ratio = match (self.kiln, self.codex) {
            (Some(kiln), Some(codex)) if codex > 0.0 => Some(kiln / codex),
            _ => None,
        };
    }
}

/// The whole table as aligned text.
pub fn render_table(rows: &[Row]) -> String {
    let header = [
        "benchmark",
        "metric",
        "kiln",
        "codex",
        "baseline",
        "kiln/codex",
        "target",
        "note",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|row| {
            [
                row.benchmark.clone(),
                format!("{} ({})", row.metric, row.unit),
                value(row.kiln),
                value(row.codex),
                value(row.baseline),
                row.ratio.map_or("-".into(), |r| format!("{r:.2}")),
                row.target.as_ref().map_or("-".into(), |t| {
                    let verdict = match t.met {
                        Some(true) => "met",
                        Some(false) => "MISSED",
                        None => "n/a",
                    };
                    format!("{verdict}: {}", t.text)
                }),
                row.note.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[&str]| {
        out.push('|');
        for (cell, width) in row.iter().zip(widths) {
            let pad = width - cell.chars().count();
            let _ = write!(out, " {cell}{} |", " ".repeat(pad));
        }
        out.push('\n');
    };
    line(&mut out, &header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(
        &mut out,
        &rule.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for row in &cells {
        line(
            &mut out,
            &row.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
    out
}

fn value(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// Write `document` as pretty JSON to `path`, creating its directory.
pub fn write_json(path: &Path, document: &impl Serialize) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut text = serde_json::to_string_pretty(document)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
