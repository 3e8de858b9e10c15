//! Checks kiln runs itself after the model's final message: whatever the
//! model claims, a failing check gets it one chance to fix the cause and
//! then marks the attempt `checks_failed`; a hanging check is killed; a
//! check's output is a terminal chunk the final message may cite; invalid
//! citations get one turn to be corrected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use kiln_protocol::{AttemptStatus, CheckResult, CheckSpec, CitationCheck, EventKind, Mode};
use kiln_testkit::{RecordedRequest, Turn};

const FIX: &str = "*** Begin Patch
*** Update File: calc.py
@@ def median(values):
     if len(ordered) % 2 == 1:
         return ordered[middle]
-    return (ordered[middle] + ordered[middle + 1]) / 2
+    return (ordered[middle - 1] + ordered[middle]) / 2
*** End Patch";

const TESTS: &str = "python3 -m unittest -q";

fn tests_check() -> CheckSpec {
    CheckSpec {
        name: "tests".into(),
        command: TESTS.into(),
        timeout_secs: None,
    }
}

fn check_results(harness: &Harness) -> Vec<CheckResult> {
    harness
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::CheckFinished(result) => Some(result.clone()),
            _ => None,
        })
        .collect()
}

fn citation_events(harness: &Harness) -> Vec<CitationCheck> {
    harness
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::CitationChecked(check) => Some(check.clone()),
            _ => None,
        })
        .collect()
}

/// The text of the last user message a request sent.
fn last_user_text(request: &RecordedRequest) -> String {
    input_items(request)
        .iter()
        .rev()
        .find(|item| item["role"] == "user")
        .and_then(|item| item["content"][0]["text"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_model_that_claims_success_without_fixing_gets_checks_failed() {
    let mut harness = Harness::new(
        Mode::Code,
        vec![
            Turn::message("Fixed the median bug; all tests pass."),
            // The fix turn: the model insists instead of fixing.
            Turn::message("The tests pass on my machine."),
        ],
    )
    .await;
    harness.config.checks = vec![tests_check()];
    let outcome = harness.run("The median tests fail. Fix them.").await;

    assert_eq!(outcome.status, AttemptStatus::ChecksFailed);
    assert_eq!(
        outcome.reason.as_deref(),
        Some("check tests failed (exit 1, see t2)")
    );
    // The work and the model's word are kept; the verdict is kiln's.
    assert_eq!(
        outcome.final_message.as_deref(),
        Some("The tests pass on my machine.")
    );
    let results = check_results(&harness);
    assert_eq!(results.len(), 2, "run, then re-run after the fix turn");
    for (result, chunk) in results.iter().zip(["t1", "t2"]) {
        assert!(!result.passed);
        assert_eq!(result.exit_code, Some(1));
        assert_eq!(result.chunk_id, chunk);
        assert_eq!(result.command, TESTS);
        assert!(!result.timed_out);
        assert_eq!(result.reason.as_deref(), Some("exited with 1"));
    }
    assert_eq!(outcome.checks, results[1..]);

    // The model was told which check failed, how, where its output is, and
    // how the output ends.
    let requests = harness.requests();
    assert_eq!(requests.len(), 2);
    let told = last_user_text(&requests[1]);
    assert!(
        told.contains("`tests` (`python3 -m unittest -q`): exit code 1"),
        "{told}"
    );
    assert!(told.contains("terminal chunk t1"), "{told}");
    assert!(told.contains("FAILED (failures=1, errors=1)"), "{told}");
    assert!(told.contains("up to 3 turns"), "{told}");
    // It was told up front which checks kiln would run.
    let guidance = input_items(&requests[0])[0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        guidance.contains("kiln runs these checks itself")
            && guidance.contains("- tests: `python3 -m unittest -q`"),
        "{guidance}"
    );

    // Each check is a terminal chunk of its own.
    let events = harness.events();
    assert_well_formed_log(&events, 1);
    let begins: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ExecBegin {
                call_id, chunk_id, ..
            } => Some((call_id.clone(), chunk_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        begins,
        [
            ("check:tests".to_string(), "t1".to_string()),
            ("check:tests".to_string(), "t2".to_string())
        ]
    );
    let finished = events.last().unwrap();
    let EventKind::AttemptFinished { status, .. } = &finished.kind else {
        panic!("{finished:?}");
    };
    assert_eq!(*status, AttemptStatus::ChecksFailed);
}

#[tokio::test]
async fn a_model_that_fixes_the_bug_succeeds_with_the_check_recorded() {
    let mut harness = Harness::new(
        Mode::Code,
        vec![
            Turn::apply_patch(FIX),
            Turn::message("Fixed `median` for even-length input."),
        ],
    )
    .await;
    harness.config.checks = vec![tests_check()];
    let outcome = harness.run("Fix the median tests.").await;

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert_eq!(outcome.checks.len(), 1);
    assert!(outcome.checks[0].passed);
    assert_eq!(outcome.checks[0].exit_code, Some(0));
    assert_eq!(outcome.checks, check_results(&harness));
    // No fix turn: two model requests only.
    assert_eq!(harness.requests().len(), 2);
}

#[tokio::test]
async fn a_model_that_fixes_the_bug_only_in_the_fix_turn_succeeds_and_may_cite_the_check() {
    let final_message = "The check showed the IndexError 【t1†L1-L3】; `median` now averages \
                         the two middle values 【F:calc.py†L19-L20】.";
    let mut harness = Harness::new(
        Mode::Code,
        vec![
            Turn::message("Done."),
            Turn::apply_patch(FIX),
            Turn::message(final_message),
        ],
    )
    .await;
    // The repository names the check itself.
    std::fs::create_dir(harness.path(".kiln")).unwrap();
    std::fs::write(
        harness.path(".kiln/config.toml"),
        format!("[[checks]]\nname = \"tests\"\ncommand = \"{TESTS}\"\n"),
    )
    .unwrap();
    harness.config.limits.check_fix_turns = 2;
    let outcome = harness.run("Fix the median tests.").await;

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert_eq!(outcome.final_message.as_deref(), Some(final_message));
    let results = check_results(&harness);
    assert_eq!(
        results.iter().map(|r| r.passed).collect::<Vec<_>>(),
        [false, true]
    );
    assert!(last_user_text(&harness.requests()[1]).contains("up to 2 turns"));
    // The check's chunk is citable like a command's; no correction turn.
    let citations = citation_events(&harness);
    assert_eq!(citations.len(), 2);
    assert!(citations.iter().all(|c| c.valid), "{citations:?}");
    assert_eq!(harness.requests().len(), 3);
}

#[tokio::test]
async fn the_agent_cannot_weaken_the_repository_checks_by_editing_them() {
    // The harness's `none` sandbox has no read-only mounts: the command
    // really rewrites the file, as a sandbox without them would let it.
    let mut harness = Harness::new(
        Mode::Code,
        vec![
            Turn::shell("sed -i 's/^command = .*/command = \"true\"/' .kiln/config.toml"),
            Turn::message("All checks pass."),
        ],
    )
    .await;
    std::fs::create_dir(harness.path(".kiln")).unwrap();
    std::fs::write(
        harness.path(".kiln/config.toml"),
        format!("[[checks]]\nname = \"tests\"\ncommand = \"{TESTS}\"\n"),
    )
    .unwrap();
    harness.config.limits.check_fix_turns = 0;
    let outcome = harness.run("Fix the median tests.").await;

    assert!(harness.read(".kiln/config.toml").contains("\"true\""));
    assert_eq!(outcome.status, AttemptStatus::ChecksFailed);
    assert_eq!(outcome.checks[0].command, TESTS);
    assert_eq!(outcome.checks[0].exit_code, Some(1));
    // No fix turn was given.
    assert_eq!(harness.requests().len(), 2);
}

#[tokio::test]
async fn apply_patch_refuses_to_write_git_or_kiln_metadata_even_through_a_link() {
    let add = |path: &str| {
        Turn::apply_patch(format!(
            "*** Begin Patch\n*** Add File: {path}\n+touch PWNED\n*** End Patch\n"
        ))
    };
    let mut harness = Harness::new(
        Mode::Code,
        vec![
            add(".git/hooks/post-checkout"),
            add(".kiln/config.toml"),
            add("sub/../.git/config-extra"),
            add("vendor/lib/.git/config"),
            Turn::shell("ln -s .git g && ln -s .kiln k"),
            add("g/hooks/pre-commit"),
            Turn::apply_patch(
                "*** Begin Patch\n*** Update File: calc.py\n*** Move to: .kiln/calc.py\n\
                 @@\n-\"\"\"Small statistics helpers used by the report generator.\"\"\"\n\
                 +\"\"\"Moved.\"\"\"\n*** End Patch\n",
            ),
            add("notes/ok.txt"),
            Turn::message("Planted."),
        ],
    )
    .await;
    std::fs::create_dir(harness.path(".kiln")).unwrap();
    harness.config.run_checks = false;
    let outcome = harness.run("Plant things.").await;
    assert_eq!(outcome.status, AttemptStatus::Succeeded);

    let outputs = tool_outputs(&harness.events());
    let refused: Vec<&String> = outputs
        .iter()
        .filter(|o| o.contains("repository metadata the agent may not change"))
        .collect();
    assert_eq!(refused.len(), 6, "{outputs:#?}");
    assert!(refused[0].contains("`.git/hooks/post-checkout` is in .git"));
    assert!(refused[1].contains("`.kiln/config.toml` is in .kiln/"));
    for path in [
        ".git/hooks/post-checkout",
        ".git/config-extra",
        ".git/hooks/pre-commit",
        ".kiln/config.toml",
        ".kiln/calc.py",
        "vendor",
    ] {
        assert!(!harness.path(path).exists(), "{path} was written");
    }
    assert!(harness.read("calc.py").contains("Small statistics helpers"));
    // Other files are patched as ever.
    assert_eq!(harness.read("notes/ok.txt"), "touch PWNED\n");
}

#[tokio::test]
async fn a_hanging_check_is_killed_at_its_timeout() {
    let mut harness = Harness::new(Mode::Code, vec![Turn::message("Nothing to change.")]).await;
    harness.config.checks = vec![CheckSpec {
        name: "hangs".into(),
        command: "sleep 1000".into(),
        timeout_secs: Some(1),
    }];
    harness.config.limits.check_fix_turns = 0;
    let outcome = harness.run("Look around.").await;

    assert_eq!(outcome.status, AttemptStatus::ChecksFailed);
    let result = &outcome.checks[0];
    assert!(result.timed_out);
    assert!(!result.passed);
    assert_eq!(result.exit_code, None);
    assert_eq!(result.reason.as_deref(), Some("timed out after 1s"));
    assert_eq!(
        outcome.reason.as_deref(),
        Some("check hangs failed (timed out, see t1)")
    );
    let timed_out = harness.events().iter().any(|e| {
        matches!(
            &e.kind,
            EventKind::ExecEnd {
                chunk_id,
                timed_out: true,
                ..
            } if chunk_id == "t1"
        )
    });
    assert!(timed_out);
}

#[tokio::test]
async fn an_invalid_citation_gets_one_correction_turn_and_the_corrected_message_is_final() {
    let wrong = "Fixed 【F:calc.py†L900-L901】 and 【t7†L1】.";
    let corrected = "Fixed `median` 【F:calc.py†L19-L20】.";
    let mut harness = Harness::new(
        Mode::Code,
        vec![
            Turn::apply_patch(FIX),
            Turn::message(wrong),
            Turn::message(corrected),
        ],
    )
    .await;
    harness.config.checks = vec![tests_check()];
    let outcome = harness.run("Fix the median tests.").await;

    assert_eq!(outcome.status, AttemptStatus::Succeeded);
    assert_eq!(outcome.final_message.as_deref(), Some(corrected));
    let requests = harness.requests();
    assert_eq!(requests.len(), 3);
    let told = last_user_text(&requests[2]);
    assert!(
        told.contains("【F:calc.py†L900-L901】: L900-L901 is out of range"),
        "{told}"
    );
    assert!(
        told.contains("【t7†L1】: no terminal chunk t7 in this attempt"),
        "{told}"
    );
    let citations = citation_events(&harness);
    assert_eq!(citations.len(), 1);
    assert!(citations[0].valid);
    assert_eq!(outcome.citations, citations);
}

#[tokio::test]
async fn a_citation_still_invalid_after_the_correction_is_flagged_and_there_is_no_second_turn() {
    let harness = Harness::new(
        Mode::Code,
        vec![
            Turn::message("See 【F:missing.py†L1】."),
            Turn::message("See 【F:missing.py†L2】 and 【F:calc.py†L1】."),
        ],
    )
    .await;
    let outcome = harness.run("Where is the parser?").await;
    assert_eq!(outcome.status, AttemptStatus::Succeeded);
    assert_eq!(harness.requests().len(), 2);
    let citations = citation_events(&harness);
    assert_eq!(
        citations.iter().map(|c| c.valid).collect::<Vec<_>>(),
        [false, true]
    );
    assert_eq!(
        citations[0].reason.as_deref(),
        Some("no file `missing.py` in the workspace")
    );
}

#[tokio::test]
async fn ask_tasks_and_no_checks_run_no_checks() {
    for (mode, run_checks) in [(Mode::Ask, true), (Mode::Code, false)] {
        let mut harness = Harness::new(mode, vec![Turn::message("It averages.")]).await;
        harness.config.checks = vec![tests_check()];
        harness.config.run_checks = run_checks;
        let outcome = harness.run("What does median do?").await;
        assert_eq!(outcome.status, AttemptStatus::Succeeded);
        assert!(outcome.checks.is_empty());
        assert!(check_results(&harness).is_empty());
    }
}

#[tokio::test]
async fn no_fix_turn_is_given_past_the_turn_limit() {
    let mut harness = Harness::new(Mode::Code, vec![Turn::message("Done.")]).await;
    harness.config.checks = vec![tests_check()];
    harness.config.limits.max_turns = 1;
    let outcome = harness.run("Fix the median tests.").await;
    assert_eq!(outcome.status, AttemptStatus::ChecksFailed);
    assert_eq!(harness.requests().len(), 1);
    assert_eq!(
        check_results(&harness).len(),
        1,
        "no second run without a fix turn"
    );
    assert!(warnings(&harness.events())
        .iter()
        .any(|w| w == "a check failed, and the turn limit leaves no turn to fix it"));
}
