//! `GET /api/openapi.json`: the API described as OpenAPI 3.1.
//!
//! Written by hand from the route table in `routes/mod.rs` (the store's
//! request and response types live in `kiln-store`, which has no schema
//! derive); a test walks every documented operation against the running
//! router so the two cannot drift apart unnoticed.

use serde_json::{json, Value};

/// One documented operation: method, path, summary, request body schema.
pub(crate) struct Operation {
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    pub(crate) summary: &'static str,
    pub(crate) body: Option<&'static str>,
    pub(crate) success: (u16, &'static str),
}

pub(crate) const OPERATIONS: &[Operation] = &[
    op(
        "post",
        "/api/environments",
        "Create an environment",
        Some("NewEnvironment"),
        (201, "application/json"),
    ),
    op(
        "get",
        "/api/environments",
        "List environments",
        None,
        (200, "application/json"),
    ),
    op(
        "post",
        "/api/tasks",
        "Create a task with 1-8 attempts",
        Some("NewTask"),
        (201, "application/json"),
    ),
    op(
        "get",
        "/api/tasks",
        "List tasks (?status=&limit=&cursor=)",
        None,
        (200, "application/json"),
    ),
    op(
        "get",
        "/api/tasks/{id}",
        "A task with its attempts",
        None,
        (200, "application/json"),
    ),
    op(
        "get",
        "/api/tasks/{id}/events",
        "The task's events over SSE (Last-Event-ID, ?attempt=N, ?after=ID)",
        None,
        (200, "text/event-stream"),
    ),
    op(
        "get",
        "/api/tasks/{id}/attempts/{n}/diff",
        "An attempt's diff against its base",
        None,
        (200, "text/x-diff"),
    ),
    op(
        "post",
        "/api/tasks/{id}/messages",
        "Steer a running attempt or continue a finished one",
        Some("Message"),
        (202, "application/json"),
    ),
    op(
        "post",
        "/api/tasks/{id}/cancel",
        "Cancel the task's attempts",
        None,
        (202, "application/json"),
    ),
    op(
        "post",
        "/api/tokens",
        "Create a token (admin)",
        Some("NewToken"),
        (201, "application/json"),
    ),
    op(
        "get",
        "/api/tokens",
        "List tokens (admin)",
        None,
        (200, "application/json"),
    ),
    op(
        "delete",
        "/api/tokens/{id}",
        "Revoke a token (admin)",
        None,
        (200, "application/json"),
    ),
    op(
        "get",
        "/api/openapi.json",
        "This document",
        None,
        (200, "application/json"),
    ),
    op(
        "get",
        "/healthz",
        "Liveness and database reachability (no auth)",
        None,
        (200, "text/plain"),
    ),
    op(
        "get",
        "/metrics",
        "Prometheus metrics (no auth)",
        None,
        (200, "text/plain"),
    ),
];

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    body: Option<&'static str>,
    success: (u16, &'static str),
) -> Operation {
    Operation {
        method,
        path,
        summary,
        body,
        success,
    }
}

/// The whole document.
pub(crate) fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for operation in OPERATIONS {
        let entry = paths
            .entry(operation.path.to_string())
            .or_insert_with(|| json!({}));
        entry[operation.method] = describe(operation);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "kiln",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Delegate coding tasks to kiln's agent; every /api call needs `Authorization: Bearer <token>`.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas(),
        },
        "security": [{ "bearer": [] }],
    })
}

fn describe(operation: &Operation) -> Value {
    let mut parameters = Vec::new();
    for name in ["id", "n"] {
        if operation.path.contains(&format!("{{{name}}}")) {
            let schema = if name == "n" {
                json!({"type": "integer", "minimum": 1})
            } else {
                json!({"type": "string"})
            };
            parameters
                .push(json!({"name": name, "in": "path", "required": true, "schema": schema}));
        }
    }
    let (status, content_type) = operation.success;
    let mut described = json!({
        "summary": operation.summary,
        "parameters": parameters,
        "responses": {
            status.to_string(): {
                "description": "success",
                "content": { content_type: {} },
            },
            "4XX": {
                "description": "the request is refused; the body names the problem",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
            },
        },
    });
    if let Some(schema) = operation.body {
        described["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } },
        });
    }
    if !operation.path.starts_with("/api/") || operation.path == "/api/openapi.json" {
        described["security"] = json!([]);
    }
    described
}

fn schemas() -> Value {
    let string_map = json!({"type": "object", "additionalProperties": {"type": "string"}});
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": { "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": { "code": {"type": "string"}, "message": {"type": "string"} },
            }},
        },
        "NewEnvironment": {
            "type": "object",
            "required": ["name", "repo"],
            "properties": {
                "name": {"type": "string"},
                "repo": {"type": "string", "description": "a local path or a git URL"},
                "base_branch": {"type": "string"},
                "setup_script": {"type": "string"},
                "env": string_map,
                "secrets": string_map,
                "network": {"type": "boolean", "default": false},
                "image": {"type": "string"},
            },
        },
        "NewTask": {
            "type": "object",
            "required": ["environment", "prompt"],
            "properties": {
                "environment": {"type": "string", "description": "id, or name among your own"},
                "prompt": {"type": "string"},
                "mode": {"enum": ["code", "ask"], "default": "code"},
                "attempts": {"type": "integer", "minimum": 1, "maximum": 8, "default": 1},
                "model": {"type": "string"},
                "base_ref": {"type": "string"},
            },
        },
        "Message": {
            "type": "object",
            "required": ["text"],
            "properties": {
                "text": {"type": "string"},
                "attempt": {"type": "integer", "minimum": 1, "description": "every attempt when absent"},
            },
        },
        "NewToken": {
            "type": "object",
            "required": ["name"],
            "properties": { "name": {"type": "string"}, "admin": {"type": "boolean", "default": false} },
        },
    })
}
