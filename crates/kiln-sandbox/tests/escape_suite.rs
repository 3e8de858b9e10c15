//! The escape suite: from inside the sandbox, nothing reaches the host's
//! network, files, secrets or kernel settings (limits are in `limits.rs`).
//! Real namespaces, real processes; where it can, each check has a control
//! showing that the same command does reach the thing without the sandbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;

use kiln_sandbox::{Backend, ExecRequest};
use support::*;
use tokio_util::sync::CancellationToken;

fn connect_script(port: u16) -> String {
    connect_to_script("127.0.0.1", port, "CONNECTED")
}

/// Prints `marker` if a TCP connection to `host:port` succeeds.
fn connect_to_script(host: &str, port: u16, marker: &str) -> String {
    format!(
        "python3 -c \"import socket; s=socket.create_connection(('{host}', {port}), timeout=3); print('{marker}')\" 2>/dev/null || true"
    )
}

#[tokio::test]
async fn host_loopback_is_unreachable_in_the_agent_phase() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = Fixture::new();

    let agent = f.sandbox(Backend::Bwrap);
    let out = sh(&agent, &f.workspace, &connect_script(port)).await;
    assert!(!out.output.contains("CONNECTED"), "{}", out.output);

    // With network the host is reachable at its own address, but its
    // loopback still is not (slirp4netns keeps it out).
    let public = TcpListener::bind("0.0.0.0:0").unwrap();
    let public_port = public.local_addr().unwrap().port();
    let mut policy = f.policy(Backend::Bwrap);
    policy.network = true;
    let networked = kiln_sandbox::create(policy).unwrap();
    let script = format!(
        "{}; {}",
        connect_to_script(&host_address(), public_port, "REACHED-HOST-ADDRESS"),
        connect_to_script("127.0.0.1", public_port, "REACHED-HOST-LOOPBACK")
    );
    let out = sh(&networked, &f.workspace, &script).await;
    assert!(
        out.output.contains("REACHED-HOST-ADDRESS"),
        "{}",
        out.output
    );
    assert!(
        !out.output.contains("REACHED-HOST-LOOPBACK"),
        "{}",
        out.output
    );
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
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host = host_address();
    let f = Fixture::new();
    let sandbox = f.sandbox(Backend::Bwrap);
    let secrets = BTreeMap::from([("SETUP_TOKEN".to_string(), "setup-only-789".to_string())]);
    let script = format!(
        "echo token=$SETUP_TOKEN > fetched.txt\n{}\n{}",
        connect_to_script(&host, port, "CONNECTED"),
        connect_to_script("127.0.0.1", port, "REACHED-HOST-LOOPBACK")
    );
    let out = sandbox
        .run_setup(&script, &secrets, None, CancellationToken::new())
        .await
        .unwrap();
    assert!(out.success(), "{}", out.output);
    assert!(out.output.contains("CONNECTED"), "{}", out.output);
    assert!(
        !out.output.contains("REACHED-HOST-LOOPBACK"),
        "{}",
        out.output
    );
    assert_eq!(
        std::fs::read_to_string(f.workspace.join("fetched.txt")).unwrap(),
        "token=setup-only-789\n"
    );

    let out = sh(
        &sandbox,
        &f.workspace,
        &format!(
            "echo token=$SETUP_TOKEN; {}",
            connect_to_script(&host, port, "CONNECTED")
        ),
    )
    .await;
    assert!(out.output.contains("token=\n"), "{}", out.output);
    assert!(!out.output.contains("setup-only-789"), "{}", out.output);
    assert!(!out.output.contains("CONNECTED"), "{}", out.output);
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

#[tokio::test]
async fn extra_paths_appear_read_only_or_writable_as_configured() {
    let f = Fixture::new();
    let shared = f.root.path().join("shared-cache");
    let scratch = f.root.path().join("scratch");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::write(shared.join("data.txt"), "cached\n").unwrap();
    let mut policy = f.policy(Backend::Bwrap);
    policy.extra_read_only.push(shared.clone());
    policy.extra_writable.push(scratch.clone());
    let sandbox = kiln_sandbox::create(policy).unwrap();
    let script = format!(
        "cat {s}/data.txt; echo no > {s}/new.txt; echo yes > {w}/new.txt",
        s = shared.display(),
        w = scratch.display()
    );
    let out = sh(&sandbox, &f.workspace, &script).await;
    assert!(out.output.contains("cached"), "{}", out.output);
    assert!(
        out.output.contains("Read-only file system"),
        "{}",
        out.output
    );
    assert!(!shared.join("new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(scratch.join("new.txt")).unwrap(),
        "yes\n"
    );
}

#[tokio::test]
async fn no_file_the_sandbox_makes_carries_a_setuid_or_setgid_bit_to_the_host() {
    let f = Fixture::new();
    let sandbox = f.sandbox(Backend::Bwrap);
    let script = "touch chmod-u chmod-g plain; \
         chmod 4755 chmod-u; chmod g+s chmod-g; chmod 0700 plain; \
         install -m 4755 /bin/true installed; \
         mkdir -m 2755 setgid-dir; \
         python3 -c \"import os; os.close(os.open('opened', os.O_CREAT | os.O_WRONLY, 0o4755))\"; \
         true";
    let out = sh(&sandbox, &f.workspace, script).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = |name: &str| {
        std::fs::metadata(f.workspace.join(name))
            .map(|m| m.permissions().mode())
            .ok()
    };
    for name in ["chmod-u", "chmod-g", "installed", "setgid-dir", "opened"] {
        if let Some(mode) = mode(name) {
            assert_eq!(
                mode & 0o6000,
                0,
                "{name} has mode {mode:o} on the host: {}",
                out.output
            );
        }
    }
    assert!(
        out.output.contains("Operation not permitted"),
        "{}",
        out.output
    );
    // Ordinary modes still work: builds chmod their outputs.
    assert_eq!(mode("plain").map(|m| m & 0o7777), Some(0o700));
    assert_eq!(mode("chmod-u").map(|m| m & 0o777), Some(0o644));
}

#[tokio::test]
async fn vsock_sockets_are_refused() {
    let f = Fixture::new();
    let sandbox = f.sandbox(Backend::Bwrap);
    let probe = "python3 -c \"
import socket
try:
    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    print('vsock allowed')
except OSError as e:
    print('vsock errno', e.errno)
\"";
    let out = sh(&sandbox, &f.workspace, probe).await;
    assert!(out.output.contains("vsock errno 1\n"), "{}", out.output);
    // Other sockets still work (tests open local servers).
    let out = sh(
        &sandbox,
        &f.workspace,
        "python3 -c \"import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM); print('inet ok')\"",
    )
    .await;
    assert!(out.output.contains("inet ok"), "{}", out.output);
}

#[tokio::test]
async fn files_setup_leaves_in_home_and_tmp_do_not_reach_the_agent_phase() {
    for with_cache in [false, true] {
        let f = Fixture::new();
        let mut policy = f.policy(Backend::Bwrap);
        if with_cache {
            policy.setup_caches = vec![".cache/pip".into()];
        }
        let sandbox = kiln_sandbox::create(policy).unwrap();
        let secrets = BTreeMap::from([("GIT_TOKEN".to_string(), "setup-token-42".to_string())]);
        let script = "echo \"https://x:$GIT_TOKEN@example.com\" > ~/.git-credentials\n\
             echo \"//registry.npmjs.org/:_authToken=$GIT_TOKEN\" > ~/.npmrc\n\
             echo $GIT_TOKEN > /tmp/token\n\
             mkdir -p ~/.cache/pip && echo wheel > ~/.cache/pip/pkg.whl\n\
             cat ~/.git-credentials /tmp/token";
        let out = sandbox
            .run_setup(script, &secrets, None, CancellationToken::new())
            .await
            .unwrap();
        assert!(out.success(), "{}", out.output);
        assert!(out.output.contains("setup-token-42"), "{}", out.output);

        let out = sh(
            &sandbox,
            &f.workspace,
            "cat ~/.git-credentials ~/.npmrc /tmp/token 2>&1; ls -A ~ /tmp; \
             cat ~/.cache/pip/pkg.whl 2>/dev/null || echo no-cache",
        )
        .await;
        assert!(!out.output.contains("setup-token-42"), "{}", out.output);
        assert!(!out.output.contains(".git-credentials\n"), "{}", out.output);
        if with_cache {
            assert!(out.output.contains("wheel"), "{}", out.output);
        } else {
            assert!(out.output.contains("no-cache"), "{}", out.output);
        }
        // Nothing of setup's is left on the host either.
        let state = f.root.path().join("state");
        let leftovers = std::process::Command::new("grep")
            .args(["-rl", "setup-token-42"])
            .arg(&state)
            .output()
            .unwrap();
        assert!(
            leftovers.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&leftovers.stdout)
        );
    }
}

#[tokio::test]
async fn the_state_directory_is_private_and_removed_with_the_sandbox() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let sandbox = f.sandbox(Backend::Bwrap);
    // A directory the sandbox's own user cannot enter any more.
    let out = sh(
        &sandbox,
        &f.workspace,
        "mkdir -p /tmp/locked/inner ~/locked && touch /tmp/locked/inner/f && chmod 000 /tmp/locked ~/locked",
    )
    .await;
    assert!(out.success(), "{}", out.output);
    let state = f.root.path().join("state");
    let dirs: Vec<_> = std::fs::read_dir(&state).unwrap().flatten().collect();
    assert_eq!(dirs.len(), 1);
    let mode = dirs[0].metadata().unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "state directory mode {mode:o}");
    drop(sandbox);
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
}
