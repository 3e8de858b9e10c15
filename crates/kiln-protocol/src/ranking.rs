//! Best-of-N: which of a task's finished attempts a reviewer should look at
//! first, and why. One pure function, so the store, the CLI and any other
//! client rank alike (docs/ranking.md).
//!
//! The order, each rule deciding only between attempts the earlier rules
//! tie:
//!
//! 1. the attempt a user marked preferred;
//! 2. status: `succeeded`, then `checks_failed`, then `failed` and
//!    `cancelled` (equal);
//! 3. checks: all passed, then none defined, then some failed (fewer
//!    failing first): a success kiln verified beats one it could not;
//! 4. citations: fewer invalid first, then more valid;
//! 5. a smaller diff (inserted plus deleted lines; no diff counts as 0);
//! 6. lower cost, a known cost before an unknown one;
//! 7. the lower attempt number.

use std::cmp::Ordering;

use crate::api::{Attempt, AttemptState};
use crate::{micros_from_usd, RankEntry};

/// Ranks the finished attempts among `attempts` (others are left out),
/// best first. `preferred` is the attempt a user marked (it ranks first
/// when it is finished).
pub fn rank(attempts: &[Attempt], preferred: Option<u32>) -> Vec<RankEntry> {
    let mut finished: Vec<&Attempt> = attempts.iter().filter(|a| a.status.is_finished()).collect();
    finished.sort_by(|a, b| compare(a, b, preferred));
    finished
        .iter()
        .zip(1..)
        .map(|(attempt, rank)| RankEntry {
            attempt: attempt.n,
            rank,
            preferred: preferred == Some(attempt.n),
            reasons: reasons(attempt, preferred),
        })
        .collect()
}

/// Sets each attempt's `rank` from `ranking` (`None` for those not ranked).
pub fn apply_ranks(attempts: &mut [Attempt], ranking: &[RankEntry]) {
    for attempt in attempts {
        attempt.rank = ranking
            .iter()
            .find(|entry| entry.attempt == attempt.n)
            .map(|entry| entry.rank);
    }
}

fn compare(a: &Attempt, b: &Attempt, preferred: Option<u32>) -> Ordering {
    let is_preferred = |x: &Attempt| preferred == Some(x.n);
    is_preferred(b)
        .cmp(&is_preferred(a))
        .then_with(|| status_class(a.status).cmp(&status_class(b.status)))
        .then_with(|| checks_key(a).cmp(&checks_key(b)))
        .then_with(|| a.citations_invalid.cmp(&b.citations_invalid))
        .then_with(|| b.citations_valid.cmp(&a.citations_valid))
        .then_with(|| lines_changed(a).cmp(&lines_changed(b)))
        .then_with(|| cost_key(a).cmp(&cost_key(b)))
        .then_with(|| a.n.cmp(&b.n))
}

fn status_class(status: AttemptState) -> u8 {
    match status {
        AttemptState::Succeeded => 0,
        AttemptState::ChecksFailed => 1,
        _ => 2,
    }
}

/// (0 all passed | 1 none defined | 2 some failed, failing count).
fn checks_key(attempt: &Attempt) -> (u8, usize) {
    let failing = attempt.checks.iter().filter(|c| !c.passed).count();
    if attempt.checks.is_empty() {
        (1, 0)
    } else if failing == 0 {
        (0, 0)
    } else {
        (2, failing)
    }
}

fn lines_changed(attempt: &Attempt) -> u64 {
    attempt
        .diff_stat
        .map_or(0, |s| s.insertions.saturating_add(s.deletions))
}

/// Known costs compared in micro-dollars (exact), before unknown ones.
fn cost_key(attempt: &Attempt) -> (bool, u64) {
    match attempt.cost_usd {
        Some(usd) => (false, micros_from_usd(usd)),
        None => (true, 0),
    }
}

fn reasons(attempt: &Attempt, preferred: Option<u32>) -> Vec<String> {
    let mut reasons = Vec::new();
    if preferred == Some(attempt.n) {
        reasons.push("preferred by a user".to_string());
    }
    reasons.push(attempt.status.as_str().replace('_', " "));
    let total = attempt.checks.len();
    let passed = attempt.checks.iter().filter(|c| c.passed).count();
    reasons.push(if total == 0 {
        "no checks defined".to_string()
    } else if passed == total {
        format!("checks passed ({passed}/{total})")
    } else {
        let failing: Vec<&str> = attempt
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect();
        format!(
            "checks failed ({passed}/{total} passed; failing: {})",
            failing.join(", ")
        )
    });
    let cited = attempt.citations_valid + attempt.citations_invalid;
    reasons.push(match (cited, attempt.citations_invalid) {
        (0, _) => "no citations".to_string(),
        (_, 0) => format!("{cited} of {cited} citations valid"),
        (_, invalid) => format!("{invalid} of {cited} citations invalid"),
    });
    reasons.push(match attempt.diff_stat {
        Some(s) if s.files_changed > 0 || s.insertions > 0 || s.deletions > 0 => format!(
            "diff +{} -{} in {} file{}",
            s.insertions,
            s.deletions,
            s.files_changed,
            if s.files_changed == 1 { "" } else { "s" }
        ),
        _ => "no diff".to_string(),
    });
    reasons.push(match attempt.cost_usd {
        Some(usd) => format!("cost {}", crate::format_usd(usd)),
        None => "cost unknown".to_string(),
    });
    reasons
}

#[cfg(test)]
#[path = "ranking_tests.rs"]
mod tests;
