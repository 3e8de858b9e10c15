//! How an attempt ended: the one report every front door gets back from
//! `kiln_agent::run`, that the store records and a remote worker uploads.

use serde::{Deserialize, Serialize};

use crate::{AttemptStatus, CheckResult, CitationCheck, DiffStat, Item, Usage};

/// The result of one attempt (or one follow-up run of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptReport {
    pub status: AttemptStatus,
    /// Why the attempt failed or stopped, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The model's last message, from the turn that ended without tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_message: Option<String>,
    /// Tokens used over the whole run, compaction included.
    #[serde(default)]
    pub usage: Usage,
    /// Cost of `usage` in US dollars, when the model's price is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// The checks kiln ran itself after the agent's last turn, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckResult>,
    /// The verdict on each citation of the final message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub citations: Vec<CitationCheck>,
    /// The whole attempt's change against its base (redacted), when the
    /// attempt had a checkout of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_stat: Option<DiffStat>,
    /// The branch holding the attempt's commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_sha: Option<String>,
    /// The conversation at the end, ready for a follow-up. Not sent over the
    /// wire: the event log holds it.
    #[serde(skip)]
    pub history: Vec<Item>,
}

impl AttemptReport {
    pub fn new(status: AttemptStatus) -> Self {
        AttemptReport {
            status,
            reason: None,
            final_message: None,
            usage: Usage::default(),
            cost_usd: None,
            checks: Vec::new(),
            citations: Vec::new(),
            diff: None,
            diff_stat: None,
            branch: None,
            commit_sha: None,
            history: Vec::new(),
        }
    }

    /// A report of an attempt that ended before the agent could run.
    pub fn failed(status: AttemptStatus, reason: impl Into<String>) -> Self {
        let mut report = AttemptReport::new(status);
        report.reason = Some(reason.into());
        report
    }

    /// Whether every check kiln ran passed; `None` when none ran.
    pub fn checks_passed(&self) -> Option<bool> {
        (!self.checks.is_empty()).then(|| self.checks.iter().all(|c| c.passed))
    }

    /// Valid and invalid citations of the final message.
    pub fn citation_counts(&self) -> (u32, u32) {
        let valid = self.citations.iter().filter(|c| c.valid).count() as u32;
        (valid, self.citations.len() as u32 - valid)
    }
}
