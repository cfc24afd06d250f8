//! The messenger's durable state and every rule that decides what is stored:
//! sequencing (`seq`, `useq`), membership, receipts, presence rows, push
//! registrations, what removing an account takes with it, online backups and
//! per-user exports.
//!
//! The store takes decoded requests and other [`Input`]s in batches and returns
//! domain [`Outcome`]s: the reply to the requesting device, the events for each
//! user's inbox, status changes, and the push notifications for users with no
//! device online. It knows no transport: no topic, QoS or connection appears
//! here; the bridge maps outcomes onto MQTT.
//!
//! # Layout
//!
//! - this file: the [`Store`] interface, its [`Input`]s and errors.
//! - [`config`]: the `[storage]` and `[limits]` settings.
//! - `outcome`: [`Outcome`], [`Effect`], [`Notification`].
//! - `failure`: [`Failure`], why a request failed.
//! - `rate`: per-user rate limits (sends, group creations, token requests).
//! - [`slots`]: which users a bridge handles when several share a database.
//! - [`sqlite`]: the SQLite engine ([`SqliteStore`]).
//! - [`postgres`]: PostgreSQL: connecting, the schema and its migrations, and
//!   copying a SQLite install into it.

pub mod config;
mod export;
mod failure;
mod outcome;
pub mod postgres;
mod rate;
mod rows;
pub mod slots;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use messenger_protocol::wire::{Platform, Request};
use messenger_protocol::{DeviceId, UserId};

pub use failure::{Failure, MAX_MESSAGE_BYTES};
pub use outcome::{Effect, Notification, Outcome, Payload};
pub use sqlite::files::{Catalog, UploadRecord};
pub use sqlite::{
    backup, erase_user, export_user, list_users, remove_user, BackupReport, ExportSummary, Notify,
    SqliteStore, UserSummary,
};

/// Failures of the store as a whole (a request's own failures are [`Failure`]s,
/// answered in its [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The account store refused (e.g. removing a user who does not exist).
    #[error(transparent)]
    Account(#[from] messenger_accounts::AccountsError),
    /// A storage thread could not be started.
    #[error("storage: cannot start a thread")]
    Thread(#[source] std::io::Error),
    /// There is no database file to read.
    #[error("no database at {0}")]
    NoDatabase(PathBuf),
    /// A backup's destination exists already; it is never overwritten.
    #[error("{0} already exists; a backup never overwrites a file")]
    BackupExists(PathBuf),
    /// A file besides the database could not be created or read.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// A backup's copy failed its check.
    #[error("the copy at {0} failed its check: {1}")]
    Corrupt(PathBuf, String),
    /// Writing an export failed.
    #[error("writing the export")]
    Write(#[source] std::io::Error),
    /// Encoding an export's JSON failed.
    #[error("encoding the export")]
    Encode(#[source] serde_json::Error),
    /// PostgreSQL failed.
    #[error("storage: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// PostgreSQL could not be reached again in time after the connection broke.
    #[error("storage: PostgreSQL is unreachable: {0}")]
    Unavailable(String),
    /// The PostgreSQL connection string is unusable.
    #[error(transparent)]
    Connect(#[from] postgres::PostgresError),
    /// `pg_dump` could not be run.
    #[error("cannot run pg_dump ({0}): install PostgreSQL's client tools (the server's version or newer) so that pg_dump is on PATH")]
    DumpMissing(String),
    /// `pg_dump` ran and failed.
    #[error("pg_dump failed: {0}")]
    DumpFailed(String),
    /// Reading for an export failed (the cause is logged).
    #[error("reading: {0}")]
    Read(String),
}

/// Answers whether a client id (`<user>:<device>`) has an open connection.
pub type Liveness = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Something for the store to handle.
#[derive(Debug)]
pub enum Input {
    /// A device's decoded request.
    Request {
        /// Who sent it.
        user: UserId,
        /// From which device.
        device: DeviceId,
        /// The request.
        request: Request,
    },
    /// A device came online or went offline.
    Presence {
        /// Whose device.
        user: UserId,
        /// Which.
        device: DeviceId,
        /// Online or offline.
        online: bool,
    },
    /// Mark offline the devices that look online but have no connection.
    Reconcile,
    /// Every user's status again (whoever kept them lost them).
    Republish,
    /// Remove the uploads no message carries that are older than
    /// `unreferenced_ms`, their bytes, and stray files of the files directory.
    SweepFiles {
        /// How long an unreferenced upload is kept, ms.
        unreferenced_ms: u64,
    },
    /// A push service called a token dead: delete it unless it was registered
    /// again after `not_after_ms`.
    ForgetToken {
        /// Its push service.
        platform: Platform,
        /// The token.
        token: String,
        /// When it was seen dead, ms since the epoch.
        not_after_ms: u64,
    },
}

/// A storage engine. One thread owns it and hands it batches.
pub trait Store: Send {
    /// Handles `inputs` in one transaction at the server time `now` (ms since the
    /// epoch): one [`Outcome`] per input, in order, once the batch is durable. A
    /// request that fails changes nothing and its outcome is the `error` reply;
    /// an `Err` means nothing of the batch was stored.
    fn process(&mut self, inputs: Vec<Input>, now: u64) -> Result<Vec<Outcome>, StoreError>;

    /// Housekeeping between batches (the caller has handed the last outcomes on):
    /// one small step of it. [`Housekeeping::More`] asks to be called again as soon
    /// as no batch is waiting.
    fn between_batches(&mut self) -> Housekeeping;
}

/// Whether a store has housekeeping it could do at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Housekeeping {
    /// Nothing is due now.
    Done,
    /// Another step is due (e.g. retention has more old events to remove).
    More,
}
