//! The `apply_patch` tool: edits files in kiln's own process with
//! `kiln-patch`, all or nothing, confined to the workspace.

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
