use super::*;

#[test]
fn openai_error_body_gives_message_and_code() {
    let body = r#"{"error":{"message":"Incorrect API key provided: sk-abc.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    let (message, code) = describe_error_body(body);
    assert_eq!(message, "Incorrect API key provided: sk-abc.");
    assert_eq!(code.as_deref(), Some("invalid_api_key"));
}

#[test]
fn error_type_stands_in_for_a_missing_code() {
    let (_, code) =
        describe_error_body(r#"{"error":{"message":"x","type":"server_error","code":null}}"#);
    assert_eq!(code.as_deref(), Some("server_error"));
}

#[test]
fn other_server_shapes_are_understood() {
    assert_eq!(
        describe_error_body(r#"{"error":"model 'llama9' not found"}"#).0,
        "model 'llama9' not found"
    );
    assert_eq!(
        describe_error_body(r#"{"message":"bad gateway"}"#).0,
        "bad gateway"
    );
    assert_eq!(
        describe_error_body(r#"{"detail":[{"loc":["body","model"],"msg":"field required"}]}"#).0,
        r#"[{"loc":["body","model"],"msg":"field required"}]"#
    );
}

#[test]
fn plain_text_body_is_quoted_and_long_bodies_are_cut() {
    assert_eq!(
        describe_error_body("  upstream timed out\n").0,
        "upstream timed out"
    );
    let long = "x".repeat(5000);
    let (message, _) = describe_error_body(&long);
    assert_eq!(message.chars().count(), MAX_ERROR_MESSAGE_CHARS + 1);
    assert!(message.ends_with('…'));
}

#[test]
fn loopback_hosts_are_recognised() {
    let loopback = |url: &str| is_loopback(&reqwest::Url::parse(url).unwrap());
    assert!(loopback("http://localhost:11434/v1"));
    assert!(loopback("http://127.0.0.1:8080/v1"));
    assert!(loopback("http://[::1]:8080/v1"));
    assert!(!loopback("https://api.openai.com/v1"));
    assert!(!loopback("http://10.0.0.5:8000/v1"));
}
