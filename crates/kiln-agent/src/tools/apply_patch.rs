//! The `apply_patch` tool: edits files in kiln's own process with
//! `kiln-patch`, all or nothing, confined to the workspace.

use std::path::Path;

use kiln_model::ToolSpec;
use kiln_protocol::EventKind;
use serde_json::json;

use super::args::{parse_apply_patch, parse_arguments, APPLY_PATCH, APPLY_PATCH_SHAPE};
use super::{Tool, ToolContext, ToolResult};

pub struct ApplyPatchTool;

#[async_trait::async_trait]
impl Tool for ApplyPatchTool {
    fn name(&self) -> &str {
        APPLY_PATCH
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: APPLY_PATCH.to_string(),
            description: "Edit files with a patch in the apply_patch format (*** Begin Patch … \
                *** End Patch, with *** Add File / *** Update File / *** Delete File sections; \
                paths relative to the working directory). The patch applies completely or not \
                at all."
                .to_string(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "input": {
                        "type": "string",
                        "description": "The whole patch, from *** Begin Patch to *** End Patch."
                    }
                },
                "required": ["input"],
                "additionalProperties": false
            }),
        }
    }

    /// It writes on the host, outside the sandbox's read-only mounts.
    fn changes_files(&self) -> bool {
        true
    }

    async fn call(&self, arguments: &str, ctx: &mut ToolContext<'_>) -> ToolResult {
        let args = match parse_arguments(
            ctx.called_as(),
            arguments,
            APPLY_PATCH_SHAPE,
            parse_apply_patch,
        ) {
            Ok(args) => args,
            Err(problem) => return ToolResult::error(problem),
        };
        let root = match ctx.resolve_workdir(args.workdir.as_deref()) {
            Ok(dir) => dir,
            Err(problem) => return ToolResult::error(problem),
        };
        let patch = args.patch;
        if let Some(problem) = protected_target(ctx, &root, &patch) {
            return ToolResult::error(problem);
        }
        // Patching reads and writes files: keep it off the async workers.
        let applied = tokio::task::spawn_blocking(move || kiln_patch::apply(&root, &patch)).await;
        match applied {
            Ok(Ok(report)) => {
                let summary = report.summary();
                ctx.events().emit(EventKind::PatchApplied {
                    call_id: ctx.call_id().to_string(),
                    changes: report.changes,
                });
                ToolResult::ok(summary)
            }
            Ok(Err(err)) => ToolResult::error(format!(
                "the patch was not applied, no file was changed: {err}"
            )),
            Err(join) => ToolResult::error(format!(
                "the patch engine stopped unexpectedly ({join}); no file was changed"
            )),
        }
    }
}

/// Why the patch may not be applied when it writes repository metadata:
/// `.git` (anywhere: the repository's, a submodule's) or `.kiln/` at the
/// workspace root. The sandbox mounts those read-only for the agent's
/// commands, but a patch is written by kiln's own process, outside those
/// mounts: what it put there would run on the user's next `git status` or
/// configure (and check) kiln's next run. Paths are judged after resolving
/// symlinks, so a link `g -> .git` leads nowhere new.
fn protected_target(ctx: &ToolContext<'_>, dir: &Path, patch: &str) -> Option<String> {
    // A patch that does not parse is refused by kiln-patch with its reason.
    let parsed = kiln_patch::parse(patch).ok()?;
    let workspace = ctx.sandbox().policy().workspace.canonicalize().ok()?;
    // Where kiln-patch will write: the same resolution (`..` lexically,
    // symlinks followed) it applies the patch with.
    let root = kiln_patch::Root::new(dir).ok()?;
    let targets = parsed.hunks.iter().flat_map(|hunk| {
        let moved = match hunk {
            kiln_patch::Hunk::Update { move_to, .. } => move_to.as_deref(),
            _ => None,
        };
        std::iter::once(hunk.path()).chain(moved)
    });
    for raw in targets {
        // Outside the root or the workspace: kiln-patch refuses it with its reason.
        let Ok(resolved) = root.resolve(raw) else {
            continue;
        };
        let Ok(relative) = resolved.strip_prefix(&workspace) else {
            continue;
        };
        let git = relative.components().any(|c| c.as_os_str() == ".git");
        let kiln = relative
            .components()
            .next()
            .is_some_and(|c| c.as_os_str() == ".kiln");
        if git || kiln {
            let what = if git { ".git" } else { ".kiln/" };
            return Some(format!(
                "the patch was not applied, no file was changed: `{raw}` is in {what}, \
                 repository metadata the agent may not change (it would run or configure \
                 things outside the sandbox); change other files"
            ));
        }
    }
    None
}
