use serde::{Deserialize, Serialize};

/// Who said a message in the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

/// One entry of the conversation sent to the model: the history an attempt
/// accumulates, provider-neutral. `kiln-model` maps it to each wire API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    Message {
        role: Role,
        text: String,
    },
    /// The model asked for a tool. `arguments` is the raw JSON text the model produced.
    FunctionCall {
        call_id: String,
        name: String,
        arguments: String,
    },
    /// What kiln answered to a tool call (success or a tool error, as text).
    FunctionCallOutput {
        call_id: String,
        output: String,
    },
}

impl Item {
    pub fn user(text: impl Into<String>) -> Self {
        Item::Message {
            role: Role::User,
            text: text.into(),
        }
    }

    pub fn assistant(text: impl Into<String>) -> Self {
        Item::Message {
            role: Role::Assistant,
            text: text.into(),
        }
    }
}
