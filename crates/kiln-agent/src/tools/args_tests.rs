use super::*;

fn shell(arguments: &str) -> Result<ShellArgs, String> {
    parse_arguments(SHELL, arguments, SHELL_SHAPE, parse_shell)
}

fn exec_command(arguments: &str) -> Result<ShellArgs, String> {
    parse_arguments(
        EXEC_COMMAND,
        arguments,
        EXEC_COMMAND_SHAPE,
        parse_exec_command,
    )
}

fn apply_patch(arguments: &str) -> Result<PatchArgs, String> {
    parse_arguments(APPLY_PATCH, arguments, APPLY_PATCH_SHAPE, parse_apply_patch)
}

fn update_plan(arguments: &str) -> Result<PlanArgs, String> {
    parse_arguments(UPDATE_PLAN, arguments, UPDATE_PLAN_SHAPE, parse_update_plan)
}

/// Only the error matters to the table test below.
fn problem_of<T>(parsed: Result<T, String>) -> String {
    match parsed {
        Ok(_) => "parsed".to_string(),
        Err(err) => err,
    }
}

#[test]
fn shell_accepts_an_argv_array_with_workdir_and_timeout() {
    let request = shell(
        r#"{"command": ["python3", "-m", "unittest"], "workdir": "tests", "timeout_ms": 1500.5}"#,
    )
    .unwrap();
    assert_eq!(
        request,
        ShellArgs {
            argv: vec!["python3".into(), "-m".into(), "unittest".into()],
            workdir: Some("tests".into()),
            timeout_ms: Some(1501),
        }
    );
}

#[test]
fn shell_turns_a_single_string_into_a_bash_script() {
    let request = shell("  {\"command\" : \"ls -la | head\"}\n").unwrap();
    assert_eq!(
        request,
        ShellArgs {
            argv: vec!["bash".into(), "-lc".into(), "ls -la | head".into()],
            workdir: None,
            timeout_ms: None,
        }
    );
}

#[test]
fn bad_json_is_explained_with_the_expected_shape() {
    let err = shell(r#"{"command": ["ls""#).unwrap_err();
    assert!(err.starts_with("invalid arguments for `shell`: the arguments are not valid JSON"));
    assert!(err.contains(r#"expected arguments like {"command": ["bash", "-lc""#));
}

#[test]
fn each_argument_problem_is_named() {
    let cases = [
        (SHELL, "", "the arguments are empty"),
        (
            SHELL,
            "[1]",
            "the arguments are an array, not a JSON object",
        ),
        (SHELL, "{}", "missing field `command`"),
        (SHELL, r#"{"command": []}"#, "`command` is empty"),
        (
            SHELL,
            r#"{"command": ["ls", 3]}"#,
            "`command[1]` is a number",
        ),
        (SHELL, r#"{"command": 7}"#, "`command` is a number"),
        (
            SHELL,
            r#"{"command": "ls", "timeout_ms": -4}"#,
            "`timeout_ms` must be a positive number",
        ),
        (
            SHELL,
            r#"{"command": "ls", "workdir": 3}"#,
            "`workdir` is a number",
        ),
        (APPLY_PATCH, r#"{"text": "x"}"#, "missing field `input`"),
        (APPLY_PATCH, r#"{"input": ["x"]}"#, "`input` is an array"),
        (
            UPDATE_PLAN,
            r#"{"explanation": "x"}"#,
            "missing field `plan`",
        ),
        (
            UPDATE_PLAN,
            r#"{"plan": [{"step": "a", "status": "done"}]}"#,
            "`plan[0].status` is \"done\"",
        ),
        (
            UPDATE_PLAN,
            r#"{"plan": [{"status": "pending"}]}"#,
            "`plan[0]` is missing `step`",
        ),
        (UPDATE_PLAN, r#"{"plan": ["a"]}"#, "`plan[0]` is a string"),
    ];
    for (name, arguments, expected) in cases {
        let err = match name {
            SHELL => problem_of(shell(arguments)),
            APPLY_PATCH => problem_of(apply_patch(arguments)),
            _ => problem_of(update_plan(arguments)),
        };
        assert!(err.contains(expected), "{name} {arguments}: {err}");
        assert!(err.contains("expected arguments like"), "{err}");
    }
}

#[test]
fn apply_patch_takes_input_or_patch() {
    for arguments in [r#"{"input": "P"}"#, r#"{"patch": "P"}"#] {
        assert_eq!(
            apply_patch(arguments).unwrap(),
            PatchArgs {
                patch: "P".into(),
                workdir: None
            }
        );
    }
}

#[test]
fn update_plan_reads_steps_and_statuses() {
    let request = update_plan(
        r#"{"explanation": "start", "plan": [{"step": "a", "status": "completed"}, {"step": "b", "status": "in_progress"}, {"step": "c", "status": "pending"}]}"#,
    )
    .unwrap();
    let PlanArgs { explanation, plan } = request;
    assert_eq!(explanation.as_deref(), Some("start"));
    let statuses: Vec<_> = plan.iter().map(|p| p.status).collect();
    assert_eq!(
        statuses,
        [
            StepStatus::Completed,
            StepStatus::InProgress,
            StepStatus::Pending
        ]
    );
}

#[test]
fn codex_exec_command_is_accepted_as_shell() {
    let request =
        exec_command(r#"{"cmd": "ls -la", "workdir": "src", "yield_time_ms": 1000}"#).unwrap();
    assert_eq!(
        request,
        ShellArgs {
            argv: vec!["bash".into(), "-lc".into(), "ls -la".into()],
            workdir: Some("src".into()),
            timeout_ms: None,
        }
    );
    let err = exec_command(r#"{"command": ["ls"]}"#).unwrap_err();
    assert!(err.contains("missing field `cmd`"), "{err}");
}
