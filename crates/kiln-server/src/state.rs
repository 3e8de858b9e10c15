//! The state every handler and worker shares.

use std::sync::Arc;

use kiln_model::ModelClient;
use kiln_store::Store;

use crate::metrics::Metrics;
use crate::ServerConfig;

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
}

impl AppState {
    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }
}
