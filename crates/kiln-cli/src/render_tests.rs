use kiln_protocol::{Event, EventKind, ExecStream, Role};

use super::*;

/// What the renderer writes for `kinds`, colours off, as `emit` would.
fn rendered(kinds: Vec<EventKind>) -> String {
    let renderer = HumanRenderer {
        style: Style { color: false },
        state: Mutex::new(RenderState::default()),
    };
    let mut state = RenderState::default();
    kinds
        .into_iter()
        .enumerate()
        .map(|(n, kind)| {
            let event = terminal_safe_event(&Event::new(n as u64 + 1, kind)).unwrap();
            renderer.render(&mut state, &event)
        })
        .collect()
}

const CLIPBOARD_WRITE: &str = "\x1b]52;c;ZWNobyBwd25lZA==\x07";
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

#[test]
fn control_sequences_in_command_output_are_shown_not_obeyed() {
    let out = rendered(vec![
        EventKind::ExecBegin {
            call_id: "c1".into(),
            chunk_id: "t1".into(),
            command: vec!["printf".into(), CLEAR_SCREEN.into()],
            cwd: "/w".into(),
        },
        EventKind::ExecOutput {
            chunk_id: "t1".into(),
            stream: ExecStream::Stdout,
            text: format!("{CLIPBOARD_WRITE}{CLEAR_SCREEN}done\n"),
        },
    ]);
    assert!(!out.contains('\x1b'), "{out:?}");
    assert!(!out.contains('\x07'), "{out:?}");
    assert!(out.contains("\\x1b]52;c;ZWNobyBwd25lZA==\\x07"), "{out:?}");
    assert!(out.contains("\\x1b[2J"), "{out:?}");
}

#[test]
fn control_sequences_in_messages_and_the_final_message_are_shown_not_obeyed() {
    let out = rendered(vec![
        EventKind::ModelDelta {
            text: format!("streamed {CLIPBOARD_WRITE}"),
        },
        EventKind::Message {
            role: Role::User,
            text: format!("prompt {CLEAR_SCREEN}"),
        },
        EventKind::Warning {
            message: "\u{9b}2J C1 CSI".into(),
        },
        EventKind::AttemptFinished {
            status: kiln_protocol::AttemptStatus::Failed,
            reason: Some(format!("reason {CLEAR_SCREEN}")),
            final_message: None,
            usage: Default::default(),
            cost_usd: None,
        },
    ]);
    assert!(!out.contains('\x1b') && !out.contains('\u{9b}'), "{out:?}");
    assert!(out.contains("\\u{9b}2J"), "{out:?}");
}

#[test]
fn newlines_and_tabs_stay_and_crlf_reads_as_a_line_end() {
    assert_eq!(terminal_safe("a\tb\r\nc\n"), "a\tb\nc\n");
    assert!(matches!(terminal_safe("plain\n"), Cow::Borrowed(_)));
}

#[test]
fn a_lone_carriage_return_cannot_hide_the_start_of_a_line() {
    assert_eq!(terminal_safe("rm -rf ~\rls"), "rm -rf ~\\rls");
}

#[test]
fn bidirectional_overrides_are_made_visible() {
    assert_eq!(terminal_safe("a\u{202e}b"), "a\\u{202e}b");
}

#[test]
fn check_results_name_the_check_its_verdict_and_its_chunk() {
    let check = |passed: bool, reason: Option<&str>| {
        EventKind::CheckFinished(kiln_protocol::CheckResult {
            name: "tests".into(),
            command: "make test".into(),
            passed,
            exit_code: Some(i32::from(!passed)),
            duration_ms: 1500,
            timed_out: false,
            chunk_id: "t9".into(),
            reason: reason.map(str::to_string),
        })
    };
    let out = rendered(vec![check(true, None), check(false, Some("exited with 1"))]);
    assert_eq!(
        out,
        "check tests passed · 1.5s · output t9\n\
         check tests failed: exited with 1 · 1.5s · output t9\n"
    );
    let out = rendered(vec![EventKind::AttemptFinished {
        status: kiln_protocol::AttemptStatus::ChecksFailed,
        reason: Some("check tests failed (exit 1, see t9)".into()),
        final_message: None,
        usage: Default::default(),
        cost_usd: None,
    }]);
    assert!(
        out.starts_with("checks failed check tests failed (exit 1, see t9)"),
        "{out}"
    );
}
