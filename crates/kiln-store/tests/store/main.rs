//! Behaviour of the store, each test run on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

mod audit;
mod durability;
mod environments;
mod events;
mod messages;
mod migration;
mod notifications;
mod opening;
mod people;
mod pulls;
mod queue;
mod quotas;
mod ranking;
mod recovery;
mod repo_credentials;
mod secrets;
mod shared_environments;
mod tasks;
mod tokens;
mod webhooks;
mod workers;
