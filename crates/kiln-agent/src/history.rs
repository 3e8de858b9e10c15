//! Rebuilding an attempt's conversation from its event log.

use kiln_protocol::{Event, EventKind, Item};

/// The conversation recorded in `events`, as [`run_attempt`](crate::run_attempt)
/// held it when the log ended: `message` events become messages, `tool.call`
/// and `tool.output` become function calls and their outputs, and
/// `context.compacted` replaces everything before it with its items. Streaming
/// deltas, command output and other events are not part of the conversation.
///
/// A call left without an output (the log of a run that was killed) gets one
/// saying so, because providers refuse a history with unanswered calls.
pub fn history_from_events(events: &[Event]) -> Vec<Item> {
    let mut history = Vec::new();
    for event in events {
        match &event.kind {
            EventKind::Message { role, text } => history.push(Item::Message {
                role: *role,
                text: text.clone(),
            }),
            EventKind::ToolCall {
                call_id,
                name,
                arguments,
            } => history.push(Item::FunctionCall {
                call_id: call_id.clone(),
                name: name.clone(),
                arguments: arguments.clone(),
            }),
            EventKind::ToolOutput {
                call_id, output, ..
            } => history.push(Item::FunctionCallOutput {
                call_id: call_id.clone(),
                output: output.clone(),
            }),
            EventKind::ContextCompacted { items, .. } => history = items.clone(),
            _ => {}
        }
    }
    answer_unanswered_calls(&mut history);
    history
}

/// Give every function call without an output an output saying it never ran,
/// placed right after the calls of its turn.
pub(crate) fn answer_unanswered_calls(history: &mut Vec<Item>) {
    let answered: std::collections::HashSet<String> = history
        .iter()
        .filter_map(|item| match item {
            Item::FunctionCallOutput { call_id, .. } => Some(call_id.clone()),
            _ => None,
        })
        .collect();
    let mut index = 0;
    while index < history.len() {
        if let Item::FunctionCall { call_id, .. } = &history[index] {
            if !answered.contains(call_id) {
                let output = Item::FunctionCallOutput {
                    call_id: call_id.clone(),
                    output: "error: this call never ran (the run stopped before it)".to_string(),
                };
                // After the run of consecutive calls and outputs this call belongs to.
                let mut insert_at = index + 1;
                while insert_at < history.len()
                    && matches!(
                        history[insert_at],
                        Item::FunctionCall { .. } | Item::FunctionCallOutput { .. }
                    )
                {
                    insert_at += 1;
                }
                history.insert(insert_at, output);
            }
        }
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use kiln_protocol::Role;

    use super::*;

    fn ev(seq: u64, kind: EventKind) -> Event {
        Event::new(seq, kind)
    }

    #[test]
    fn messages_calls_and_outputs_are_kept_in_order_and_the_rest_ignored() {
        let events = vec![
            ev(
                1,
                EventKind::Message {
                    role: Role::User,
                    text: "fix it".into(),
                },
            ),
            ev(
                2,
                EventKind::ModelDelta {
                    text: "Look".into(),
                },
            ),
            ev(
                3,
                EventKind::Message {
                    role: Role::Assistant,
                    text: "Looking.".into(),
                },
            ),
            ev(
                4,
                EventKind::ToolCall {
                    call_id: "c1".into(),
                    name: "shell".into(),
                    arguments: "{}".into(),
                },
            ),
            ev(
                5,
                EventKind::Warning {
                    message: "w".into(),
                },
            ),
            ev(
                6,
                EventKind::ToolOutput {
                    call_id: "c1".into(),
                    output: "[chunk t1] exit code 0, 0.0s".into(),
                    success: true,
                },
            ),
        ];
        assert_eq!(
            history_from_events(&events),
            vec![
                Item::user("fix it"),
                Item::assistant("Looking."),
                Item::FunctionCall {
                    call_id: "c1".into(),
                    name: "shell".into(),
                    arguments: "{}".into()
                },
                Item::FunctionCallOutput {
                    call_id: "c1".into(),
                    output: "[chunk t1] exit code 0, 0.0s".into()
                },
            ]
        );
    }

    #[test]
    fn compaction_replaces_everything_before_it() {
        let events = vec![
            ev(
                1,
                EventKind::Message {
                    role: Role::User,
                    text: "old".into(),
                },
            ),
            ev(
                2,
                EventKind::Message {
                    role: Role::Assistant,
                    text: "old answer".into(),
                },
            ),
            ev(
                3,
                EventKind::ContextCompacted {
                    items: vec![Item::user("task"), Item::user("summary")],
                    tokens_before: 900,
                },
            ),
            ev(
                4,
                EventKind::Message {
                    role: Role::Assistant,
                    text: "after".into(),
                },
            ),
        ];
        assert_eq!(
            history_from_events(&events),
            vec![
                Item::user("task"),
                Item::user("summary"),
                Item::assistant("after")
            ]
        );
    }

    #[test]
    fn calls_left_unanswered_by_a_killed_run_get_an_output() {
        let call = |id: &str| EventKind::ToolCall {
            call_id: id.into(),
            name: "shell".into(),
            arguments: "{}".into(),
        };
        let events = vec![
            ev(
                1,
                EventKind::Message {
                    role: Role::User,
                    text: "go".into(),
                },
            ),
            ev(2, call("a")),
            ev(3, call("b")),
            ev(
                4,
                EventKind::ToolOutput {
                    call_id: "a".into(),
                    output: "ok".into(),
                    success: true,
                },
            ),
        ];
        let history = history_from_events(&events);
        assert_eq!(history.len(), 5);
        assert!(matches!(
            &history[4],
            Item::FunctionCallOutput { call_id, output } if call_id == "b" && output.contains("never ran")
        ));
    }
}
