//! The conversation over time: compaction near the context window, steering
//! messages during a run, and resuming a run from its event log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use kiln_agent::{history_from_events, AttemptInput, EventLog};
use kiln_protocol::{AttemptStatus, EventKind, Item, Mode, Role, Usage};
use kiln_testkit::Turn;

fn usage(input_tokens: u64) -> Usage {
    Usage {
        input_tokens,
        cached_input_tokens: 0,
        output_tokens: 40,
    }
}

fn texts(request: &kiln_testkit::RecordedRequest) -> Vec<String> {
    input_items(request)
        .iter()
        .map(|item| match item["type"].as_str() {
            Some("function_call_output") => item["output"].as_str().unwrap_or("").to_string(),
            _ => item["content"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        })
        .collect()
}

#[tokio::test]
async fn nearing_the_window_summarises_the_conversation_and_carries_on() {
    let summary = "Task: find how many numbers the two listings print. Ran `seq 1 3000` \
                   (chunk t1) and `seq 3001 6000` (chunk t2); both succeeded. Next: report.";
    let mut harness = Harness::new(
        Mode::Code,
        vec![
            Turn::shell("seq 1 3000").with_usage(usage(3_000)),
            // The provider reports a request close to the window.
            Turn::shell("seq 3001 6000").with_usage(usage(16_500)),
            // The summary turn kiln asks for.
            Turn::message(summary).with_usage(usage(5_000)),
            Turn::message("They print 6000 numbers together 【t2†L3000】."),
        ],
    )
    .await;
    harness.config.limits.context_window = 20_000;
    harness.config.limits.tool_output_max_bytes = 4096;
    let prompt = "How many numbers do `seq 1 3000` and `seq 3001 6000` print together?";
    let outcome = harness.run(prompt).await;
    let events = harness.events();
    let requests = harness.requests();

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert_eq!(requests.len(), 4);

    // The third request asks for the summary, without tools.
    let summary_request = &requests[2];
    assert!(summary_request.body["tools"]
        .as_array()
        .is_none_or(|tools| tools.is_empty()));
    let asked = texts(summary_request);
    assert!(
        asked.last().unwrap().contains("Write a summary"),
        "{asked:?}"
    );

    // The history is replaced by the task and the summary, and logged.
    let compacted: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ContextCompacted {
                items,
                tokens_before,
            } => Some((items.clone(), *tokens_before)),
            _ => None,
        })
        .collect();
    assert_eq!(compacted.len(), 1);
    let (items, tokens_before) = &compacted[0];
    assert!(*tokens_before > 16_000);
    assert_eq!(items[0], Item::user(prompt));
    let Item::Message {
        role: Role::User,
        text,
    } = &items[1]
    else {
        panic!("{items:?}");
    };
    assert!(text.contains(summary));
    assert!(
        text.contains("[chunk t2]"),
        "the chunk numbering survives: {text}"
    );
    assert_eq!(items.len(), 2);

    // The next turn carries on from the summary, without the old outputs.
    let last = texts(&requests[3]);
    assert!(last.iter().any(|t| t.contains(summary)));
    assert!(!last.iter().any(|t| t.contains("[chunk t1]")));
    assert!(!last.iter().any(|t| t.contains("\n2999\n")));

    // The citation still resolves: chunks outlive compaction.
    assert!(outcome.citations[0].valid, "{:?}", outcome.citations);
    let usage_events = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Usage { .. }))
        .count();
    assert_eq!(usage_events, 4, "the summary turn's usage counts too");
    assert_eq!(history_from_events(&events), outcome.history);
}

#[tokio::test]
async fn shortening_old_tool_outputs_is_tried_before_summarising() {
    let mut turns: Vec<Turn> = (0..4)
        .map(|i| {
            Turn::shell(format!("seq {} {}", i * 1000 + 1, i * 1000 + 1000))
                .with_usage(usage(2_000))
        })
        .collect();
    turns.push(Turn::shell("seq 4001 5000").with_usage(usage(16_500)));
    turns.push(Turn::message("Done."));
    let mut harness = Harness::new(Mode::Code, turns).await;
    harness.config.limits.context_window = 20_000;
    harness.config.limits.tool_output_max_bytes = 4096;
    let outcome = harness.run("Print five ranges.").await;
    let events = harness.events();
    let requests = harness.requests();

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert_eq!(requests.len(), 6, "no summary turn was needed");
    let compactions = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ContextCompacted { .. }))
        .count();
    assert_eq!(compactions, 1);
    let outputs = sent_tool_outputs(&requests[5]);
    assert_eq!(outputs.len(), 5);
    for old in &outputs[..2] {
        assert!(old.contains("dropped to save context"), "{old}");
        assert!(old.starts_with("[chunk t"), "the header survives: {old}");
    }
    for recent in &outputs[2..] {
        assert!(!recent.contains("dropped to save context"));
    }
    assert_eq!(history_from_events(&events), outcome.history);
}

#[tokio::test]
async fn a_steering_message_reaches_the_model_at_the_next_turn() {
    let (steer, steering) = tokio::sync::mpsc::channel::<String>(4);
    let mut harness = Harness::new(
        Mode::Code,
        vec![
            Turn::shell("python3 -m unittest -q"),
            Turn::shell("grep -n 'def spread' -A4 calc.py"),
            Turn::message("Two median tests fail 【t1†L1】; spread looks right 【t2†L1-L5】."),
        ],
    )
    .await;
    // The user speaks up while the first command runs.
    harness.extra_sinks.push(on_first(
        |kind| matches!(kind, EventKind::ExecBegin { .. }),
        move |_| {
            steer
                .try_send("Also check whether spread() is correct.".to_string())
                .unwrap();
        },
    ));
    let input = AttemptInput::new("Why do the tests fail?").with_steering(steering);
    let outcome = harness.run_input(input, 1).await;
    let events = harness.events();

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    let second = texts(&harness.requests()[1]);
    assert_eq!(
        second.last().unwrap(),
        "Also check whether spread() is correct."
    );
    let kinds = kinds(&events);
    let steered = events
        .iter()
        .position(|e| matches!(&e.kind, EventKind::Message { role: Role::User, text } if text.starts_with("Also check")))
        .unwrap();
    let first_output = kinds.iter().position(|k| k == "tool.output").unwrap();
    assert!(
        steered > first_output,
        "the message follows the running call's output"
    );
    assert_eq!(history_from_events(&events), outcome.history);
}

#[tokio::test]
async fn a_steering_message_during_the_final_answer_gets_its_own_turn() {
    let (steer, steering) = tokio::sync::mpsc::channel::<String>(4);
    let mut harness = Harness::new(
        Mode::Code,
        vec![
            Turn::message("calc.py has three functions."),
            Turn::message("calc.py has three functions: mean, median and spread."),
        ],
    )
    .await;
    harness.extra_sinks.push(on_first(
        |kind| matches!(kind, EventKind::ModelDelta { .. }),
        move |_| {
            steer.try_send("Name them, please.".to_string()).unwrap();
        },
    ));
    let input = AttemptInput::new("What is in calc.py?").with_steering(steering);
    let outcome = harness.run_input(input, 1).await;

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert_eq!(
        outcome.final_message.as_deref(),
        Some("calc.py has three functions: mean, median and spread.")
    );
    assert_eq!(harness.requests().len(), 2);
    assert_eq!(
        texts(&harness.requests()[1]).last().unwrap(),
        "Name them, please."
    );
}

#[tokio::test]
async fn a_resumed_run_continues_the_conversation_and_the_chunk_numbering() {
    let harness = Harness::new(
        Mode::Code,
        vec![
            Turn::shell("python3 -m unittest -q"),
            Turn::message("Two median tests fail 【t1†L1】."),
            Turn::shell("grep -n 'middle' calc.py"),
            Turn::message(
                "The bug is the `middle + 1` index 【t2†L3】, seen failing in 【t1†L1】.",
            ),
        ],
    )
    .await;
    let first = harness.run("Why do the tests fail?").await;
    assert_eq!(first.status, AttemptStatus::Succeeded, "{:?}", first.reason);
    let log = harness.events();
    let next_seq = log.last().unwrap().seq + 1;

    let second = harness
        .run_input(
            AttemptInput::resume("Where exactly is the bug?", &log),
            next_seq,
        )
        .await;
    let all = harness.events();

    assert_eq!(
        second.status,
        AttemptStatus::Succeeded,
        "{:?}",
        second.reason
    );
    assert_well_formed_log(&all, 1);
    let chunks: Vec<String> = all
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ExecBegin { chunk_id, .. } => Some(chunk_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(chunks, ["t1", "t2"]);
    // The follow-up request carries the first run's conversation, then the new prompt.
    let resumed = texts(&harness.requests()[2]);
    assert!(resumed.iter().any(|t| t == "Why do the tests fail?"));
    assert!(resumed.iter().any(|t| t.starts_with("[chunk t1]")));
    assert_eq!(resumed.last().unwrap(), "Where exactly is the bug?");
    // Citations of the earlier run's chunk hold.
    assert_eq!(second.citations.len(), 2);
    assert!(
        second.citations.iter().all(|c| c.valid),
        "{:?}",
        second.citations
    );
    assert_eq!(history_from_events(&all), second.history);
}

#[tokio::test]
async fn the_simple_entry_point_numbers_chunks_after_the_history() {
    let harness = Harness::new(
        Mode::Code,
        vec![
            Turn::shell("ls"),
            Turn::message("Listed."),
            Turn::shell("ls tests"),
            Turn::message("Listed tests."),
        ],
    )
    .await;
    harness.run("List files.").await;
    let log = harness.events();
    let sink = kiln_agent::MemorySink::new();
    let events = EventLog::new(log.last().unwrap().seq + 1, vec![sink.clone()]);
    let outcome = kiln_agent::run_attempt(
        &harness.config,
        harness.client(),
        harness.sandbox(),
        history_from_events(&log),
        "List the tests.".to_string(),
        &events,
        harness.cancel.clone(),
    )
    .await;
    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    let chunk = sink.events().iter().find_map(|e| match &e.kind {
        EventKind::ExecBegin { chunk_id, .. } => Some(chunk_id.clone()),
        _ => None,
    });
    assert_eq!(chunk.as_deref(), Some("t2"));
}

#[tokio::test]
async fn a_provider_rejecting_the_length_triggers_compaction_and_a_retry() {
    let too_long = serde_json::json!({"error": {
        "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9120 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded"
    }});
    let harness = Harness::new(
        Mode::Code,
        vec![
            Turn::shell("seq 1 2000"),
            Turn::http_error(400, too_long.to_string()),
            Turn::message("Ran `seq 1 2000` (chunk t1); it printed 2000 lines. Next: answer."),
            Turn::message("It prints 2000 lines 【t1†L2000】."),
        ],
    )
    .await;
    let outcome = harness.run("How many lines does `seq 1 2000` print?").await;
    let events = harness.events();
    let requests = harness.requests();

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert_eq!(requests.len(), 4);
    assert!(warnings(&events)
        .iter()
        .any(|w| w.contains("too long for the model's context window")));
    assert!(texts(&requests[2])
        .last()
        .unwrap()
        .contains("Write a summary"));
    assert!(events
        .iter()
        .any(|e| matches!(e.kind, EventKind::ContextCompacted { .. })));
    assert!(texts(&requests[3])
        .iter()
        .any(|t| t.contains("it printed 2000 lines")));
    assert!(outcome.citations[0].valid, "{:?}", outcome.citations);
}

#[tokio::test]
async fn a_failed_summary_falls_back_to_dropping_the_oldest_turns() {
    let mut turns: Vec<Turn> = (0..3)
        .map(|i| {
            Turn::shell(format!("seq {} {}", i * 1000 + 1, i * 1000 + 1000))
                .with_usage(usage(2_000))
        })
        .collect();
    turns[2] = turns[2].clone().with_usage(usage(16_500));
    turns.push(Turn::http_error_message(
        400,
        "summaries are not supported here",
    ));
    turns.push(Turn::message("Printed three ranges."));
    let mut harness = Harness::new(Mode::Code, turns).await;
    harness.config.limits.context_window = 20_000;
    harness.config.limits.tool_output_max_bytes = 4096;
    let outcome = harness.run("Print three ranges.").await;
    let events = harness.events();

    assert_eq!(
        outcome.status,
        AttemptStatus::Succeeded,
        "{:?}",
        outcome.reason
    );
    assert!(warnings(&events)
        .iter()
        .any(|w| w.starts_with("summarising the conversation failed")));
    let items = events
        .iter()
        .rev()
        .find_map(|e| match &e.kind {
            EventKind::ContextCompacted { items, .. } => Some(items.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(items[0], Item::user("Print three ranges."));
    let Item::Message { text, .. } = &items[1] else {
        panic!("{items:?}")
    };
    assert!(text.contains("dropped without a summary"), "{text}");
    assert!(text.contains("[chunk t3]"), "{text}");
    assert!(
        !text.contains("The oldest 0 "),
        "something was dropped: {text}"
    );
    let kept_outputs: Vec<&str> = items
        .iter()
        .filter_map(|i| match i {
            Item::FunctionCallOutput { output, .. } => Some(output.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        kept_outputs.iter().all(|o| !o.starts_with("[chunk t1]")),
        "the oldest turn went: {kept_outputs:?}"
    );
    assert!(
        kept_outputs.iter().any(|o| o.starts_with("[chunk t3]")),
        "the newest turn stays: {kept_outputs:?}"
    );
    // What was kept starts at a turn boundary: no output without its call.
    let calls: Vec<&str> = items
        .iter()
        .filter_map(|i| match i {
            Item::FunctionCall { call_id, .. } => Some(call_id.as_str()),
            _ => None,
        })
        .collect();
    for item in &items {
        if let Item::FunctionCallOutput { call_id, .. } = item {
            assert!(calls.contains(&call_id.as_str()), "orphan output {call_id}");
        }
    }
    assert_eq!(history_from_events(&events), outcome.history);
}
