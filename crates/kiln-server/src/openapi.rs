//! `GET /api/openapi.json`: the API described as OpenAPI 3.1.
//!
//! The route table below names, for each operation, the Rust types its
//! handler reads and writes; `components.schemas` is generated from those
//! types' `JsonSchema` derives, so a field added to `NewTask` (say) shows up
//! in the document without touching this file. A test walks every
//! documented operation against the running router so the table and the
//! routes cannot drift apart unnoticed either.

use kiln_protocol::api::{
    CancelOutcome, Environment, Message, NewEnvironment, NewMessage, NewTask, TaskDetail, TaskPage,
    TaskQuery,
};
use kiln_protocol::teams::{
    AuditPage, AuditQuery, EnvironmentPatch, EnvironmentVersion, NewTeam, NewUser, QuotaStatus,
    SecretValue, SetMember, Team, TeamList, User, UserList, UserPatch,
};
use kiln_protocol::worker::{ClaimRequest, EventBatchReply, HeartbeatReply, WorkerInfo};
use kiln_protocol::WebhookDelivery;
use kiln_protocol::{NewPullRequest, PullRequest};
use kiln_store::TokenInfo;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{json, Map, Value};

use crate::error::ErrorBody;
use crate::routes::{CreatedToken, DeliveryQuery, NewTokenBody, QuotaBody, TokenListQuery};

/// Puts `T`'s schema into the generator's definitions and returns a
/// `$ref` to it (or `T`'s schema itself for types schemars inlines).
type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

fn of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// What a successful response carries.
pub(crate) enum Success {
    /// A body that is not JSON; the content type says what it is.
    Opaque(&'static str),
    /// The JSON of a Rust type.
    Json(SchemaOf),
    /// `{"<key>": [T, …]}`, as the list handlers build it.
    ListOf(&'static str, SchemaOf),
    /// A schema with no Rust type behind it (an empty object, the
    /// OpenAPI document itself).
    Literal(fn() -> Value),
    /// No body (204).
    Empty,
}

/// One documented operation.
pub(crate) struct Operation {
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    pub(crate) summary: &'static str,
    /// The type the query string deserializes into.
    pub(crate) query: Option<SchemaOf>,
    /// The type the JSON request body deserializes into.
    pub(crate) body: Option<SchemaOf>,
    pub(crate) status: u16,
    pub(crate) success: Success,
}

pub(crate) const OPERATIONS: &[Operation] = &[
    Operation {
        body: Some(of::<NewEnvironment>),
        status: 201,
        success: Success::Json(of::<Environment>),
        ..op("post", "/api/environments", "Create an environment")
    },
    Operation {
        success: Success::ListOf("environments", of::<Environment>),
        ..op("get", "/api/environments", "List environments")
    },
    Operation {
        query: Some(of_inline::<DeliveryQuery>),
        success: Success::ListOf("deliveries", of::<WebhookDelivery>),
        ..op(
            "get",
            "/api/environments/{id}/webhook/deliveries",
            "The environment's outgoing webhook deliveries, newest first (?limit=, owner or admin)",
        )
    },
    Operation {
        success: Success::Json(of::<Environment>),
        ..op(
            "get",
            "/api/environments/{id}",
            "An environment by id, name or team/name (any role in its team)",
        )
    },
    Operation {
        body: Some(of::<EnvironmentPatch>),
        success: Success::Json(of::<Environment>),
        ..op(
            "patch",
            "/api/environments/{id}",
            "Change an environment's fields (absent: unchanged, null: cleared); a new version unless nothing changed (team maintainers)",
        )
    },
    Operation {
        status: 204,
        success: Success::Empty,
        ..op(
            "delete",
            "/api/environments/{id}",
            "Delete an environment; 409 while a task on it has an attempt queued or running (team maintainers)",
        )
    },
    Operation {
        body: Some(of::<SecretValue>),
        status: 204,
        success: Success::Empty,
        ..op(
            "put",
            "/api/environments/{id}/secrets/{name}",
            "Set a setup-only secret; its value is never shown again (team maintainers)",
        )
    },
    Operation {
        status: 204,
        success: Success::Empty,
        ..op(
            "delete",
            "/api/environments/{id}/secrets/{name}",
            "Remove a secret (team maintainers)",
        )
    },
    Operation {
        success: Success::ListOf("versions", of::<EnvironmentVersion>),
        ..op(
            "get",
            "/api/environments/{id}/versions",
            "Every version of an environment, newest first, with who changed what (any role in its team)",
        )
    },
    Operation {
        body: Some(of::<NewTask>),
        status: 201,
        success: Success::Json(of::<TaskDetail>),
        ..op("post", "/api/tasks", "Create a task with 1-8 attempts")
    },
    Operation {
        query: Some(of_inline::<TaskQuery>),
        success: Success::Json(of::<TaskPage>),
        ..op(
            "get",
            "/api/tasks",
            "List tasks, newest first, a page at a time",
        )
    },
    Operation {
        success: Success::Json(of::<TaskDetail>),
        ..op("get", "/api/tasks/{id}", "A task with its attempts")
    },
    Operation {
        success: Success::Opaque("text/event-stream"),
        ..op(
            "get",
            "/api/tasks/{id}/events",
            "The task's events over SSE (Last-Event-ID, ?attempt=N, ?after=ID)",
        )
    },
    Operation {
        success: Success::Opaque("text/x-diff"),
        ..op(
            "get",
            "/api/tasks/{id}/attempts/{n}/diff",
            "An attempt's diff against its base",
        )
    },
    Operation {
        success: Success::Opaque("application/x-git-bundle"),
        ..op(
            "get",
            "/api/tasks/{id}/attempts/{n}/bundle",
            "An attempt's commits as a git bundle of base..branch (headers Kiln-Base-Commit, Kiln-Commit, Kiln-Branch), for kiln task apply",
        )
    },
    Operation {
        success: Success::Json(of::<TaskDetail>),
        ..op(
            "post",
            "/api/tasks/{id}/attempts/{n}/prefer",
            "Mark a finished attempt preferred: it ranks first",
        )
    },
    Operation {
        success: Success::Json(of::<TaskDetail>),
        ..op(
            "delete",
            "/api/tasks/{id}/attempts/{n}/prefer",
            "Clear the preferred mark when this attempt holds it",
        )
    },
    Operation {
        body: Some(of::<NewMessage>),
        status: 202,
        success: Success::ListOf("messages", of::<Message>),
        ..op(
            "post",
            "/api/tasks/{id}/messages",
            "Steer a running attempt or continue a finished one",
        )
    },
    Operation {
        status: 202,
        success: Success::Json(of::<CancelOutcome>),
        ..op(
            "post",
            "/api/tasks/{id}/cancel",
            "Cancel the task's attempts",
        )
    },
    Operation {
        body: Some(of::<NewPullRequest>),
        status: 201,
        success: Success::Json(of::<PullRequest>),
        ..op(
            "post",
            "/api/tasks/{id}/pr",
            "Push an attempt as branch kiln/<task> and open the task's pull request on the environment's forge (201), or update the one it has (200)",
        )
    },
    Operation {
        query: Some(of_inline::<AuditQuery>),
        success: Success::Json(of::<AuditPage>),
        ..op(
            "get",
            "/api/audit",
            "The audit trail, newest first, a page at a time (admin; filters actor, action or `prefix.`, team, target, since, until)",
        )
    },
    Operation {
        query: Some(of_inline::<AuditQuery>),
        success: Success::Opaque("application/x-ndjson"),
        ..op(
            "get",
            "/api/audit/export",
            "The whole filtered audit trail as JSON lines (one AuditEvent each), oldest first, streamed (admin; limit and cursor ignored)",
        )
    },
    Operation {
        body: Some(of::<NewTokenBody>),
        status: 201,
        success: Success::Json(of::<CreatedToken>),
        ..op(
            "post",
            "/api/tokens",
            "Create a token: your own; admins: a user's (user), a new user's, or a worker's",
        )
    },
    Operation {
        query: Some(of_inline::<TokenListQuery>),
        success: Success::ListOf("tokens", of::<TokenInfo>),
        ..op(
            "get",
            "/api/tokens",
            "List your tokens (admins: every token, or one user's with ?user=)",
        )
    },
    Operation {
        success: Success::Json(of::<TokenInfo>),
        ..op(
            "delete",
            "/api/tokens/{id}",
            "Revoke one of your tokens (admins: anyone's)",
        )
    },
    Operation {
        success: Success::Json(of::<User>),
        ..op("get", "/api/me", "The caller: user, server role and teams")
    },
    Operation {
        success: Success::Json(of::<UserList>),
        ..op(
            "get",
            "/api/users",
            "List users (admins; others see themselves)",
        )
    },
    Operation {
        body: Some(of::<NewUser>),
        status: 201,
        success: Success::Json(of::<User>),
        ..op(
            "post",
            "/api/users",
            "Create a user (admins; owner or admin role only by an owner)",
        )
    },
    Operation {
        success: Success::Json(of::<User>),
        ..op(
            "get",
            "/api/users/{id}",
            "A user by id or name (admins; others only themselves)",
        )
    },
    Operation {
        body: Some(of::<UserPatch>),
        success: Success::Json(of::<User>),
        ..op(
            "patch",
            "/api/users/{id}",
            "Change a user's email, role, or disable them (admins; owner and admin roles only by an owner; never the last owner)",
        )
    },
    Operation {
        success: Success::Json(of::<TeamList>),
        ..op(
            "get",
            "/api/teams",
            "List teams with their members (admins: all; others: their own)",
        )
    },
    Operation {
        body: Some(of::<NewTeam>),
        status: 201,
        success: Success::Json(of::<Team>),
        ..op("post", "/api/teams", "Create a team (admins)")
    },
    Operation {
        success: Success::Json(of::<Team>),
        ..op(
            "get",
            "/api/teams/{id}",
            "A team by id or name, with its members (admins and its members)",
        )
    },
    Operation {
        body: Some(of::<SetMember>),
        success: Success::Json(of::<Team>),
        ..op(
            "put",
            "/api/teams/{id}/members/{user}",
            "Give a user a role in a team: maintainer, member or viewer (admins)",
        )
    },
    Operation {
        success: Success::Json(of::<Team>),
        ..op(
            "delete",
            "/api/teams/{id}/members/{user}",
            "Take a user out of a team (admins)",
        )
    },
    Operation {
        success: Success::Json(of::<TaskDetail>),
        ..op(
            "post",
            "/api/tasks/{id}/share",
            "Share a task with its team (its author, the team's maintainers, admins)",
        )
    },
    Operation {
        success: Success::Json(of::<TaskDetail>),
        ..op(
            "delete",
            "/api/tasks/{id}/share",
            "Make a shared task private to its author and the team's maintainers again",
        )
    },
    Operation {
        success: Success::Json(of::<QuotaStatus>),
        ..op(
            "get",
            "/api/teams/{id}/quota",
            "A team's quota and its use now (admins and the team's members; {id} is an id or a name)",
        )
    },
    Operation {
        body: Some(of::<QuotaBody>),
        success: Success::Json(of::<QuotaStatus>),
        ..op(
            "put",
            "/api/teams/{id}/quota",
            "Set a team's quota; a limit left out or null is removed (admin)",
        )
    },
    Operation {
        success: Success::Json(of::<QuotaStatus>),
        ..op(
            "get",
            "/api/users/{id}/quota",
            "A user's quota and its use now (admins and the user; {id} is an id or a name)",
        )
    },
    Operation {
        body: Some(of::<QuotaBody>),
        success: Success::Json(of::<QuotaStatus>),
        ..op(
            "put",
            "/api/users/{id}/quota",
            "Set a user's quota; a limit left out or null is removed (admin)",
        )
    },
    Operation {
        success: Success::Json(of::<Vec<WorkerInfo>>),
        ..op(
            "get",
            "/api/workers",
            "The remote workers seen, with the attempts they run (admin)",
        )
    },
    Operation {
        body: Some(of::<ClaimRequest>),
        success: Success::Literal(worker_claim),
        ..op(
            "post",
            "/api/worker/claim",
            "Claim the oldest waiting attempt (worker token); long-polls, 204 when none came",
        )
    },
    Operation {
        success: Success::Json(of::<HeartbeatReply>),
        ..op(
            "post",
            "/api/worker/attempts/{id}/{n}/heartbeat",
            "Renew a claimed attempt's lease (lease token); 409 when it is lost",
        )
    },
    Operation {
        body: Some(event_batch),
        success: Success::Json(of::<EventBatchReply>),
        ..op(
            "post",
            "/api/worker/attempts/{id}/{n}/events",
            "Append the attempt's next events (lease token); stored redacted",
        )
    },
    Operation {
        body: Some(finish_request),
        status: 204,
        success: Success::Empty,
        ..op(
            "post",
            "/api/worker/attempts/{id}/{n}/finish",
            "Record the attempt's report and end the lease (lease token)",
        )
    },
    Operation {
        success: Success::Opaque("application/x-git-upload-pack-advertisement"),
        ..op(
            "get",
            "/api/worker/attempts/{id}/{n}/git/info/refs",
            "git smart HTTP (lease token): the refs the attempt may see (?service=git-upload-pack|git-receive-pack)",
        )
    },
    Operation {
        success: Success::Opaque("application/x-git-upload-pack-result"),
        ..op(
            "post",
            "/api/worker/attempts/{id}/{n}/git/git-upload-pack",
            "git smart HTTP (lease token): fetch upstream branches, tags and the attempt's branch",
        )
    },
    Operation {
        success: Success::Opaque("application/x-git-receive-pack-result"),
        ..op(
            "post",
            "/api/worker/attempts/{id}/{n}/git/git-receive-pack",
            "git smart HTTP (lease token): push the attempt's branch, nothing else",
        )
    },
    Operation {
        success: Success::Opaque("text/event-stream"),
        ..op(
            "post",
            "/api/worker/attempts/{id}/{n}/model/responses",
            "The server's model provider, Responses API (lease token; the attempt's model only)",
        )
    },
    Operation {
        success: Success::Opaque("text/event-stream"),
        ..op(
            "post",
            "/api/worker/attempts/{id}/{n}/model/chat/completions",
            "The server's model provider, Chat Completions API (lease token; the attempt's model only)",
        )
    },
    Operation {
        success: Success::Literal(openapi_document),
        ..op("get", "/api/openapi.json", "This document")
    },
    Operation {
        success: Success::Opaque("text/plain"),
        ..op(
            "get",
            "/healthz",
            "Liveness and database reachability (no auth)",
        )
    },
    Operation {
        success: Success::Opaque("text/plain"),
        ..op(
            "get",
            "/metrics",
            "Prometheus metrics (an admin token or the metrics token; no auth with --metrics-public)",
        )
    },
];

/// An operation with no query, no body, and an empty 200 JSON response;
/// the table overrides what differs.
const fn op(method: &'static str, path: &'static str, summary: &'static str) -> Operation {
    Operation {
        method,
        path,
        summary,
        query: None,
        body: None,
        status: 200,
        success: Success::Literal(empty_object),
    }
}

/// `T`'s own schema rather than a `$ref`: query parameters are listed one
/// by one, so the object's properties are needed.
fn of_inline<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    T::json_schema(generator)
}

fn empty_object() -> Value {
    json!({"type": "object"})
}

/// The worker protocol's bodies that carry events and reports, whose
/// types have no generated schema: docs/workers.md describes them.
fn worker_claim() -> Value {
    json!({"type": "object", "description": "WorkerClaim: the attempt, its lease token, repository, sandbox, setup and limits (docs/workers.md)"})
}

fn event_batch(generator: &mut SchemaGenerator) -> Schema {
    named(
        generator,
        "EventBatch",
        json!({
            "type": "object",
            "required": ["events"],
            "properties": { "events": { "type": "array", "items": {
                "type": "object",
                "description": "an event as kiln writes it: seq, ts, type and the fields of its type",
            } } },
        }),
    )
}

fn finish_request(generator: &mut SchemaGenerator) -> Schema {
    named(
        generator,
        "FinishRequest",
        json!({
            "type": "object",
            "required": ["report"],
            "properties": {
                "report": {
                    "type": "object",
                    "description": "AttemptReport: status, reason, final_message, usage, diff, diff_stat, branch, commit_sha",
                },
                "unread_messages": { "type": "array", "items": { "type": "string" } },
            },
        }),
    )
}

/// Files `schema` under `name` in the components and refers to it.
fn named(generator: &mut SchemaGenerator, name: &str, schema: Value) -> Schema {
    generator.definitions_mut().insert(name.to_string(), schema);
    schemars::json_schema!({ "$ref": format!("#/components/schemas/{name}") })
}

fn openapi_document() -> Value {
    json!({"type": "object", "description": "an OpenAPI 3.1 document"})
}

/// JSON Schema 2020-12 (the dialect of OpenAPI 3.1) with definitions kept
/// where OpenAPI looks for them.
fn generator(settings: SchemaSettings) -> SchemaGenerator {
    let mut settings = settings;
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    settings.into_generator()
}

/// Generators for both directions: request types are described as serde
/// deserializes them (defaulted fields optional), response types as it
/// serializes them.
pub(crate) struct Generators {
    pub(crate) requests: SchemaGenerator,
    pub(crate) responses: SchemaGenerator,
}

impl Generators {
    pub(crate) fn new() -> Self {
        Generators {
            requests: generator(SchemaSettings::draft2020_12().for_deserialize()),
            responses: generator(SchemaSettings::draft2020_12().for_serialize()),
        }
    }
}

/// The whole document.
pub(crate) fn document() -> Value {
    let mut generators = Generators::new();
    let mut paths = Map::new();
    for operation in OPERATIONS {
        let entry = paths
            .entry(operation.path.to_string())
            .or_insert_with(|| json!({}));
        entry[operation.method] = describe(operation, &mut generators);
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
            "schemas": component_schemas(generators),
        },
        "security": [{ "bearer": [] }],
    })
}

/// Every schema the operations referred to, plus the error body (`Error`,
/// which every operation's 4XX response refers to). A name both directions
/// define keeps the request's schema; a test checks the two agree wherever
/// they share a name.
pub(crate) fn component_schemas(mut generators: Generators) -> Map<String, Value> {
    generators.responses.subschema_for::<ErrorBody>();
    let mut schemas = generators.responses.take_definitions(true);
    schemas.extend(generators.requests.take_definitions(true));
    schemas
}

fn describe(operation: &Operation, generators: &mut Generators) -> Value {
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
    if let Some(query) = operation.query {
        parameters.extend(query_parameters(query(&mut generators.requests)));
    }
    let success = match &operation.success {
        Success::Opaque(content_type) => json!({ *content_type: {} }),
        Success::Json(schema) => {
            json!({ "application/json": { "schema": schema(&mut generators.responses) } })
        }
        Success::ListOf(key, item) => json!({ "application/json": { "schema": {
            "type": "object",
            "required": [key],
            "properties": { *key: { "type": "array", "items": item(&mut generators.responses) } },
        }}}),
        Success::Literal(schema) => json!({ "application/json": { "schema": schema() } }),
        Success::Empty => Value::Null,
    };
    let mut described = json!({
        "summary": operation.summary,
        "parameters": parameters,
        "responses": {
            operation.status.to_string(): if success.is_null() {
                json!({ "description": "success" })
            } else {
                json!({ "description": "success", "content": success })
            },
            "4XX": {
                "description": "the request is refused; the body names the problem",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
            },
        },
    });
    if let Some(body) = operation.body {
        described["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": body(&mut generators.requests) } },
        });
    }
    if operation.path == "/healthz" || operation.path == "/api/openapi.json" {
        described["security"] = json!([]);
    }
    described
}

/// One query parameter per property of the query type's object schema.
fn query_parameters(schema: Schema) -> Vec<Value> {
    let object = schema.to_value();
    let required: Vec<&Value> = object["required"]
        .as_array()
        .map(|names| names.iter().collect())
        .unwrap_or_default();
    let Some(properties) = object["properties"].as_object() else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, schema)| {
            json!({
                "name": name,
                "in": "query",
                "required": required.contains(&&Value::String(name.clone())),
                "schema": schema,
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "openapi_tests.rs"]
mod tests;
