use super::*;
use crate::sse::SseParser;
use crate::{Event, EventKind};

fn frames(stream: &str) -> Vec<crate::sse::SseFrame> {
    SseParser::new().feed(stream.as_bytes()).unwrap()
}

#[test]
fn a_task_detail_is_the_tasks_fields_beside_its_attempts() {
    let json = serde_json::json!({
        "id": "t_1", "owner_token_id": "tok_1", "user_id": "usr_1", "team_id": "team_1",
        "shared": false, "environment_version": 3, "environment_id": "env_1",
        "prompt": "fix it", "mode": "code", "attempt_count": 1, "model": null,
        "base_ref": null, "budget_usd": null, "preferred_attempt": null, "status": "running",
        "created_at": "2026-12-01T00:00:00Z", "updated_at": "2026-12-01T00:00:01Z",
        "attempts": [], "ranking": [], "cost_usd": null, "pull_request": null
    });
    let detail: TaskDetail = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(detail.task.status, TaskStatus::Running);
    assert_eq!(serde_json::to_value(&detail).unwrap(), json);
}

#[test]
fn status_words_round_trip_and_unknown_ones_are_named() {
    for status in [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::ChecksFailed,
    ] {
        assert_eq!(status.as_str().parse::<TaskStatus>(), Ok(status));
        assert_eq!(
            serde_json::to_value(status).unwrap(),
            serde_json::Value::String(status.to_string())
        );
    }
    let error = "done".parse::<TaskStatus>().unwrap_err();
    assert!(error.to_string().contains("\"done\""), "{error}");
    assert!("interrupted".parse::<AttemptState>().is_ok());
    assert!("interrupted".parse::<TaskStatus>().is_err());
}

#[test]
fn a_status_frame_is_the_task_status_event_kinds_json() {
    let frame = TaskStatusFrame::new("t_1", TaskStatus::Succeeded);
    let as_kind = EventKind::TaskStatus {
        task_id: "t_1".into(),
        status: "succeeded".into(),
    };
    assert_eq!(
        serde_json::to_value(&frame).unwrap(),
        serde_json::to_value(&as_kind).unwrap()
    );
}

#[test]
fn stream_frames_decode_into_events_and_statuses() {
    let event = Event::new(
        3,
        EventKind::Warning {
            message: "w".into(),
        },
    );
    let data = serde_json::to_string(&AttemptEvent {
        attempt: 2,
        event: event.clone(),
    })
    .unwrap();
    let status = serde_json::to_string(&TaskStatusFrame::new("t_1", TaskStatus::Running)).unwrap();
    let stream =
        format!("id: 11\nevent: warning\ndata: {data}\n\nevent: task.status\ndata: {status}\n\n");
    let decoded: Vec<TaskStreamItem> = frames(&stream)
        .iter()
        .map(|f| TaskStreamItem::from_frame(f).unwrap())
        .collect();
    assert_eq!(
        decoded,
        [
            TaskStreamItem::Event {
                id: 11,
                event: AttemptEvent { attempt: 2, event }
            },
            TaskStreamItem::Status(TaskStatusFrame::new("t_1", TaskStatus::Running)),
        ]
    );
}

#[test]
fn hostile_frames_are_errors_that_name_the_frame() {
    let cases = [
        "event: warning\ndata: {}\n\n",
        "id: x\nevent: warning\ndata: {\"attempt\":1}\n\n",
        "id: 1\nevent: warning\ndata: not json\n\n",
        "event: task.status\ndata: {\"type\":\"task.status\",\"task_id\":\"t\",\"status\":\"done\"}\n\n",
    ];
    for case in cases {
        let frame = &frames(case)[0];
        let error = TaskStreamItem::from_frame(frame).unwrap_err();
        assert!(error.to_string().contains(&frame.event), "{error}");
    }
}
