//! How the client survives and reports failures, over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use kiln_model::{connect, ModelError, ModelEvent, ProviderConfig, WireApi};
use kiln_protocol::Item;
use kiln_testkit::{Script, ScriptedServer, Turn};
use support::{client, items_of, provider, request, run_turn};

const BOTH: [WireApi; 2] = [WireApi::Responses, WireApi::Chat];

#[tokio::test]
async fn server_error_then_success_is_retried_transparently() {
    for wire in BOTH {
        let server = ScriptedServer::start(Script::new(vec![
            Turn::http_error_message(500, "upstream hiccup"),
            Turn::http_error(502, "<html>Bad Gateway</html>"),
            Turn::message("recovered"),
        ]))
        .await;
        let (events, error) = run_turn(client(&server, wire).as_ref(), &request()).await;
        assert!(error.is_none(), "{wire}: {error:?}");
        assert_eq!(items_of(&events), vec![Item::assistant("recovered")]);
        assert_eq!(server.turns_served(), 3);
        let bodies: Vec<_> = server.requests().iter().map(|r| r.body.clone()).collect();
        assert!(
            bodies.windows(2).all(|pair| pair[0] == pair[1]),
            "retries resend the same request"
        );
    }
}

#[tokio::test]
async fn each_retry_is_reported_with_its_reason_and_wait() {
    for wire in BOTH {
        let server = ScriptedServer::start(Script::new(vec![
            Turn::http_error_message(500, "upstream hiccup"),
            Turn::http_error(502, "<html>Bad Gateway</html>"),
            Turn::message("recovered"),
        ]))
        .await;
        let heard = std::sync::Mutex::new(Vec::new());
        let client = client(&server, wire);
        let stream = client
            .stream_reporting_retries(&request(), &|retry| {
                heard.lock().unwrap().push(retry.clone());
            })
            .await;
        assert!(stream.is_ok(), "{wire}");
        let heard = heard.into_inner().unwrap();
        assert_eq!(
            heard.iter().map(|r| r.retry).collect::<Vec<_>>(),
            [1, 2],
            "{wire}"
        );
        assert!(heard[0].error.contains("500"), "{wire}: {heard:?}");
        assert!(heard[0].error.contains("upstream hiccup"), "{heard:?}");
        assert!(heard[1].error.contains("502"), "{wire}: {heard:?}");
        assert!(heard.iter().all(|r| r.of >= 2), "{heard:?}");
    }
}

#[tokio::test]
async fn rate_limit_waits_as_long_as_retry_after_says() {
    let wait = Duration::from_millis(400);
    let server = ScriptedServer::start(Script::new(vec![
        Turn::http_error_with_retry_after(
            429,
            r#"{"error":{"message":"Rate limit reached","code":"rate_limit_exceeded"}}"#,
            wait,
        ),
        Turn::message("after the wait"),
    ]))
    .await;
    let started = Instant::now();
    let (events, error) = run_turn(client(&server, WireApi::Responses).as_ref(), &request()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(items_of(&events), vec![Item::assistant("after the wait")]);
    assert!(
        started.elapsed() >= wait,
        "retried after {:?}, before the requested {wait:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unauthorized_is_not_retried_and_names_the_key_variable() {
    let server = ScriptedServer::start(Script::new(vec![Turn::http_error(
        401,
        r#"{"error":{"message":"Incorrect API key provided: sk-wrong.","type":"invalid_request_error","code":"invalid_api_key"}}"#,
    )]))
    .await;
    let mut config = provider(&server, WireApi::Responses);
    config.name = "openai".into();
    config.env_key = Some("OPENAI_API_KEY".into());
    config.api_key = Some("sk-wrong".into());
    let (_, error) = run_turn(connect(&config).unwrap().as_ref(), &request()).await;
    let error = error.expect("an error");
    assert_eq!(
        error.to_string(),
        "model provider 'openai' answered 401 Unauthorized: Incorrect API key provided: sk-wrong. — check OPENAI_API_KEY"
    );
    assert!(!error.is_retryable());
    assert_eq!(server.turns_served(), 1);
}

#[tokio::test]
async fn persistent_server_errors_give_up_after_request_max_retries() {
    let server = ScriptedServer::start(Script::new(vec![
        Turn::http_error_message(503, "overloaded"),
        Turn::http_error_message(503, "overloaded"),
        Turn::http_error_message(503, "still overloaded"),
        Turn::message("never reached"),
    ]))
    .await;
    let mut config = provider(&server, WireApi::Chat);
    config.request_max_retries = 2;
    let (_, error) = run_turn(connect(&config).unwrap().as_ref(), &request()).await;
    let error = error.expect("an error");
    assert!(
        matches!(error, ModelError::Http { status: 503, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("still overloaded"));
    assert!(
        error.is_retryable(),
        "the agent may still retry the turn later"
    );
    assert_eq!(server.turns_served(), 3);
}

#[tokio::test]
async fn connection_refused_says_where_and_what_to_check() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut config = ProviderConfig::new(
        "local-llm",
        format!("http://127.0.0.1:{port}/v1"),
        None,
        WireApi::Chat,
    );
    config.retry = kiln_model::RetryPolicy::immediate();
    config.request_max_retries = 1;
    let (_, error) = run_turn(connect(&config).unwrap().as_ref(), &request()).await;
    let error = error.expect("an error");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("could not reach model provider 'local-llm' at http://127.0.0.1:{port}/v1/chat/completions")),
        "{message}"
    );
    assert!(
        message.contains("Connection refused")
            && message.contains("is the server running and is base_url right?"),
        "{message}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn stream_cut_mid_way_is_a_retryable_disconnect() {
    for wire in BOTH {
        let server = ScriptedServer::start(Script::new(vec![Turn::cut_after(
            4,
            Turn::message("this answer never finishes"),
        )]))
        .await;
        let (events, error) = run_turn(client(&server, wire).as_ref(), &request()).await;
        let error = error.expect("an error");
        assert!(
            matches!(error, ModelError::StreamDisconnected { .. }),
            "{wire}: {error:?}"
        );
        assert!(error.is_retryable());
        assert!(!events
            .iter()
            .any(|e| matches!(e, ModelEvent::Completed { .. } | ModelEvent::ItemDone(_))));
    }
}

#[tokio::test]
async fn agent_style_turn_retry_recovers_from_a_cut_stream() {
    let server = ScriptedServer::start(Script::new(vec![
        Turn::cut_after(3, Turn::message("first try")),
        Turn::message("second try"),
    ]))
    .await;
    let client = client(&server, WireApi::Responses);
    let policy = client.turn_retry();
    let mut retry = 0;
    let events = loop {
        let (events, error) = run_turn(client.as_ref(), &request()).await;
        let Some(error) = error else { break events };
        let delay = policy
            .delay_before_retry(retry, &error)
            .expect("a retryable error within budget");
        tokio::time::sleep(delay).await;
        retry += 1;
    };
    assert_eq!(retry, 1);
    assert_eq!(items_of(&events), vec![Item::assistant("second try")]);
}

#[tokio::test]
async fn silent_stream_hits_the_idle_timeout() {
    for wire in BOTH {
        let server = ScriptedServer::start(Script::new(vec![Turn::stall_after(
            1,
            Turn::message("late"),
            Duration::from_secs(60),
        )]))
        .await;
        let mut config = provider(&server, wire);
        config.stream_idle_timeout = Duration::from_millis(300);
        let (_, error) = run_turn(connect(&config).unwrap().as_ref(), &request()).await;
        let error = error.expect("an error");
        assert!(
            matches!(error, ModelError::IdleTimeout { .. }),
            "{wire}: {error:?}"
        );
        assert!(error.is_retryable());
        assert!(error.to_string().contains("stream_idle_timeout_ms"));
    }
}

#[tokio::test]
async fn garbage_data_is_a_clear_malformed_stream_error() {
    let server = ScriptedServer::start(Script::new(vec![Turn::garbage(
        "data: {this is not json\n\n",
    )]))
    .await;
    let (_, error) = run_turn(client(&server, WireApi::Responses).as_ref(), &request()).await;
    let error = error.expect("an error");
    assert!(
        matches!(error, ModelError::InvalidStream { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("{this is not json"));
}

#[tokio::test]
async fn a_body_that_is_not_sse_at_all_is_a_disconnect() {
    let server =
        ScriptedServer::start(Script::new(vec![Turn::garbage("<html>maintenance</html>")])).await;
    let (_, error) = run_turn(client(&server, WireApi::Chat).as_ref(), &request()).await;
    assert!(
        matches!(error, Some(ModelError::StreamDisconnected { .. })),
        "{error:?}"
    );
}

#[tokio::test]
async fn failed_response_event_surfaces_the_server_message() {
    let server = ScriptedServer::start(Script::new(vec![Turn::raw_events(vec![
        serde_json::json!({"type": "response.created", "response": {"id": "r"}}),
        serde_json::json!({"type": "response.failed", "response": {"error": {"code": "invalid_prompt", "message": "Invalid prompt: flagged"}}}),
    ])]))
    .await;
    let (_, error) = run_turn(client(&server, WireApi::Responses).as_ref(), &request()).await;
    let error = error.expect("an error");
    assert_eq!(
        error.to_string(),
        "model provider 'scripted' reported an error: Invalid prompt: flagged"
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn missing_key_and_bad_url_fail_at_connect() {
    let config = ProviderConfig::new(
        "acme",
        "https://acme.invalid/v1",
        Some("KILN_TEST_SURELY_UNSET_KEY"),
        WireApi::Chat,
    );
    let error = connect(&config).err().expect("an error");
    assert!(matches!(error, ModelError::MissingApiKey { .. }));
    assert!(error
        .to_string()
        .contains("set the environment variable KILN_TEST_SURELY_UNSET_KEY"));

    let config = ProviderConfig::new("typo", "localhost:11434/v1", None, WireApi::Chat);
    let error = connect(&config).err().expect("an error");
    assert!(
        error
            .to_string()
            .contains("must start with http:// or https://"),
        "{error}"
    );
}

#[tokio::test]
async fn exhausted_script_is_reported_not_hung_on() {
    let server = ScriptedServer::start(Script::new(vec![])).await;
    let (_, error) = run_turn(client(&server, WireApi::Responses).as_ref(), &request()).await;
    let message = error.expect("an error").to_string();
    assert!(
        message.contains("script exhausted after 0 turns"),
        "{message}"
    );
}

#[tokio::test]
async fn server_that_never_answers_times_out_and_the_retry_succeeds() {
    let server = ScriptedServer::start(Script::new(vec![
        Turn::delayed(Turn::message("too late"), Duration::from_secs(60)),
        Turn::message("prompt answer"),
    ]))
    .await;
    let mut config = provider(&server, WireApi::Responses);
    config.stream_idle_timeout = Duration::from_secs(1);
    let (events, error) = run_turn(connect(&config).unwrap().as_ref(), &request()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(items_of(&events), vec![Item::assistant("prompt answer")]);
    assert_eq!(server.turns_served(), 2);
}
