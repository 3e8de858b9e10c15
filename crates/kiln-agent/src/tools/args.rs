//! Turning a tool call's name and raw JSON arguments into a request kiln can
//! run, or an error the model can act on.

use kiln_protocol::{PlanItem, StepStatus};
use serde_json::{Map, Value};

/// The arguments of a `shell` (or `exec_command`) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShellArgs {
    pub(crate) argv: Vec<String>,
    pub(crate) workdir: Option<String>,
    pub(crate) timeout_ms: Option<u64>,
}

/// The arguments of an `apply_patch` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PatchArgs {
    pub(crate) patch: String,
    pub(crate) workdir: Option<String>,
}

/// The arguments of an `update_plan` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlanArgs {
    pub(crate) explanation: Option<String>,
    pub(crate) plan: Vec<PlanItem>,
}

pub(crate) const SHELL: &str = "shell";
pub(crate) const APPLY_PATCH: &str = "apply_patch";
pub(crate) const UPDATE_PLAN: &str = "update_plan";
/// Codex CLI's name for running a command (`{"cmd": "..."}`); models trained
/// on Codex call it even when it is not offered, so it is accepted as `shell`.
pub(crate) const EXEC_COMMAND: &str = "exec_command";

pub(crate) const SHELL_SHAPE: &str = r#"{"command": ["bash", "-lc", "python3 -m pytest -q"], "workdir": "optional/dir", "timeout_ms": 60000}"#;
pub(crate) const APPLY_PATCH_SHAPE: &str =
    r#"{"input": "*** Begin Patch\n*** Update File: path\n@@\n-old\n+new\n*** End Patch"}"#;
pub(crate) const EXEC_COMMAND_SHAPE: &str =
    r#"{"cmd": "python3 -m pytest -q", "workdir": "optional/dir"}"#;
pub(crate) const UPDATE_PLAN_SHAPE: &str = r#"{"explanation": "optional", "plan": [{"step": "Run the tests", "status": "completed"}, {"step": "Fix the bug", "status": "in_progress"}]}"#;

/// Parse the raw JSON `arguments` of a call to `name` with `parse`.
///
/// The error is the text sent back to the model: what was wrong and the
/// `shape` that was expected.
pub(crate) fn parse_arguments<T>(
    name: &str,
    arguments: &str,
    shape: &str,
    parse: impl FnOnce(&Map<String, Value>) -> Result<T, String>,
) -> Result<T, String> {
    let invalid = |problem: String| {
        format!("invalid arguments for `{name}`: {problem}; expected arguments like {shape}")
    };
    let object = parse_object(arguments).map_err(invalid)?;
    parse(&object).map_err(invalid)
}

fn parse_object(arguments: &str) -> Result<Map<String, Value>, String> {
    if arguments.trim().is_empty() {
        return Err("the arguments are empty".to_string());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(format!(
            "the arguments are {}, not a JSON object",
            kind(&other)
        )),
        Err(err) => Err(format!("the arguments are not valid JSON ({err})")),
    }
}

pub(crate) fn parse_shell(object: &Map<String, Value>) -> Result<ShellArgs, String> {
    let argv = match object.get("command") {
        None => return Err("missing field `command`".to_string()),
        // One string is a shell script, as many models send it.
        Some(Value::String(script)) => {
            if script.trim().is_empty() {
                return Err("`command` is empty".to_string());
            }
            vec!["bash".to_string(), "-lc".to_string(), script.clone()]
        }
        Some(Value::Array(parts)) => {
            let argv = parts
                .iter()
                .enumerate()
                .map(|(i, part)| match part {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(format!(
                        "`command[{i}]` is {}, but every element must be a string",
                        kind(other)
                    )),
                })
                .collect::<Result<Vec<String>, String>>()?;
            if argv.first().is_none_or(|program| program.trim().is_empty()) {
                return Err("`command` is empty; give the program and its arguments".to_string());
            }
            argv
        }
        Some(other) => {
            return Err(format!(
                "`command` is {}, but must be an array of strings",
                kind(other)
            ))
        }
    };
    let (workdir, timeout_ms) = shell_options(object)?;
    Ok(ShellArgs {
        argv,
        workdir,
        timeout_ms,
    })
}

/// The optional `workdir` and `timeout_ms` of a command.
fn shell_options(object: &Map<String, Value>) -> Result<(Option<String>, Option<u64>), String> {
    let workdir = optional_string(object, "workdir")?;
    let timeout_ms = match object.get("timeout_ms") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(ms) if ms > 0.0 && ms.is_finite() => Some(ms.ceil() as u64),
            _ => return Err(format!("`timeout_ms` must be a positive number, not {n}")),
        },
        Some(other) => {
            return Err(format!(
                "`timeout_ms` is {}, but must be a number of milliseconds",
                kind(other)
            ))
        }
    };
    Ok((workdir, timeout_ms))
}

pub(crate) fn parse_exec_command(object: &Map<String, Value>) -> Result<ShellArgs, String> {
    let script = match object.get("cmd") {
        None => return Err("missing field `cmd`".to_string()),
        Some(Value::String(script)) if script.trim().is_empty() => {
            return Err("`cmd` is empty".to_string())
        }
        Some(Value::String(script)) => script.clone(),
        Some(other) => return Err(format!("`cmd` is {}, but must be a string", kind(other))),
    };
    let (workdir, timeout_ms) = shell_options(object)?;
    Ok(ShellArgs {
        argv: vec!["bash".to_string(), "-lc".to_string(), script],
        workdir,
        timeout_ms,
    })
}

pub(crate) fn parse_apply_patch(object: &Map<String, Value>) -> Result<PatchArgs, String> {
    // `patch` is what some models call the field; accept it as well.
    let patch = match (object.get("input"), object.get("patch")) {
        (Some(Value::String(text)), _) | (None, Some(Value::String(text))) => text.clone(),
        (None, None) => return Err("missing field `input` (the patch text)".to_string()),
        (Some(other), _) | (None, Some(other)) => {
            return Err(format!(
                "`input` is {}, but must be the patch as a string",
                kind(other)
            ))
        }
    };
    Ok(PatchArgs {
        patch,
        workdir: optional_string(object, "workdir")?,
    })
}

pub(crate) fn parse_update_plan(object: &Map<String, Value>) -> Result<PlanArgs, String> {
    let explanation = optional_string(object, "explanation")?;
    let steps = match object.get("plan") {
        None => return Err("missing field `plan`".to_string()),
        Some(Value::Array(steps)) => steps,
        Some(other) => return Err(format!("`plan` is {}, but must be an array", kind(other))),
    };
    let plan = steps
        .iter()
        .enumerate()
        .map(|(i, step)| parse_plan_item(i, step))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PlanArgs { explanation, plan })
}

fn parse_plan_item(index: usize, value: &Value) -> Result<PlanItem, String> {
    let Value::Object(object) = value else {
        return Err(format!(
            "`plan[{index}]` is {}, but must be an object with `step` and `status`",
            kind(value)
        ));
    };
    let step = match object.get("step") {
        Some(Value::String(step)) if !step.trim().is_empty() => step.clone(),
        Some(Value::String(_)) => return Err(format!("`plan[{index}].step` is empty")),
        Some(other) => {
            return Err(format!(
                "`plan[{index}].step` is {}, but must be a string",
                kind(other)
            ))
        }
        None => return Err(format!("`plan[{index}]` is missing `step`")),
    };
    let status = match object.get("status").and_then(Value::as_str) {
        Some("pending") => StepStatus::Pending,
        Some("in_progress") => StepStatus::InProgress,
        Some("completed") => StepStatus::Completed,
        Some(other) => {
            return Err(format!(
                "`plan[{index}].status` is \"{other}\", but must be one of pending, in_progress, completed"
            ))
        }
        None => {
            return Err(format!(
                "`plan[{index}].status` is missing or not a string (pending, in_progress or completed)"
            ))
        }
    };
    Ok(PlanItem { step, status })
}

fn optional_string(object: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "`{field}` is {}, but must be a string",
            kind(other)
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod tests;
