//! The task kiln exists for: a failing test fixed over several turns, on a
//! real repository, with real commands and a model over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use kiln_agent::history_from_events;
use kiln_protocol::{AttemptStatus, EventKind, FileChangeKind, Mode, Role, StepStatus};
use kiln_testkit::{ScriptedToolCall, Turn};
use serde_json::json;

const FIX: &str = "*** Begin Patch
*** Update File: calc.py
@@ def median(values):
     if len(ordered) % 2 == 1:
         return ordered[middle]
-    return (ordered[middle] + ordered[middle + 1]) / 2
+    return (ordered[middle - 1] + ordered[middle]) / 2
*** End Patch";

const FINAL: &str = "Fixed `median` for even-length input: it averaged the middle element with \
the one after it instead of the one before, so `median([10, 20])` indexed past the end \
【t1†L8-L11】 and `median([4, 1, 3, 2])` gave 3.5. It now averages `ordered[middle - 1]` and \
`ordered[middle]` 【F:calc.py†L16-L20】. `python3 -m unittest -q` passes 【t3†L2-L4】.";

fn script() -> Vec<Turn> {
    vec![
        // Look first: run the tests and read the module, in parallel.
        Turn::tool_calls(vec![
            ScriptedToolCall::new(
                "shell",
                json!({"command": ["bash", "-lc", "python3 -m unittest -q"]}),
            ),
            ScriptedToolCall::new("shell", json!({"command": ["cat", "-n", "calc.py"]})),
        ]),
        // Plan and patch.
        Turn::tool_calls(vec![
            ScriptedToolCall::new(
                "update_plan",
                json!({"plan": [
                    {"step": "Reproduce the failing median tests", "status": "completed"},
                    {"step": "Fix the even-length branch of median", "status": "in_progress"},
                    {"step": "Re-run the test suite", "status": "pending"}
                ]}),
            ),
            ScriptedToolCall::new("apply_patch", json!({"input": FIX})),
        ]),
        Turn::shell("python3 -m unittest -q"),
        Turn::message(FINAL),
    ]
}

#[tokio::test]
async fn failing_test_is_fixed_in_four_turns_with_checked_citations() {
    let harness = Harness::new(Mode::Code, script()).await;
    let outcome = harness
        .run("The median tests fail. Make the test suite pass.")
        .await;
    let events = harness.events();

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert_eq!(outcome.final_message.as_deref(), Some(FINAL));
    assert!(harness
        .read("calc.py")
        .contains("return (ordered[middle - 1] + ordered[middle]) / 2"));
    let check = std::process::Command::new("python3")
        .args(["-m", "unittest", "-q"])
        .current_dir(harness.repo.path())
        .output()
        .unwrap();
    assert!(check.status.success(), "the repository's tests still fail");

    // Every step is in the log, in order.
    assert_well_formed_log(&events, 1);
    let started = &events[0].kind;
    let EventKind::AttemptStarted {
        instructions, mode, ..
    } = started
    else {
        panic!("first event is {started:?}");
    };
    assert_eq!(*mode, Mode::Code);
    assert_eq!(
        instructions,
        &[harness.path("AGENTS.md").display().to_string()]
    );
    let exec_chunks: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ExecEnd {
                chunk_id,
                exit_code,
                ..
            } => Some(format!("{chunk_id}:{exit_code:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(exec_chunks, ["t1:Some(1)", "t2:Some(0)", "t3:Some(0)"]);
    let patched: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::PatchApplied { changes, .. } => Some(changes.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(patched.len(), 1);
    assert_eq!(patched[0][0].path, "calc.py");
    assert_eq!(patched[0][0].kind, FileChangeKind::Modify);
    let plan = events.iter().find_map(|e| match &e.kind {
        EventKind::PlanUpdated { plan, .. } => Some(plan.clone()),
        _ => None,
    });
    assert_eq!(plan.unwrap()[1].status, StepStatus::InProgress);

    // The citations were checked and hold.
    let checks: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::CitationChecked(check) => Some(check.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(checks.len(), 3);
    assert!(checks.iter().all(|c| c.valid), "{checks:?}");
    assert_eq!(outcome.citations, checks);

    // The model saw what a model needs: the system prompt, AGENTS.md ahead of
    // the prompt, the tools, and each command's chunk header with its output.
    let requests = harness.requests();
    assert_eq!(requests.len(), 4);
    let first = &requests[0];
    assert!(first.body["instructions"]
        .as_str()
        .unwrap()
        .contains("【F:"));
    let first_input = input_items(first);
    let guidance = first_input[0]["content"][0]["text"].as_str().unwrap();
    assert!(guidance.contains("python3 -m unittest -q"));
    assert!(guidance.contains(&harness.path("AGENTS.md").display().to_string()));
    assert_eq!(
        first_input[1]["content"][0]["text"],
        "The median tests fail. Make the test suite pass."
    );
    assert_eq!(
        offered_tools(first),
        ["shell", "apply_patch", "update_plan"]
    );
    let outputs = sent_tool_outputs(&requests[1]);
    assert_eq!(outputs.len(), 2, "both parallel calls are answered");
    assert!(
        outputs[0].starts_with("[chunk t1] exit code 1, "),
        "{}",
        outputs[0]
    );
    assert!(outputs[0].contains("IndexError: list index out of range"));
    assert!(outputs[1].starts_with("[chunk t2] exit code 0"));
    assert!(outputs[1].contains("def median(values):"));
    let after_patch = sent_tool_outputs(&requests[2]);
    assert!(after_patch
        .iter()
        .any(|o| o.starts_with("Success. Updated the following files:\nM calc.py")));
    assert!(sent_tool_outputs(&requests[3])
        .last()
        .unwrap()
        .starts_with("[chunk t3] exit code 0"));

    // Usage is reported per turn and in total.
    let usage_events = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Usage { .. }))
        .count();
    assert_eq!(usage_events, 4);
    assert!(outcome.usage.input_tokens > 0);

    // The log alone rebuilds the conversation.
    assert_eq!(history_from_events(&events), outcome.history);
    assert!(matches!(
        outcome.history.last(),
        Some(kiln_protocol::Item::Message {
            role: Role::Assistant,
            ..
        })
    ));
}

#[tokio::test]
async fn chat_completions_provider_runs_the_same_fix() {
    let mut harness = Harness::new(Mode::Code, script()).await;
    harness.provider.wire_api = kiln_model::WireApi::Chat;
    let outcome = harness.run("Make the test suite pass.").await;
    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert!(harness
        .read("calc.py")
        .contains("return (ordered[middle - 1] + ordered[middle]) / 2"));
    assert!(harness
        .requests()
        .iter()
        .all(|r| r.path.ends_with("/chat/completions")));
    assert!(
        outcome.citations.iter().all(|c| c.valid),
        "{:?}",
        outcome.citations
    );
}

#[tokio::test]
async fn codex_dialect_scenario_fixes_the_bug_too() {
    // `exec_command` calls and an `apply_patch` heredoc, as Codex-trained models emit them.
    let script = kiln_testkit::scenarios::fix_calc_py_codex();
    let harness = Harness::new(Mode::Code, script.turns).await;
    let outcome = harness.run("Make the test suite pass.").await;
    let events = harness.events();

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert!(harness
        .read("calc.py")
        .contains("return (ordered[middle - 1] + ordered[middle]) / 2"));
    let outputs = tool_outputs(&events);
    assert!(
        outputs[0].starts_with("[chunk t1] exit code 1"),
        "{}",
        outputs[0]
    );
    assert!(outputs[1].starts_with("Success. Updated the following files:\nM calc.py"));
    assert!(
        outputs[2].starts_with("[chunk t2] exit code 0"),
        "{}",
        outputs[2]
    );
}
