//! A real attempt for the integration tests: the scripted model server over
//! HTTP, the `none` sandbox backend running real processes, and a fixture
//! repository committed in git.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use kiln_agent::{
    run_attempt_with, AgentConfig, AttemptInput, AttemptReport, EventLog, MemorySink, Redactor,
};
use kiln_model::{ModelClient, ProviderConfig, RetryPolicy, WireApi};
use kiln_protocol::{Event, EventKind, EventSink, Mode};
use kiln_sandbox::{Backend, Sandbox, SandboxPolicy};
use kiln_testkit::{RecordedRequest, Script, ScriptedServer, Turn};
use serde_json::Value;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub struct Harness {
    pub server: ScriptedServer,
    pub repo: TempDir,
    pub config: AgentConfig,
    pub provider: ProviderConfig,
    pub sink: Arc<MemorySink>,
    pub extra_sinks: Vec<Arc<dyn EventSink>>,
    pub cancel: CancellationToken,
    /// Secret values (name, value) the event log redacts.
    pub secrets: Vec<(String, String)>,
}

impl Harness {
    /// The `calc-py` fixture and a server that will answer with `turns`.
    pub async fn new(mode: Mode, turns: Vec<Turn>) -> Harness {
        Harness::with_fixture("calc-py", mode, turns).await
    }

    pub async fn with_fixture(fixture: &str, mode: Mode, turns: Vec<Turn>) -> Harness {
        let server = ScriptedServer::start(Script::new(turns)).await;
        let repo = kiln_testkit::fixtures::repo(fixture);
        let mut provider =
            ProviderConfig::new("scripted", server.base_url(), None, WireApi::Responses);
        // Failures are scripted: retry at once so tests do not wait on backoff.
        provider.retry = RetryPolicy::immediate();
        let mut config = AgentConfig::new("test-model", mode, repo.path());
        config.provider = "scripted".to_string();
        config.limits.command_timeout = std::time::Duration::from_secs(60);
        Harness {
            server,
            repo,
            config,
            provider,
            sink: MemorySink::new(),
            extra_sinks: Vec::new(),
            cancel: CancellationToken::new(),
            secrets: Vec::new(),
        }
    }

    pub fn client(&self) -> Arc<dyn ModelClient> {
        kiln_model::connect(&self.provider).expect("the scripted provider needs no key")
    }

    pub fn sandbox(&self) -> Arc<dyn Sandbox> {
        let mut policy = SandboxPolicy::for_workspace(self.repo.path());
        policy.backend = Backend::None;
        policy.read_only = self.config.mode.is_read_only();
        kiln_sandbox::create(policy).expect("the none backend works everywhere")
    }

    pub async fn run(&self, prompt: &str) -> AttemptReport {
        self.run_input(AttemptInput::new(prompt), 1).await
    }

    pub async fn run_input(&self, input: AttemptInput, next_seq: u64) -> AttemptReport {
        let mut sinks: Vec<Arc<dyn EventSink>> = vec![self.sink.clone()];
        sinks.extend(self.extra_sinks.iter().cloned());
        let events = EventLog::new(next_seq, sinks)
            .with_redactor(Redactor::new(self.secrets.iter().map(|(n, v)| (n, v))));
        let run = run_attempt_with(
            &self.config,
            self.client(),
            self.sandbox(),
            input,
            &events,
            self.cancel.clone(),
        );
        // A bound, not a pause: a hung attempt fails the test instead of the suite.
        match tokio::time::timeout(std::time::Duration::from_secs(120), run).await {
            Ok(outcome) => outcome,
            Err(_) => panic!("the attempt did not finish within 120s"),
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.sink.events()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.server.requests()
    }

    pub fn path(&self, relative: &str) -> std::path::PathBuf {
        self.repo.path().join(relative)
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative)).unwrap()
    }
}

/// The `tool.output` texts, in order.
pub fn tool_outputs(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ToolOutput { output, .. } => Some(output.clone()),
            _ => None,
        })
        .collect()
}

pub fn warnings(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Warning { message } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// The `type` tags of the events, in order.
pub fn kinds(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            serde_json::to_value(e).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Responses-API `input` items of a recorded request.
pub fn input_items(request: &RecordedRequest) -> Vec<Value> {
    request.body["input"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The `output` of every `function_call_output` item a request sent.
pub fn sent_tool_outputs(request: &RecordedRequest) -> Vec<String> {
    input_items(request)
        .iter()
        .filter(|item| item["type"] == "function_call_output")
        .map(|item| item["output"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The tool names a request offered.
pub fn offered_tools(request: &RecordedRequest) -> Vec<String> {
    request.body["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .map(|t| t["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Sequence numbers run from `first` without gaps, and the log ends with
/// `attempt.finished`.
pub fn assert_well_formed_log(events: &[Event], first: u64) {
    for (offset, event) in events.iter().enumerate() {
        assert_eq!(
            event.seq,
            first + offset as u64,
            "gap or reorder at {event:?}"
        );
    }
    assert!(
        matches!(
            events.last().map(|e| &e.kind),
            Some(EventKind::AttemptFinished { .. })
        ),
        "the log must end with attempt.finished"
    );
}

/// A sink that runs `action` on the first event `matches` accepts.
pub struct OnEvent<F: Fn(&Event) + Send + Sync> {
    pub matches: fn(&EventKind) -> bool,
    pub action: F,
    pub fired: std::sync::atomic::AtomicBool,
}

impl<F: Fn(&Event) + Send + Sync> EventSink for OnEvent<F> {
    fn emit(&self, event: &Event) {
        if (self.matches)(&event.kind)
            && !self.fired.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            (self.action)(event);
        }
    }
}

pub fn on_first<F: Fn(&Event) + Send + Sync + 'static>(
    matches: fn(&EventKind) -> bool,
    action: F,
) -> Arc<dyn EventSink> {
    Arc::new(OnEvent {
        matches,
        action,
        fired: std::sync::atomic::AtomicBool::new(false),
    })
}

pub fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}
