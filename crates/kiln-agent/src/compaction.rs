//! Keeping the conversation inside the model's context window: estimating
//! its size, shortening old tool outputs, and the pieces of a summary-based
//! compaction.

use kiln_model::ToolSpec;
use kiln_protocol::{Item, Role};

use crate::output::{prefix_at_line_boundary, suffix_at_line_boundary};
use crate::prompt::SUMMARY_MARKER;

/// Compaction starts when a request would fill this share of the window.
pub(crate) const COMPACT_AT_PERCENT: u64 = 80;
/// Tool outputs this recent are never shortened.
const KEEP_RECENT_OUTPUTS: usize = 3;
/// Older tool outputs are cut to about this many bytes.
const SHRUNK_OUTPUT_BYTES: usize = 1024;
/// Rough bytes per token for English and code with common tokenizers.
const BYTES_PER_TOKEN: u64 = 4;
/// Per-item overhead of the wire formats (role, ids, JSON punctuation).
const ITEM_OVERHEAD_BYTES: usize = 16;

/// An estimate of the tokens a request takes, from its bytes.
pub(crate) fn estimate_tokens(
    instructions: &str,
    tools: &[ToolSpec],
    guidance: Option<&str>,
    history: &[Item],
) -> u64 {
    let tool_bytes: usize = tools
        .iter()
        .map(|t| t.name.len() + t.description.len() + t.parameters.to_string().len())
        .sum();
    let bytes =
        instructions.len() + tool_bytes + guidance.map_or(0, str::len) + items_bytes(history);
    (bytes as u64).div_ceil(BYTES_PER_TOKEN)
}

pub(crate) fn items_bytes(items: &[Item]) -> usize {
    items
        .iter()
        .map(|item| {
            ITEM_OVERHEAD_BYTES
                + match item {
                    Item::Message { text, .. } => text.len(),
                    Item::FunctionCall {
                        call_id,
                        name,
                        arguments,
                    } => call_id.len() + name.len() + arguments.len(),
                    Item::FunctionCallOutput { call_id, output } => call_id.len() + output.len(),
                }
        })
        .sum()
}

pub(crate) fn tokens_for_bytes(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(BYTES_PER_TOKEN)
}

/// Whether a request of `tokens` should be compacted first.
pub(crate) fn needs_compaction(tokens: u64, window: u64) -> bool {
    tokens.saturating_mul(100) > window.saturating_mul(COMPACT_AT_PERCENT)
}

/// Shorten every tool output but the most recent ones to its head and tail.
/// Returns whether anything changed.
pub(crate) fn shrink_old_tool_outputs(history: &mut [Item]) -> bool {
    let output_positions: Vec<usize> = history
        .iter()
        .enumerate()
        .filter(|(_, item)| matches!(item, Item::FunctionCallOutput { .. }))
        .map(|(index, _)| index)
        .collect();
    let old = output_positions.len().saturating_sub(KEEP_RECENT_OUTPUTS);
    let mut changed = false;
    for &index in &output_positions[..old] {
        if let Item::FunctionCallOutput { output, .. } = &mut history[index] {
            if output.len() > SHRUNK_OUTPUT_BYTES + 200 {
                *output = shorten(output);
                changed = true;
            }
        }
    }
    changed
}

fn shorten(output: &str) -> String {
    let head = prefix_at_line_boundary(output, SHRUNK_OUTPUT_BYTES / 2);
    let tail = suffix_at_line_boundary(output, SHRUNK_OUTPUT_BYTES / 2);
    let dropped = output.len() - head.len() - tail.len();
    let newline = if head.ends_with('\n') { "" } else { "\n" };
    format!(
        "{head}{newline}[… {dropped} bytes of this older output were dropped to save context; \
         the full text is in the event log …]\n{tail}"
    )
}

/// The most recent message the user wrote (the prompt or a follow-up), as
/// opposed to a summary kiln put in.
pub(crate) fn last_user_message(history: &[Item]) -> Option<&Item> {
    history.iter().rev().find(|item| {
        matches!(item, Item::Message { role: Role::User, text } if !text.starts_with(SUMMARY_MARKER))
    })
}

/// Drop the oldest items until the rest is at most `max_bytes`, cutting only
/// where no tool output is separated from its call. The newest turn is kept
/// even when it alone is larger.
pub(crate) fn keep_newest(history: &[Item], max_bytes: usize) -> Vec<Item> {
    let cut_points: Vec<usize> = (0..history.len())
        .filter(|&i| match &history[i] {
            Item::Message { .. } => true,
            Item::FunctionCall { .. } => {
                i == 0 || !matches!(history[i - 1], Item::FunctionCall { .. })
            }
            Item::FunctionCallOutput { .. } => false,
        })
        .collect();
    let start = cut_points
        .iter()
        .copied()
        .find(|&i| items_bytes(&history[i..]) <= max_bytes)
        .or_else(|| cut_points.last().copied())
        .unwrap_or(history.len());
    history[start..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> Item {
        Item::FunctionCall {
            call_id: id.into(),
            name: "shell".into(),
            arguments: "{}".into(),
        }
    }

    fn output(id: &str, text: &str) -> Item {
        Item::FunctionCallOutput {
            call_id: id.into(),
            output: text.into(),
        }
    }

    #[test]
    fn old_outputs_are_shortened_and_recent_ones_kept() {
        let big = (1..=2000)
            .map(|n| format!("line {n}\n"))
            .collect::<String>();
        let mut history = vec![Item::user("task")];
        for id in ["a", "b", "c", "d", "e"] {
            history.push(call(id));
            history.push(output(id, &big));
        }
        assert!(shrink_old_tool_outputs(&mut history));
        let sizes: Vec<usize> = history
            .iter()
            .filter_map(|i| match i {
                Item::FunctionCallOutput { output, .. } => Some(output.len()),
                _ => None,
            })
            .collect();
        assert!(sizes[0] < 1400 && sizes[1] < 1400, "{sizes:?}");
        assert_eq!(&sizes[2..], [big.len(), big.len(), big.len()]);
        let Item::FunctionCallOutput { output, .. } = &history[2] else {
            panic!()
        };
        assert!(output.starts_with("line 1\n"));
        assert!(output.ends_with("line 2000\n"));
        assert!(output.contains("were dropped to save context"));
        // A second pass has nothing left to do.
        assert!(!shrink_old_tool_outputs(&mut history));
    }

    #[test]
    fn compaction_threshold_is_eighty_percent() {
        assert!(!needs_compaction(800, 1000));
        assert!(needs_compaction(801, 1000));
    }

    #[test]
    fn keep_newest_never_orphans_an_output() {
        let history = vec![
            Item::user("task"),
            call("a"),
            call("b"),
            output("a", &"x".repeat(500)),
            output("b", "y"),
            Item::assistant("next"),
            call("c"),
            output("c", "z"),
        ];
        let kept = keep_newest(&history, 200);
        assert_eq!(kept[0], Item::assistant("next"));
        assert_eq!(kept.len(), 3);
        let all = keep_newest(&history, 1 << 20);
        assert_eq!(all, history);
    }

    #[test]
    fn the_last_user_message_skips_summaries() {
        let history = vec![
            Item::user("do the task"),
            Item::user(format!("{SUMMARY_MARKER} summary")),
            Item::assistant("ok"),
        ];
        assert_eq!(
            last_user_message(&history),
            Some(&Item::user("do the task"))
        );
    }
}
