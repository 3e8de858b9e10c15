//! The route table: which handler serves which path.

mod audit;
mod environments;
mod events;
mod json;
mod ops;
mod people;
mod pulls;
mod quotas;
mod ranking;
mod tasks;
mod tokens;
mod webhooks;
mod worker_api;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;

use crate::error::ApiError;
use crate::oidc::routes as sso;
use crate::state::AppState;

pub(crate) use json::ApiJson;
// The token bodies the OpenAPI document derives schemas from (the others
// are in kiln_protocol::api).
pub(crate) use quotas::QuotaBody;
pub(crate) use tokens::{CreatedToken, NewTokenBody, TokenListQuery};
pub(crate) use webhooks::DeliveryQuery;

/// Every route of the API; `/api/*` routes authenticate through [`crate::auth::Caller`].
pub(crate) fn router(state: AppState) -> Router {
    let body_limit = state.inner.config.body_limit;
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .route(
            "/api/environments",
            post(environments::create).get(environments::list),
        )
        .route(
            "/api/environments/{id}/webhook/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/api/environments/{id}",
            get(environments::show)
                .patch(environments::update)
                .delete(environments::delete),
        )
        .route(
            "/api/environments/{id}/secrets/{name}",
            put(environments::set_secret).delete(environments::remove_secret),
        )
        .route(
            "/api/environments/{id}/versions",
            get(environments::versions),
        )
        .route("/api/openapi.json", get(openapi))
        .route("/api/audit", get(audit::list))
        .route("/api/audit/export", get(audit::export))
        .route("/api/tokens", post(tokens::create).get(tokens::list))
        .route("/api/tokens/{id}", delete(tokens::revoke))
        // People and teams (docs/roles.md).
        .route("/api/me", get(people::me))
        .route(
            "/api/users",
            get(people::list_users).post(people::create_user),
        )
        .route(
            "/api/users/{id}",
            get(people::show_user).patch(people::update_user),
        )
        .route(
            "/api/teams",
            get(people::list_teams).post(people::create_team),
        )
        .route("/api/teams/{id}", get(people::show_team))
        .route(
            "/api/teams/{id}/members/{user}",
            put(people::set_member).delete(people::remove_member),
        )
        .route(
            "/api/tasks/{id}/share",
            post(people::share).delete(people::unshare),
        )
        .route("/api/tasks", post(tasks::create).get(tasks::list))
        .route("/api/tasks/{id}", get(tasks::show))
        .route("/api/tasks/{id}/events", get(events::stream))
        .route("/api/tasks/{id}/attempts/{n}/diff", get(tasks::diff))
        .route("/api/tasks/{id}/attempts/{n}/bundle", get(tasks::bundle))
        .route(
            "/api/tasks/{id}/attempts/{n}/prefer",
            post(ranking::prefer).delete(ranking::clear),
        )
        .route("/api/tasks/{id}/messages", post(tasks::message))
        .route("/api/tasks/{id}/cancel", post(tasks::cancel))
        .route("/api/tasks/{id}/pr", post(pulls::open))
        // Quotas (docs/quotas.md).
        .route(
            "/api/teams/{id}/quota",
            get(quotas::show_team).put(quotas::set_team),
        )
        .route(
            "/api/users/{id}/quota",
            get(quotas::show_user).put(quotas::set_user),
        )
        // Single sign-on (docs/sso.md): the browser's side of the flows,
        // then `kiln login`'s device flow and `kiln logout`.
        .route("/auth/oidc/login", get(sso::login))
        .route("/auth/oidc/callback", get(sso::callback))
        .route("/auth/session", get(sso::session))
        .route("/auth/logout", post(sso::logout))
        .route(
            "/auth/device",
            get(sso::device_page).post(sso::device_continue),
        )
        .route("/api/auth/device", post(sso::device_start))
        .route("/api/auth/device/token", post(sso::device_token))
        .route("/api/auth/logout-token", post(sso::logout_token))
        .route("/api/workers", get(worker_api::list))
        .route("/api/worker/claim", post(worker_api::claim))
        .route(
            "/api/worker/attempts/{id}/{n}/heartbeat",
            post(worker_api::heartbeat),
        )
        .route(
            "/api/worker/attempts/{id}/{n}/events",
            post(worker_api::events).layer(DefaultBodyLimit::max(worker_api::WORKER_BODY_LIMIT)),
        )
        .route(
            "/api/worker/attempts/{id}/{n}/finish",
            post(worker_api::finish).layer(DefaultBodyLimit::max(worker_api::WORKER_BODY_LIMIT)),
        )
        // git_serve caps request bodies itself (a push may be large).
        .route(
            "/api/worker/attempts/{id}/{n}/git/info/refs",
            get(worker_api::git_refs).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/worker/attempts/{id}/{n}/git/{service}",
            post(worker_api::git_rpc).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/worker/attempts/{id}/{n}/model/responses",
            post(worker_api::model_responses)
                .layer(DefaultBodyLimit::max(worker_api::WORKER_BODY_LIMIT)),
        )
        .route(
            "/api/worker/attempts/{id}/{n}/model/chat/completions",
            post(worker_api::model_chat)
                .layer(DefaultBodyLimit::max(worker_api::WORKER_BODY_LIMIT)),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("route {}", uri.path()))
}

async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(crate::openapi::document())
}
