//! `GET /api/environments/{id}/webhook/deliveries`: an environment's
//! outgoing webhook deliveries and their fate, for its owner or an admin.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use kiln_protocol::WebhookDelivery;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// `?limit=` (1 to 500, default 50).
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct DeliveryQuery {
    /// Most deliveries to list, newest first.
    pub limit: Option<u32>,
}

/// `{deliveries: [...]}`, newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct DeliveryList {
    pub deliveries: Vec<WebhookDelivery>,
}

pub(super) async fn deliveries(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    query: Result<Query<DeliveryQuery>, QueryRejection>,
) -> Result<Json<DeliveryList>, ApiError> {
    let Query(params) = query?;
    let deliveries = state
        .store()
        .webhook_deliveries(&who, &id, params.limit.unwrap_or(50))
        .await?;
    Ok(Json(DeliveryList { deliveries }))
}
