use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use kiln_protocol::{ExecStream, Role};

use super::*;

/// Bytes chosen so that base64's standard and URL-safe alphabets differ
/// (`+`/`/` against `-`/`_`) and percent-encoding has work to do.
const SECRET: &str = "s3cr3t?>>~ key/+";

fn redactor() -> Redactor {
    Redactor::new([("API_KEY", SECRET)])
}

fn assert_redacted(text: &str) {
    let redacted = redactor().redact(text).into_owned();
    assert!(
        redacted.contains("[REDACTED:API_KEY]"),
        "nothing redacted in {text:?}: {redacted:?}"
    );
    for form in encodings(SECRET) {
        assert!(!redacted.contains(&form), "{form:?} left in {redacted:?}");
    }
}

#[test]
fn the_plain_value_is_replaced_by_the_secret_name() {
    assert_eq!(
        redactor().redact(&format!("key is {SECRET}.")),
        "key is [REDACTED:API_KEY]."
    );
}

#[test]
fn text_without_secrets_is_borrowed_unchanged() {
    assert!(matches!(
        redactor().redact("nothing here"),
        Cow::Borrowed("nothing here")
    ));
}

#[test]
fn base64_in_both_alphabets_padded_or_not_is_replaced() {
    let standard = STANDARD.encode(SECRET);
    let url_safe = URL_SAFE.encode(SECRET);
    assert_ne!(
        standard, url_safe,
        "the fixture must exercise both alphabets"
    );
    for encoded in [
        standard.clone(),
        standard.trim_end_matches('=').to_string(),
        url_safe.clone(),
        url_safe.trim_end_matches('=').to_string(),
    ] {
        assert_redacted(&format!("Authorization: Basic {encoded}\n"));
        assert_eq!(
            redactor().redact(&format!("<{encoded}>")),
            "<[REDACTED:API_KEY]>",
            "{encoded}"
        );
    }
}

#[test]
fn base64_of_the_value_inside_a_longer_string_is_replaced_at_every_alignment() {
    for prefix in ["", "u", "us", "user:", "user:x", "user:xy"] {
        for suffix in ["", "!", "!!", "!!!"] {
            let inner = format!("{prefix}{SECRET}{suffix}");
            for encoded in [STANDARD.encode(&inner), URL_SAFE_NO_PAD.encode(&inner)] {
                let redacted = redactor().redact(&encoded).into_owned();
                assert!(
                    redacted.contains("[REDACTED:API_KEY]"),
                    "{inner:?} encoded as {encoded} was not redacted"
                );
                // What is left can carry at most a few bits of the value at each edge.
                let visible: usize = redacted.replace("[REDACTED:API_KEY]", "").len();
                assert!(visible <= encoded.len() - SECRET.len(), "{redacted}");
            }
        }
    }
}

#[test]
fn url_encoded_and_hex_forms_are_replaced() {
    assert_redacted("https://x.invalid/?token=s3cr3t%3F%3E%3E~%20key%2F%2B");
    assert_redacted("q=s3cr3t%3f%3e%3e~%20key%2f%2b");
    assert_redacted("form: s3cr3t%3F%3E%3E~+key%2F%2B");
    assert_redacted(&format!("sha: {}", hex(SECRET.as_bytes(), false)));
    assert_redacted(&format!("SHA: {}", hex(SECRET.as_bytes(), true)));
}

#[test]
fn a_json_escaped_value_is_replaced() {
    let redactor = Redactor::new([("QUOTED", "pa\"ss\\word")]);
    assert_eq!(
        redactor.redact(r#"{"password":"pa\"ss\\word"}"#),
        r#"{"password":"[REDACTED:QUOTED]"}"#
    );
}

#[test]
fn values_shorter_than_the_minimum_are_ignored() {
    let redactor = Redactor::new([("SHORT", "abc"), ("EMPTY", "")]);
    assert!(redactor.is_empty());
    assert_eq!(redactor.redact("abc abc"), "abc abc");
}

#[test]
fn several_secrets_are_each_named() {
    let redactor = Redactor::new([("ONE", "first-secret"), ("TWO", "second-secret")]);
    assert_eq!(
        redactor.redact("first-secret and second-secret"),
        "[REDACTED:ONE] and [REDACTED:TWO]"
    );
}

#[test]
fn a_secret_split_between_two_stream_pieces_is_still_redacted() {
    let shared = Arc::new(redactor());
    for split in 1..SECRET.len() {
        let mut stream = shared.stream();
        let mut shown = stream.push(&format!("before {}", &SECRET[..split]));
        shown += &stream.push(&format!("{} after\n", &SECRET[split..]));
        shown += &stream.finish();
        assert_eq!(
            shown, "before [REDACTED:API_KEY] after\n",
            "split at {split}"
        );
    }
}

#[test]
fn a_stream_releases_text_that_cannot_start_a_secret() {
    let shared = Arc::new(redactor());
    let mut stream = shared.stream();
    let long_line = "x".repeat(1000);
    let shown = stream.push(&long_line);
    // All but the tail a secret could still start in is released at once.
    assert!(
        shown.len() >= 1000 - 2 * SECRET.len() * 2,
        "{}",
        shown.len()
    );
    assert_eq!(shown + &stream.finish(), long_line);
}

#[test]
fn a_stream_without_secrets_passes_pieces_through() {
    let mut stream = Arc::new(Redactor::default()).stream();
    assert_eq!(stream.push("partial"), "partial");
    assert_eq!(stream.finish(), "");
}

#[test]
fn every_text_field_of_an_event_is_redacted() {
    let r = redactor();
    let events = [
        EventKind::SetupOutput {
            stream: ExecStream::Stdout,
            text: format!("export KEY={SECRET}"),
        },
        EventKind::Message {
            role: Role::Assistant,
            text: format!("the key is {SECRET}"),
        },
        EventKind::ToolOutput {
            call_id: "c1".into(),
            output: format!("[chunk t1]\n{SECRET}\n"),
            success: true,
        },
        EventKind::ExecBegin {
            call_id: "c1".into(),
            chunk_id: "t1".into(),
            command: vec!["echo".into(), SECRET.into()],
            cwd: "/w".into(),
        },
        EventKind::Warning {
            message: SECRET.into(),
        },
        EventKind::Error {
            message: SECRET.into(),
        },
        EventKind::AttemptFinished {
            status: kiln_protocol::AttemptStatus::Failed,
            reason: Some(SECRET.into()),
            final_message: Some(SECRET.into()),
            usage: Default::default(),
            cost_usd: None,
        },
        EventKind::ContextCompacted {
            items: vec![Item::user(SECRET)],
            tokens_before: 1,
        },
    ];
    for event in events {
        let redacted = serde_json::to_string(&r.redact_event(event.clone())).unwrap();
        assert!(!redacted.contains("s3cr3t"), "{redacted}");
        assert!(redacted.contains("[REDACTED:API_KEY]"), "{redacted}");
    }
}
