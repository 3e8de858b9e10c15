//! Secret values never reach the model, the log or anything that stores or
//! streams events, whatever form a command prints them in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use common::*;
use kiln_protocol::{AttemptStatus, Mode};
use kiln_testkit::Turn;

const SECRET: &str = "ghp_R3dactMe0123456789";

fn assert_nowhere(haystack: &str, what: &str) {
    let standard = base64::engine::general_purpose::STANDARD;
    for form in [
        SECRET.to_string(),
        standard.encode(SECRET),
        standard.encode(format!("x-access-token:{SECRET}")),
        SECRET.bytes().map(|b| format!("{b:02x}")).collect(),
    ] {
        // The core of an embedded base64 encoding: drop the edge characters.
        let core = if form.len() > 12 && !form.starts_with("ghp_") {
            &form[4..form.len() - 4]
        } else {
            &form[..]
        };
        assert!(
            !haystack.contains(core),
            "{what} holds {core:?}:\n{haystack}"
        );
    }
}

#[tokio::test]
async fn a_secret_a_command_prints_reaches_neither_the_model_nor_the_log() {
    let script = "printf 'token=%s\\n' \"$T\"; printf '%s' \"x-access-token:$T\" | base64; \
         printf '%s' \"$T\" | od -An -tx1 | tr -d ' \\n'; echo; \
         printf 'split: ghp_R3dact'; printf 'Me0123456789\\n'";
    let mut harness = Harness::new(
        Mode::Code,
        vec![
            Turn::shell(format!("T={SECRET}; {script}")),
            Turn::message(format!("The token was {SECRET}.")),
        ],
    )
    .await;
    harness.secrets = vec![("GITHUB_TOKEN".into(), SECRET.into())];
    let outcome = harness.run("Show me the token.").await;
    assert_eq!(outcome.status, AttemptStatus::Succeeded);

    let events = serde_json::to_string(&harness.events()).unwrap();
    assert_nowhere(&events, "the event log");
    assert!(events.contains("[REDACTED:GITHUB_TOKEN]"), "{events}");
    // The second request carries the command's output back to the model.
    let requests = harness.requests();
    let sent = sent_tool_outputs(&requests[1]).join("\n");
    assert!(sent.contains("token=[REDACTED:GITHUB_TOKEN]"), "{sent}");
    assert!(sent.contains("split: [REDACTED:GITHUB_TOKEN]"), "{sent}");
    for request in &requests[1..] {
        let body = request.body.to_string();
        // The model's own tool call holds the value (it wrote it); what
        // came back from the command must not.
        let outputs = sent_tool_outputs(request).join("\n");
        assert_nowhere(&outputs, "what the model was sent");
        assert!(!body.is_empty());
    }
    // The outcome is stored too (the attempt's final message and reason).
    assert_eq!(
        outcome.final_message.as_deref(),
        Some("The token was [REDACTED:GITHUB_TOKEN].")
    );
}
