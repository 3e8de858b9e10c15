//! Budgets and cancellation end an attempt with a clear reason, promptly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use kiln_protocol::{AttemptStatus, EventKind, Mode, Usage};
use kiln_testkit::Turn;

#[tokio::test]
async fn turn_limit_ends_a_model_that_never_finishes() {
    let turns = (0..10).map(|_| Turn::shell("ls")).collect();
    let mut harness = Harness::new(Mode::Code, turns).await;
    harness.config.limits.max_turns = 3;
    let outcome = harness.run("List the files forever.").await;
    let events = harness.events();

    assert_eq!(outcome.status, AttemptStatus::Failed);
    assert_eq!(
        outcome.reason.as_deref(),
        Some("turn limit 3 reached before the model finished")
    );
    assert_eq!(harness.server.turns_served(), 3);
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        EventKind::Error { message } if message.contains("turn limit 3")
    )));
    assert!(matches!(
        &events.last().unwrap().kind,
        EventKind::AttemptFinished { status: AttemptStatus::Failed, reason: Some(r), .. } if r.contains("turn limit")
    ));
    // Every call made got its output: the history can be resumed.
    assert_eq!(tool_outputs(&events).len(), 3);
    assert_eq!(kiln_agent::history_from_events(&events), outcome.history);
}

#[tokio::test]
async fn token_budget_ends_the_attempt_once_used_up() {
    let usage = Usage {
        input_tokens: 900,
        cached_input_tokens: 0,
        output_tokens: 150,
    };
    let turns = (0..5)
        .map(|_| Turn::shell("ls").with_usage(usage))
        .collect();
    let mut harness = Harness::new(Mode::Code, turns).await;
    harness.config.limits.max_total_tokens = Some(2000);
    let outcome = harness.run("Keep going.").await;

    assert_eq!(outcome.status, AttemptStatus::Failed);
    assert_eq!(
        outcome.reason.as_deref(),
        Some("token budget 2000 used up (2100 tokens) before the model finished")
    );
    assert_eq!(harness.server.turns_served(), 2);
    assert_eq!(outcome.usage.total(), 2100);
}

#[tokio::test]
async fn cancellation_kills_a_running_command_and_ends_the_attempt() {
    let mut harness = Harness::new(
        Mode::Code,
        vec![
            Turn::shell("echo started; sleep 300; echo never"),
            Turn::message("unreachable"),
        ],
    )
    .await;
    let cancel = harness.cancel.clone();
    // Cancel as soon as the command's first output is logged.
    harness.extra_sinks.push(on_first(
        |kind| matches!(kind, EventKind::ExecOutput { .. }),
        move |_| cancel.cancel(),
    ));
    let outcome = harness.run("Wait for a long time.").await;
    let events = harness.events();

    assert_eq!(outcome.status, AttemptStatus::Cancelled);
    assert_eq!(outcome.reason.as_deref(), Some("cancelled by the user"));
    let end = events.iter().find_map(|e| match &e.kind {
        EventKind::ExecEnd {
            exit_code,
            duration_ms,
            ..
        } => Some((*exit_code, *duration_ms)),
        _ => None,
    });
    let (exit_code, duration_ms) = end.expect("the command's end is logged");
    assert_eq!(exit_code, None, "the command was killed, not finished");
    assert!(duration_ms < 300_000);
    assert_eq!(
        harness.server.turns_served(),
        1,
        "no model turn after cancelling"
    );
    assert!(matches!(
        &events.last().unwrap().kind,
        EventKind::AttemptFinished {
            status: AttemptStatus::Cancelled,
            ..
        }
    ));
    assert_eq!(kiln_agent::history_from_events(&events), outcome.history);
}

#[tokio::test]
async fn wall_clock_limit_stops_a_command_that_runs_too_long() {
    let mut harness = Harness::new(
        Mode::Code,
        vec![Turn::shell("sleep 300"), Turn::message("unreachable")],
    )
    .await;
    harness.config.limits.wall_clock = Some(Duration::from_secs(2));
    let outcome = harness.run("Sleep.").await;
    let events = harness.events();

    assert_eq!(outcome.status, AttemptStatus::Failed);
    assert_eq!(
        outcome.reason.as_deref(),
        Some("wall-clock limit of 2s reached before the model finished")
    );
    assert!(
        harness.server.turns_served() <= 1,
        "no turn after the deadline"
    );
    // Whatever was running when the time ran out was stopped and logged.
    let begun = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ExecBegin { .. }))
        .count();
    let ended = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ExecEnd { .. }))
        .count();
    assert_eq!(begun, ended);
}

#[tokio::test]
async fn command_timeout_is_reported_to_the_model() {
    let harness = Harness::new(
        Mode::Code,
        vec![
            Turn::tool_call(
                "shell",
                // No login shell: its profile scripts could outlast a short timeout.
                serde_json::json!({"command": ["sh", "-c", "echo begun; sleep 300"], "timeout_ms": 2000}),
            ),
            Turn::message("The command hangs."),
        ],
    )
    .await;
    let outcome = harness.run("Run it.").await;
    let events = harness.events();

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    let sent = &sent_tool_outputs(&harness.requests()[1])[0];
    assert!(sent.starts_with("[chunk t1] timed out after"), "{sent}");
    assert!(sent.contains("begun"));
    assert!(events.iter().any(|e| matches!(
        e.kind,
        EventKind::ExecEnd {
            timed_out: true,
            ..
        }
    )));
}
