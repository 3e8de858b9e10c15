use super::*;
use kiln_protocol::{Event, Role};

fn user(text: &str) -> Event {
    Event::new(
        1,
        EventKind::Message {
            role: Role::User,
            text: text.into(),
        },
    )
}

#[test]
fn forwarded_messages_the_agent_never_used_are_reported_once_each() {
    let seen = UserMessages::default();
    seen.emit(&user("the prompt"));
    seen.emit(&user("run the tests"));
    seen.emit(&Event::new(
        2,
        EventKind::Message {
            role: Role::Assistant,
            text: "also check docs".into(),
        },
    ));
    let forwarded = vec![
        "run the tests".to_string(),
        "run the tests".to_string(),
        "also check docs".to_string(),
    ];
    assert_eq!(
        seen.not_seen(forwarded),
        vec!["run the tests".to_string(), "also check docs".to_string()]
    );
}
