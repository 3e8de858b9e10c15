//! kiln's persistent state: tokens, environments, tasks and their attempts,
//! the attempt queue (claims, leases, heartbeats, recovery), event logs and
//! follow-up messages, on SQLite (one file in the data directory, WAL mode:
//! the embedded default) or PostgreSQL (many machines), with change
//! notifications so that SSE streams and workers wake without polling.
//! Environment secrets are encrypted at rest under a key the caller gives
//! ([`StoreOptions::secret_key`]); only [`Store::environment_secrets`]
//! decrypts them. So is a credential in an environment's repository URL,
//! split out of the `repo` everyone sees; only
//! [`Store::environment_repo_credential`] returns it.
//!
//! **One SQL text, two native drivers.** Every query and the migrations in
//! `migrations/` are written once in SQL that both databases accept (TEXT,
//! BIGINT milliseconds for times, BOOLEAN, `$1` parameters, `RETURNING`,
//! `ON CONFLICT`, partial indexes); the only backend-specific text is the
//! `FOR UPDATE SKIP LOCKED` of the queue claim. A small internal enum
//! forwards each query to sqlx's native SQLite or PostgreSQL driver. This
//! was chosen over sqlx's `Any` driver because the native drivers give the
//! typed connection settings SQLite needs (WAL, busy timeout, foreign keys,
//! `BEGIN IMMEDIATE`), `LISTEN/NOTIFY` on the same pool, and precise error
//! codes, while `Any` would add a value-conversion layer and still need the
//! same per-backend branches. docs/store.md documents the schema and the
//! claim/lease/recovery protocol.
//!
//! ```
//! use std::time::Duration;
//! use kiln_store::{AttemptReport, NewEnvironment, NewTask, Store, StoreOptions};
//! use kiln_protocol::{AttemptStatus, Event, EventKind};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(StoreOptions::sqlite_in_dir(dir.path())).await.unwrap();
//!
//! // First start: an admin token is created and its secret shown once.
//! let kiln_store::AdminBootstrap::Created(admin) = store.ensure_admin_token(None).await.unwrap()
//! else { unreachable!("a fresh database has no admin token") };
//! let me = store.verify_token(&admin.secret).await.unwrap().expect("a live token");
//!
//! let env = NewEnvironment { name: "app".into(), repo: "/srv/git/app".into(), ..Default::default() };
//! store.create_environment(&me, &env).await.unwrap();
//! let task = store.create_task(&me, &NewTask::new("app", "fix the flaky test")).await.unwrap();
//!
//! // A worker claims the attempt, logs what it does, and finishes it.
//! let claimed = store.claim_next("worker-1", Duration::from_secs(60)).await.unwrap().unwrap();
//! assert_eq!(claimed.task.id, task.task.id);
//! let event = Event::new(claimed.next_seq, EventKind::Warning { message: "hello".into() });
//! store.append_event(&claimed.attempt, &event).await.unwrap();
//! store.finish("worker-1", &claimed.attempt, &AttemptReport::new(AttemptStatus::Succeeded)).await.unwrap();
//!
//! let detail = store.task(&me, &task.task.id).await.unwrap();
//! assert_eq!(detail.task.status, kiln_store::TaskStatus::Succeeded);
//! let log = store.events(&task.task.id, None, 0, 100).await.unwrap();
//! assert_eq!(log[0].event().unwrap(), event);
//! # });
//! ```

mod access;
mod audit;
mod changes;
mod clock;
mod db;
mod environment_changes;
mod environments;
mod error;
mod events;
mod ids;
mod messages;
mod options;
mod people;
mod pulls;
mod queue;
mod quotas;
mod repo_url;
mod secrets;
mod sso;
mod store;
mod tasks;
mod tokens;
mod users;
mod webhooks;
mod workers;

pub use access::{check_environment, check_task, EnvironmentAction, TaskAction};
pub use audit::{
    server_actor, AuditExport, AuditSubject, AUDIT_EXPORT_BATCH, MAX_AUDIT_PAGE, SERVER_ACTOR,
};
pub use changes::{Change, Subscription, Wake};
pub use clock::{Clock, ManualClock, SystemClock};
pub use db::Backend;
pub use environments::{validate_checks, SealReport, WebhookTarget};
pub use error::{Result, StoreError};
pub use events::{Appended, StoredEvent, MAX_EVENTS_PER_READ};
// The API's types, which the store maps its rows to; re-exported so that
// `kiln_store::Task` and friends keep working.
pub use kiln_protocol::api::{
    Attempt, AttemptState, CancelOutcome, Environment, Message, NewEnvironment, NewTask, Task,
    TaskDetail, TaskPage, TaskQuery, TaskStatus, MAX_ATTEMPTS, MAX_PAGE,
};
pub use kiln_protocol::{AttemptReport, DiffStat};
pub use messages::MAX_MESSAGE_BYTES;
pub use options::{redact_url, DatabaseTarget, StoreOptions, SQLITE_FILE_NAME};
pub use people::TokenFor;
pub use pulls::OpenedPullRequest;
pub use queue::{ClaimedAttempt, Lease, QueueStats, RecoverScope, RecoveryReport};
pub use repo_url::{repo_without_credential, RepoCredential};
pub use secrets::{SecretKey, SecretKeyError, SECRET_KEY_LEN};
pub use sso::{
    DevicePoll, DeviceRequest, IssuedSsoToken, NewDeviceRequest, NewSession, PendingLogin, Session,
    SsoIdentity, SsoOutcome, SsoUser, DEVICE_POLL_INTERVAL_SECS, DEVICE_REQUEST_TTL_SECS,
    MAX_DEVICE_REQUESTS_PER_ORIGIN, SESSION_TTL_SECS, SSO_LOGIN_TTL_SECS,
};
pub use store::Store;
pub use tasks::AttemptRef;
pub use tokens::{AdminBootstrap, NewToken, Principal, TokenInfo, MIN_SECRET_LEN};
pub use users::{sanitize_name, valid_name, MAX_NAME_LEN};
pub use webhooks::{
    DueWebhook, WebhookTry, MAX_DELIVERIES_LISTED, WEBHOOK_ATTEMPT_FINISHED, WEBHOOK_PR_OPENED,
    WEBHOOK_TASK_FINISHED,
};
pub use workers::{remote_worker_id, LeaseHolder, RemoteClaim, MAX_WORKER_NAME};

#[cfg(test)]
mod crate_tests;
