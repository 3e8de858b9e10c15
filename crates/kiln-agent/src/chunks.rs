//! Terminal chunks: each command's output under a stable id (`t1`, `t2`, …)
//! that the final message cites.

use std::collections::BTreeMap;

use kiln_protocol::{Event, EventKind, Item};

use crate::output::CapturedOutput;

/// Bytes of a chunk's beginning kept in memory.
pub(crate) const CHUNK_HEAD_BYTES: usize = 64 * 1024;
/// Bytes of a chunk's end kept in memory.
pub(crate) const CHUNK_TAIL_BYTES: usize = 64 * 1024;

/// The output of every command of an attempt, by chunk number.
///
/// Each chunk keeps its first and last 64 KiB plus exact byte and line counts
/// of the whole output, so memory stays bounded however much a command prints.
/// Citation checks compare line ranges against the full line count; the text
/// of the dropped middle lives only in the `exec.output` events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkStore {
    chunks: BTreeMap<u64, CapturedOutput>,
}

impl ChunkStore {
    pub fn new() -> Self {
        ChunkStore::default()
    }

    /// Rebuild the chunks recorded in an event log (`exec.begin` opens a chunk,
    /// `exec.output` texts fill it), e.g. to check citations of a resumed run.
    pub fn from_events(events: &[Event]) -> Self {
        let mut store = ChunkStore::new();
        for event in events {
            match &event.kind {
                EventKind::ExecBegin { chunk_id, .. } => {
                    if let Some(number) = parse_chunk_id(chunk_id) {
                        store.chunks.entry(number).or_insert_with(new_capture);
                    }
                }
                EventKind::ExecOutput { chunk_id, text, .. } => {
                    if let Some(number) = parse_chunk_id(chunk_id) {
                        store
                            .chunks
                            .entry(number)
                            .or_insert_with(new_capture)
                            .push(text);
                    }
                }
                _ => {}
            }
        }
        store
    }

    /// The chunk with id `id` (`t7`).
    pub fn get(&self, id: &str) -> Option<&CapturedOutput> {
        parse_chunk_id(id).and_then(|number| self.chunks.get(&number))
    }

    /// Store `output` as chunk `t{number}`, replacing any earlier one.
    pub fn insert(&mut self, number: u64, output: CapturedOutput) {
        self.chunks.insert(number, output);
    }

    /// Ids of the stored chunks, in order.
    pub fn ids(&self) -> impl Iterator<Item = String> + '_ {
        self.chunks.keys().map(|n| chunk_id(*n))
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The highest chunk number stored, 0 when empty.
    pub fn last_number(&self) -> u64 {
        self.chunks.keys().next_back().copied().unwrap_or(0)
    }
}

pub(crate) fn new_capture() -> CapturedOutput {
    CapturedOutput::new(CHUNK_HEAD_BYTES, CHUNK_TAIL_BYTES)
}

pub(crate) fn chunk_id(number: u64) -> String {
    format!("t{number}")
}

/// `t7` → 7. Leading zeros and anything but `t` + digits are refused.
pub(crate) fn parse_chunk_id(id: &str) -> Option<u64> {
    let digits = id.strip_prefix('t')?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header every command output sent to the model starts with.
pub(crate) const CHUNK_HEADER_PREFIX: &str = "[chunk t";

/// The highest chunk number mentioned as `[chunk tN]` anywhere in `history`
/// (tool outputs, and the note a compaction leaves), so that a resumed
/// attempt continues the numbering instead of reusing ids.
pub(crate) fn last_chunk_number_in(history: &[Item]) -> u64 {
    history
        .iter()
        .map(|item| match item {
            Item::Message { text, .. } => text.as_str(),
            Item::FunctionCallOutput { output, .. } => output.as_str(),
            Item::FunctionCall { .. } => "",
        })
        .flat_map(chunk_numbers_in)
        .max()
        .unwrap_or(0)
}

fn chunk_numbers_in(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.match_indices(CHUNK_HEADER_PREFIX)
        .filter_map(move |(index, _)| {
            // The prefix is ASCII, so the byte after it is a char boundary.
            let rest = &text[index + CHUNK_HEADER_PREFIX.len()..];
            let digits_end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[digits_end..]
                .starts_with(']')
                .then(|| rest[..digits_end].parse().ok())
                .flatten()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_parse_strictly() {
        assert_eq!(parse_chunk_id("t7"), Some(7));
        assert_eq!(parse_chunk_id("t123"), Some(123));
        for bad in ["t", "t0", "t07", "7", "T7", "t7a", "f7"] {
            assert_eq!(parse_chunk_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn numbering_continues_after_the_highest_chunk_in_history() {
        let history = vec![
            Item::user("run the tests"),
            Item::FunctionCallOutput {
                call_id: "a".into(),
                output: "[chunk t3] exit code 1, 0.1s\nFAILED".into(),
            },
            Item::user("[chunk t12] was the last terminal chunk before compaction"),
            Item::FunctionCallOutput {
                call_id: "b".into(),
                output: "mentions [chunk t99 without a bracket and [chunk tx]".into(),
            },
        ];
        assert_eq!(last_chunk_number_in(&history), 12);
        assert_eq!(last_chunk_number_in(&[]), 0);
    }

    #[test]
    fn store_rebuilds_chunks_from_events() {
        use kiln_protocol::ExecStream;
        let events = vec![
            Event::new(
                1,
                EventKind::ExecBegin {
                    call_id: "c".into(),
                    chunk_id: "t1".into(),
                    command: vec!["true".into()],
                    cwd: "/".into(),
                },
            ),
            Event::new(
                2,
                EventKind::ExecBegin {
                    call_id: "d".into(),
                    chunk_id: "t2".into(),
                    command: vec!["ls".into()],
                    cwd: "/".into(),
                },
            ),
            Event::new(
                3,
                EventKind::ExecOutput {
                    chunk_id: "t2".into(),
                    stream: ExecStream::Stdout,
                    text: "a\nb".into(),
                },
            ),
            Event::new(
                4,
                EventKind::ExecOutput {
                    chunk_id: "t2".into(),
                    stream: ExecStream::Stderr,
                    text: "c\n".into(),
                },
            ),
        ];
        let store = ChunkStore::from_events(&events);
        assert_eq!(store.ids().collect::<Vec<_>>(), ["t1", "t2"]);
        assert_eq!(store.get("t1").unwrap().total_lines(), 0);
        assert_eq!(store.get("t2").unwrap().text(), "a\nbc\n");
        assert_eq!(store.last_number(), 2);
    }
}
