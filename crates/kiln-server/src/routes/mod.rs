//! The route table: which handler serves which path.

mod environments;
mod events;
mod json;
mod ops;
mod pulls;
mod ranking;
mod tasks;
mod tokens;
mod webhooks;
mod worker_api;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;

use crate::error::ApiError;
use crate::oidc::routes as sso;
use crate::state::AppState;

pub(crate) use json::ApiJson;
// The token bodies the OpenAPI document derives schemas from (the others
// are in kiln_protocol::api).
pub(crate) use tokens::{CreatedToken, NewTokenBody};
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
        .route("/api/openapi.json", get(openapi))
        .route("/api/tokens", post(tokens::create).get(tokens::list))
        .route("/api/tokens/{id}", delete(tokens::revoke))
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
