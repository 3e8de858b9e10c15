//! Pull requests: pushing an attempt's commit to the environment's remote
//! as `kiln/<task>` and opening the task's pull request on its forge, or
//! updating the one it has (never a second); `POST /api/tasks/{id}/pr`
//! and a follow-up's finish both come here. See docs/pull-requests.md.

use axum::http::StatusCode;
use kiln_protocol::api::{Attempt, AttemptState, Environment, TaskDetail};
use kiln_protocol::{ForgeKind, PullRequest};
use kiln_store::{AttemptRef, OpenedPullRequest, Principal, RepoCredential};
use kiln_workspace::{PushAuth, PushError};

use crate::error::ApiError;
use crate::forge::{base, proposal, Forge, Proposal};
use crate::state::Shared;

/// Proposes attempt `asked` of the task (default: its best-ranked one):
/// pushes its commit and opens the task's pull request, or updates the one
/// it has. `draft: None` keeps what the pull request was. Returns the
/// record and whether it was an update. The caller has checked that `who`
/// may act on the task; `who` is recorded as the one who opened it.
pub(crate) async fn open_or_update(
    shared: &Shared,
    who: &Principal,
    detail: &TaskDetail,
    asked: Option<u32>,
    draft: Option<bool>,
) -> Result<(PullRequest, bool), ApiError> {
    let id = &detail.task.id;
    let system = crate::worker::system_principal();
    let environment = shared
        .store
        .environment(&system, &detail.task.environment_id)
        .await?;
    let Some(forge_config) = environment.forge.clone() else {
        return Err(ApiError::BadRequest {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "environment {} names no forge: create it with a \"forge\" setting \
                 ({{\"kind\": \"github\"|\"gitlab\"|\"forgejo\", \"repo\": \"owner/name\", \
                 \"token_secret\": \"SECRET_NAME\"}}) to open pull requests",
                environment.name
            ),
        });
    };
    // The API URL is a location the server connects to on the owner's
    // behalf: the same rule as for repositories (non-public addresses are
    // for admins and --allow-repo prefixes), checked before any request.
    let api_url = forge_config
        .api_url
        .clone()
        .unwrap_or_else(|| crate::forge::default_api_url(forge_config.kind).to_string());
    let owner_is_admin = crate::repo_access::owner_is_admin(shared, &environment).await;
    let checked_api = shared
        .config
        .repo_access
        .check_async(&api_url, owner_is_admin)
        .await
        .map_err(|e| ApiError::Forbidden(format!("cannot use forge.api_url {api_url}: {e}")))?;
    let forge_http = crate::forge::http_client(checked_api.curl_resolve.as_deref())?;
    let attempt = chosen_attempt(detail, asked)?;
    let Some(commit) = attempt.commit_sha.clone() else {
        return Err(ApiError::Conflict(format!(
            "attempt {} of task {id} has no commit: it changed nothing, or ended before committing; \
             propose an attempt with a diff",
            attempt.n
        )));
    };
    let _one_at_a_time = shared.pull_requests.try_take(id.clone()).ok_or_else(|| {
        ApiError::Conflict(format!(
            "a pull request for task {id} is being opened or updated already: \
                 try again when that request has answered"
        ))
    })?;
    // Read again under the slot: a request that held it just now may have
    // opened the pull request since `detail` was read.
    let existing = shared.store.pull_request(id).await?;

    let secrets = crate::worker::run::read_secrets(shared, &environment)
        .await
        .map_err(ApiError::Internal)?;
    let token = secrets
        .get(&forge_config.token_secret)
        .cloned()
        .ok_or_else(|| {
            ApiError::invalid(
                "forge",
                format!(
                    "forge.token_secret names {:?}, which environment {} has no secret of: \
                     store the forge token under that name",
                    forge_config.token_secret, environment.name
                ),
            )
        })?;
    let forge = Forge::new(&forge_config, token.clone(), forge_http).map_err(ApiError::from)?;

    let branch = format!("kiln/{id}");
    let mirror = shared
        .mirrors
        .mirror_dir(&environment.owner_token_id, &environment.repo);
    let credential = shared
        .store
        .environment_repo_credential(&environment.id)
        .await?;
    push_attempt(
        shared,
        &environment,
        owner_is_admin,
        PushPlan {
            mirror: mirror.clone(),
            commit: commit.clone(),
            branch: branch.clone(),
            auth: push_auth(credential.as_ref(), forge.kind(), &token),
            attempt: attempt.n,
        },
    )
    .await?;
    let base = base::base_branch(
        mirror,
        detail.task.base_ref.clone(),
        environment.base_branch.clone(),
    )
    .await
    .map_err(|reason| ApiError::invalid("base_branch", reason))?;

    let diff = shared
        .store
        .attempt_diff(&system, &AttemptRef::new(id.clone(), attempt.n))
        .await?;
    let link = shared
        .config
        .public_url
        .as_deref()
        .map(|url| format!("{}/api/tasks/{id}", url.trim_end_matches('/')));
    let redactor = kiln_agent::Redactor::new(crate::worker::run::redaction_values(
        &secrets,
        credential.as_ref(),
    ));
    let draft = match (&existing, forge.kind()) {
        // GitHub sets a draft only when the pull request is created.
        (Some(existing), ForgeKind::Github) => existing.draft,
        (existing, _) => draft.unwrap_or(existing.as_ref().is_some_and(|e| e.draft)),
    };
    let proposal = Proposal {
        title: redactor
            .redact(&proposal::title(&detail.task, attempt))
            .into_owned(),
        body: redactor
            .redact(&proposal::body(
                &detail.task,
                attempt,
                diff.as_deref(),
                link.as_deref(),
            ))
            .into_owned(),
        head: branch.clone(),
        base,
        draft,
    };

    let known = match &existing {
        Some(existing) => Some(existing.number),
        None => forge.find_open(&branch).await?.map(|pull| pull.number),
    };
    let pull = match known {
        Some(number) => forge.update(number, &proposal).await?,
        None => forge.create(&proposal).await?,
    };
    let (record, updated) = shared
        .store
        .record_pull_request(
            who,
            &OpenedPullRequest {
                attempt: AttemptRef::new(id.clone(), attempt.n),
                forge: forge.kind(),
                number: pull.number,
                url: pull.url,
                branch,
                draft,
            },
        )
        .await?;
    Ok((record, updated))
}

/// After a follow-up of the attempt a task's pull request proposes has
/// finished with a commit: the same pull request gets the new commit and a
/// refreshed description, as `kiln task pr` would give it. Failures are
/// logged; the next `kiln task pr` tries again.
pub(crate) async fn refresh_after_follow_up(shared: &Shared, attempt: &AttemptRef) {
    let system = crate::worker::system_principal();
    let detail = match shared.store.task(&system, &attempt.task_id).await {
        Ok(detail) => detail,
        Err(err) => {
            tracing::warn!("cannot read {attempt} to refresh its pull request: {err}");
            return;
        }
    };
    let proposes_it = detail
        .pull_request
        .as_ref()
        .is_some_and(|pr| pr.attempt == attempt.n);
    let finished_with_commit = detail
        .attempts
        .iter()
        .any(|a| a.n == attempt.n && a.status == AttemptState::Succeeded && a.commit_sha.is_some());
    if !(proposes_it && finished_with_commit) {
        return;
    }
    // The server does this on its own: the audit trail names it, and the
    // pull request keeps the user who opened it.
    let actor = kiln_store::server_actor();
    if let Err(err) = open_or_update(shared, &actor, &detail, Some(attempt.n), None).await {
        tracing::warn!(
            "updating the pull request of task {} after a follow-up of {attempt} failed: {err}; \
             `kiln task pr {}` tries again",
            attempt.task_id,
            attempt.task_id
        );
    }
}

/// The attempt asked for, or else the best-ranked one, or else (before a
/// ranking exists) the first that succeeded.
fn chosen_attempt(detail: &TaskDetail, asked: Option<u32>) -> Result<&Attempt, ApiError> {
    let id = &detail.task.id;
    let by_number = |n: u32| detail.attempts.iter().find(|a| a.n == n);
    let attempt = match asked {
        Some(n) => by_number(n).ok_or_else(|| {
            ApiError::invalid(
                "attempt",
                format!(
                    "task {id} has no attempt {n}: it has 1 to {}",
                    detail.attempts.len()
                ),
            )
        })?,
        None => detail
            .ranking
            .first()
            .and_then(|best| by_number(best.attempt))
            .or_else(|| {
                detail
                    .attempts
                    .iter()
                    .find(|a| a.status == AttemptState::Succeeded)
            })
            .ok_or_else(|| {
                ApiError::Conflict(format!(
                    "task {id} has no succeeded attempt to propose: \
                     name one with \"attempt\" (--attempt N) if you want it anyway"
                ))
            })?,
    };
    if matches!(attempt.status, AttemptState::Queued | AttemptState::Running) {
        return Err(ApiError::Conflict(format!(
            "attempt {} of task {id} is {}: propose it once it has finished",
            attempt.n, attempt.status
        )));
    }
    Ok(attempt)
}

/// What to push where.
struct PushPlan {
    mirror: std::path::PathBuf,
    commit: String,
    branch: String,
    auth: Option<PushAuth>,
    attempt: u32,
}

/// Pushes the attempt's commit from the mirror to the environment's remote
/// as the task's branch, replacing what it held: kiln owns `kiln/<task>`,
/// and another attempt's commit need not descend from the last one pushed.
/// The remote passes the repository location rule again first (the owner
/// may have lost admin rights); ssh pushes with the server's own keys, so
/// only an admin's environment may push over ssh.
async fn push_attempt(
    shared: &Shared,
    environment: &Environment,
    owner_is_admin: bool,
    plan: PushPlan,
) -> Result<(), ApiError> {
    let checked = crate::repo_access::recheck_environment(shared, environment)
        .await
        .map_err(|e| {
            ApiError::Forbidden(format!(
                "cannot use the repository {}: {e}",
                environment.repo
            ))
        })?;
    if checked.protocol == "ssh" && !owner_is_admin {
        return Err(ApiError::Forbidden(format!(
            "{} is an ssh remote, which kiln pushes to with the server's own ssh keys:              only an admin's environment may; use an https URL (the forge token or the              URL's credential then authenticates the push)",
            environment.repo
        )));
    }
    let remote = environment.repo.clone();
    let PushPlan {
        mirror,
        commit,
        branch,
        auth,
        attempt,
    } = plan;
    // push_branch sends a credential over https (and http to this machine)
    // only; file and ssh remotes get none.
    let auth = auth.filter(|_| matches!(checked.protocol, "https" | "http"));
    let pushed_branch = branch.clone();
    let pushed_remote = remote.clone();
    let pushed = tokio::task::spawn_blocking(move || {
        kiln_workspace::push_branch(
            &mirror.join(".git"),
            &commit,
            &pushed_remote,
            &pushed_branch,
            auth.as_ref(),
            true,
        )
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the push stopped: {e}")))?;
    let Err(err) = pushed else {
        return Ok(());
    };
    let (status, code) = match &err {
        PushError::NonFastForward { .. } | PushError::Rejected { .. } => {
            (StatusCode::CONFLICT, "push_rejected")
        }
        PushError::AuthFailed { .. } => (StatusCode::BAD_GATEWAY, "push_denied"),
        _ => (StatusCode::BAD_GATEWAY, "push_failed"),
    };
    Err(ApiError::Upstream {
        status,
        code,
        message: format!(
            "cannot push attempt {attempt}'s commit to {remote} as {branch}: {}",
            crate::scrub_data_dir(&err.to_string(), &shared.config.data_dir)
        ),
    })
}

/// The push's credential: the one that came in the repository URL, or
/// else the forge token, as each forge takes it for git over https (used
/// for https remotes only, see [`push_attempt`]).
fn push_auth(
    credential: Option<&RepoCredential>,
    forge: ForgeKind,
    token: &str,
) -> Option<PushAuth> {
    if let Some(credential) = credential {
        return Some(PushAuth::header(&credential.basic_authorization()));
    }
    let user = match forge {
        ForgeKind::Github => "x-access-token",
        ForgeKind::Gitlab => "oauth2",
        ForgeKind::Forgejo => "kiln",
    };
    Some(PushAuth::basic(user, token))
}
