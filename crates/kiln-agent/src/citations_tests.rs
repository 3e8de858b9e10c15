use std::fs;

use super::*;
use crate::chunks::new_capture;

fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("src")).unwrap();
    fs::write(
        dir.path().join("src/calc.py"),
        (1..=30).map(|n| format!("line {n}\n")).collect::<String>(),
    )
    .unwrap();
    fs::write(dir.path().join("README.md"), "one\ntwo").unwrap();
    dir
}

fn chunks() -> ChunkStore {
    let mut store = ChunkStore::new();
    let mut output = new_capture();
    output.push("FAIL: test_divide\nTraceback\n  File calc.py\nZeroDivisionError\n");
    store.insert(3, output);
    store
}

fn check(message: &str, root: &Path) -> Vec<CitationCheck> {
    check_citations(message, root, &chunks())
}

#[test]
fn parses_file_and_chunk_citations_with_their_ranges() {
    let found = parse_citations(
        "Fixed 【F:src/calc.py†L10-L24】 and the run 【t3†L2】 shows it; also 【F:a b.rs†L1-7】.",
    );
    let parsed: Vec<_> = found.iter().map(|c| c.parsed.clone().unwrap()).collect();
    assert_eq!(
        parsed,
        vec![
            (
                CitationTarget::File("src/calc.py".into()),
                LineRange { start: 10, end: 24 }
            ),
            (
                CitationTarget::Chunk("t3".into()),
                LineRange { start: 2, end: 2 }
            ),
            (
                CitationTarget::File("a b.rs".into()),
                LineRange { start: 1, end: 7 }
            ),
        ]
    );
    assert_eq!(found[1].raw, "【t3†L2】");
}

#[test]
fn malformed_citations_are_reported_not_dropped() {
    let found =
        parse_citations("【F:x.rs】 【t3†lines 2】 【4:0†source】 【F:y.rs†L5-L2】 【F:z†L0】");
    assert_eq!(found.len(), 5);
    let reasons: Vec<String> = found.into_iter().map(|c| c.parsed.unwrap_err()).collect();
    assert!(
        reasons[0].contains("expected 【F:path†Lstart-Lend】"),
        "{}",
        reasons[0]
    );
    assert!(reasons[1].contains("not of the form"), "{}", reasons[1]);
    assert!(
        reasons[2].contains("unknown citation target `4:0`"),
        "{}",
        reasons[2]
    );
    assert!(
        reasons[3].contains("ends before it starts"),
        "{}",
        reasons[3]
    );
    assert!(reasons[4].contains("start at 1"), "{}", reasons[4]);
}

#[test]
fn unclosed_bracket_does_not_swallow_the_next_citation() {
    let found = parse_citations("broken 【F:a.rs and then 【t3†L1】");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].raw, "【t3†L1】");
}

#[test]
fn valid_file_and_chunk_citations_pass() {
    let ws = workspace();
    let checks = check(
        "See 【F:src/calc.py†L1-L30】, 【F:README.md†L2】 and 【t3†L1-L4】.",
        ws.path(),
    );
    assert_eq!(checks.len(), 3);
    assert!(checks.iter().all(|c| c.valid), "{checks:?}");
}

#[test]
fn out_of_range_lines_are_flagged_with_the_real_length() {
    let ws = workspace();
    let checks = check(
        "【F:src/calc.py†L25-L31】 【t3†L5】 【F:README.md†L3】",
        ws.path(),
    );
    assert!(checks.iter().all(|c| !c.valid));
    assert_eq!(
        checks[0].reason.as_deref(),
        Some("L25-L31 is out of range: src/calc.py has 30 lines")
    );
    assert_eq!(
        checks[1].reason.as_deref(),
        Some("L5 is out of range: chunk t3 has 4 lines")
    );
    assert!(checks[2]
        .reason
        .as_deref()
        .unwrap()
        .contains("README.md has 2 lines"));
}

#[test]
fn missing_files_and_chunks_are_flagged() {
    let ws = workspace();
    let checks = check("【F:src/nope.py†L1】 【t9†L1】 【F:src†L1】", ws.path());
    assert_eq!(
        checks[0].reason.as_deref(),
        Some("no file `src/nope.py` in the workspace")
    );
    assert_eq!(
        checks[1].reason.as_deref(),
        Some("no terminal chunk t9 in this attempt")
    );
    assert_eq!(
        checks[2].reason.as_deref(),
        Some("`src` is a directory, not a regular file; kiln reads only regular files from the workspace")
    );
}

#[test]
fn citations_cannot_escape_the_workspace() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret.txt"), "s\n").unwrap();
    let ws = workspace();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        ws.path().join("link.txt"),
    )
    .unwrap();
    let absolute = format!("【F:{}†L1】", outside.path().join("secret.txt").display());
    let message = format!("【F:../secret.txt†L1】 【F:link.txt†L1】 {absolute}");
    let checks = check(&message, ws.path());
    assert_eq!(checks.len(), 3);
    assert!(checks.iter().all(|c| !c.valid), "{checks:?}");
    assert!(checks[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("leaves the workspace"));
    assert!(checks[1]
        .reason
        .as_deref()
        .unwrap()
        .contains("leads outside"));
    assert!(checks[2].reason.as_deref().unwrap().contains("is absolute"));
}

#[test]
fn chunk_lines_count_the_whole_output_even_when_the_middle_was_dropped() {
    let mut store = ChunkStore::new();
    let mut output = new_capture();
    for n in 1..=100_000 {
        output.push(&format!("output line {n}\n"));
    }
    assert!(output.is_partial());
    store.insert(1, output);
    let checks = check_citations(
        "【t1†L99990-L100000】 【t1†L100001】",
        Path::new("/"),
        &store,
    );
    assert!(checks[0].valid, "{checks:?}");
    assert!(!checks[1].valid);
}

#[test]
fn a_cited_sparse_4_gb_file_is_read_only_up_to_the_cap() {
    let ws = workspace();
    let huge = fs::File::create(ws.path().join("huge.bin")).unwrap();
    huge.set_len(4 << 30).unwrap();
    let checks = check("【F:huge.bin†L1】 【F:huge.bin†L2-L5】", ws.path());
    // Line 1 exists (the file has bytes, none of them a newline).
    assert!(checks[0].valid, "{checks:?}");
    assert!(!checks[1].valid);
    let reason = checks[1].reason.as_deref().unwrap();
    assert!(
        reason.contains("larger than the 32 MiB kiln reads to check a citation"),
        "{reason}"
    );
}

#[test]
fn a_citation_of_a_file_exactly_at_the_cap_counts_its_lines() {
    let ws = workspace();
    let mut text = vec![b'x'; usize::try_from(MAX_CITED_FILE_BYTES).unwrap()];
    *text.last_mut().unwrap() = b'\n';
    fs::write(ws.path().join("full.txt"), &text).unwrap();
    let checks = check("【F:full.txt†L1】 【F:full.txt†L2】", ws.path());
    assert!(checks[0].valid, "{checks:?}");
    assert_eq!(
        checks[1].reason.as_deref(),
        Some("L2 is out of range: full.txt has 1 lines")
    );
}

#[test]
fn citations_through_host_links_fifos_and_directory_links_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("passwd"), "root:x:0:0\n").unwrap();
    let ws = workspace();
    std::os::unix::fs::symlink("/proc/self/environ", ws.path().join("env.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.path().join("docs")).unwrap();
    nix::unistd::mkfifo(
        &ws.path().join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let checks = check(
        "【F:env.txt†L1】 【F:docs/passwd†L1】 【F:pipe†L1】",
        ws.path(),
    );
    assert!(checks.iter().all(|c| !c.valid), "{checks:?}");
    assert!(checks[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("leads outside"));
    assert!(checks[1]
        .reason
        .as_deref()
        .unwrap()
        .contains("leads outside"));
    assert!(checks[2].reason.as_deref().unwrap().contains("a FIFO"));
}
