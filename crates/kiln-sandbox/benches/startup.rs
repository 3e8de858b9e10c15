//! Sandbox start + `true` + teardown, median over many runs, against `true`
//! run directly. `cargo bench -p kiln-sandbox`; set KILN_BENCH_RUNS to change
//! the run count and CODEX_BIN to a `codex` binary (the native one from the
//! npm package `@openai/codex`) to compare with `codex sandbox -- true`, and
//! KILN_BENCH_IMAGE to a local image to measure the podman backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_sandbox::{Backend, ExecRequest, SandboxPolicy};
use tokio_util::sync::CancellationToken;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn measure(runs: usize, mut once: impl FnMut()) -> Duration {
    once(); // warm-up: page cache, first-use initialisation
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                once();
                start.elapsed()
            })
            .collect(),
    )
}

fn report(label: &str, value: Duration, direct: Duration) {
    println!(
        "{label:<48} median {:>9.3} ms   {:>6.1}x direct",
        value.as_secs_f64() * 1e3,
        value.as_secs_f64() / direct.as_secs_f64()
    );
}

fn main() {
    let runs: usize = std::env::var("KILN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime for the benchmark");
    let dir = tempfile::tempdir().expect("temporary workspace");
    let workspace = dir.path().to_path_buf();

    let direct = measure(runs, || {
        let status = Command::new("true")
            .stdout(Stdio::null())
            .status()
            .expect("run true");
        assert!(status.success());
    });
    println!("runs per measurement: {runs}");
    report("true, run directly", direct, direct);

    for backend in [Backend::None, Backend::Bwrap] {
        let mut policy = SandboxPolicy::for_workspace(&workspace);
        policy.backend = backend;
        let sandbox = kiln_sandbox::create(policy.clone()).expect("create sandbox");
        let exec_only = measure(runs, || {
            let request = ExecRequest::new(["true"], &workspace);
            let outcome = runtime
                .block_on(sandbox.exec(request, None, CancellationToken::new()))
                .expect("exec true");
            assert!(outcome.success(), "{outcome:?}");
        });
        report(
            &format!("kiln {backend}: exec true (sandbox reused)"),
            exec_only,
            direct,
        );

        let mut unlimited = policy.clone();
        unlimited.limits.memory_bytes = None;
        unlimited.limits.max_processes = None;
        let sandbox = kiln_sandbox::create(unlimited).expect("create sandbox");
        let no_cgroups = measure(runs, || {
            let request = ExecRequest::new(["true"], &workspace);
            let outcome = runtime
                .block_on(sandbox.exec(request, None, CancellationToken::new()))
                .expect("exec true");
            assert!(outcome.success(), "{outcome:?}");
        });
        report(
            &format!("kiln {backend}: exec true, no cgroup limits"),
            no_cgroups,
            direct,
        );

        let full = measure(runs, || {
            let sandbox = kiln_sandbox::create(policy.clone()).expect("create sandbox");
            let request = ExecRequest::new(["true"], &workspace);
            let outcome = runtime
                .block_on(sandbox.exec(request, None, CancellationToken::new()))
                .expect("exec true");
            assert!(outcome.success(), "{outcome:?}");
            drop(sandbox);
        });
        report(
            &format!("kiln {backend}: create + exec true + teardown"),
            full,
            direct,
        );
    }

    if let Ok(image) = std::env::var("KILN_BENCH_IMAGE") {
        let mut policy = SandboxPolicy::for_workspace(&workspace);
        policy.backend = Backend::Podman;
        policy.image = Some(image);
        let sandbox = kiln_sandbox::create(policy).expect("create podman sandbox");
        let container = measure(runs.min(50), || {
            let request = ExecRequest::new(["true"], &workspace);
            let outcome = runtime
                .block_on(sandbox.exec(request, None, CancellationToken::new()))
                .expect("exec true");
            assert!(outcome.success(), "{outcome:?}");
        });
        report(
            "kiln podman: exec true (container per command)",
            container,
            direct,
        );
    } else {
        println!("(set KILN_BENCH_IMAGE=IMAGE to measure the podman backend)");
    }

    if let Ok(codex) = std::env::var("CODEX_BIN") {
        let codex_runs = runs.min(100);
        let codex_time = measure(codex_runs, || {
            let status = Command::new(&codex)
                .args(["sandbox", "--", "true"])
                .current_dir(&workspace)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run codex sandbox");
            assert!(status.success(), "codex sandbox -- true failed");
        });
        report("codex sandbox -- true", codex_time, direct);
    } else {
        println!("(set CODEX_BIN=/path/to/codex to compare with `codex sandbox -- true`)");
    }
}
