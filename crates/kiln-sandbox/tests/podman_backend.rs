//! The podman backend against a real container runtime, with an image built
//! locally from busybox (no registry is involved).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kiln_sandbox::{Backend, ExecRequest, SandboxPolicy};
use support::*;
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "localhost/kiln-test-busybox:latest";

/// Build the test image from the host's static busybox unless it exists.
/// Importing is idempotent, so tests racing here end with the same image.
fn ensure_image() {
    let podman_ok = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        podman_ok,
        "podman is missing: the test command installs podman, runc and busybox-static"
    );
    let exists = Command::new("podman")
        .args(["image", "exists", IMAGE])
        .status()
        .unwrap();
    if exists.success() {
        return;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("busybox is missing: the test command installs busybox-static");
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for dir in ["tmp", "etc", "home"] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    std::fs::copy(&busybox, bin.join("busybox")).unwrap();
    let applets = Command::new(&busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    std::fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
    )
    .unwrap();
    let tar = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -c . | podman import -q - {IMAGE}",
            root.path().display()
        ))
        .output()
        .unwrap();
    assert!(
        tar.status.success(),
        "{}",
        String::from_utf8_lossy(&tar.stderr)
    );
}

fn podman_policy(f: &Fixture) -> SandboxPolicy {
    ensure_image();
    let mut policy = f.policy(Backend::Podman);
    policy.image = Some(IMAGE.into());
    policy
}

#[tokio::test]
async fn a_missing_image_is_an_error_that_says_to_build_it() {
    ensure_image();
    let f = Fixture::new();
    let mut policy = f.policy(Backend::Podman);
    policy.image = Some("localhost/kiln-no-such-image:never".into());
    let err = kiln_sandbox::create(policy)
        .err()
        .expect("missing image refused");
    let text = err.to_string();
    assert!(
        text.contains("kiln-no-such-image") && text.contains("podman import"),
        "{text}"
    );
}

#[tokio::test]
async fn container_commands_see_the_workspace_and_nothing_of_the_host() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = Fixture::new();
    f.write("input.txt", "from the workspace\n");
    let secret = f.root.path().join("secret.txt");
    std::fs::write(&secret, "PODMAN-HOST-SECRET\n").unwrap();
    std::env::set_var("KILN_PODMAN_TEST_SECRET", "env-leak-podman");
    let sandbox = kiln_sandbox::create(podman_policy(&f)).unwrap();

    let script = format!(
        "cat input.txt; echo written > output.txt; cat {secret}; echo x > /escape; \
         nc -w 2 127.0.0.1 {port} </dev/null && echo CONNECTED; env; true",
        secret = secret.display()
    );
    let out = sh(&sandbox, &f.workspace, &script).await;
    assert!(out.output.contains("from the workspace"), "{}", out.output);
    assert_eq!(
        std::fs::read_to_string(f.workspace.join("output.txt")).unwrap(),
        "written\n"
    );
    assert!(!out.output.contains("PODMAN-HOST-SECRET"), "{}", out.output);
    assert!(
        out.output.contains("Read-only file system"),
        "{}",
        out.output
    );
    assert!(!out.output.contains("CONNECTED"), "{}", out.output);
    assert!(!out.output.contains("env-leak-podman"), "{}", out.output);
    assert!(out.output.contains("KILN_SANDBOX=1"), "{}", out.output);
}

#[tokio::test]
async fn container_timeout_kills_the_container_and_reports_it() {
    let f = Fixture::new();
    let sandbox = kiln_sandbox::create(podman_policy(&f)).unwrap();
    let request = ExecRequest::shell("echo started; sleep 600", &f.workspace)
        .with_timeout(Duration::from_secs(3));
    let out = sandbox
        .exec(request, None, CancellationToken::new())
        .await
        .unwrap();
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.killed_by.as_deref(), Some("timeout 3s"));
    assert!(out.duration < Duration::from_secs(60));
    // No container of ours is left running.
    let ps = Command::new("podman")
        .args(["ps", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    let prefix = format!("kiln-{}-", std::process::id());
    assert!(!String::from_utf8_lossy(&ps.stdout).contains(&prefix));
}

#[tokio::test]
async fn container_memory_limit_kills_the_command_and_says_so() {
    let f = Fixture::new();
    let mut policy = podman_policy(&f);
    policy.limits.memory_bytes = Some(32 << 20);
    let sandbox = kiln_sandbox::create(policy).unwrap();
    // busybox has no python; a shell variable doubling in size allocates.
    let hog = "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done";
    let out = sh(&sandbox, &f.workspace, hog).await;
    let killed_by = out.killed_by.clone().unwrap_or_default();
    assert!(killed_by.contains("memory limit 32 MiB"), "{out:?}");
    assert_eq!(out.exit_code, Some(137));
    let after = sh(&sandbox, &f.workspace, "echo still-here").await;
    assert_eq!(after.output, "still-here\n");
}

#[tokio::test]
async fn container_setup_phase_has_network_and_secrets() {
    let f = Fixture::new();
    let sandbox = kiln_sandbox::create(podman_policy(&f)).unwrap();
    let secrets = BTreeMap::from([("SETUP_TOKEN".to_string(), "podman-setup-secret".to_string())]);
    let out = sandbox
        .run_setup(
            "echo $SETUP_TOKEN > token.txt; ip -o addr | grep -v ' lo ' | grep -c inet",
            &secrets,
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(out.success(), "{}", out.output);
    assert_ne!(
        out.output.trim(),
        "0",
        "no network interface besides loopback: {}",
        out.output
    );
    assert_eq!(
        std::fs::read_to_string(f.workspace.join("token.txt")).unwrap(),
        "podman-setup-secret\n"
    );
    let out = sh(
        &sandbox,
        &f.workspace,
        "echo token=$SETUP_TOKEN; ip -o addr | grep -v ' lo ' | grep -c inet",
    )
    .await;
    assert!(out.output.starts_with("token=\n0"), "{}", out.output);
}

#[tokio::test]
async fn container_setup_leaves_nothing_in_home_or_tmp_for_the_agent_phase() {
    let f = Fixture::new();
    let mut policy = podman_policy(&f);
    policy.setup_caches = vec![".cache/keep".into()];
    let sandbox = kiln_sandbox::create(policy).unwrap();
    let secrets = BTreeMap::from([("GIT_TOKEN".to_string(), "podman-token-7".to_string())]);
    let script = "echo $GIT_TOKEN > ~/.git-credentials; echo $GIT_TOKEN > /tmp/token; \
         mkdir -p ~/.cache/keep && echo cached > ~/.cache/keep/file";
    let out = sandbox
        .run_setup(script, &secrets, None, CancellationToken::new())
        .await
        .unwrap();
    assert!(out.success(), "{}", out.output);
    let out = sh(
        &sandbox,
        &f.workspace,
        "cat ~/.git-credentials /tmp/token ~/.cache/keep/file 2>&1",
    )
    .await;
    assert!(!out.output.contains("podman-token-7"), "{}", out.output);
    assert!(out.output.contains("cached"), "{}", out.output);
}
