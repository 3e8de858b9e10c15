//! kiln's domain and wire types, shared by every other crate. No I/O lives here.
//!
//! The spine of kiln is the **event log**: everything an attempt does is an
//! [`Event`], appended in order and written as one JSON object per line. The CLI
//! renders events, the store persists them, the server streams them, and a run
//! can be resumed from them (see [`Item`] for the conversation they carry).
//!
//! ```
//! use kiln_protocol::{Event, EventKind};
//! let event = Event::new(7, EventKind::Warning { message: "low budget".into() });
//! let line = serde_json::to_string(&event).unwrap();
//! assert!(line.contains(r#""type":"warning""#));
//! let back: Event = serde_json::from_str(&line).unwrap();
//! assert_eq!(back.seq, 7);
//! ```

pub mod api;
mod event;
mod evidence;
mod item;
mod mode;
mod plan;
mod price;
pub mod ranking;
mod report;
pub mod sse;
pub mod teams;
pub mod worker;

pub use event::{
    AttemptStatus, CitationCheck, DiffStat, Event, EventKind, EventSink, ExecStream, FileChange,
    FileChangeKind, Usage,
};
pub use evidence::{
    micros_from_usd, usd_from_micros, CheckResult, CheckSpec, ForgeConfig, ForgeKind,
    NewPullRequest, PullRequest, RankEntry, WebhookConfig, WebhookDelivery,
};
pub use item::{Item, Role};
pub use mode::Mode;
pub use plan::{PlanItem, StepStatus};
pub use price::{format_usd, ModelPrice};
pub use report::AttemptReport;
