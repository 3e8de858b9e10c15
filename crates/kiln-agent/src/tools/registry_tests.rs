use std::sync::atomic::{AtomicBool, Ordering};

use kiln_protocol::EventKind;
use serde_json::json;

use super::*;
use crate::MemorySink;

/// A tool from outside kiln (as an MCP server's would be): answers with its
/// arguments and the call id, and records that it ran.
struct Probe {
    name: &'static str,
    changes_files: bool,
    ran: AtomicBool,
}

impl Probe {
    fn new(name: &'static str, changes_files: bool) -> Arc<Self> {
        Arc::new(Probe {
            name,
            changes_files,
            ran: AtomicBool::new(false),
        })
    }
}

#[async_trait::async_trait]
impl Tool for Probe {
    fn name(&self) -> &str {
        self.name
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.to_string(),
            description: "a probe".to_string(),
            parameters: json!({"type": "object"}),
        }
    }

    fn changes_files(&self) -> bool {
        self.changes_files
    }

    async fn call(&self, arguments: &str, ctx: &mut ToolContext<'_>) -> ToolResult {
        self.ran.store(true, Ordering::SeqCst);
        ToolResult::ok(format!("{} got {arguments}", ctx.call_id()))
    }
}

fn toolbox(registry: ToolRegistry, workspace: &Path) -> Toolbox {
    let mut policy = kiln_sandbox::SandboxPolicy::for_workspace(workspace);
    policy.backend = kiln_sandbox::Backend::None;
    let sandbox = kiln_sandbox::create(policy).unwrap();
    Toolbox::with_registry(
        registry,
        workspace.to_path_buf(),
        Limits::default(),
        sandbox,
        ChunkStore::new(),
        1,
    )
}

async fn call(toolbox: &mut Toolbox, name: &str, arguments: &str) -> (ToolResult, Arc<MemorySink>) {
    let sink = MemorySink::new();
    let events = EventLog::new(1, vec![sink.clone()]);
    let result = toolbox
        .call("c1", name, arguments, &events, &CancellationToken::new())
        .await;
    (result, sink)
}

#[test]
fn ask_mode_offers_no_tool_that_changes_files() {
    let limits = Limits::default();
    assert_eq!(
        ToolRegistry::builtin(Mode::Code, &limits).names(),
        ["shell", "apply_patch", "update_plan"]
    );
    assert_eq!(
        ToolRegistry::builtin(Mode::Ask, &limits).names(),
        ["shell", "update_plan"]
    );
    let specs: Vec<String> = ToolRegistry::builtin(Mode::Ask, &limits)
        .specs()
        .into_iter()
        .map(|spec| spec.name)
        .collect();
    assert_eq!(specs, ["shell", "update_plan"]);
}

#[tokio::test]
async fn a_registered_tool_is_offered_and_called_without_changing_the_loop() {
    let workspace = tempfile::tempdir().unwrap();
    let probe = Probe::new("lookup_issue", false);
    let mut registry = ToolRegistry::builtin(Mode::Code, &Limits::default());
    registry.register(probe.clone()).unwrap();
    let mut toolbox = toolbox(registry, workspace.path());

    let offered: Vec<String> = toolbox.specs().into_iter().map(|spec| spec.name).collect();
    assert_eq!(
        offered,
        ["shell", "apply_patch", "update_plan", "lookup_issue"]
    );
    let (result, _) = call(&mut toolbox, "lookup_issue", r#"{"id": 7}"#).await;
    assert_eq!(result, ToolResult::ok(r#"c1 got {"id": 7}"#));
    assert!(probe.ran.load(Ordering::SeqCst));
}

#[tokio::test]
async fn ask_mode_refuses_a_tool_that_changes_files_even_when_called() {
    let workspace = tempfile::tempdir().unwrap();
    let writer = Probe::new("write_file", true);
    let mut registry = ToolRegistry::builtin(Mode::Ask, &Limits::default());
    registry.register(writer.clone()).unwrap();
    let mut toolbox = toolbox(registry, workspace.path());

    assert!(!toolbox.specs().iter().any(|spec| spec.name == "write_file"));
    let (result, _) = call(&mut toolbox, "write_file", "{}").await;
    assert!(!result.success);
    assert!(
        result
            .output
            .starts_with("error: write_file is not available: this is an Ask task"),
        "{}",
        result.output
    );
    assert!(!writer.ran.load(Ordering::SeqCst), "the refused tool ran");
}

#[tokio::test]
async fn a_patch_sent_through_shell_is_refused_in_ask_mode_and_applied_in_code_mode() {
    let workspace = tempfile::tempdir().unwrap();
    let patch = "*** Begin Patch\n*** Add File: note.txt\n+hello\n*** End Patch\n";
    let arguments = json!({"command": ["apply_patch", patch]}).to_string();

    let mut ask = toolbox(
        ToolRegistry::builtin(Mode::Ask, &Limits::default()),
        workspace.path(),
    );
    let (refused, _) = call(&mut ask, "shell", &arguments).await;
    assert!(
        refused
            .output
            .starts_with("error: apply_patch is not available"),
        "{}",
        refused.output
    );
    assert!(!workspace.path().join("note.txt").exists());

    let mut code = toolbox(
        ToolRegistry::builtin(Mode::Code, &Limits::default()),
        workspace.path(),
    );
    let (applied, sink) = call(&mut code, "shell", &arguments).await;
    assert!(applied.success, "{}", applied.output);
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("note.txt")).unwrap(),
        "hello\n"
    );
    assert!(sink.events().iter().any(|event| matches!(
        &event.kind,
        EventKind::PatchApplied { call_id, .. } if call_id == "c1"
    )));
}

#[tokio::test]
async fn unknown_tool_names_the_available_ones() {
    let workspace = tempfile::tempdir().unwrap();
    let mut ask = toolbox(
        ToolRegistry::builtin(Mode::Ask, &Limits::default()),
        workspace.path(),
    );
    let (result, _) = call(&mut ask, "browse_web", "{}").await;
    assert_eq!(
        result.output,
        "error: unknown tool `browse_web`; the available tools are: shell, update_plan"
    );
}

#[tokio::test]
async fn codex_exec_command_is_shell_only_where_shell_is_registered() {
    let workspace = tempfile::tempdir().unwrap();
    let mut registry = ToolRegistry::empty(Mode::Code);
    registry.register(Arc::new(UpdatePlanTool)).unwrap();
    let mut without_shell = toolbox(registry, workspace.path());
    let (result, _) = call(&mut without_shell, "exec_command", r#"{"cmd": "ls"}"#).await;
    assert!(
        result
            .output
            .starts_with("error: unknown tool `exec_command`"),
        "{}",
        result.output
    );
}

#[test]
fn a_tool_cannot_take_the_name_or_alias_of_another() {
    let mut registry = ToolRegistry::builtin(Mode::Code, &Limits::default());
    for taken in ["shell", "exec_command", "apply_patch"] {
        let err = registry
            .register(Probe::new(taken, false))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("`{taken}` is already registered")),
            "{err}"
        );
    }
    assert_eq!(registry.names(), ["shell", "apply_patch", "update_plan"]);
}
