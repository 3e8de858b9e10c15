//! What the model is told: the system prompt for each mode and the message
//! that carries the repository's guidance.

use kiln_protocol::Mode;

use crate::instructions::Instructions;

const CODE_PROMPT: &str = "\
You are kiln, a software engineer working inside a user's repository through tools. \
You finish the task you are given: make the change, prove it works, and report.

How to work:
- Inspect before changing anything. Run commands with the `shell` tool: `rg` (or `grep -rn`) to \
find code, `ls`/`find` to see the layout, `sed -n 'START,ENDp' FILE` or `cat -n FILE` to read. \
Read the code around what you change; do not guess at names, signatures or file contents.
- For work with more than a couple of steps, keep a short checklist with `update_plan` \
(one step `in_progress` at a time) and update it as steps complete.
- Edit files with `apply_patch` only. Keep changes minimal and in the style of the surrounding \
code; fix the cause, not the symptom; do not reformat unrelated code, rename things the task does \
not require, or add license headers.
- The repository's guidance (AGENTS.md) names how to build, test and lint. Run those checks \
after changing code. When something fails, read the output, fix the cause and run again, until \
the checks pass or you can say exactly why they cannot.
- Commands run in a sandbox with no network access: do not try to install packages or fetch \
anything. A command that needs a tool that is missing is worth one sentence in your report, not \
a workaround that changes the project.
- Do not commit, create branches or rewrite git history; kiln records your changes itself.
- Several independent tool calls may be made in one turn; they run in order.

apply_patch format (paths relative to the working directory; never absolute):
*** Begin Patch
*** Update File: src/example.py
@@ def area(width, height):
-    return width + height
+    return width * height
*** Add File: docs/notes.md
+A new file: every line starts with +.
*** Delete File: old/unused.py
*** End Patch
An update hunk shows about three lines of unchanged context (lines starting with a space) around \
the lines removed (-) and added (+); an `@@` line naming the enclosing class or function helps \
when the context alone is ambiguous. `*** Move to: new/path` right after an `*** Update File:` \
line renames the file. If a patch does not apply, re-read the file and send a corrected patch.

Finishing: when the work is done (or cannot be done), stop calling tools and write the final \
message: what you changed and why, what you ran to check it and the result, and anything left \
open. Keep it short and concrete.";

const ASK_PROMPT: &str = "\
You are kiln, a software engineer answering a question about a user's repository. The workspace \
is read-only: you cannot and must not change files, and there is no patch tool. Use the `shell` \
tool to look around (`rg`, `ls`, `find`, `sed -n 'START,ENDp' FILE`, `cat -n FILE`, \
`git log`), and run read-only commands such as tests when they help answer. Commands run in a \
sandbox without network access.

Read the actual code rather than guessing from names. For a question with several parts, a short \
checklist with `update_plan` helps. When you know the answer, stop calling tools and write it: \
direct, precise, with the evidence cited.";

const CITATION_RULES: &str = "\
Citations: back every claim about the code or about command results in your final message with a \
citation, placed right after the claim.
- A file: 【F:path/to/file.rs†L10-L24】, with the path relative to the repository root and the \
line numbers of the file as it is now (after your edits); 【F:path†L7】 for one line.
- Terminal output: 【t3†L2-L9】. Every command's output is a chunk whose id appears in the header \
of its result (`[chunk t3] exit code 1, 0.4s`); lines count from 1 at the first line after that \
header. When the middle of a long output was left out, the marker says which line comes next.
Cite only lines you have seen; kiln checks every citation and flags the ones that do not hold.";

/// The system prompt for `mode`, with the user's extra instructions from
/// configuration appended.
pub(crate) fn system_prompt(mode: Mode, user_instructions: Option<&str>) -> String {
    let base = match mode {
        Mode::Code => CODE_PROMPT,
        Mode::Ask => ASK_PROMPT,
    };
    let mut prompt = format!("{base}\n\n{CITATION_RULES}\n");
    if let Some(extra) = user_instructions.map(str::trim).filter(|s| !s.is_empty()) {
        prompt.push_str("\nInstructions from the user's kiln configuration:\n");
        prompt.push_str(extra);
        prompt.push('\n');
    }
    prompt
}

/// The user-role message that carries the AGENTS.md guidance ahead of the
/// conversation, or `None` when there is none.
pub(crate) fn instructions_message(instructions: &Instructions, cwd: &str) -> Option<String> {
    if instructions.text.trim().is_empty() {
        return None;
    }
    Some(format!(
        "Repository guidance (AGENTS.md) for work in {cwd}. Follow it; where two files \
         disagree, the one deeper in the tree (later here) wins, and the user's own request wins \
         over both.\n\n{}",
        instructions.text
    ))
}

/// The request that turns a long conversation into a summary the work can
/// continue from.
pub(crate) const SUMMARY_REQUEST: &str = "\
The conversation is about to be compacted to fit the context window. Write a summary that lets \
you continue the task without the earlier messages: the task as the user stated it; what you have \
learned about the code (files, functions, line numbers that matter); what you changed so far and \
why; the commands you ran with their outcomes, naming the terminal chunk ids (t1, t2, …) worth \
citing; and what remains to be done next. Use plain text, no tool calls.";

/// How every compaction summary message begins.
pub(crate) const SUMMARY_MARKER: &str =
    "The earlier conversation was compacted to fit the context window.";

/// The message that replaces the compacted conversation.
pub(crate) fn summary_message(summary: &str, last_chunk: u64) -> String {
    let chunks = if last_chunk > 0 {
        format!(
            " Terminal chunks t1 to t{last_chunk} came before this point ([chunk t{last_chunk}] \
             was the last); they can still be cited."
        )
    } else {
        String::new()
    };
    format!(
        "{SUMMARY_MARKER}{chunks} Summary of the work so far:\n\n{}\n\nContinue the task from \
         here.",
        summary.trim()
    )
}

/// The message that replaces the oldest part of the conversation when it
/// could not be summarised.
pub(crate) fn dropped_message(dropped_items: usize, last_chunk: u64) -> String {
    let chunks = if last_chunk > 0 {
        format!(" Terminal chunks up to [chunk t{last_chunk}] came before this point.")
    } else {
        String::new()
    };
    format!(
        "{SUMMARY_MARKER}{chunks} The oldest {dropped_items} messages and tool results were \
         dropped without a summary; re-check anything you need from them."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ask_prompt_offers_no_patching_and_both_modes_teach_citations() {
        let ask = system_prompt(Mode::Ask, None);
        let code = system_prompt(Mode::Code, None);
        assert!(ask.contains("read-only"));
        assert!(!ask.contains("*** Begin Patch"));
        assert!(code.contains("*** Begin Patch"));
        for prompt in [&ask, &code] {
            assert!(prompt.contains("【F:path/to/file.rs†L10-L24】"));
            assert!(prompt.contains("【t3†L2-L9】"));
        }
    }

    #[test]
    fn user_instructions_are_appended() {
        let prompt = system_prompt(Mode::Code, Some("Answer in French."));
        assert!(prompt.trim_end().ends_with("Answer in French."));
        assert!(!system_prompt(Mode::Code, Some("  ")).contains("configuration:"));
    }

    #[test]
    fn summary_message_keeps_the_chunk_numbering_visible() {
        let text = summary_message("did things", 7);
        assert!(text.contains("[chunk t7]"));
        assert_eq!(
            crate::chunks::last_chunk_number_in(&[kiln_protocol::Item::user(text)]),
            7
        );
    }
}
