//! `kiln apply-patch` runs the scenario suite of kiln-patch through the binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../kiln-patch/tests/support/scenarios.rs"]
mod scenarios;

#[path = "../../kiln-patch/tests/support/roundtrip.rs"]
mod roundtrip;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use scenarios::{load_all, Scenario};

/// Runs `kiln apply-patch` in `cwd`, with the patch as an argument or on stdin.
fn kiln_apply_patch(cwd: &Path, patch: Option<&str>, stdin: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.arg("apply-patch").current_dir(cwd);
    if let Some(patch) = patch {
        command.arg(patch);
    }
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run kiln");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("kiln finishes")
}

fn run(scenario: &Scenario, via_stdin: bool) -> Result<(), String> {
    let prepared = scenario.prepare();
    let output = if via_stdin {
        kiln_apply_patch(&prepared.root, None, Some(&scenario.patch))
    } else {
        kiln_apply_patch(&prepared.root, Some(&scenario.patch), None)
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code();
    match &scenario.expected_error {
        None => {
            if code != Some(0) {
                return Err(format!("expected exit 0, got {code:?}; stderr:\n{stderr}"));
            }
            if !stdout.starts_with("Success. Updated the following files:\n") {
                return Err(format!("unexpected stdout:\n{stdout}"));
            }
            if let Some(summary) = &scenario.expected_summary {
                if stdout != *summary {
                    return Err(format!("stdout was\n{stdout}"));
                }
            }
        }
        Some(expected) => {
            if code != Some(1) {
                return Err(format!("expected exit 1, got {code:?}; stdout:\n{stdout}"));
            }
            if !stderr.contains(expected.as_str()) {
                return Err(format!("stderr does not contain `{expected}`:\n{stderr}"));
            }
            if !stderr.contains("No files were changed.") || !stdout.is_empty() {
                return Err(format!("failure output is off:\n{stdout}\n{stderr}"));
            }
        }
    }
    scenario.check_tree(&prepared)
}

#[test]
fn every_scenario_gives_the_expected_tree_and_exit_code_through_the_cli() {
    let scenarios = load_all();
    assert!(
        scenarios.len() >= 40,
        "only {} scenarios found",
        scenarios.len()
    );
    let failures: Vec<String> = scenarios
        .iter()
        .enumerate()
        .filter_map(|(index, scenario)| {
            // Alternate between the two ways of passing the patch.
            let via_stdin = index % 2 == 0;
            run(scenario, via_stdin)
                .err()
                .map(|why| format!("[{}] (stdin: {via_stdin}) {why}", scenario.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n\n{}",
        failures.len(),
        scenarios.len(),
        failures.join("\n\n")
    );
}

#[test]
fn dash_argument_reads_the_patch_from_stdin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let patch = "*** Begin Patch\n*** Add File: a.txt\n+a\n*** End Patch\n";
    let output = kiln_apply_patch(dir.path(), Some("-"), Some(patch));
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("a.txt")).expect("read"),
        "a\n"
    );
}

#[test]
fn no_patch_on_empty_stdin_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = kiln_apply_patch(dir.path(), None, None);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the patch is empty"), "{stderr}");
    assert!(stderr.contains("kiln apply-patch < fix.patch"), "{stderr}");
}

#[test]
fn blank_patch_argument_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = kiln_apply_patch(dir.path(), Some("  \n"), None);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn two_patch_arguments_are_a_usage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["apply-patch", "one", "two"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run kiln");
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
}

#[test]
fn generated_patches_apply_back_to_the_edited_files_through_the_cli() {
    let mut generator = roundtrip::Seeded::new(0x6b69_6c6e);
    let mut checked = 0;
    for _ in 0..1_000 {
        if checked == 60 {
            break;
        }
        let Some(case) = generator.case() else {
            continue;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("f.txt"), &case.original).expect("write original");
        let output = kiln_apply_patch(dir.path(), None, Some(&case.patch));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{stderr}\npatch:\n{}",
            case.patch
        );
        let result = std::fs::read_to_string(dir.path().join("f.txt")).expect("read result");
        assert_eq!(result, case.expected, "patch:\n{}", case.patch);
        checked += 1;
    }
    assert_eq!(checked, 60, "the generator gave too few usable cases");
}
