use kiln_protocol::{AttemptStatus, Event, EventKind, Usage};
use kiln_testkit::Turn;

use super::*;

#[test]
fn the_servers_sse_data_parses_as_an_event_despite_the_attempt_field() {
    let data = r#"{"attempt":1,"seq":4,"ts":"2026-11-21T08:00:00.250Z","type":"exec.begin","call_id":"c1","chunk_id":"t1","command":["bash","-lc","sleep 2"],"cwd":"/w"}"#;
    let event: Event = serde_json::from_str(data).unwrap();
    assert!(matches!(event.kind, EventKind::ExecBegin { .. }));
    assert_eq!(event.seq, 4);
}

#[test]
fn percentile_is_the_nearest_rank() {
    let values: Vec<f64> = (1..=50).map(f64::from).collect();
    assert_eq!(percentile(&values, 0.99), Some(50.0));
    assert_eq!(percentile(&values, 0.5), Some(25.0));
    assert_eq!(percentile(&values, 0.0), Some(1.0));
    assert_eq!(percentile(&[3.0, 1.0, 2.0], 1.0), Some(3.0));
    assert_eq!(percentile(&[], 0.5), None);
}

#[test]
fn overlap_counts_intervals_open_at_one_instant() {
    assert_eq!(max_overlap::<i32>(&[]), 0);
    assert_eq!(max_overlap(&[(0, 10), (2, 5), (4, 12), (11, 20)]), 3);
    // Touching is not overlapping: one ends as the next starts.
    assert_eq!(max_overlap(&[(0, 5), (5, 10), (10, 15)]), 1);
}

#[test]
fn median_gap_is_between_neighbours_in_time() {
    let at = |ms: i64| DateTime::<Utc>::from_timestamp_millis(1_795_000_000_000 + ms).unwrap();
    // Given out of order: sorted 0, 60, 130, 200, 1000 → gaps 60, 70, 70, 800.
    let instants = [130, 0, 1000, 60, 200].map(at);
    assert_eq!(median_gap_ms(instants.into_iter()), Some(70.0));
    assert_eq!(median_gap_ms([at(5)].into_iter()), None);
}

#[test]
fn every_task_has_its_own_route_with_a_command_then_its_answer() {
    let script = task_script(12);
    assert!(script.turns.is_empty());
    assert_eq!(script.routes.len(), 13, "12 tasks and the warm-up");
    for (i, route) in script.routes.iter().enumerate() {
        for (j, other) in script.routes.iter().enumerate() {
            if i != j {
                assert!(!route.marker.contains(&other.marker), "{route:?} {other:?}");
            }
        }
    }
    let seven = script
        .routes
        .iter()
        .find(|route| route.marker == marker(7))
        .unwrap();
    assert_eq!(
        seven.turns,
        [Turn::shell(COMMAND), Turn::message(final_message(7))]
    );
    // The JSON the scripted model server loads keeps the routes.
    let text = serde_json::to_string(&script).unwrap();
    assert_eq!(Script::from_json(&text).unwrap(), script);
}

fn event(kind: EventKind) -> Event {
    Event::new(1, kind)
}

fn finished(status: AttemptStatus, message: &str) -> Event {
    event(EventKind::AttemptFinished {
        status,
        reason: None,
        final_message: Some(message.to_string()),
        usage: Usage::default(),
        cost_usd: None,
    })
}

fn exec_end(exit_code: Option<i32>) -> Event {
    event(EventKind::ExecEnd {
        call_id: "c".into(),
        chunk_id: "t1".into(),
        exit_code,
        duration_ms: 2000,
        timed_out: false,
        killed_by: None,
        omitted_bytes: 0,
    })
}

fn exec_begin() -> Event {
    event(EventKind::ExecBegin {
        call_id: "c".into(),
        chunk_id: "t1".into(),
        command: vec!["sleep".into(), "2".into()],
        cwd: "/w".into(),
    })
}

#[test]
fn only_the_first_exec_begin_counts_as_the_first_command() {
    let mut seen = SeenEvents::default();
    assert!(seen.record(&exec_begin()));
    assert!(!seen.record(&exec_begin()));
}

#[test]
fn a_task_that_ran_its_command_and_gave_its_own_answer_passes() {
    let mut seen = SeenEvents::default();
    for e in [
        exec_begin(),
        exec_end(Some(0)),
        finished(AttemptStatus::Succeeded, &final_message(3)),
    ] {
        seen.record(&e);
    }
    assert_eq!(judge(3, &seen), None);
}

#[test]
fn a_task_with_another_tasks_answer_fails() {
    let mut seen = SeenEvents::default();
    seen.record(&exec_end(Some(0)));
    seen.record(&finished(AttemptStatus::Succeeded, &final_message(4)));
    let reason = judge(3, &seen).unwrap();
    assert!(reason.contains("another task's turns"), "{reason}");
}

#[test]
fn a_failed_attempt_a_failed_command_or_a_missing_finish_fails_the_task() {
    let mut failed = SeenEvents::default();
    failed.record(&exec_end(Some(0)));
    failed.record(&finished(AttemptStatus::Failed, "x"));
    assert!(judge(0, &failed).unwrap().contains("Failed"));

    let mut command_failed = SeenEvents::default();
    command_failed.record(&exec_end(Some(1)));
    command_failed.record(&finished(AttemptStatus::Succeeded, &final_message(0)));
    assert!(judge(0, &command_failed).unwrap().contains("exited with"));

    let mut no_command = SeenEvents::default();
    no_command.record(&finished(AttemptStatus::Succeeded, &final_message(0)));
    assert!(judge(0, &no_command).unwrap().contains("without running"));

    let unfinished = SeenEvents {
        last: Some("exec.output".into()),
        ..SeenEvents::default()
    };
    let reason = judge(0, &unfinished).unwrap();
    assert!(reason.contains("without attempt.finished") && reason.contains("exec.output"));
}
