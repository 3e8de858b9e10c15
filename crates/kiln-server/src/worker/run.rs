//! One claimed attempt from checkout to finish: the path every attempt of
//! `kiln serve` takes (the agent loop itself is `kiln-agent`'s).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use kiln_agent::{AttemptInput, AttemptPlan, EventLog, SandboxPlan, Setup, Workspace};
use kiln_protocol::{AttemptReport, AttemptStatus, EventKind, EventSink};
use kiln_sandbox::{Backend, SandboxPolicy};
use kiln_store::{AttemptRef, ClaimedAttempt, Environment, RepoCredential, StoreError};
use kiln_workspace::{FetchRules, Mirrors, Source, Start};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::event_sink::StoreSink;
use super::supervise::Supervisor;
use crate::state::Shared;

/// Runs `claimed` to its end and records the outcome (unless the lease was lost).
pub(crate) async fn run_claimed(
    shared: &Shared,
    mirrors: &Mirrors,
    worker_id: &str,
    claimed: ClaimedAttempt,
) {
    let started = Instant::now();
    shared.metrics.attempt_started();
    let attempt = claimed.attempt.clone();
    let (sink, writer) = StoreSink::start(shared.store.clone(), attempt.clone());
    let sink = Arc::new(sink);
    let user_messages = Arc::new(kiln_agent::UserMessages::default());
    let events = EventLog::new(
        claimed.next_seq,
        vec![
            sink.clone() as Arc<dyn EventSink>,
            user_messages.clone() as Arc<dyn EventSink>,
        ],
    );
    let cancel = CancellationToken::new();
    // A reopened attempt's follow-up is its new prompt: take it before the
    // supervisor starts passing messages on as steering.
    let follow_up = if claimed.resume {
        shared
            .store
            .take_undelivered(&attempt)
            .await
            .map(|messages| {
                messages
                    .into_iter()
                    .map(|m| m.text)
                    .collect::<Vec<_>>()
                    .join("\n\n")
            })
    } else {
        Ok(String::new())
    };
    let (steer_tx, steer_rx) = mpsc::channel(32);
    let supervisor = Supervisor::start(
        shared.store.clone(),
        worker_id.to_string(),
        attempt.clone(),
        shared.config.lease,
        cancel.clone(),
        steer_tx,
    );

    let outcome = match follow_up {
        Ok(follow_up) => {
            run(
                shared,
                mirrors,
                &claimed,
                follow_up,
                &events,
                steer_rx,
                cancel.clone(),
            )
            .await
        }
        Err(err) => kiln_agent::report_unstartable(
            &events,
            &cancel,
            format!("cannot read the follow-up: {err}"),
        ),
    };
    sink.close();
    writer.finished().await;
    let lost = supervisor.lease_lost();
    let unused = user_messages.not_seen(supervisor.forwarded());
    supervisor.stop().await;
    if !lost {
        match shared.store.finish(worker_id, &attempt, &outcome).await {
            Ok(()) if outcome.status != AttemptStatus::Cancelled => {
                if claimed.resume {
                    crate::pulls::refresh_after_follow_up(shared, &attempt).await;
                }
                continue_with_late_messages(shared, &attempt, unused).await;
            }
            Ok(()) => {}
            Err(err) => tracing::error!("recording the end of {attempt} failed: {err}"),
        }
    }
    shared.metrics.attempt_ended(started.elapsed());
}

/// Messages that reached the attempt after the agent's last look at its
/// steering channel would otherwise be lost: they become a follow-up, which
/// reopens the attempt (as a message to a finished attempt does).
async fn continue_with_late_messages(shared: &Shared, attempt: &AttemptRef, mut late: Vec<String>) {
    match shared.store.take_undelivered(attempt).await {
        Ok(messages) => late.extend(messages.into_iter().map(|m| m.text)),
        Err(err) => tracing::warn!("reading late messages of {attempt} failed: {err}"),
    }
    if late.is_empty() {
        return;
    }
    let system = super::system_principal();
    let text = late.join("\n\n");
    if let Err(err) = shared
        .store
        .enqueue_message(&system, &attempt.task_id, Some(attempt.n), &text)
        .await
    {
        tracing::error!("continuing {attempt} with late messages failed: {err}");
    }
}

/// The attempt's plan from the store's rows, run on the one attempt path.
async fn run(
    shared: &Shared,
    mirrors: &Mirrors,
    claimed: &ClaimedAttempt,
    follow_up: String,
    events: &EventLog,
    steering: mpsc::Receiver<String>,
    cancel: CancellationToken,
) -> AttemptReport {
    match plan(shared, mirrors, claimed, follow_up, events, steering).await {
        Ok(plan) => kiln_agent::run(plan, shared.model.clone(), events, cancel).await,
        Err(reason) => {
            // git's errors name mirror and checkout paths: the server's layout
            // is not the user's business.
            let reason = crate::scrub_data_dir(&reason, &shared.config.data_dir);
            kiln_agent::report_unstartable(events, &cancel, reason)
        }
    }
}

/// Environment, repository access, secrets, checkout and input of a claimed
/// attempt. `Err` is why the attempt cannot start.
async fn plan(
    shared: &Shared,
    mirrors: &Mirrors,
    claimed: &ClaimedAttempt,
    follow_up: String,
    events: &EventLog,
    steering: mpsc::Receiver<String>,
) -> Result<AttemptPlan, String> {
    let task = &claimed.task;
    let system = super::system_principal();
    let environment = shared
        .store
        .environment(&system, &task.environment_id)
        .await
        .map_err(|e| format!("cannot read the environment: {e}"))?;
    let access = prepare_access(shared, &environment).await?;
    events.set_redactor(kiln_agent::Redactor::new(access.redacted.clone()));
    let start = if claimed.resume {
        Start::Resume
    } else {
        Start::Fresh {
            base: task
                .base_ref
                .as_deref()
                .or(environment.base_branch.as_deref()),
        }
    };
    let source = Source {
        url: &environment.repo,
        owner: &environment.owner_token_id,
        name: &environment.repo,
        fetch: access.fetch,
    };
    let checkout = mirrors
        .checkout(source, start, &task.id, claimed.attempt.n)
        .await
        .map_err(|e| format!("cannot check out {}: {e}", environment.repo))?;
    if let Some(reason) = &checkout.full_checkout_reason {
        events.emit(EventKind::Warning {
            message: format!("the checkout is a full copy, not copy-on-write: {reason}"),
        });
    }

    let input = if claimed.resume {
        let previous = shared
            .store
            .conversation_events(&task.id, claimed.attempt.n)
            .await
            .map_err(|e| format!("cannot read the attempt's history: {e}"))?;
        AttemptInput::resume(follow_up, &previous)
    } else {
        AttemptInput::new(task.prompt.clone())
    }
    .with_steering(steering);

    let mut agent = shared.config.agent.clone();
    agent.mode = task.mode;
    agent.checks = environment.checks.clone();
    if let Some(model) = &task.model {
        agent.model = model.clone();
    }
    agent.limits.max_cost_usd = attempt_budget(task, &environment, agent.limits.max_cost_usd);
    let mut plan = AttemptPlan::new(
        agent,
        Workspace::Checkout {
            checkout: Box::new(checkout),
            subdir: PathBuf::new(),
        },
        SandboxPlan::Policy(Box::new(environment_sandbox(
            &shared.config.sandbox,
            environment.network,
            &environment.env,
            environment.image.as_deref(),
        ))),
        input,
    );
    // A follow-up keeps the first run's setup products in its checkout.
    if !claimed.resume {
        plan.setup = environment.setup_script.clone().map(|script| Setup {
            script,
            secrets: access.secrets,
        });
    }
    plan.commit_message = Some(kiln_agent::commit_message(&task.prompt));
    plan.diff_location = Some(format!(
        "GET /api/tasks/{}/attempts/{}/diff",
        task.id, claimed.attempt.n
    ));
    Ok(plan)
}

/// The budget of each attempt of `task` in US dollars: the task's own, else
/// its environment's, else the server's configured one.
pub(crate) fn attempt_budget(
    task: &kiln_store::Task,
    environment: &Environment,
    server: Option<f64>,
) -> Option<f64> {
    task.budget_usd.or(environment.budget_usd).or(server)
}

/// What reaching an environment's repository and secrets takes, checked now.
pub(crate) struct Access {
    pub(crate) fetch: FetchRules,
    pub(crate) secrets: BTreeMap<String, String>,
    /// The values no event may show: the secrets and the repository
    /// credential, by name.
    pub(crate) redacted: Vec<(String, String)>,
}

/// Rechecks the environment's repository location (the owner may have lost
/// admin rights, or the name may resolve elsewhere by now), builds the fetch
/// rules with its credential and reads its secrets (on every run,
/// follow-ups included: the redactor needs them).
pub(crate) async fn prepare_access(
    shared: &Shared,
    environment: &Environment,
) -> Result<Access, String> {
    let checked = crate::repo_access::recheck_environment(shared, environment)
        .await
        .map_err(|e| format!("cannot use the repository {}: {e}", environment.repo))?;
    let credential = shared
        .store
        .environment_repo_credential(&environment.id)
        .await
        .map_err(|e| format!("cannot read the repository's credential: {e}"))?;
    let fetch = crate::repo_access::fetch_rules(
        &shared.config.data_dir,
        &checked,
        &environment.repo,
        credential.as_ref(),
    )
    .map_err(|e| format!("cannot prepare the fetch of {}: {e}", environment.repo))?;
    let secrets = read_secrets(shared, environment).await?;
    let redacted = redaction_values(&secrets, credential.as_ref());
    Ok(Access {
        fetch,
        secrets,
        redacted,
    })
}

/// The values no event, diff or report of the environment's attempts may
/// show: its secrets and its repository credential, by name.
pub(crate) fn redaction_values(
    secrets: &BTreeMap<String, String>,
    credential: Option<&RepoCredential>,
) -> Vec<(String, String)> {
    let mut values: Vec<(String, String)> = secrets
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if let Some(credential) = credential {
        values.extend(
            credential
                .redaction_values()
                .into_iter()
                .map(|(name, value)| (name.to_string(), value)),
        );
    }
    values
}

/// The server's base sandbox policy with what an environment adds: its
/// network policy, variables and image.
pub(crate) fn environment_sandbox(
    base: &SandboxPolicy,
    network: bool,
    env: &BTreeMap<String, String>,
    image: Option<&str>,
) -> SandboxPolicy {
    let mut policy = base.clone();
    policy.network = network;
    policy.env.extend(env.clone());
    if let Some(image) = image {
        policy.backend = Backend::Podman;
        policy.image = Some(image.to_string());
    }
    policy
}

pub(crate) async fn read_secrets(
    shared: &Shared,
    environment: &Environment,
) -> Result<BTreeMap<String, String>, String> {
    shared
        .store
        .environment_secrets(&environment.id)
        .await
        .map_err(|e| match e {
            // These already say whose secrets and what to do.
            StoreError::SecretKeyMismatch { .. } | StoreError::SecretTampered { .. } => {
                e.to_string()
            }
            other => format!("cannot read the environment's secrets: {other}"),
        })
}
