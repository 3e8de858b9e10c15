//! Which steering messages the agent actually read: every front door that
//! passes a user's messages to a running attempt needs to know which ones
//! arrived too late, so that they become a follow-up instead of being lost.

use std::sync::Mutex;

use kiln_protocol::{Event, EventKind, EventSink, Role};

/// An event sink that remembers the user messages the agent took into its
/// conversation.
#[derive(Default)]
pub struct UserMessages(Mutex<Vec<String>>);

impl EventSink for UserMessages {
    fn emit(&self, event: &Event) {
        if let EventKind::Message {
            role: Role::User,
            text,
        } = &event.kind
        {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(text.clone());
            }
        }
    }
}

impl UserMessages {
    /// `forwarded` minus what the agent used (each use cancels one copy).
    pub fn not_seen(&self, forwarded: Vec<String>) -> Vec<String> {
        let mut seen = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        forwarded
            .into_iter()
            .filter(|text| match seen.iter().position(|s| s == text) {
                Some(i) => {
                    seen.swap_remove(i);
                    false
                }
                None => true,
            })
            .collect()
    }
}

/// The commit message of an attempt's change: `kiln: ` and the prompt's
/// first line, at most 72 characters of it.
pub fn commit_message(prompt: &str) -> String {
    let title: String = prompt
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(72)
        .collect();
    format!("kiln: {title}")
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
