use super::*;
use crate::{CheckResult, DiffStat, Usage};

fn attempt(n: u32, status: AttemptState) -> Attempt {
    Attempt {
        task_id: "t_1".to_string(),
        n,
        status,
        tries: 1,
        cancel_requested: false,
        worker_id: None,
        lease_expires_at: None,
        started_at: None,
        finished_at: None,
        final_message: None,
        diff_stat: None,
        usage: Usage::default(),
        branch: None,
        commit_sha: None,
        reason: None,
        checks: Vec::new(),
        citations_valid: 0,
        citations_invalid: 0,
        cost_usd: None,
        rank: None,
        environment_version: None,
        wait_reason: None,
    }
}

fn check(name: &str, passed: bool) -> CheckResult {
    CheckResult {
        name: name.to_string(),
        command: format!("run {name}"),
        passed,
        exit_code: Some(if passed { 0 } else { 1 }),
        duration_ms: 10,
        timed_out: false,
        chunk_id: "t9".to_string(),
        reason: None,
    }
}

fn diff(insertions: u64, deletions: u64) -> Option<DiffStat> {
    Some(DiffStat {
        files_changed: 1,
        insertions,
        deletions,
    })
}

fn order(attempts: &[Attempt], preferred: Option<u32>) -> Vec<u32> {
    rank(attempts, preferred)
        .iter()
        .map(|e| e.attempt)
        .collect()
}

#[test]
fn only_finished_attempts_are_ranked_and_ranks_count_from_one() {
    let attempts = [
        attempt(1, AttemptState::Running),
        attempt(2, AttemptState::Failed),
        attempt(3, AttemptState::Queued),
        attempt(4, AttemptState::Interrupted),
        attempt(5, AttemptState::Succeeded),
    ];
    let ranking = rank(&attempts, None);
    let pairs: Vec<(u32, u32)> = ranking.iter().map(|e| (e.attempt, e.rank)).collect();
    assert_eq!(pairs, [(5, 1), (2, 2)]);
}

#[test]
fn status_orders_succeeded_then_checks_failed_then_failed_and_cancelled_alike() {
    let attempts = [
        attempt(1, AttemptState::Cancelled),
        attempt(2, AttemptState::Failed),
        attempt(3, AttemptState::ChecksFailed),
        attempt(4, AttemptState::Succeeded),
    ];
    // failed and cancelled tie on status: the attempt number decides.
    assert_eq!(order(&attempts, None), [4, 3, 1, 2]);
}

#[test]
fn a_preferred_attempt_ranks_first_whatever_the_evidence() {
    let attempts = [
        attempt(1, AttemptState::Succeeded),
        attempt(2, AttemptState::Failed),
    ];
    let ranking = rank(&attempts, Some(2));
    assert_eq!(ranking[0].attempt, 2);
    assert!(ranking[0].preferred);
    assert_eq!(ranking[0].reasons[0], "preferred by a user");
    assert!(!ranking[1].preferred);
}

#[test]
fn a_preference_for_an_attempt_not_finished_changes_nothing() {
    let attempts = [
        attempt(1, AttemptState::Succeeded),
        attempt(2, AttemptState::Running),
    ];
    let ranking = rank(&attempts, Some(2));
    assert_eq!(ranking.len(), 1);
    assert_eq!(ranking[0].attempt, 1);
    assert!(!ranking[0].preferred);
}

#[test]
fn checks_passed_beats_no_checks_which_beats_failing_checks() {
    let mut passed = attempt(3, AttemptState::Succeeded);
    passed.checks = vec![check("tests", true), check("lint", true)];
    let none = attempt(1, AttemptState::Succeeded);
    let mut one_failing = attempt(2, AttemptState::Succeeded);
    one_failing.checks = vec![check("tests", false), check("lint", true)];
    assert_eq!(
        order(&[none.clone(), one_failing.clone(), passed.clone()], None),
        [3, 1, 2]
    );
    let reasons = rank(&[passed, none, one_failing], None);
    assert_eq!(reasons[0].reasons[1], "checks passed (2/2)");
    assert_eq!(reasons[1].reasons[1], "no checks defined");
    assert_eq!(
        reasons[2].reasons[1],
        "checks failed (1/2 passed; failing: tests)"
    );
}

#[test]
fn fewer_failing_checks_rank_higher() {
    let mut two = attempt(1, AttemptState::ChecksFailed);
    two.checks = vec![check("a", false), check("b", false)];
    let mut one = attempt(2, AttemptState::ChecksFailed);
    one.checks = vec![check("a", false), check("b", true)];
    assert_eq!(order(&[two, one], None), [2, 1]);
}

#[test]
fn fewer_invalid_citations_rank_first_then_more_valid_ones() {
    let mut invalid = attempt(1, AttemptState::Succeeded);
    invalid.citations_valid = 5;
    invalid.citations_invalid = 1;
    let mut few_valid = attempt(2, AttemptState::Succeeded);
    few_valid.citations_valid = 1;
    let mut many_valid = attempt(3, AttemptState::Succeeded);
    many_valid.citations_valid = 3;
    let ranking = rank(&[invalid, few_valid, many_valid], None);
    let order: Vec<u32> = ranking.iter().map(|e| e.attempt).collect();
    assert_eq!(order, [3, 2, 1]);
    assert_eq!(ranking[0].reasons[2], "3 of 3 citations valid");
    assert_eq!(ranking[2].reasons[2], "1 of 6 citations invalid");
}

#[test]
fn a_smaller_diff_ranks_higher_and_no_diff_counts_as_none_changed() {
    let mut big = attempt(1, AttemptState::Succeeded);
    big.diff_stat = diff(40, 10);
    let mut small = attempt(2, AttemptState::Succeeded);
    small.diff_stat = diff(3, 1);
    let empty = attempt(3, AttemptState::Succeeded);
    let ranking = rank(&[big, small, empty], None);
    let order: Vec<u32> = ranking.iter().map(|e| e.attempt).collect();
    assert_eq!(order, [3, 2, 1]);
    assert_eq!(ranking[0].reasons[3], "no diff");
    assert_eq!(ranking[1].reasons[3], "diff +3 -1 in 1 file");
}

#[test]
fn a_lower_cost_ranks_higher_and_an_unknown_cost_comes_after_known_ones() {
    let unknown = attempt(1, AttemptState::Succeeded);
    let mut dear = attempt(2, AttemptState::Succeeded);
    dear.cost_usd = Some(0.5);
    let mut cheap = attempt(3, AttemptState::Succeeded);
    cheap.cost_usd = Some(0.0123);
    let ranking = rank(&[unknown, dear, cheap], None);
    let order: Vec<u32> = ranking.iter().map(|e| e.attempt).collect();
    assert_eq!(order, [3, 2, 1]);
    assert_eq!(ranking[0].reasons[4], "cost $0.0123");
    assert_eq!(ranking[2].reasons[4], "cost unknown");
}

#[test]
fn the_attempt_number_breaks_a_complete_tie() {
    let attempts = [
        attempt(3, AttemptState::Succeeded),
        attempt(1, AttemptState::Succeeded),
        attempt(2, AttemptState::Succeeded),
    ];
    assert_eq!(order(&attempts, None), [1, 2, 3]);
}

#[test]
fn earlier_rules_outweigh_later_ones() {
    // Checks beat citations, citations beat diff size, diff size beats cost.
    let mut verified_but_big = attempt(1, AttemptState::Succeeded);
    verified_but_big.checks = vec![check("tests", true)];
    verified_but_big.citations_invalid = 2;
    verified_but_big.diff_stat = diff(100, 100);
    let mut cited_well_but_unverified = attempt(2, AttemptState::Succeeded);
    cited_well_but_unverified.citations_valid = 4;
    cited_well_but_unverified.diff_stat = diff(50, 0);
    let mut tiny_but_miscited = attempt(3, AttemptState::Succeeded);
    tiny_but_miscited.citations_invalid = 1;
    tiny_but_miscited.diff_stat = diff(1, 0);
    tiny_but_miscited.cost_usd = Some(0.001);
    assert_eq!(
        order(
            &[
                tiny_but_miscited,
                cited_well_but_unverified,
                verified_but_big
            ],
            None
        ),
        [1, 2, 3]
    );
}

#[test]
fn apply_ranks_fills_each_attempts_place_and_clears_the_unranked() {
    let mut attempts = vec![
        attempt(1, AttemptState::Failed),
        attempt(2, AttemptState::Running),
        attempt(3, AttemptState::Succeeded),
    ];
    attempts[1].rank = Some(9);
    let ranking = rank(&attempts, None);
    apply_ranks(&mut attempts, &ranking);
    let ranks: Vec<Option<u32>> = attempts.iter().map(|a| a.rank).collect();
    assert_eq!(ranks, [Some(2), None, Some(1)]);
}

#[test]
fn reasons_follow_the_order_they_were_weighed_in() {
    let mut a = attempt(1, AttemptState::ChecksFailed);
    a.checks = vec![check("tests", false)];
    a.citations_valid = 2;
    a.diff_stat = Some(DiffStat {
        files_changed: 2,
        insertions: 12,
        deletions: 3,
    });
    a.cost_usd = Some(0.25);
    let ranking = rank(&[a], Some(1));
    assert_eq!(
        ranking[0].reasons,
        [
            "preferred by a user",
            "checks failed",
            "checks failed (0/1 passed; failing: tests)",
            "2 of 2 citations valid",
            "diff +12 -3 in 2 files",
            "cost $0.2500",
        ]
    );
}
