//! The state every handler and worker shares.

use std::sync::Arc;

use kiln_model::ModelClient;
use kiln_store::Store;

use crate::metrics::Metrics;
use crate::slots::Slots;
use crate::ServerConfig;
use kiln_workspace::Mirrors;

/// Cheap to clone: one `Arc` inside.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) config: ServerConfig,
    pub(crate) model: Arc<dyn ModelClient>,
    pub(crate) metrics: Metrics,
    /// Fires when the server stops; long-lived streams end on it.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    /// Bumped on every token revocation here, so open event streams check
    /// their token at once instead of at their next periodic check.
    pub(crate) revocations: tokio::sync::watch::Sender<u64>,
    /// Open event streams per token id.
    pub(crate) streams: Slots<String>,
    /// Pull requests being opened or updated, per task: one at a time, so
    /// that two requests cannot both create one.
    pub(crate) pull_requests: Slots<String>,
    /// The repository mirrors, shared by the in-process pool and the
    /// claims of remote workers (one lock per mirror for both).
    pub(crate) mirrors: Arc<Mirrors>,
    /// The model pass-through's connections to the provider.
    pub(crate) provider_http: reqwest::Client,
    /// Single sign-on, when configured (`--oidc-issuer`).
    pub(crate) sso: Option<Arc<crate::oidc::Sso>>,
}

impl AppState {
    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }
}
