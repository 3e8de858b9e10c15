//! The worker protocol (docs/workers.md): `POST /api/worker/claim` with a
//! worker token, then the claimed attempt's calls with its lease token
//! (heartbeat, events, finish, git, model), and `GET /api/workers`.
//!
//! A worker machine is trusted with the attempts it claims and nothing
//! else: it never sees the model key (the model endpoint forwards to the
//! server's provider), setup secrets reach it only with a fresh attempt
//! that runs a setup script, and what it uploads is redacted here again
//! with the environment's secrets and repository credential, because a
//! follow-up's worker never learns the secrets it would have to redact.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_agent::Redactor;
use kiln_protocol::worker::{
    AttemptAddress, ClaimRequest, ClaimedLimits, ClaimedRepository, ClaimedSandbox, ClaimedSetup,
    EventBatch, EventBatchReply, FinishRequest, HeartbeatReply, WorkerClaim, WorkerInfo,
};
use kiln_protocol::{AttemptReport, AttemptStatus, Event, EventKind};
use kiln_store::{AttemptRef, Environment, RemoteClaim, Task, MAX_EVENTS_PER_READ};

use super::ApiJson;
use crate::auth::{Caller, WorkerCaller};
use crate::error::ApiError;
use crate::git_serve::{self, AttemptRefs, GitService};
use crate::model_proxy::{self, ModelRoute};
use crate::state::{AppState, Shared};
use kiln_workspace::Source;

/// The longest a claim request waits for work before answering 204.
pub(crate) const MAX_CLAIM_WAIT_SECS: u32 = 30;

/// Largest event batch or finish request body: a finish carries the diff,
/// which the store keeps up to 16 MiB.
pub(crate) const WORKER_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// `POST /api/worker/claim`: the oldest waiting attempt, prepared for the
/// worker, or 204 when none came within `wait_secs` (at most 30).
pub(super) async fn claim(
    State(state): State<AppState>,
    WorkerCaller(who): WorkerCaller,
    ApiJson(body): ApiJson<ClaimRequest>,
) -> Result<Response, ApiError> {
    let shared = &state.inner;
    let wait = Duration::from_secs(u64::from(body.wait_secs.min(MAX_CLAIM_WAIT_SECS)));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Subscribed before claiming: a task queued in between still wakes us.
        let mut queue = shared.store.subscribe();
        let claimed = shared
            .store
            .claim_for_worker(&who, &body.worker, shared.config.lease)
            .await?;
        match claimed {
            Some(claim) => match prepare(shared, &claim).await {
                Ok(answer) => return Ok((StatusCode::OK, Json(answer)).into_response()),
                Err(reason) => fail_unprepared(shared, &claim, reason).await,
            },
            None => {
                tokio::select! {
                    _ = queue.wait_for_queue() => {}
                    _ = tokio::time::sleep_until(deadline) => {
                        return Ok(StatusCode::NO_CONTENT.into_response());
                    }
                    _ = shared.shutdown.cancelled() => {
                        return Ok(StatusCode::NO_CONTENT.into_response());
                    }
                }
            }
        }
    }
}

/// Everything the worker needs, after the server's mirror was brought up
/// to date with the environment's credential (checked again first, as the
/// in-process pool does before every fetch). `Err` is the reason the
/// attempt fails.
async fn prepare(shared: &Shared, claim: &RemoteClaim) -> Result<WorkerClaim, String> {
    let claimed = &claim.claimed;
    let task = &claimed.task;
    let attempt = &claimed.attempt;
    let environment = environment_of(shared, task).await?;
    let access = crate::worker::run::prepare_access(shared, &environment).await?;
    let source = Source {
        url: &environment.repo,
        owner: &environment.owner_token_id,
        name: &environment.repo,
        fetch: access.fetch,
    };
    let branch = attempt_branch(attempt);
    let base = task
        .base_ref
        .as_deref()
        .or(environment.base_branch.as_deref());
    let (mirror, start) = shared
        .mirrors
        .prepare(source, base, &branch, !claimed.resume)
        .await
        .map_err(|e| format!("cannot prepare {}: {e}", environment.repo))?;
    let base_commit = if claimed.resume {
        recorded_base(shared, attempt).await?
    } else {
        shared
            .store
            .set_base_commit(attempt, &start)
            .await
            .map_err(|e| format!("cannot record the base commit: {e}"))?;
        start
    };
    let setup = match environment
        .setup_script
        .as_deref()
        .filter(|script| !script.trim().is_empty())
    {
        // A follow-up keeps the first run's setup products on its branch,
        // so its worker never gets the secrets.
        Some(script) if !claimed.resume => Some(ClaimedSetup {
            script: script.to_string(),
            secrets: access.secrets,
        }),
        _ => None,
    };
    let (prompt, history) = if claimed.resume {
        let follow_up = shared
            .store
            .take_undelivered(attempt)
            .await
            .map_err(|e| format!("cannot read the follow-up: {e}"))?
            .into_iter()
            .map(|m| m.text)
            .collect::<Vec<_>>()
            .join("\n\n");
        (follow_up, attempt_history(shared, attempt).await?)
    } else {
        (task.prompt.clone(), Vec::new())
    };
    let agent = &shared.config.agent;
    let limits = &agent.limits;
    let model = task.model.clone().unwrap_or_else(|| agent.model.clone());
    Ok(WorkerClaim {
        attempt: AttemptAddress {
            task_id: attempt.task_id.clone(),
            n: attempt.n,
        },
        lease_token: claim.lease_token.clone(),
        lease_secs: shared.config.lease.as_secs().max(1),
        try_number: claimed.try_number,
        next_seq: claimed.next_seq,
        mode: task.mode,
        model: model.clone(),
        wire_api: shared.config.provider.wire_api.to_string(),
        prompt,
        resume: claimed.resume,
        history,
        repository: ClaimedRepository {
            git_path: format!("/api/worker/attempts/{}/{}/git", attempt.task_id, attempt.n),
            base_commit,
            branch,
            mirror_key: mirror_key(&mirror),
        },
        sandbox: ClaimedSandbox {
            network: environment.network,
            env: environment.env.clone(),
            image: environment.image.clone(),
        },
        setup,
        limits: ClaimedLimits {
            max_turns: limits.max_turns,
            max_total_tokens: limits.max_total_tokens,
            max_cost_usd: crate::worker::run::attempt_budget(
                task,
                &environment,
                limits.max_cost_usd,
            ),
            price: agent.prices.price(&model),
            wall_clock_secs: limits.wall_clock.map(|d| d.as_secs()),
            command_timeout_secs: limits.command_timeout.as_secs(),
            max_command_timeout_secs: limits.max_command_timeout.as_secs(),
            context_window: limits.context_window,
            check_fix_turns: Some(limits.check_fix_turns),
            check_timeout_secs: Some(limits.check_timeout.as_secs()),
        },
        checks: environment.checks.clone(),
    })
}

fn attempt_branch(attempt: &AttemptRef) -> String {
    format!("kiln/{}/{}", attempt.task_id, attempt.n)
}

/// The mirror's directory names (two hex-and-name components under
/// `mirrors/`): the same for every attempt of the owner's repository, and
/// nothing about the server's layout.
fn mirror_key(mirror: &std::path::Path) -> String {
    let mut parts = mirror.iter().rev().take(2).collect::<Vec<_>>();
    parts.reverse();
    parts
        .iter()
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join("-")
}

async fn environment_of(shared: &Shared, task: &Task) -> Result<Environment, String> {
    shared
        .store
        .environment(&crate::worker::system_principal(), &task.environment_id)
        .await
        .map_err(|e| format!("cannot read the environment: {e}"))
}

/// The base of a follow-up: recorded by a remote run, or by an in-process
/// run in the base file beside its checkout.
pub(super) async fn recorded_base(shared: &Shared, attempt: &AttemptRef) -> Result<String, String> {
    if let Some(base) = shared
        .store
        .base_commit(attempt)
        .await
        .map_err(|e| format!("cannot read the attempt's base commit: {e}"))?
    {
        return Ok(base);
    }
    let file = shared
        .mirrors
        .checkout_dir(&attempt.task_id, attempt.n)
        .with_extension("base");
    match tokio::fs::read_to_string(&file).await {
        Ok(base) if !base.trim().is_empty() => Ok(base.trim().to_string()),
        _ => Err(format!(
            "the base commit of {attempt} was never recorded, so a follow-up cannot measure its diff: create a new task"
        )),
    }
}

/// The attempt's whole log, page by page, whatever its length.
async fn attempt_history(shared: &Shared, attempt: &AttemptRef) -> Result<Vec<Event>, String> {
    let mut history = Vec::new();
    let mut after = 0;
    loop {
        let page = shared
            .store
            .events(
                &attempt.task_id,
                Some(attempt.n),
                after,
                MAX_EVENTS_PER_READ,
            )
            .await
            .map_err(|e| format!("cannot read the attempt's history: {e}"))?;
        let Some(last) = page.last() else {
            return Ok(history);
        };
        after = last.id;
        history.extend(page.iter().filter_map(|stored| stored.event().ok()));
    }
}

/// The attempt could not be prepared: it fails with the reason, as the
/// in-process pool's attempts do, and the claim loop goes on.
async fn fail_unprepared(shared: &Shared, claim: &RemoteClaim, reason: String) {
    // git's errors name mirror paths: the server's layout is not the user's business.
    let reason = crate::scrub_data_dir(&reason, &shared.config.data_dir);
    let attempt = &claim.claimed.attempt;
    tracing::warn!("{attempt} could not be prepared for a remote worker: {reason}");
    let seq = claim.claimed.next_seq;
    let events = [
        Event::new(
            seq,
            EventKind::Error {
                message: reason.clone(),
            },
        ),
        Event::new(
            seq + 1,
            EventKind::AttemptFinished {
                status: AttemptStatus::Failed,
                reason: Some(reason.clone()),
                final_message: None,
                usage: Default::default(),
                cost_usd: None,
            },
        ),
    ];
    if let Err(err) = shared.store.append_events(attempt, &events).await {
        tracing::error!("recording why {attempt} failed: {err}");
    }
    let mut report = AttemptReport::new(AttemptStatus::Failed);
    report.reason = Some(reason);
    if let Err(err) = shared
        .store
        .finish(&claim.worker_id, attempt, &report)
        .await
    {
        tracing::error!("recording the end of {attempt} failed: {err}");
    }
}

/// `POST /api/worker/attempts/{id}/{n}/heartbeat`.
pub(super) async fn heartbeat(
    State(state): State<AppState>,
    Path((task_id, n)): Path<(String, u32)>,
    headers: HeaderMap,
) -> Result<Json<HeartbeatReply>, ApiError> {
    let holder = crate::auth::lease(&state, &headers, &AttemptRef::new(task_id, n)).await?;
    let lease = state.inner.config.lease;
    let (renewed, messages) = state.store().heartbeat_lease(&holder, lease).await?;
    Ok(Json(HeartbeatReply {
        lease_secs: lease.as_secs().max(1),
        cancel_requested: renewed.cancel_requested,
        messages,
    }))
}

/// `POST /api/worker/attempts/{id}/{n}/events`: stored redacted.
pub(super) async fn events(
    State(state): State<AppState>,
    Path((task_id, n)): Path<(String, u32)>,
    headers: HeaderMap,
    ApiJson(batch): ApiJson<EventBatch>,
) -> Result<Json<EventBatchReply>, ApiError> {
    let attempt = AttemptRef::new(task_id, n);
    let holder = crate::auth::lease(&state, &headers, &attempt).await?;
    let redactor = redactor_for(&state.inner, &attempt).await?;
    let events: Vec<Event> = batch
        .events
        .into_iter()
        .map(|event| Event {
            kind: redactor.redact_event(event.kind),
            ..event
        })
        .collect();
    let next_seq = state.store().append_leased_events(&holder, &events).await?;
    Ok(Json(EventBatchReply { next_seq }))
}

/// `POST /api/worker/attempts/{id}/{n}/finish`: the report (redacted), the
/// end of the lease; messages the agent never read become a follow-up.
pub(super) async fn finish(
    State(state): State<AppState>,
    Path((task_id, n)): Path<(String, u32)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<FinishRequest>,
) -> Result<StatusCode, ApiError> {
    let attempt = AttemptRef::new(task_id, n);
    let holder = crate::auth::lease(&state, &headers, &attempt).await?;
    let redactor = redactor_for(&state.inner, &attempt).await?;
    let mut report = body.report;
    check_pushed_commit(&state, &attempt, &mut report).await?;
    let redact = |text: Option<String>| text.map(|t| redactor.redact(&t).into_owned());
    report.diff = redact(report.diff);
    report.final_message = redact(report.final_message);
    report.reason = redact(report.reason);
    state.store().finish_leased(&holder, &report).await?;
    if report.status != AttemptStatus::Cancelled {
        // The worker need not wait for the forge.
        let shared = state.inner.clone();
        let finished = attempt.clone();
        tokio::spawn(async move {
            crate::pulls::refresh_after_follow_up(&shared, &finished).await;
        });
        continue_with_unread(&state.inner, &attempt, body.unread_messages).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The branch and commit a report names are the server's to vouch for:
/// the branch is always the attempt's, and a commit must be what the
/// worker pushed there (the tip of the mirror's branch).
async fn check_pushed_commit(
    state: &AppState,
    attempt: &AttemptRef,
    report: &mut AttemptReport,
) -> Result<(), ApiError> {
    let branch = attempt_branch(attempt);
    if report.branch.is_some() {
        report.branch = Some(branch.clone());
    }
    let Some(claimed) = report.commit_sha.clone() else {
        return Ok(());
    };
    let (mirror, _) = mirror_of(state, attempt).await?;
    let branch_ref = format!("refs/heads/{branch}");
    let tip = tokio::task::spawn_blocking(move || {
        kiln_workspace::Repo::at(&mirror).resolve(&branch_ref).ok()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("reading the attempt's branch failed: {e}")))?;
    if tip.as_deref() != Some(claimed.as_str()) {
        return Err(ApiError::invalid(
            "report.commit_sha",
            format!(
                "{claimed} is not the tip of {branch} on the server: push the branch (git push to its git_path) before finishing"
            ),
        ));
    }
    report.branch = Some(branch);
    Ok(())
}

/// Messages the worker's agent never read, and any that came after its
/// last heartbeat, reopen the attempt as a follow-up (as in-process).
async fn continue_with_unread(shared: &Shared, attempt: &AttemptRef, mut unread: Vec<String>) {
    match shared.store.take_undelivered(attempt).await {
        Ok(messages) => unread.extend(messages.into_iter().map(|m| m.text)),
        Err(err) => tracing::warn!("reading late messages of {attempt} failed: {err}"),
    }
    unread.retain(|text| !text.trim().is_empty());
    if unread.is_empty() {
        return;
    }
    let system = crate::worker::system_principal();
    if let Err(err) = shared
        .store
        .enqueue_message(
            &system,
            &attempt.task_id,
            Some(attempt.n),
            &unread.join("\n\n"),
        )
        .await
    {
        tracing::error!("continuing {attempt} with unread messages failed: {err}");
    }
}

/// The environment's secrets and repository credential, which nothing a
/// worker uploads may carry.
async fn redactor_for(shared: &Shared, attempt: &AttemptRef) -> Result<Redactor, ApiError> {
    let system = crate::worker::system_principal();
    let task = shared.store.task(&system, &attempt.task_id).await?.task;
    let environment = shared
        .store
        .environment(&system, &task.environment_id)
        .await?;
    let secrets = crate::worker::run::read_secrets(shared, &environment)
        .await
        .map_err(ApiError::Internal)?;
    let credential = shared
        .store
        .environment_repo_credential(&environment.id)
        .await?;
    let values = crate::worker::run::redaction_values(&secrets, credential.as_ref());
    Ok(Redactor::new(values))
}

/// `GET /api/workers` (admin): every worker seen.
pub(super) async fn list(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Vec<WorkerInfo>>, ApiError> {
    if !who.admin {
        return Err(ApiError::Forbidden(
            "only an admin token may list workers".into(),
        ));
    }
    Ok(Json(state.store().list_workers().await?))
}

/// `?service=` of `GET .../git/info/refs`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct ServiceQuery {
    service: Option<String>,
}

/// The mirror a lease-holding worker's git calls are served from, and
/// what of it the attempt may see: its own branch, upstream's branches
/// and tags.
async fn git_scope(
    state: &AppState,
    headers: &HeaderMap,
    attempt: &AttemptRef,
) -> Result<(std::path::PathBuf, AttemptRefs), ApiError> {
    crate::auth::lease(state, headers, attempt).await?;
    mirror_of(state, attempt).await
}

/// The mirror of the attempt's environment's repository, and the refs of
/// it the attempt may see.
async fn mirror_of(
    state: &AppState,
    attempt: &AttemptRef,
) -> Result<(std::path::PathBuf, AttemptRefs), ApiError> {
    let shared = &state.inner;
    let system = crate::worker::system_principal();
    let task = shared.store.task(&system, &attempt.task_id).await?.task;
    let environment = shared
        .store
        .environment(&system, &task.environment_id)
        .await?;
    let mirror = shared
        .mirrors
        .mirror_dir(&environment.owner_token_id, &environment.repo);
    Ok((
        mirror,
        AttemptRefs {
            branch: attempt_branch(attempt),
        },
    ))
}

fn unknown_service(service: &str) -> ApiError {
    ApiError::NotFound(format!(
        "git service {service:?} (use git-upload-pack or git-receive-pack)"
    ))
}

/// `GET /api/worker/attempts/{id}/{n}/git/info/refs?service=...`.
pub(super) async fn git_refs(
    State(state): State<AppState>,
    Path((task_id, n)): Path<(String, u32)>,
    Query(query): Query<ServiceQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let attempt = AttemptRef::new(task_id, n);
    let (mirror, scope) = git_scope(&state, &headers, &attempt).await?;
    let name = query.service.unwrap_or_default();
    let service = GitService::from_query(&name).ok_or_else(|| {
        ApiError::invalid(
            "service",
            "the dumb HTTP protocol is not served: use a git client that speaks smart HTTP (git 1.6.6 or later)",
        )
    })?;
    Ok(git_serve::advertise(&mirror, &scope, service).await)
}

/// `POST /api/worker/attempts/{id}/{n}/git/git-upload-pack` or `git-receive-pack`.
pub(super) async fn git_rpc(
    State(state): State<AppState>,
    Path((task_id, n, service)): Path<(String, u32, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let attempt = AttemptRef::new(task_id, n);
    let service = GitService::from_query(&service).ok_or_else(|| unknown_service(&service))?;
    let (mirror, scope) = git_scope(&state, &headers, &attempt).await?;
    Ok(git_serve::serve(&mirror, &scope, service, &headers, body).await)
}

/// `POST /api/worker/attempts/{id}/{n}/model/responses`.
pub(super) async fn model_responses(
    State(state): State<AppState>,
    Path((task_id, n)): Path<(String, u32)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    model(
        state,
        AttemptRef::new(task_id, n),
        headers,
        ModelRoute::Responses,
        body,
    )
    .await
}

/// `POST /api/worker/attempts/{id}/{n}/model/chat/completions`.
pub(super) async fn model_chat(
    State(state): State<AppState>,
    Path((task_id, n)): Path<(String, u32)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    model(
        state,
        AttemptRef::new(task_id, n),
        headers,
        ModelRoute::ChatCompletions,
        body,
    )
    .await
}

/// The server's provider, for the attempt's model only, while the lease holds.
async fn model(
    state: AppState,
    attempt: AttemptRef,
    headers: HeaderMap,
    route: ModelRoute,
    body: Bytes,
) -> Result<Response, ApiError> {
    crate::auth::lease(&state, &headers, &attempt).await?;
    let shared = &state.inner;
    let task = shared
        .store
        .task(&crate::worker::system_principal(), &attempt.task_id)
        .await?
        .task;
    let model = task
        .model
        .unwrap_or_else(|| shared.config.agent.model.clone());
    Ok(model_proxy::forward(
        &shared.provider_http,
        &shared.config.provider,
        route,
        &model,
        body,
    )
    .await)
}
