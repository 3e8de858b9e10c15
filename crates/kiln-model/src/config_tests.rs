use std::time::Duration;

use super::*;

#[test]
fn codex_provider_table_parses() {
    let toml_text = r#"
        name = "Local Ollama"
        base_url = "http://localhost:11434/v1"
        wire_api = "chat"
        stream_idle_timeout_ms = 600000
        request_max_retries = 2
        requires_openai_auth = false
        query_params = { api-version = "2025-04-01" }
    "#;
    let config: ProviderConfig = toml::from_str(toml_text).unwrap();
    assert_eq!(config.name, "Local Ollama");
    assert_eq!(config.wire_api, WireApi::Chat);
    assert_eq!(config.env_key, None);
    assert_eq!(config.stream_idle_timeout, Duration::from_secs(600));
    assert_eq!(config.request_max_retries, 2);
    assert_eq!(config.stream_max_retries, DEFAULT_STREAM_MAX_RETRIES);
    assert_eq!(config.query_params["api-version"], "2025-04-01");
}

#[test]
fn omitted_keys_take_openai_defaults() {
    let config: ProviderConfig = toml::from_str(r#"env_key = "MY_KEY""#).unwrap();
    assert_eq!(config.base_url, OPENAI_DEFAULT_BASE_URL);
    assert_eq!(config.wire_api, WireApi::Responses);
    assert_eq!(config.stream_idle_timeout, Duration::from_secs(300));
}

#[test]
fn unknown_wire_api_is_rejected_with_the_choices() {
    let error = toml::from_str::<ProviderConfig>(r#"wire_api = "grpc""#)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("responses") && error.contains("chat"),
        "{error}"
    );
}

#[test]
fn missing_key_names_the_variable() {
    let config = ProviderConfig::new(
        "acme",
        "https://acme.invalid/v1",
        Some("ACME_KEY"),
        WireApi::Chat,
    );
    let error = config.resolve_api_key(|_| None).unwrap_err();
    assert_eq!(
        error.to_string(),
        "model provider 'acme' needs an API key: set the environment variable ACME_KEY"
    );
    let empty = config.resolve_api_key(|_| Some("  ".into()));
    assert!(matches!(empty, Err(ModelError::MissingApiKey { .. })));
}

#[test]
fn key_comes_from_the_variable_or_the_explicit_value() {
    let mut config = ProviderConfig::new(
        "acme",
        "https://acme.invalid/v1",
        Some("ACME_KEY"),
        WireApi::Chat,
    );
    let from_env =
        config.resolve_api_key(|name| (name == "ACME_KEY").then(|| "sk-env\n".to_string()));
    assert_eq!(from_env.unwrap().as_deref(), Some("sk-env"));
    config.api_key = Some("sk-explicit".into());
    assert_eq!(
        config.resolve_api_key(|_| None).unwrap().as_deref(),
        Some("sk-explicit")
    );
}

#[test]
fn provider_without_env_key_needs_no_key() {
    let ollama = ProviderConfig::builtin("ollama").unwrap();
    assert_eq!(
        ollama.resolve_api_key(|_| Some("ignored".into())).unwrap(),
        None
    );
    assert_eq!(ollama.wire_api, WireApi::Chat);
}

#[test]
fn debug_output_hides_the_key() {
    let mut config = ProviderConfig::new("acme", "https://acme.invalid/v1", None, WireApi::Chat);
    config.api_key = Some("sk-secret-value".into());
    config
        .http_headers
        .insert("x-secret".into(), "header-secret".into());
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("sk-secret-value") && !shown.contains("header-secret"),
        "{shown}"
    );
    let serialised = toml::to_string(&config).unwrap();
    assert!(!serialised.contains("sk-secret-value"));
}

#[test]
fn a_misspelt_key_is_refused_instead_of_falling_back_to_openai() {
    let error = toml::from_str::<ProviderConfig>(
        "base_ur = \"http://corp.internal/v1\"\nenv_key = \"CORP_KEY\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("unknown field `base_ur`"), "{error}");
}

#[test]
fn every_listed_key_is_a_key_the_table_accepts() {
    let samples = [
        ("name", "\"n\""),
        ("base_url", "\"http://h/v1\""),
        ("env_key", "\"K\""),
        ("env_key_instructions", "\"get one\""),
        ("api_key", "\"sk\""),
        ("wire_api", "\"chat\""),
        ("query_params", "{ a = \"b\" }"),
        ("http_headers", "{ a = \"b\" }"),
        ("env_http_headers", "{ a = \"B\" }"),
        ("request_max_retries", "1"),
        ("stream_max_retries", "1"),
        ("stream_idle_timeout_ms", "1000"),
        ("requires_openai_auth", "false"),
    ];
    let listed: Vec<&str> = samples.iter().map(|(key, _)| *key).collect();
    assert_eq!(listed, ProviderConfig::KEYS);
    let text: String = samples
        .iter()
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect();
    toml::from_str::<ProviderConfig>(&text).unwrap();
}

#[test]
fn request_headers_carry_the_key_as_a_sensitive_bearer_and_the_extra_headers() {
    let mut config = ProviderConfig::new("p", "http://h/v1/", Some("P_KEY"), WireApi::Chat);
    config
        .http_headers
        .insert("x-static".into(), "fixed".into());
    config
        .env_http_headers
        .insert("x-from-env".into(), "P_HEADER".into());
    config
        .env_http_headers
        .insert("x-unset".into(), "P_UNSET".into());
    let lookup = |name: &str| match name {
        "P_KEY" => Some("sk-p".to_string()),
        "P_HEADER" => Some("from-env".to_string()),
        _ => None,
    };
    let headers = config.request_headers(lookup).unwrap();
    let authorization = &headers[reqwest::header::AUTHORIZATION];
    assert_eq!(authorization, "Bearer sk-p");
    assert!(authorization.is_sensitive());
    assert_eq!(headers["accept"], "text/event-stream");
    assert_eq!(headers["x-static"], "fixed");
    assert_eq!(headers["x-from-env"], "from-env");
    assert!(headers.get("x-unset").is_none());
    assert_eq!(config.api_root().unwrap(), "http://h/v1");

    let missing = config.request_headers(|_| None).unwrap_err();
    assert!(
        matches!(missing, ModelError::MissingApiKey { .. }),
        "{missing}"
    );
    config.base_url = "ftp://h".into();
    assert!(config.api_root().is_err());
}
