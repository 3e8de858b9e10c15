//! The `update_plan` tool: the model's checklist, shown to the user as a
//! `plan.updated` event.

use kiln_model::ToolSpec;
use kiln_protocol::EventKind;
use serde_json::json;

use super::args::{parse_arguments, parse_update_plan, UPDATE_PLAN, UPDATE_PLAN_SHAPE};
use super::{Tool, ToolContext, ToolResult};

pub struct UpdatePlanTool;

#[async_trait::async_trait]
impl Tool for UpdatePlanTool {
    fn name(&self) -> &str {
        UPDATE_PLAN
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: UPDATE_PLAN.to_string(),
            description: "Show the user your checklist for this task. Send the whole list each \
                time; keep exactly one step in_progress while working."
                .to_string(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "explanation": {"type": "string", "description": "Why the plan changed (optional)."},
                    "plan": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "step": {"type": "string"},
                                "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]}
                            },
                            "required": ["step", "status"],
                            "additionalProperties": false
                        }
                    }
                },
                "required": ["plan"],
                "additionalProperties": false
            }),
        }
    }

    fn changes_files(&self) -> bool {
        false
    }

    async fn call(&self, arguments: &str, ctx: &mut ToolContext<'_>) -> ToolResult {
        match parse_arguments(
            ctx.called_as(),
            arguments,
            UPDATE_PLAN_SHAPE,
            parse_update_plan,
        ) {
            Ok(args) => {
                ctx.events().emit(EventKind::PlanUpdated {
                    explanation: args.explanation,
                    plan: args.plan,
                });
                ToolResult::ok("Plan updated.")
            }
            Err(problem) => ToolResult::error(problem),
        }
    }
}
