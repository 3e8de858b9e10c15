//! The escape suite: from inside the sandbox, nothing reaches the host's
//! network, files, secrets or processes, and limits hold. Real namespaces,
//! real processes; each check has a control that shows it can fail.

mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::Duration;

use kiln_sandbox::{Backend, ExecRequest};
use support::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn connect_script(port: u16) -> String {
    format!(
        "python3 -c \"import socket; s=socket.create_connection(('127.0.0.1', {port}), timeout=3); print('CONNECTED')\""
    )
}

#[tokio::test]
async fn host_loopback_is_unreachable_in_the_agent_phase() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = Fixture::new();

    let agent = f.sandbox(Backend::Bwrap);
    let out = sh(&agent, &f.workspace, &connect_script(port)).await;
    assert_ne!(out.exit_code, Some(0), "{}", out.output);
    assert!(!out.output.contains("CONNECTED"), "{}", out.output);

    // Control: with network the same script reaches the listener.
    let mut policy = f.policy(Backend::Bwrap);
    policy.network = true;
    let networked = kiln_sandbox::create(policy).unwrap();
    let out = sh(&networked, &f.workspace, &connect_script(port)).await;
    assert!(out.output.contains("CONNECTED"), "{}", out.output);
}

#[tokio::test]
async fn the_sandbox_has_only_a_loopback_interface() {
    let f = Fixture::new();
    let sandbox = f.sandbox(Backend::Bwrap);
    let out = sh(
        &sandbox,
        &f.workspace,
        "ls /sys/class/net 2>/dev/null || cat /proc/net/dev",
    )
    .await;
    assert!(out.output.contains("lo"), "{}", out.output);
    for host_interface in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let name = host_interface.file_name().into_string().unwrap();
        if name != "lo" {
            assert!(
                !out.output.contains(&name),
                "{name} visible: {}",
                out.output
            );
        }
    }
}

#[tokio::test]
async fn writes_outside_the_workspace_do_not_reach_the_host() {
    let f = Fixture::new();
    let sandbox = f.sandbox(Backend::Bwrap);
    let outside = f.root.path().join("escaped");
    let script = format!(
        "echo x > {outside}; touch /usr/kiln-escape; touch /etc/kiln-escape; touch /kiln-escape; \
         echo inside > {ws}/written; true",
        outside = outside.display(),
        ws = f.workspace.display()
    );
    let out = sh(&sandbox, &f.workspace, &script).await;
    assert!(!outside.exists(), "{}", out.output);
    assert!(!std::path::Path::new("/usr/kiln-escape").exists());
    assert!(!std::path::Path::new("/etc/kiln-escape").exists());
    assert!(!std::path::Path::new("/kiln-escape").exists());
    assert!(
        out.output.contains("Read-only file system"),
        "{}",
        out.output
    );
    // The workspace itself is writable.
    assert_eq!(
        std::fs::read_to_string(f.workspace.join("written")).unwrap(),
        "inside\n"
    );
}

#[tokio::test]
async fn host_secrets_outside_the_workspace_cannot_be_read() {
    let f = Fixture::new();
    let secret = f.root.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-VALUE\n").unwrap();
    let sandbox = f.sandbox(Backend::Bwrap);
    let script = format!(
        "cat {}; cat /etc/shadow; ls -A /root; true",
        secret.display()
    );
    let out = sh(&sandbox, &f.workspace, &script).await;
    assert!(!out.output.contains("TOP-SECRET-VALUE"), "{}", out.output);
    assert!(
        !out.output.contains("root:"),
        "shadow leaked: {}",
        out.output
    );

    // Files in the host's /root (other than toolchains on PATH) are absent.
    for name in [
        ".bashrc",
        ".profile",
        ".gitconfig",
        ".npmrc",
        ".config",
        ".claude",
        ".cargo/env",
    ] {
        let host_path = std::path::Path::new("/root").join(name);
        if host_path.exists() {
            let out = sh(
                &sandbox,
                &f.workspace,
                &format!("test -e {}", host_path.display()),
            )
            .await;
            assert_eq!(out.exit_code, Some(1), "{} is visible", host_path.display());
        }
    }

    // Control: the unsandboxed backend reads it.
    let none = f.sandbox(Backend::None);
    let out = sh(&none, &f.workspace, &format!("cat {}", secret.display())).await;
    assert!(out.output.contains("TOP-SECRET-VALUE"), "{}", out.output);
}

#[tokio::test]
async fn a_symlink_in_the_workspace_does_not_reach_a_host_secret() {
    let f = Fixture::new();
    let secret = f.root.path().join("secret.txt");
    std::fs::write(&secret, "SYMLINKED-SECRET\n").unwrap();
    std::os::unix::fs::symlink(&secret, f.workspace.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", f.workspace.join("shadow")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", f.workspace.join("relative")).unwrap();

    let sandbox = f.sandbox(Backend::Bwrap);
    let out = sh(
        &sandbox,
        &f.workspace,
        "cat link; cat relative; cat shadow; true",
    )
    .await;
    assert!(!out.output.contains("SYMLINKED-SECRET"), "{}", out.output);
    assert!(!out.output.contains("root:"), "{}", out.output);
    assert!(out.output.contains("No such file"), "{}", out.output);

    // A cwd reached through a symlink out of the workspace is refused.
    std::os::unix::fs::symlink(f.root.path(), f.workspace.join("up")).unwrap();
    let request = ExecRequest::shell("pwd", f.workspace.join("up"));
    let err = sandbox
        .exec(request, None, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("outside the workspace"), "{err}");
}

#[tokio::test]
async fn host_environment_variables_are_absent() {
    // Set once for this process, before any sandbox is created; read only.
    std::env::set_var("KILN_TEST_SECRET", "env-secret-123");
    std::env::set_var("OPENAI_API_KEY", "sk-test-leak-456");
    let f = Fixture::new();
    let mut policy = f.policy(Backend::Bwrap);
    policy
        .env
        .insert("FROM_POLICY".into(), "policy-value".into());
    let sandbox = kiln_sandbox::create(policy).unwrap();
    let request = ExecRequest::new(["env"], &f.workspace).with_env("FROM_REQUEST", "request-value");
    let out = sandbox
        .exec(request, None, CancellationToken::new())
        .await
        .unwrap();
    assert!(out.success(), "{}", out.output);
    assert!(!out.output.contains("env-secret-123"), "{}", out.output);
    assert!(!out.output.contains("sk-test-leak-456"), "{}", out.output);
    assert!(!out.output.contains("KILN_TEST_SECRET"), "{}", out.output);
    assert!(
        out.output.contains("FROM_POLICY=policy-value"),
        "{}",
        out.output
    );
    assert!(
        out.output.contains("FROM_REQUEST=request-value"),
        "{}",
        out.output
    );
    assert!(out.output.contains("KILN_SANDBOX=1"), "{}", out.output);
}

#[tokio::test]
async fn ask_mode_refuses_writes_to_the_workspace() {
    let f = Fixture::new();
    let existing = f.write("notes.txt", "original\n");
    let mut policy = f.policy(Backend::Bwrap);
    policy.read_only = true;
    let sandbox = kiln_sandbox::create(policy).unwrap();
    let out = sh(
        &sandbox,
        &f.workspace,
        "echo changed > notes.txt; touch new.txt; cat notes.txt",
    )
    .await;
    assert!(
        out.output.contains("Read-only file system"),
        "{}",
        out.output
    );
    assert_eq!(std::fs::read_to_string(existing).unwrap(), "original\n");
    assert!(!f.workspace.join("new.txt").exists());
    // Reading still works, and /tmp stays writable for tools.
    assert!(out.output.contains("original"), "{}", out.output);
    let out = sh(
        &sandbox,
        &f.workspace,
        "echo scratch > /tmp/x && cat /tmp/x",
    )
    .await;
    assert!(out.success(), "{}", out.output);
}

#[tokio::test]
async fn the_command_runs_as_an_unprivileged_user_without_new_privileges() {
    let f = Fixture::new();
    let sandbox = f.sandbox(Backend::Bwrap);
    let out = sh(
        &sandbox,
        &f.workspace,
        "id -u; grep -E 'NoNewPrivs|CapEff|Seccomp:' /proc/self/status",
    )
    .await;
    assert!(out.output.starts_with("1000\n"), "{}", out.output);
    assert!(out.output.contains("NoNewPrivs:\t1"), "{}", out.output);
    assert!(
        out.output.contains("CapEff:\t0000000000000000"),
        "{}",
        out.output
    );
    assert!(out.output.contains("Seccomp:\t2"), "{}", out.output);
}

/// Calls that succeed for an unprivileged process unless seccomp stops them.
const SECCOMP_PROBE: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def probe(name, nr, *args):
    r = libc.syscall(nr, *args)
    print(name, 'denied' if r == -1 and ctypes.get_errno() == 1 else 'allowed')
probe('ptrace', 101, 0, 0, 0, 0)          # PTRACE_TRACEME
probe('keyctl', 250, 0, -3, 0)            # KEYCTL_GET_KEYRING_ID session
probe('unshare', 272, 0x10000000)         # CLONE_NEWUSER
probe('io_uring_setup', 425, 1, 0)
"#;

#[tokio::test]
async fn seccomp_denies_ptrace_keyrings_and_new_namespaces() {
    if !cfg!(target_arch = "x86_64") {
        return; // syscall numbers in the probe are x86_64's
    }
    let f = Fixture::new();
    f.write("probe.py", SECCOMP_PROBE);
    let sandbox = f.sandbox(Backend::Bwrap);
    let out = sh(&sandbox, &f.workspace, "python3 probe.py").await;
    for name in ["ptrace", "keyctl", "unshare", "io_uring_setup"] {
        assert!(
            out.output.contains(&format!("{name} denied")),
            "{}",
            out.output
        );
    }
    // Control: without the sandbox, tracing oneself and keyrings work.
    let none = f.sandbox(Backend::None);
    let out = sh(&none, &f.workspace, "python3 probe.py").await;
    assert!(out.output.contains("ptrace allowed"), "{}", out.output);
    assert!(out.output.contains("keyctl allowed"), "{}", out.output);
}

#[tokio::test]
async fn setup_phase_has_network_and_secrets_the_agent_phase_lacks() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = Fixture::new();
    let sandbox = f.sandbox(Backend::Bwrap);
    let secrets = BTreeMap::from([("SETUP_TOKEN".to_string(), "setup-only-789".to_string())]);
    let script = format!(
        "echo token=$SETUP_TOKEN > fetched.txt\n{}",
        connect_script(port)
    );
    let out = sandbox
        .run_setup(&script, &secrets, None, CancellationToken::new())
        .await
        .unwrap();
    assert!(out.success(), "{}", out.output);
    assert!(out.output.contains("CONNECTED"), "{}", out.output);
    assert_eq!(
        std::fs::read_to_string(f.workspace.join("fetched.txt")).unwrap(),
        "token=setup-only-789\n"
    );

    let out = sh(
        &sandbox,
        &f.workspace,
        &format!("echo token=$SETUP_TOKEN; {}", connect_script(port)),
    )
    .await;
    assert!(out.output.contains("token=\n"), "{}", out.output);
    assert!(!out.output.contains("setup-only-789"), "{}", out.output);
    assert!(!out.output.contains("CONNECTED"), "{}", out.output);
}

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
async fn a_missing_program_exits_127_in_every_backend() {
    for backend in [Backend::Bwrap, Backend::None] {
        let f = Fixture::new();
        let sandbox = f.sandbox(backend);
        let request = ExecRequest::new(["kiln-no-such-program"], &f.workspace);
        let out = sandbox
            .exec(request, None, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(127), "{backend}: {}", out.output);
        assert!(
            out.output.contains("kiln-no-such-program"),
            "{}",
            out.output
        );
    }
}

#[tokio::test]
async fn kernel_settings_under_proc_sys_are_read_only() {
    let f = Fixture::new();
    let sandbox = f.sandbox(Backend::Bwrap);
    let before = std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap();
    // Writing the current value back: proves writability without changing the host.
    let out = sh(
        &sandbox,
        &f.workspace,
        "v=$(cat /proc/sys/vm/swappiness) && echo $v > /proc/sys/vm/swappiness",
    )
    .await;
    assert_ne!(out.exit_code, Some(0), "{}", out.output);
    assert!(
        out.output.contains("Read-only file system"),
        "{}",
        out.output
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap(),
        before
    );
    let out = sh(
        &sandbox,
        &f.workspace,
        "cat /proc/keys /proc/timer_list 2>/dev/null | wc -c",
    )
    .await;
    assert_eq!(out.output.trim(), "0", "{}", out.output);
}
