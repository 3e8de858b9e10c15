//! One claimed attempt: heartbeats and event upload around the one attempt
//! function every front door calls, then the finish.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_agent::{EventLog, Redactor};
use kiln_model::{ModelClient, ProviderConfig, WireApi};
use kiln_protocol::worker::{FinishRequest, WorkerClaim};
use kiln_protocol::{AttemptReport, AttemptStatus, Event, EventKind, EventSink, Role};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::LeaseClient;
use crate::heartbeat::Heartbeats;
use crate::pool::Context;
use crate::repository::AttemptRemote;
use crate::uploader::{UploadEnd, Uploader};

/// The worker's places on disk for attempts.
pub(crate) struct Attempts {
    data_dir: PathBuf,
}

impl Attempts {
    pub(crate) fn new(data_dir: &Path) -> Self {
        Attempts {
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// An empty directory only the worker reads, as git's `HOME`.
    fn git_home(&self) -> Result<PathBuf, String> {
        use std::os::unix::fs::DirBuilderExt;
        let home = self.data_dir.join("git-home");
        match std::fs::DirBuilder::new().mode(0o700).create(&home) {
            Ok(()) => Ok(home),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(home),
            Err(err) => Err(format!("cannot create {}: {err}", home.display())),
        }
    }
}

/// Runs `claim` to its end and reports it, unless the lease was lost or
/// `hard_stop` fired first (then nothing more is sent: the lease expires
/// and the server runs the attempt again, keeping the events sent so far).
pub(crate) async fn run_claimed(
    context: &Context,
    claim: WorkerClaim,
    hard_stop: CancellationToken,
) {
    let lease = context.client.lease(&claim);
    let cancel = CancellationToken::new();
    let done = CancellationToken::new();
    let _done_guard = done.clone().drop_guard();
    {
        // Abandoning an attempt stops its writes before it stops its work:
        // what it emits while winding down never reaches the server.
        let lease = lease.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = hard_stop.cancelled() => {
                    lease.give_up();
                    cancel.cancel();
                }
                _ = done.cancelled() => {}
            }
        });
    }

    let (upload_sink, uploader) = Uploader::start(lease.clone(), cancel.clone());
    let user_messages = Arc::new(UserMessages::default());
    let mut secrets: Vec<(String, String)> =
        vec![("KILN_LEASE_TOKEN".to_string(), claim.lease_token.clone())];
    if let Some(setup) = &claim.setup {
        secrets.extend(setup.secrets.clone());
    }
    let events = EventLog::new(
        claim.next_seq,
        vec![
            Arc::new(upload_sink) as Arc<dyn EventSink>,
            user_messages.clone() as Arc<dyn EventSink>,
        ],
    )
    .with_redactor(Redactor::new(secrets));
    let (heartbeats, steering) = Heartbeats::start(
        lease.clone(),
        Duration::from_secs(claim.lease_secs.max(1)),
        cancel.clone(),
    );

    let report = match execute(context, &claim, &lease, steering, &events, cancel.clone()).await {
        Ok(report) => report,
        Err(reason) => {
            let status = if cancel.is_cancelled() {
                AttemptStatus::Cancelled
            } else {
                events.emit(EventKind::Error {
                    message: reason.clone(),
                });
                AttemptStatus::Failed
            };
            events.emit(EventKind::AttemptFinished {
                status,
                reason: Some(reason.clone()),
                final_message: None,
                usage: Default::default(),
            });
            AttemptReport::failed(status, reason)
        }
    };

    // Every event reaches the server before the finish (heartbeats go on
    // meanwhile: a slow upload must not cost the lease).
    let upload = uploader.finish().await;
    let lost = heartbeats.lease_lost() || lease.lease_lost();
    let unread = unread(heartbeats.received(), &user_messages.seen());
    heartbeats.stop().await;
    let address = format!("{}/{}", claim.attempt.task_id, claim.attempt.n);
    match upload {
        _ if lost => {
            tracing::warn!("attempt {address} ended without its lease: nothing reported");
        }
        UploadEnd::Delivered => {
            let finish = FinishRequest {
                report,
                unread_messages: unread,
            };
            match lease.finish(&finish).await {
                Ok(()) => tracing::info!("attempt {address} finished"),
                Err(err) => tracing::error!("reporting the end of {address} failed: {err}"),
            }
        }
        UploadEnd::LeaseLost => {
            tracing::warn!("attempt {address} lost its lease: nothing reported");
        }
        UploadEnd::Failed(reason) => {
            // A log with a gap cannot be finished; the server runs the
            // attempt again once the lease expires.
            lease.give_up();
            tracing::error!("attempt {address}: {reason}; left to the server to run again");
        }
    }
}

/// The attempt itself: `Err` is a reason it failed before the agent could
/// report one.
async fn execute(
    context: &Context,
    claim: &WorkerClaim,
    lease: &LeaseClient,
    steering: mpsc::Receiver<String>,
    events: &EventLog,
    cancel: CancellationToken,
) -> Result<AttemptReport, String> {
    let model = model_client(claim, lease)?;
    let git_home = context.attempts.git_home()?;
    let remote = AttemptRemote::new(context.client.base_url(), claim, &git_home);
    let _ = (model, remote, steering, events, cancel);
    Err("this worker cannot run attempts yet: kiln_agent::run(plan) is not wired".into())
}

/// kiln-model's own client, pointed at the server's model endpoint for
/// this attempt, with the lease token as its key: the worker has no other.
fn model_client(claim: &WorkerClaim, lease: &LeaseClient) -> Result<Arc<dyn ModelClient>, String> {
    let wire_api = match claim.wire_api.as_str() {
        "responses" => WireApi::Responses,
        "chat" => WireApi::Chat,
        other => {
            return Err(format!(
                "the server's model speaks {other:?}, which this worker does not know: run a `kiln worker` of the server's version"
            ))
        }
    };
    let mut provider =
        ProviderConfig::new("kiln server", lease.attempt_url("/model"), None, wire_api);
    provider.api_key = Some(lease.lease_token().to_string());
    kiln_model::connect(&provider).map_err(|err| format!("cannot reach the model: {err}"))
}

/// The user messages the agent took into its conversation, to tell which
/// steering messages it never read.
#[derive(Default)]
struct UserMessages(Mutex<Vec<String>>);

impl EventSink for UserMessages {
    fn emit(&self, event: &Event) {
        if let EventKind::Message {
            role: Role::User,
            text,
        } = &event.kind
        {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(text.clone());
            }
        }
    }
}

impl UserMessages {
    fn seen(&self) -> Vec<String> {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// `received` minus what the agent used (each use cancels one copy).
fn unread(received: Vec<String>, seen: &[String]) -> Vec<String> {
    let mut seen = seen.to_vec();
    received
        .into_iter()
        .filter(|text| match seen.iter().position(|s| s == text) {
            Some(i) => {
                seen.swap_remove(i);
                false
            }
            None => true,
        })
        .collect()
}
