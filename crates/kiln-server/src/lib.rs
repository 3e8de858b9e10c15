//! `kiln serve`: the HTTP API, live event streams over SSE, and the
//! in-process worker pool that runs attempts from the store's queue.
//!
//! A [`Server`] wraps a [`kiln_store::Store`] and a [`ServerConfig`] (model
//! provider, agent and sandbox templates, pool size). [`Server::recover`]
//! takes back attempts a previous process left running; [`Server::serve`]
//! answers the API on a listener and runs `max_parallel` workers until the
//! shutdown token fires. Each attempt gets a git worktree of a per-repository
//! mirror, the environment's setup script (network and secrets), then the
//! agent loop of `kiln-agent` in a sandbox without them; its events are
//! stored in batches and streamed to clients, and it ends with a final
//! message, a diff and a commit on `kiln/<task>/<attempt>`. docs/server.md
//! describes the API.
//!
//! ```
//! use kiln_server::{Server, ServerConfig};
//! use kiln_store::{Store, StoreOptions};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(StoreOptions::sqlite_in_dir(dir.path())).await.unwrap();
//! let provider = kiln_model::ProviderConfig::builtin("ollama").unwrap();
//! let agent = kiln_agent::AgentConfig::new("qwen3", kiln_protocol::Mode::Code, dir.path());
//! let sandbox = kiln_sandbox::SandboxPolicy::for_workspace(dir.path());
//! let server = Server::new(store, ServerConfig::new(dir.path(), provider, agent, sandbox)).unwrap();
//! server.recover().await.unwrap();
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let url = format!("http://{}", listener.local_addr().unwrap());
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let running = tokio::spawn(server.serve(listener, shutdown.clone()));
//!
//! let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
//! assert!(health.status().is_success());
//! let anonymous = reqwest::get(format!("{url}/api/tasks")).await.unwrap();
//! assert_eq!(anonymous.status(), 401);
//!
//! shutdown.cancel();
//! running.await.unwrap().unwrap();
//! # });
//! ```

mod auth;
mod config;
mod data_dir;
mod error;
mod forge;
pub(crate) mod git_serve;
mod http_server;
mod metrics;
pub(crate) mod model_proxy;
mod oidc;
mod openapi;
mod pulls;
mod repo_access;
mod routes;
mod secret_key;
mod slots;
mod state;
mod webhooks;
mod worker;

use std::sync::Arc;

use kiln_store::{RecoverScope, RecoveryReport, Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{
    ConnectionLimits, GroupGrant, GroupMapping, MetricsAccess, OidcConfig, ServerConfig,
    WebhookDelivery, DEFAULT_BODY_LIMIT,
};
pub use data_dir::{secure_data_dir, secure_data_files, DataDirLock};
pub use error::ApiError;
pub use repo_access::{
    git_credential_env, scrub_data_dir, CheckedRepo, RepoAccess, RepoAccessError,
    GIT_FETCH_ENV_REMOVE,
};
pub use secret_key::{
    load_or_create_secret_key, KeyOrigin, SecretKeyFileError, SECRET_KEY_FILE, SECRET_KEY_VAR,
};

/// The OpenAPI document `GET /api/openapi.json` serves.
pub fn openapi_document() -> serde_json::Value {
    openapi::document()
}

use state::{AppState, Shared};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The cause is the `source`: printing the error chain shows it once.
    #[error("cannot set up the model provider {provider}")]
    Model {
        provider: String,
        source: Box<kiln_model::ModelError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
    /// Single sign-on is configured in a way that cannot work.
    #[error("single sign-on: {0}")]
    Sso(String),
    #[error("another kiln serve ({holder}) is using the data directory {}: stop it, or give this one its own --data-dir", dir.display())]
    DataDirBusy {
        dir: std::path::PathBuf,
        holder: String,
    },
}

/// The API and the worker pool over one store.
pub struct Server {
    state: AppState,
}

impl Server {
    /// Connects the model provider (no request is made yet).
    pub fn new(store: Store, config: ServerConfig) -> Result<Server, ServerError> {
        let model = kiln_model::connect(&config.provider).map_err(|source| ServerError::Model {
            provider: config.provider.name.clone(),
            source: Box::new(source),
        })?;
        let metrics = metrics::Metrics::default();
        let streams = slots::Slots::new(config.limits.max_streams_per_token);
        let sso = match &config.oidc {
            None => None,
            Some(oidc) => {
                let public_url = config.public_url.as_deref().ok_or_else(|| {
                    ServerError::Sso(
                        "--oidc-issuer needs --public-url: the provider sends people back to {--public-url}/auth/oidc/callback".into(),
                    )
                })?;
                Some(Arc::new(
                    oidc::Sso::new(oidc.clone(), public_url).map_err(ServerError::Sso)?,
                ))
            }
        };
        Ok(Server {
            state: AppState {
                inner: Arc::new(Shared {
                    store,
                    model,
                    metrics,
                    shutdown: CancellationToken::new(),
                    revocations: tokio::sync::watch::Sender::new(0),
                    streams,
                    pull_requests: slots::Slots::new(1),
                    mirrors: Arc::new(kiln_workspace::Mirrors::new(&config.data_dir)),
                    provider_http: reqwest::Client::new(),
                    sso,
                    config,
                }),
            },
        })
    }

    /// Takes back the attempts a previous process of this server left
    /// running: on SQLite every running attempt (one server owns the file);
    /// on PostgreSQL those of this server's worker ids (other servers may
    /// share the database; attempts of workers that vanished for good are
    /// taken back by the expired-lease sweep). Each becomes `interrupted`
    /// (its events kept) and runs again from a fresh checkout, or fails
    /// after `max_tries` claims.
    pub async fn recover(&self) -> Result<RecoveryReport, ServerError> {
        let shared = &self.state.inner;
        let max_tries = shared.config.max_tries;
        if shared.store.backend() == kiln_store::Backend::Sqlite {
            return Ok(shared
                .store
                .recover(RecoverScope::AllRunning, max_tries)
                .await?);
        }
        let mut report = RecoveryReport::default();
        for id in worker::worker_ids(&shared.config) {
            let one = shared
                .store
                .recover(RecoverScope::Worker(&id), max_tries)
                .await?;
            report.requeued.extend(one.requeued);
            report.failed.extend(one.failed);
            report.cancelled.extend(one.cancelled);
        }
        Ok(report)
    }

    /// Discovers the single sign-on provider, when one is configured. A
    /// provider that cannot be reached now is looked up again at the first
    /// sign-in (a warning is logged); one that answers with a document kiln
    /// cannot use is an error, since retrying would not help.
    pub async fn connect_sso(&self) -> Result<(), ServerError> {
        let Some(sso) = &self.state.inner.sso else {
            return Ok(());
        };
        match sso.provider().await {
            Ok(_) => Ok(()),
            Err(err) if err.is_unreachable() => {
                tracing::warn!("{err}; single sign-on will try again at the first sign-in");
                Ok(())
            }
            Err(err) => Err(ServerError::Sso(err.to_string())),
        }
    }

    /// The HTTP routes alone (no workers), e.g. to mount under another router.
    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone())
    }

    /// Answers HTTP on `listener` (within [`ConnectionLimits`]) and runs
    /// the workers until `shutdown`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServerError> {
        let pool = if self.state.inner.config.local_workers {
            tokio::spawn(worker::run_pool(self.state.inner.clone(), shutdown.clone()))
        } else {
            // Remote workers' leases still expire when they die.
            tokio::spawn(worker::run_sweeper(
                self.state.inner.clone(),
                shutdown.clone(),
            ))
        };
        let webhooks = tokio::spawn(webhooks::run_deliveries(
            self.state.inner.clone(),
            shutdown.clone(),
        ));
        let app = self.router();
        let streams = self.state.inner.shutdown.clone();
        let limits = self.state.inner.config.limits.clone();
        // SSE streams would otherwise hold the graceful shutdown open.
        http_server::serve(listener, app, &limits, shutdown.clone(), move || {
            streams.cancel()
        })
        .await;
        shutdown.cancel();
        let _ = pool.await;
        let _ = webhooks.await;
        Ok(())
    }
}
