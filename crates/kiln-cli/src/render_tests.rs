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
fn the_footer_shows_the_attempts_cost_or_the_key_that_would_price_it() {
    let started = |model: &str| EventKind::AttemptStarted {
        mode: kiln_protocol::Mode::Code,
        model: model.into(),
        provider: "p".into(),
        cwd: "/w".into(),
        instructions: Vec::new(),
    };
    let finished = |cost_usd| EventKind::AttemptFinished {
        status: AttemptStatus::Succeeded,
        reason: None,
        final_message: None,
        usage: kiln_protocol::Usage {
            input_tokens: 10,
            cached_input_tokens: 4,
            output_tokens: 2,
        },
        cost_usd,
    };
    let out = rendered(vec![started("gpt-5"), finished(Some(0.012_34))]);
    assert!(
        out.ends_with("done tokens: 10 in (4 cached) · 2 out · cost $0.0123\n"),
        "{out}"
    );
    let out = rendered(vec![started("qwen3-coder:30b"), finished(None)]);
    assert!(
        out.ends_with("· unknown price: set [model_prices.\"qwen3-coder:30b\"]\n"),
        "{out}"
    );
}

#[test]
fn a_ranking_is_one_line_best_first_with_the_preferred_attempt_marked() {
    let entry = |attempt, rank, preferred| kiln_protocol::RankEntry {
        attempt,
        rank,
        preferred,
        reasons: vec!["succeeded".into()],
    };
    let out = rendered(vec![EventKind::TaskRanked {
        task_id: "t_1".into(),
        ranking: vec![entry(3, 1, true), entry(1, 2, false)],
    }]);
    assert!(
        out.contains("ranked 1. attempt 3 (preferred) · 2. attempt 1\n"),
        "{out}"
    );
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
