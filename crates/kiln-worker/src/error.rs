//! What can go wrong between a worker and its server, each case with what to do.

use kiln_protocol::worker::AttemptAddress;

/// A failed exchange with the kiln server (or a worker set up wrongly).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid server URL {server:?}: {problem}; pass the kiln server's address, e.g. --server https://kiln.example")]
    InvalidServer { server: String, problem: String },

    #[error("no worker token: an admin creates one with `kiln token create --worker NAME`; pass it in KILN_TOKEN (or --token)")]
    MissingToken,

    #[error("cannot reach the kiln server at {server} ({what}): {detail}; check --server and that `kiln serve` runs there")]
    Unreachable {
        server: String,
        what: &'static str,
        detail: String,
    },

    #[error("the kiln server at {server} does not accept this worker token ({status}): {message}; an admin creates one with `kiln token create --worker NAME` (user and admin tokens cannot claim attempts, and a revoked token stays refused)")]
    Unauthorized {
        server: String,
        status: u16,
        message: String,
    },

    #[error("the lease on attempt {}/{} is lost (the server gave the attempt to another worker, or it ended): this worker stopped it and writes nothing more", address.task_id, address.n)]
    LeaseLost { address: AttemptAddress },

    #[error("the kiln server at {server} refused {what} ({status}): {message}")]
    Refused {
        server: String,
        what: &'static str,
        status: u16,
        message: String,
    },

    #[error("the kiln server at {server} answered {what} with something this worker cannot read: {detail}; run a `kiln worker` of the server's version")]
    BadAnswer {
        server: String,
        what: &'static str,
        detail: String,
    },
}

impl WorkerError {
    /// Worth sending again: the server may answer next time.
    pub fn is_transient(&self) -> bool {
        match self {
            WorkerError::Unreachable { .. } => true,
            WorkerError::Refused { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}
