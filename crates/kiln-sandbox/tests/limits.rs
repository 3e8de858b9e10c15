//! Limits: processes, memory, time (per command, overall, cancellation,
//! shutdown) and output. Each one ends the command, names itself in the
//! outcome, and leaves the sandbox usable; real cgroups and processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kiln_sandbox::{Backend, ExecRequest};
use support::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_fork_bomb_is_contained_and_the_run_ends() {
    for backend in [Backend::Bwrap, Backend::None] {
        let f = Fixture::new();
        let mut policy = f.policy(backend);
        policy.limits.max_processes = Some(64);
        let sandbox = kiln_sandbox::create(policy).unwrap();
        // Every process keeps forking forever: only the limits end it.
        let bomb = "python3 -c 'import os\nwhile True:\n  try: os.fork()\n  except OSError: pass'";
        let out = sh_with_timeout(&sandbox, &f.workspace, bomb, Duration::from_secs(3)).await;
        assert!(out.timed_out, "{backend}: {out:?}");
        assert_eq!(out.killed_by.as_deref(), Some("timeout 3s"), "{backend}");
        assert!(
            out.limits_reached.iter().any(|l| l == "process limit 64"),
            "{backend}: {:?}",
            out.limits_reached
        );
        // The sandbox is still usable afterwards.
        let after = sh(&sandbox, &f.workspace, "echo still-here").await;
        assert_eq!(after.output, "still-here\n", "{backend}");
    }
}

#[tokio::test]
async fn allocating_past_the_memory_limit_kills_only_that_command() {
    for backend in [Backend::Bwrap, Backend::None] {
        let f = Fixture::new();
        let mut policy = f.policy(backend);
        policy.limits.memory_bytes = Some(64 << 20);
        let sandbox = kiln_sandbox::create(policy).unwrap();
        let hog = "python3 -c \"b = bytearray(512 * 1024 * 1024); print('allocated')\"";
        let out = sh(&sandbox, &f.workspace, hog).await;
        assert_eq!(
            out.killed_by.as_deref(),
            Some("memory limit 64 MiB"),
            "{backend}: {out:?}"
        );
        assert!(!out.output.contains("allocated"), "{backend}");
        let after = sh(&sandbox, &f.workspace, "echo still-here").await;
        assert!(after.success(), "{backend}: {after:?}");
    }
}

/// Unique per test run, so the scan below finds only our processes.
fn marker_seconds() -> String {
    format!("86{}.5", std::process::id())
}

fn marker_processes(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        // Only the sleeps themselves, not the shells and bwrap whose
        // arguments mention the marker.
        if cmdline == format!("sleep\0{marker}\0").as_bytes() && process_alive(pid) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn timeout_kills_the_command_and_its_daemonised_children() {
    for backend in [Backend::Bwrap, Backend::None] {
        let f = Fixture::new();
        let sandbox = f.sandbox(backend);
        let marker = format!(
            "{}{}",
            marker_seconds(),
            if backend == Backend::None { 1 } else { 2 }
        );
        let script = format!(
            "setsid sleep {marker} > /dev/null 2>&1 < /dev/null &\n\
             nohup sleep {marker} > /dev/null 2>&1 &\n\
             (setsid sh -c 'sleep {marker}' &) \n\
             echo ready\n\
             sleep {marker}"
        );
        let (sender, mut receiver) = mpsc::channel(8);
        let request = ExecRequest::shell(script, &f.workspace).with_timeout(Duration::from_secs(3));
        let run = sandbox.exec(request, Some(sender), CancellationToken::new());
        let watch = async {
            // While the command runs, its daemons exist on the host.
            let mut seen = Vec::new();
            while let Some(chunk) = receiver.recv().await {
                if chunk.data.starts_with(b"ready") {
                    let m = marker.clone();
                    assert!(eventually(Duration::from_secs(2), || marker_processes(&m)
                        .len()
                        >= 4));
                    seen = marker_processes(&marker);
                }
            }
            seen
        };
        let (out, seen) = tokio::join!(run, watch);
        let out = out.unwrap();
        assert!(out.timed_out, "{backend}: {out:?}");
        assert_eq!(out.killed_by.as_deref(), Some("timeout 3s"));
        assert!(seen.len() >= 3, "{backend}: daemons not observed: {seen:?}");
        let gone = eventually(Duration::from_secs(5), || {
            marker_processes(&marker).is_empty()
        });
        assert!(gone, "{backend}: survivors {:?}", marker_processes(&marker));
    }
}

#[tokio::test]
async fn cancellation_kills_a_running_command_and_output_streams_before_the_end() {
    let f = Fixture::new();
    let sandbox = f.sandbox(Backend::Bwrap);
    let (sender, mut receiver) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let request = ExecRequest::shell("echo first; echo err >&2; sleep 600", &f.workspace);
    let run = sandbox.exec(request, Some(sender), cancel.clone());
    let watch = async {
        let mut chunks = Vec::new();
        while let Some(chunk) = receiver.recv().await {
            chunks.push(chunk);
            let seen: usize = chunks.iter().map(|c| c.data.len()).sum();
            if seen >= "first\nerr\n".len() {
                cancel.cancel();
            }
        }
        chunks
    };
    let (out, chunks) = tokio::join!(run, watch);
    let out = out.unwrap();
    assert!(out.cancelled);
    assert_eq!(out.killed_by.as_deref(), Some("cancelled"));
    let mut offset = 0;
    for chunk in &chunks {
        assert_eq!(chunk.offset, offset);
        offset += chunk.data.len() as u64;
    }
    assert!(chunks
        .iter()
        .any(|c| c.stream == kiln_protocol::ExecStream::Stderr));
    assert!(out.duration < Duration::from_secs(60));
}

#[tokio::test]
async fn huge_output_keeps_head_and_tail_and_spills_the_middle_up_to_a_cap() {
    let f = Fixture::new();
    let mut policy = f.policy(Backend::Bwrap);
    policy.limits.output_head_bytes = 1000;
    policy.limits.output_tail_bytes = 1000;
    policy.limits.output_spill_bytes = 1 << 20;
    let sandbox = kiln_sandbox::create(policy).unwrap();
    let script = "echo START; head -c 300000000 /dev/zero | tr '\\0' x; echo; echo END";
    let out = sh(&sandbox, &f.workspace, script).await;
    assert!(out.success(), "{:?}", out.killed_by);
    assert_eq!(out.total_bytes, 6 + 300_000_000 + 1 + 4);
    assert!(out.output.starts_with("START\nxxx"));
    assert!(out.output.ends_with("xxx\nEND\n"));
    assert_eq!(out.omitted_bytes, out.total_bytes - 2000);
    assert!(out.output.len() < 2000 + 200, "{}", out.output.len());
    let spill = out.spill_file.expect("spill file");
    assert_eq!(std::fs::metadata(spill).unwrap().len(), 1 << 20);
}

#[tokio::test]
async fn the_overall_deadline_ends_commands_with_a_longer_timeout() {
    let f = Fixture::new();
    let mut policy = f.policy(Backend::Bwrap);
    policy.limits.overall_deadline = Some(Duration::from_secs(1));
    let sandbox = kiln_sandbox::create(policy).unwrap();
    let out = sh_with_timeout(&sandbox, &f.workspace, "sleep 30", Duration::from_secs(60)).await;
    assert!(out.timed_out);
    assert_eq!(out.killed_by.as_deref(), Some("overall deadline 1s"));
    assert!(out.duration < Duration::from_secs(30));
}

#[tokio::test]
async fn shutdown_kills_running_commands_of_the_sandbox() {
    let f = Fixture::new();
    let sandbox = f.sandbox(Backend::Bwrap);
    let (sender, mut receiver) = mpsc::channel(4);
    let request = ExecRequest::shell("echo up; sleep 600", &f.workspace);
    let run = sandbox.exec(request, Some(sender), CancellationToken::new());
    let stopper = async {
        while let Some(chunk) = receiver.recv().await {
            if chunk.data.starts_with(b"up") {
                sandbox.shutdown();
            }
        }
    };
    let (out, ()) = tokio::join!(run, stopper);
    let out = out.unwrap();
    assert!(out.cancelled, "{out:?}");
    assert!(out.duration < Duration::from_secs(60));
}

#[tokio::test]
async fn describe_names_the_mechanism_behind_each_limit() {
    let f = Fixture::new();
    let mut policy = f.policy(Backend::Bwrap);
    policy.limits.memory_bytes = Some(2 << 30);
    policy.limits.max_processes = Some(256);
    policy.limits.cpu_cores = Some(1.5);
    let sandbox = kiln_sandbox::create(policy).unwrap();
    let text = sandbox.describe();
    assert!(text.contains("network off"), "{text}");
    assert!(text.contains("memory 2 GiB (cgroup"), "{text}");
    assert!(text.contains("processes 256 (cgroup"), "{text}");
    assert!(text.contains("cpu 1.5 cores (cgroup"), "{text}");
}

#[tokio::test]
async fn concurrent_commands_in_one_sandbox_keep_their_own_output_and_limits() {
    let f = Fixture::new();
    let mut policy = f.policy(Backend::Bwrap);
    policy.limits.memory_bytes = Some(64 << 20);
    let sandbox = kiln_sandbox::create(policy).unwrap();
    let hog = "python3 -c \"b = bytearray(512 * 1024 * 1024)\"";
    let (a, b, c) = tokio::join!(
        sh(&sandbox, &f.workspace, "for i in 1 2 3; do echo a$i; done"),
        sh(&sandbox, &f.workspace, hog),
        sh(&sandbox, &f.workspace, "echo c > c.txt; cat c.txt"),
    );
    assert_eq!(a.output, "a1\na2\na3\n");
    assert!(a.killed_by.is_none() && c.killed_by.is_none());
    assert_eq!(b.killed_by.as_deref(), Some("memory limit 64 MiB"));
    assert_eq!(c.output, "c\n");
}

#[tokio::test]
async fn filling_home_or_tmp_past_their_cap_fails_with_enospc() {
    let f = Fixture::new();
    let mut policy = f.policy(Backend::Bwrap);
    policy.limits.home_and_tmp_bytes = Some(8 << 20);
    let sandbox = kiln_sandbox::create(policy).unwrap();
    assert!(
        sandbox.describe().contains("at most 8 MiB together"),
        "{}",
        sandbox.describe()
    );
    for dir in ["/tmp", "$HOME"] {
        // One pipe (2>&1) so the error, the status and the size come in order.
        let script = format!(
            "head -c 16M /dev/zero 2>&1 > {dir}/big; echo status=$?; echo written=$(wc -c < {dir}/big)"
        );
        let out = sh(&sandbox, &f.workspace, &script).await;
        assert!(
            out.output.contains("No space left on device"),
            "{dir}: {}",
            out.output
        );
        assert!(!out.output.contains("status=0"), "{dir}: {}", out.output);
        let written: u64 = out
            .output
            .lines()
            .find_map(|line| line.strip_prefix("written="))
            .unwrap_or_else(|| panic!("{dir}: no size in {:?}", out.output))
            .trim()
            .parse()
            .unwrap();
        assert!(written <= 8 << 20, "{dir}: {written} bytes written");
        // Freeing the space makes it usable again.
        let out = sh(
            &sandbox,
            &f.workspace,
            &format!("rm {dir}/big && echo small > {dir}/small && cat {dir}/small"),
        )
        .await;
        assert_eq!(out.output, "small\n", "{dir}");
    }
}
