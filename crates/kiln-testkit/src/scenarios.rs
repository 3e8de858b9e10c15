//! Ready-made scripts for the fixture repositories, shared by end-to-end tests
//! and benchmarks. Each comes in two tool dialects: kiln's (`shell` with an
//! argv array, `apply_patch` with `input`) and Codex CLI's (`exec_command`
//! with a `cmd` string, patches through `apply_patch` in a heredoc), so the
//! same task can be replayed against both agents. The JSON copies under
//! `crates/kiln-testkit/scripts/` are kept equal to these by a test.

use crate::{Script, Turn};

/// The patch that fixes `calc-py`'s `median()` off-by-one.
pub const CALC_PY_FIX_PATCH: &str = "*** Begin Patch
*** Update File: calc.py
@@ def median(values):
     if len(ordered) % 2 == 1:
         return ordered[middle]
-    return (ordered[middle] + ordered[middle + 1]) / 2
+    return (ordered[middle - 1] + ordered[middle]) / 2
*** End Patch
";

const CALC_PY_TESTS: &str = "python3 -m unittest -q";
const CALC_PY_FINAL: &str = "Fixed `median()` for even-length input: it averaged the wrong pair \
(`middle` and `middle + 1`) and now averages `ordered[middle - 1]` and `ordered[middle]`. \
`python3 -m unittest -q` passes.";

/// `calc-py`, four turns with kiln's tools: run the tests, patch `calc.py`,
/// run the tests again, final message.
pub fn fix_calc_py() -> Script {
    Script::new(vec![
        Turn::shell(CALC_PY_TESTS),
        Turn::message_then_tool_call(
            "The even-length median averages the wrong pair; fixing the index.",
            "apply_patch",
            serde_json::json!({ "input": CALC_PY_FIX_PATCH }),
        ),
        Turn::shell(CALC_PY_TESTS),
        Turn::message(CALC_PY_FINAL),
    ])
}

/// The same task as [`fix_calc_py`] with Codex CLI's tools.
pub fn fix_calc_py_codex() -> Script {
    let heredoc = format!("apply_patch <<'EOF'\n{CALC_PY_FIX_PATCH}EOF\n");
    Script::new(vec![
        Turn::exec_command(CALC_PY_TESTS),
        Turn::message_then_tool_call(
            "The even-length median averages the wrong pair; fixing the index.",
            "exec_command",
            serde_json::json!({ "cmd": heredoc }),
        ),
        Turn::exec_command(CALC_PY_TESTS),
        Turn::message(CALC_PY_FINAL),
    ])
}

/// Every scenario with the file name of its JSON copy.
pub fn all() -> Vec<(&'static str, Script)> {
    vec![
        ("calc-py-fix.kiln.json", fix_calc_py()),
        ("calc-py-fix.codex.json", fix_calc_py_codex()),
    ]
}
