//! The positive side: real test suites run inside the default sandbox,
//! with the toolchains kiln found on its PATH.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kiln_sandbox::Backend;
use support::*;

#[tokio::test]
async fn python_unittest_suite_passes_and_a_failing_one_fails() {
    let f = Fixture::new();
    f.write("calc.py", "def add(a, b):\n    return a + b\n");
    f.write(
        "test_calc.py",
        "import unittest\nfrom calc import add\n\nclass AddTest(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\nif __name__ == '__main__':\n    unittest.main()\n",
    );
    let sandbox = f.sandbox(Backend::Bwrap);
    let out = sh(&sandbox, &f.workspace, "python3 -m unittest -v").await;
    assert!(out.success(), "{}", out.output);
    assert!(
        out.output.contains("test_add") && out.output.contains("OK"),
        "{}",
        out.output
    );

    f.write("calc.py", "def add(a, b):\n    return a - b\n");
    let out = sh(&sandbox, &f.workspace, "python3 -m unittest").await;
    assert_eq!(out.exit_code, Some(1), "{}", out.output);
    assert!(out.output.contains("FAILED (failures=1)"), "{}", out.output);
}

#[tokio::test]
async fn cargo_test_of_a_small_crate_runs_offline() {
    let f = Fixture::new();
    f.write(
        "Cargo.toml",
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n",
    );
    f.write(
        "src/lib.rs",
        "pub fn double(x: i32) -> i32 { x * 2 }\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn doubles() { assert_eq!(super::double(21), 42); }\n}\n",
    );
    let sandbox = f.sandbox(Backend::Bwrap);
    let out = sh_with_timeout(
        &sandbox,
        &f.workspace,
        "cargo test --offline 2>&1",
        Duration::from_secs(300),
    )
    .await;
    assert!(out.success(), "{}", out.output);
    assert!(
        out.output.contains("test tests::doubles ... ok"),
        "{}",
        out.output
    );
    assert!(f.workspace.join("target").is_dir());
}

#[tokio::test]
async fn npm_test_runs_a_node_suite() {
    if !std::path::Path::new("/usr/bin/node").exists() && which("node").is_none() {
        panic!("node is not installed; the test command installs nodejs and npm");
    }
    let f = Fixture::new();
    f.write(
        "package.json",
        "{\"name\":\"tiny\",\"version\":\"1.0.0\",\"scripts\":{\"test\":\"node --test\"}}\n",
    );
    f.write(
        "test/add.test.js",
        "const test = require('node:test');\nconst assert = require('node:assert');\ntest('adds', () => assert.strictEqual(1 + 2, 3));\n",
    );
    let sandbox = f.sandbox(Backend::Bwrap);
    let out = sh_with_timeout(
        &sandbox,
        &f.workspace,
        "npm test 2>&1",
        Duration::from_secs(120),
    )
    .await;
    assert!(out.success(), "{}", out.output);
    assert!(out.output.contains("pass 1"), "{}", out.output);
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").ok()?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
