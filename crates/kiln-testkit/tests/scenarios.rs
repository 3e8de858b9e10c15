//! The scenario scripts: their JSON copies stay in sync, and the patch they
//! carry really fixes the fixture.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use kiln_testkit::{fixtures, scenarios, Script, Turn};

fn scripts_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

#[test]
fn json_copies_match_the_scenarios() {
    for (file, script) in scenarios::all() {
        let path = scripts_dir().join(file);
        let expected = serde_json::to_string_pretty(&script).unwrap() + "\n";
        if std::env::var_os("KILN_BLESS").is_some() {
            std::fs::write(&path, &expected).unwrap();
        }
        let actual = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; run with KILN_BLESS=1 to write it", path.display())
        });
        assert_eq!(
            Script::from_json(&actual).unwrap(),
            script,
            "{file} is stale; rerun with KILN_BLESS=1"
        );
    }
}

#[test]
fn calc_py_fix_patch_makes_the_tests_pass() {
    let repo = fixtures::repo("calc-py");
    let calc = repo.path().join("calc.py");
    let source = std::fs::read_to_string(&calc).unwrap();
    let buggy = "    return (ordered[middle] + ordered[middle + 1]) / 2\n";
    assert!(source.contains(buggy));
    // Apply the patch's single replacement by hand: the patch engine lives in another crate.
    let patch = scenarios::CALC_PY_FIX_PATCH;
    let removed: String = patch
        .lines()
        .filter_map(|l| l.strip_prefix('-'))
        .map(|l| format!("{l}\n"))
        .collect();
    let added: String = patch
        .lines()
        .filter_map(|l| l.strip_prefix('+'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(removed, buggy);
    std::fs::write(&calc, source.replace(&removed, &added)).unwrap();
    let tests = Command::new("python3")
        .args(["-m", "unittest", "-q"])
        .current_dir(repo.path())
        .output()
        .unwrap();
    assert!(
        tests.status.success(),
        "{}",
        String::from_utf8_lossy(&tests.stderr)
    );
}

#[test]
fn kiln_and_codex_dialects_differ_only_in_tools() {
    let kiln = scenarios::fix_calc_py();
    let codex = scenarios::fix_calc_py_codex();
    assert_eq!(kiln.turns.len(), 4);
    assert_eq!(codex.turns.len(), 4);
    assert_eq!(kiln.turns[3], codex.turns[3]);
    assert_eq!(kiln.turns[0], Turn::shell("python3 -m unittest -q"));
    assert_eq!(codex.turns[0], Turn::exec_command("python3 -m unittest -q"));
}
