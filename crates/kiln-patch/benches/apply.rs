//! Apply-time benchmark: `cargo bench -p kiln-patch`. Prints the median of several
//! runs per scenario and the throughput over the file size. Each run starts from a
//! freshly written file; only `kiln_patch::apply` (read, seek, rebuild, diff, write)
//! is timed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

const RUNS: usize = 7;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    println!("kiln-patch apply benchmark, median of {RUNS} runs\n");

    let big = numbered_lines(2_000_000);
    let one_change_in_the_middle = single_change_patch(1_000_000);
    bench(
        root,
        "100 MB file, one change in the middle",
        &big,
        &one_change_in_the_middle,
    );

    bench_plan_only(
        root,
        "100 MB file, one change: plan only (no write)",
        &big,
        &one_change_in_the_middle,
    );

    let one_change_at_the_end = single_change_patch(1_999_990);
    bench(
        root,
        "100 MB file, one change near the end",
        &big,
        &one_change_at_the_end,
    );

    let ten_mb = numbered_lines(200_000);
    bench(
        root,
        "10 MB file, one change in the middle",
        &ten_mb,
        &single_change_patch(100_000),
    );

    let ten_k = numbered_lines(10_000);
    bench(
        root,
        "10k-line file, 1,000 chunks",
        &ten_k,
        &many_chunks_patch(1_000, 10),
    );

    let missing = "*** Begin Patch\n*** Update File: f.txt\n@@\n-no such line\n+x\n*** End Patch\n";
    bench_failure(
        root,
        "100 MB file, chunk not found (error path)",
        &big,
        missing,
    );

    // One million identical lines and a pattern that almost matches everywhere:
    // a naive line-by-line search would do 50 comparisons per line.
    let mut repetitive = "a\n".repeat(1_000_000);
    repetitive.push_str("b\n");
    let mut near_everywhere = String::from("*** Begin Patch\n*** Update File: f.txt\n@@\n");
    near_everywhere.push_str(&" a\n".repeat(50));
    near_everywhere.push_str("-b\n+c\n*** End Patch\n");
    bench(
        root,
        "repetitive 2 MB file, 51-line chunk at the end",
        &repetitive,
        &near_everywhere,
    );
}

/// `count` lines of about 50 bytes: `line 000123: the quick brown fox jumps over it`.
fn numbered_lines(count: usize) -> String {
    let mut text = String::with_capacity(count * 52);
    for i in 0..count {
        text.push_str(&format!(
            "line {i:07}: the quick brown fox jumps over the dog\n"
        ));
    }
    text
}

fn line(i: usize) -> String {
    format!("line {i:07}: the quick brown fox jumps over the dog")
}

fn single_change_patch(at: usize) -> String {
    format!(
        "*** Begin Patch\n*** Update File: f.txt\n@@\n {}\n {}\n-{}\n+changed line\n {}\n*** End Patch\n",
        line(at - 2),
        line(at - 1),
        line(at),
        line(at + 1)
    )
}

fn many_chunks_patch(chunks: usize, every: usize) -> String {
    let mut patch = String::from("*** Begin Patch\n*** Update File: f.txt\n");
    for chunk in 0..chunks {
        let at = chunk * every + 5;
        patch.push_str(&format!(
            "@@\n {}\n-{}\n+edited {chunk}\n {}\n",
            line(at - 1),
            line(at),
            line(at + 1)
        ));
    }
    patch.push_str("*** End Patch\n");
    patch
}

fn bench(root: &Path, name: &str, original: &str, patch: &str) {
    let file = root.join("f.txt");
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        fs::write(&file, original).expect("write original");
        let started = Instant::now();
        let report = kiln_patch::apply(root, patch).expect("benchmark patch applies");
        times.push(started.elapsed());
        assert_eq!(report.changes.len(), 1);
    }
    print_result(name, original.len(), &mut times);
}

/// Parse and plan (read, seek, rebuild, diff) without writing: the CPU side.
fn bench_plan_only(root: &Path, name: &str, original: &str, patch: &str) {
    fs::write(root.join("f.txt"), original).expect("write original");
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let plan = kiln_patch::parse(patch)
            .expect("benchmark patch parses")
            .plan(root)
            .expect("benchmark patch plans");
        times.push(started.elapsed());
        assert_eq!(plan.changes().len(), 1);
    }
    print_result(name, original.len(), &mut times);
}

fn bench_failure(root: &Path, name: &str, original: &str, patch: &str) {
    let file = root.join("f.txt");
    fs::write(&file, original).expect("write original");
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let error = kiln_patch::apply(root, patch).expect_err("benchmark patch must fail");
        times.push(started.elapsed());
        assert!(error.to_string().contains("re-read the file"));
    }
    print_result(name, original.len(), &mut times);
}

fn print_result(name: &str, bytes: usize, times: &mut [Duration]) {
    times.sort();
    let median = times[times.len() / 2];
    let megabytes = bytes as f64 / 1_000_000.0;
    println!(
        "{name:<50} {megabytes:>7.1} MB  median {:>9.1} ms  (min {:>8.1}, max {:>8.1})  {:>7.0} MB/s",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        megabytes / median.as_secs_f64()
    );
}
