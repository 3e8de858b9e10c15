use std::time::Duration;

use super::{command_spans, final_message_at};
use crate::process::Line;
use crate::tools::Tool;

fn lines(texts: &[&str]) -> Vec<Line> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| Line {
            at: Duration::from_millis(10 * i as u64),
            text: text.to_string(),
        })
        .collect()
}

#[test]
fn kiln_spans_pair_each_begin_with_its_end() {
    let stdout = lines(&[
        r#"{"seq":1,"type":"attempt.started"}"#,
        r#"{"seq":2,"type":"exec.begin","call_id":"a"}"#,
        r#"{"seq":3,"type":"exec.output","text":"exec.begin"}"#,
        r#"{"seq":4,"type":"exec.end","call_id":"a"}"#,
        r#"{"seq":5,"type":"exec.begin","call_id":"b"}"#,
        r#"{"seq":6,"type":"message","role":"assistant","text":"done"}"#,
    ]);
    let spans = command_spans(Tool::Kiln, &stdout);
    assert_eq!(
        spans,
        vec![
            (Duration::from_millis(10), Some(Duration::from_millis(30))),
            (Duration::from_millis(40), None),
        ]
    );
    assert_eq!(
        final_message_at(Tool::Kiln, &stdout),
        Some(Duration::from_millis(50))
    );
}

#[test]
fn codex_spans_count_only_command_items() {
    let stdout = lines(&[
        r#"{"type":"item.started","item":{"type":"command_execution"}}"#,
        r#"{"type":"item.completed","item":{"type":"command_execution"}}"#,
        r#"{"type":"item.completed","item":{"type":"reasoning"}}"#,
        r#"{"type":"item.completed","item":{"type":"agent_message","text":"ok"}}"#,
    ]);
    let spans = command_spans(Tool::Codex, &stdout);
    assert_eq!(
        spans,
        vec![(Duration::from_millis(0), Some(Duration::from_millis(10)))]
    );
    assert_eq!(
        final_message_at(Tool::Codex, &stdout),
        Some(Duration::from_millis(30))
    );
}

#[test]
fn a_user_message_is_not_the_final_message() {
    let stdout = lines(&[r#"{"type":"message","role":"user","text":"go"}"#]);
    assert_eq!(final_message_at(Tool::Kiln, &stdout), None);
}
