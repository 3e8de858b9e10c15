use kiln_protocol::Mode;
use kiln_store::NewTask;
use serde_json::Value;

use super::*;

fn component(document: &Value, name: &str) -> Value {
    document["components"]["schemas"][name].clone()
}

fn refs_in(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "$ref" {
                    found.push(inner.as_str().unwrap_or("<not a string>").to_string());
                } else {
                    refs_in(inner, found);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs_in(item, found)),
        _ => {}
    }
}

#[test]
fn document_round_trips_through_json_text() {
    let document = document();
    let text = serde_json::to_string(&document).unwrap();
    let parsed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed, document);
    assert_eq!(parsed["openapi"], "3.1.0");
}

#[test]
fn every_ref_resolves_to_a_component_schema() {
    let document = document();
    let mut refs = Vec::new();
    refs_in(&document, &mut refs);
    assert!(refs.len() >= 15, "only {} $refs: {refs:?}", refs.len());
    for reference in refs {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{reference} does not point into components.schemas"));
        assert!(
            document["components"]["schemas"][name].is_object(),
            "{reference} names no component schema"
        );
    }
}

#[test]
fn every_json_request_body_and_success_response_has_a_schema() {
    let document = document();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            if let Some(body) = operation.get("requestBody") {
                let schema = &body["content"]["application/json"]["schema"];
                assert!(
                    schema["$ref"].is_string(),
                    "{method} {path}: request body is not a $ref: {schema}"
                );
            }
            let responses = operation["responses"].as_object().unwrap();
            let (status, success) = responses.iter().find(|(s, _)| s.starts_with('2')).unwrap();
            if let Some(json) = success["content"].get("application/json") {
                assert!(
                    json["schema"].is_object(),
                    "{method} {path}: {status} has no schema"
                );
            }
        }
    }
}

#[test]
fn task_creation_references_the_generated_new_task_and_task_view() {
    let document = document();
    let post = &document["paths"]["/api/tasks"]["post"];
    assert_eq!(
        post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/NewTask"
    );
    assert_eq!(
        post["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/TaskView"
    );
    let view = component(&document, "TaskView");
    for field in ["id", "prompt", "status", "attempts"] {
        assert!(
            view["properties"].get(field).is_some(),
            "TaskView lacks {field}: {view}"
        );
    }
}

#[test]
fn new_task_schema_lists_the_issue_fields_and_requires_environment_and_prompt() {
    let new_task = component(&document(), "NewTask");
    for field in [
        "environment",
        "prompt",
        "mode",
        "attempts",
        "model",
        "base_ref",
    ] {
        assert!(
            new_task["properties"].get(field).is_some(),
            "NewTask lacks {field}: {new_task}"
        );
    }
    let mut required: Vec<&str> = new_task["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["environment", "prompt"]);
    assert_eq!(new_task["properties"]["attempts"]["minimum"], 1);
    assert_eq!(
        new_task["properties"]["attempts"]["maximum"],
        kiln_store::MAX_ATTEMPTS
    );
}

#[test]
fn every_field_new_task_serializes_is_in_its_schema() {
    // The field list comes from serde, not from this test: a field added to
    // `NewTask` fails here unless the generated schema carries it too.
    let mut sample = NewTask::new("env", "prompt");
    sample.mode = Mode::Ask;
    let serialized = serde_json::to_value(&sample).unwrap();
    let fields: Vec<&String> = serialized.as_object().unwrap().keys().collect();
    assert!(fields.len() >= 6, "{fields:?}");
    let new_task = component(&document(), "NewTask");
    let documented = new_task["properties"].as_object().unwrap();
    for field in &fields {
        assert!(
            documented.contains_key(field.as_str()),
            "NewTask serializes {field} but the document lacks it"
        );
    }
    assert_eq!(
        documented.len(),
        fields.len(),
        "{documented:?} vs {fields:?}"
    );
}

#[test]
fn mode_schema_is_the_serde_spelling() {
    let document = document();
    let mode = component(&document, "Mode");
    let mut values: Vec<String> = Vec::new();
    let mut collect = |variant: &Value| {
        if let Some(value) = variant.get("const").or(variant.get("enum")) {
            match value {
                Value::Array(items) => {
                    values.extend(items.iter().map(|v| v.as_str().unwrap().to_string()))
                }
                other => values.push(other.as_str().unwrap().to_string()),
            }
        }
    };
    collect(&mode);
    if let Some(variants) = mode["oneOf"].as_array() {
        variants.iter().for_each(&mut collect);
    }
    values.sort();
    assert_eq!(values, ["ask", "code"], "{mode}");
}

#[test]
fn list_tasks_query_parameters_come_from_task_query() {
    let document = document();
    let parameters = document["paths"]["/api/tasks"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = parameters
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cursor", "limit", "scope", "status"]);
    assert!(parameters.iter().all(|p| p["in"] == "query"));
}

#[test]
fn request_and_response_schemas_agree_on_shared_names() {
    let mut generators = Generators::new();
    let mut throwaway = Map::new();
    for operation in OPERATIONS {
        let entry = throwaway
            .entry(operation.path.to_string())
            .or_insert_with(|| json!({}));
        entry[operation.method] = describe(operation, &mut generators);
    }
    let requests = generators.requests.take_definitions(true);
    let responses = generators.responses.take_definitions(true);
    assert!(requests.contains_key("NewTask"), "{requests:?}");
    assert!(responses.contains_key("TaskView"), "{responses:?}");
    for (name, schema) in &requests {
        if let Some(other) = responses.get(name) {
            assert_eq!(schema, other, "{name} differs between request and response");
        }
    }
}

/// The names of an object schema's properties and of its required fields.
fn properties_and_required(schema: &Value) -> (Vec<String>, Vec<String>) {
    let mut properties: Vec<String> = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no properties: {schema}"))
        .keys()
        .cloned()
        .collect();
    let mut required: Vec<String> = schema["required"]
        .as_array()
        .unwrap_or_else(|| panic!("no required: {schema}"))
        .iter()
        .map(|name| name.as_str().unwrap().to_string())
        .collect();
    properties.sort();
    required.sort();
    (properties, required)
}

fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.strip_prefix("#/components/schemas/").unwrap();
            &document["components"]["schemas"][name]
        }
        None => schema,
    }
}

#[tokio::test]
async fn error_schema_is_generated_from_the_body_errors_render() {
    use axum::response::IntoResponse;

    let document = document();
    let rendered = crate::error::ApiError::NotFound("task t_1".into()).into_response();
    assert_eq!(rendered.status(), 404);
    let bytes = axum::body::to_bytes(rendered.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        body,
        json!({"error": {"code": "not_found", "message": "task t_1 not found"}})
    );

    let error = component(&document, "Error");
    assert_eq!(
        properties_and_required(&error),
        (vec!["error".to_string()], vec!["error".to_string()])
    );
    let detail = resolve(&document, &error["properties"]["error"]);
    let fields = vec!["code".to_string(), "message".to_string()];
    assert_eq!(properties_and_required(detail), (fields.clone(), fields));
    assert_eq!(detail["properties"]["code"]["type"], "string");
}

#[test]
fn created_token_schema_lists_every_field_the_answer_carries() {
    let document = document();
    let post = &document["paths"]["/api/tokens"]["post"];
    let schema = &post["responses"]["201"]["content"]["application/json"]["schema"];
    assert_eq!(schema["$ref"], "#/components/schemas/CreatedToken");

    let token = kiln_store::NewToken {
        info: kiln_store::TokenInfo {
            id: "tok_1".into(),
            name: "ada".into(),
            admin: true,
            worker: false,
            user_id: None,
            source: "local".into(),
            expires_at: None,
            created_at: chrono::Utc::now(),
            revoked_at: None,
        },
        secret: "kiln_secret".into(),
    };
    let answer = serde_json::to_value(crate::routes::CreatedToken::from(token)).unwrap();
    let mut fields: Vec<String> = answer.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(
        fields,
        ["admin", "created_at", "id", "name", "secret", "worker"]
    );
    assert_eq!(answer["secret"], "kiln_secret");

    let created = component(&document, "CreatedToken");
    assert_eq!(properties_and_required(&created), (fields.clone(), fields));
    assert_eq!(created["properties"]["created_at"]["format"], "date-time");
}
