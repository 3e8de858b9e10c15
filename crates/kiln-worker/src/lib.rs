//! `kiln worker`: runs attempts for a `kiln serve` on another machine, the
//! way CI runners work for their servers.
//!
//! A worker holds a worker token and talks to its server over HTTP only
//! (docs/workers.md describes the protocol, `kiln_protocol::worker` its
//! bodies). [`run`] keeps `max_parallel` slots busy: each long-polls the
//! server for a claim ([`ServerClient::claim`]), then runs the claimed
//! attempt with `kiln_agent::run` like every other front door, while
//! [`Heartbeats`] renew its lease (and bring the user's cancel and
//! messages) and an [`Uploader`] sends its events in batches. The
//! repository comes from the server's git endpoint for the attempt and the
//! attempt's branch goes back there; the model is reached through the
//! server, which holds the key. A lost lease stops the attempt at once and
//! nothing more about it is sent.
//!
//! The worker machine never holds database credentials or a model key: a
//! claim's lease token reaches that one attempt's repository and model
//! stream while the lease holds, nothing else.

mod attempt;
mod client;
mod error;
mod heartbeat;
mod pool;
mod repository;
mod uploader;

pub use client::{Backoff, LeaseClient, ServerClient, DEFAULT_CLAIM_WAIT_SECS};
pub use error::WorkerError;
pub use heartbeat::{Heartbeats, STEERING_CAPACITY};
pub use pool::{run, WorkerConfig};
pub use repository::AttemptRemote;
pub use uploader::{UploadEnd, UploadSink, Uploader, FLUSH_INTERVAL, MAX_BATCH, MAX_PENDING};
