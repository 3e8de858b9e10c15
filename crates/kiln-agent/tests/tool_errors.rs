//! Tool calls that go wrong reach the model as tool errors it can act on;
//! none of them ends or crashes the attempt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use kiln_protocol::{AttemptStatus, EventKind, Mode};
use kiln_testkit::{ScriptedToolCall, Turn};
use serde_json::json;

#[tokio::test]
async fn unknown_tool_is_answered_with_the_available_tools() {
    let harness = Harness::new(
        Mode::Code,
        vec![
            Turn::tool_call("read_file", json!({"path": "calc.py"})),
            Turn::shell("sed -n '11,20p' calc.py"),
            Turn::message(
                "`median` sorts its input first 【F:calc.py†L16】; it has no line 99 \
                 【F:calc.py†L99】.",
            ),
        ],
    )
    .await;
    let outcome = harness.run("How does median order its values?").await;
    let events = harness.events();

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    let outputs = tool_outputs(&events);
    assert_eq!(
        outputs[0],
        "error: unknown tool `read_file`; the available tools are: shell, apply_patch, update_plan"
    );
    let failed = events.iter().any(|e| {
        matches!(&e.kind, EventKind::ToolOutput { success: false, output, .. } if output.contains("read_file"))
    });
    assert!(failed, "the error output is marked unsuccessful");
    assert_eq!(sent_tool_outputs(&harness.requests()[1])[0], outputs[0]);
    // The bad citation is flagged, the good one passes.
    let verdicts: Vec<(bool, Option<String>)> = outcome
        .citations
        .iter()
        .map(|c| (c.valid, c.reason.clone()))
        .collect();
    let lines = harness.read("calc.py").lines().count();
    assert_eq!(
        verdicts,
        [
            (true, None),
            (
                false,
                Some(format!("L99 is out of range: calc.py has {lines} lines"))
            )
        ]
    );
    assert_well_formed_log(&events, 1);
}

#[tokio::test]
async fn malformed_arguments_are_explained_and_the_model_recovers() {
    let harness = Harness::new(
        Mode::Code,
        vec![
            // Truncated JSON, a wrong field name, a bad status, then a correct call.
            Turn::tool_calls(vec![ScriptedToolCall::raw(
                "shell",
                r#"{"command": ["ls", "-la""#,
            )]),
            Turn::tool_calls(vec![ScriptedToolCall::raw("shell", r#"{"cmd": "ls"}"#)]),
            Turn::tool_calls(vec![ScriptedToolCall::raw(
                "update_plan",
                r#"{"plan": [{"step": "Look around", "status": "doing"}]}"#,
            )]),
            Turn::shell("ls"),
            Turn::message("The repository holds calc.py and its tests."),
        ],
    )
    .await;
    let outcome = harness.run("What is in this repository?").await;
    let outputs = tool_outputs(&harness.events());

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert!(
        outputs[0]
            .starts_with("error: invalid arguments for `shell`: the arguments are not valid JSON"),
        "{}",
        outputs[0]
    );
    assert!(outputs[0].contains(r#"expected arguments like {"command": ["bash", "-lc""#));
    assert!(
        outputs[1].contains("missing field `command`"),
        "{}",
        outputs[1]
    );
    assert!(
        outputs[2].contains(
            "`plan[0].status` is \"doing\", but must be one of pending, in_progress, completed"
        ),
        "{}",
        outputs[2]
    );
    assert!(outputs[3].starts_with("[chunk t1] exit code 0"));
    assert!(outputs[3].contains("calc.py"));
}

#[tokio::test]
async fn patch_that_does_not_apply_is_reported_then_a_corrected_one_applies() {
    let stale = "*** Begin Patch
*** Update File: calc.py
@@ def median(values):
-    return (ordered[middle] + ordered[middle + 2]) / 2
+    return (ordered[middle - 1] + ordered[middle]) / 2
*** End Patch";
    let correct = "*** Begin Patch
*** Update File: calc.py
@@ def median(values):
-    return (ordered[middle] + ordered[middle + 1]) / 2
+    return (ordered[middle - 1] + ordered[middle]) / 2
*** End Patch";
    let harness = Harness::new(
        Mode::Code,
        vec![
            Turn::apply_patch(stale),
            Turn::shell("sed -n '16,20p' calc.py"),
            Turn::apply_patch(correct),
            Turn::message("Fixed the even-length median."),
        ],
    )
    .await;
    let original = harness.read("calc.py");
    let outcome = harness.run("Fix median for even-length lists.").await;
    let events = harness.events();
    let outputs = tool_outputs(&events);

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert!(
        outputs[0].starts_with("error: the patch was not applied, no file was changed: "),
        "{}",
        outputs[0]
    );
    assert!(
        outputs[0].contains("calc.py"),
        "names the file: {}",
        outputs[0]
    );
    assert!(outputs[2].starts_with("Success. Updated the following files:\nM calc.py"));
    let applied = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::PatchApplied { .. }))
        .count();
    assert_eq!(applied, 1, "only the correct patch counts as applied");
    assert_ne!(harness.read("calc.py"), original);
    assert!(harness
        .read("calc.py")
        .contains("ordered[middle - 1] + ordered[middle]"));
}

#[tokio::test]
async fn apply_patch_heredoc_in_a_shell_call_goes_to_the_patch_engine() {
    let script = "apply_patch <<'EOF'
*** Begin Patch
*** Add File: docs/usage.md
+Run `python3 -m unittest -q` to test.
*** End Patch
EOF
";
    let harness = Harness::new(
        Mode::Code,
        vec![Turn::shell(script), Turn::message("Added docs/usage.md.")],
    )
    .await;
    let outcome = harness.run("Document how to run the tests.").await;
    let events = harness.events();

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert_eq!(
        harness.read("docs/usage.md"),
        "Run `python3 -m unittest -q` to test.\n"
    );
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        EventKind::PatchApplied { changes, .. } if changes[0].path == "docs/usage.md"
    )));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::ExecBegin { .. })),
        "no shell process runs for a routed patch"
    );
}

/// apply_patch runs in kiln's process, outside the sandbox: a `cd` out of the
/// workspace, directly or through a symlink, must not move the patch root.
#[tokio::test]
async fn a_patch_cannot_leave_the_workspace_through_its_workdir() {
    let outside = tempfile::tempdir().unwrap();
    let patch = "*** Begin Patch\n*** Add File: planted.txt\n+owned\n*** End Patch";
    let escape_up = format!("cd .. && apply_patch <<'EOF'\n{patch}\nEOF\n");
    let escape_link = format!("cd out && apply_patch <<'EOF'\n{patch}\nEOF\n");
    let harness = Harness::new(
        Mode::Code,
        vec![
            Turn::shell(escape_up),
            Turn::shell(escape_link),
            Turn::message("Both refused."),
        ],
    )
    .await;
    std::os::unix::fs::symlink(outside.path(), harness.path("out")).unwrap();
    let parent = harness.repo.path().parent().unwrap().to_path_buf();
    let outcome = harness.run("Plant a file.").await;

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert!(
        !parent.join("planted.txt").exists(),
        "patched above the workspace"
    );
    assert!(
        !outside.path().join("planted.txt").exists(),
        "patched through a symlink"
    );
    let requests = harness.requests();
    let second = requests[1].body.to_string();
    let third = requests[2].body.to_string();
    assert!(second.contains("outside the workspace"), "{second}");
    assert!(third.contains("outside the workspace"), "{third}");
}

#[tokio::test]
async fn ask_mode_offers_no_patch_tool_and_refuses_patches() {
    let patch = "*** Begin Patch\n*** Delete File: calc.py\n*** End Patch";
    let harness = Harness::new(
        Mode::Ask,
        vec![
            Turn::apply_patch(patch),
            Turn::shell(format!("apply_patch <<'EOF'\n{patch}\nEOF\n")),
            Turn::shell("grep -n 'def ' calc.py"),
            Turn::message("calc.py defines mean, median and spread 【t1†L1-L3】."),
        ],
    )
    .await;
    let outcome = harness.run("Which functions does calc.py define?").await;
    let outputs = tool_outputs(&harness.events());

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert!(harness.path("calc.py").exists());
    assert_eq!(
        offered_tools(&harness.requests()[0]),
        ["shell", "update_plan"]
    );
    for refused in &outputs[..2] {
        assert!(
            refused.starts_with("error: apply_patch is not available: this is an Ask task"),
            "{refused}"
        );
    }
    assert!(harness.requests()[0].body["instructions"]
        .as_str()
        .unwrap()
        .contains("read-only"));
    assert!(outcome.citations[0].valid, "{:?}", outcome.citations);
}

#[tokio::test]
async fn long_output_reaches_the_model_shortened_and_the_log_whole() {
    let mut harness = Harness::new(
        Mode::Code,
        vec![
            Turn::shell("seq 1 5000"),
            Turn::message("Counted to 5000 【t1†L4990-L5000】."),
        ],
    )
    .await;
    harness.config.limits.tool_output_max_bytes = 2000;
    let outcome = harness.run("Count to 5000.").await;
    let events = harness.events();

    let logged: String = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ExecOutput { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let expected: String = (1..=5000).map(|n| format!("{n}\n")).collect();
    assert_eq!(logged, expected, "the log keeps every byte");

    let sent = &sent_tool_outputs(&harness.requests()[1])[0];
    assert!(sent.len() < 2300, "sent {} bytes", sent.len());
    assert!(sent.starts_with("[chunk t1] exit code 0, "));
    assert!(sent.contains("\n1\n2\n3\n"));
    assert!(sent.ends_with("4999\n5000\n"));
    let marker = sent.lines().find(|l| l.starts_with("[… ")).unwrap();
    let next: u64 = marker
        .rsplit("the next line is line ")
        .next()
        .unwrap()
        .trim_end_matches(" …]")
        .parse()
        .unwrap();
    let first_after_marker = sent
        .split(marker)
        .nth(1)
        .unwrap()
        .trim_start()
        .lines()
        .next()
        .unwrap();
    assert_eq!(
        first_after_marker,
        next.to_string(),
        "the marker names the next line"
    );
    assert!(outcome.citations[0].valid, "{:?}", outcome.citations);
}

#[tokio::test]
async fn a_turn_with_neither_text_nor_calls_finishes_with_a_warning() {
    let harness = Harness::new(
        Mode::Code,
        vec![Turn::Reply {
            text: None,
            tool_calls: Vec::new(),
            usage: None,
        }],
    )
    .await;
    let outcome = harness.run("Do something.").await;
    assert_eq!(outcome.status, AttemptStatus::Succeeded);
    assert_eq!(outcome.final_message.as_deref(), Some(""));
    assert!(warnings(&harness.events())
        .iter()
        .any(|w| w.contains("neither a message nor a tool call")));
    assert_eq!(harness.server.turns_served(), 1);
}

#[tokio::test]
async fn a_command_that_cannot_start_is_a_tool_error() {
    let harness = Harness::new(
        Mode::Code,
        vec![
            Turn::tool_call("shell", json!({"command": ["no-such-program-kiln"]})),
            Turn::tool_call(
                "shell",
                json!({"command": ["ls"], "workdir": "missing/dir"}),
            ),
            Turn::message("Neither worked."),
        ],
    )
    .await;
    let outcome = harness.run("Try it.").await;
    let outputs = tool_outputs(&harness.events());
    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert!(outputs[0].starts_with("[chunk t1] "), "{}", outputs[0]);
    assert!(
        !outputs[0].starts_with("[chunk t1] exit code 0"),
        "{}",
        outputs[0]
    );
    assert!(
        outputs[1].starts_with("error: workdir `missing/dir` is not a directory"),
        "{}",
        outputs[1]
    );
}
