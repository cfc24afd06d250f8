//! The SQLite engine: one connection, owned by the thread that calls
//! `Store::process`, committing each batch in one transaction.
//!
//! A failed request changes nothing: requests run straight in the batch's
//! transaction, and when one fails after writing, the batch runs again with each
//! request in its own savepoint (see `Run`). `seq` (per conversation) and `useq`
//! (per user) are assigned in the same transaction that stores the event, so
//! both are gap-free. WAL
//! checkpoints run on a thread of their own (`checkpoint`), never in a commit.
//!
//! # Layout
//!
//! - `context`: the per-request context and what every handler shares.
//! - `messages`, `groups`, `conversations`, `pushes`: the handlers, by request.
//! - `timeline`: edit, delete and react, the actions on a stored message.
//! - `blocks`: block, unblock and the list of blocked users.
//! - `search`: the `search` request and the full-text index it reads.
//! - `files`: uploads, the messages that carry them, their bytes on disk.
//! - `presence`: device rows and each user's aggregate.
//! - `rows`: stored rows back into events; the reply byte budget.
//! - `removal`: what removing an account takes with it.
//! - `retention`: removing events older than `storage.retention_days`, between batches.
//! - `backup`: a consistent copy of the file while a server writes to it.
//! - `export`: everything one user may read, as JSON.
//! - `roster`: the operator's list of accounts with their devices.
//! - `schema`: the tables and their migrations.

mod backup;
pub(crate) mod blocks;
mod checkpoint;
pub(crate) mod context;
pub(crate) mod conversations;
mod export;
pub mod files;
mod groups;
pub(crate) mod messages;
pub(crate) mod presence;
pub(crate) mod pushes;
pub(crate) mod removal;
mod retention;
mod roster;
pub(crate) mod rows;
mod schema;
pub(crate) mod search;
pub(crate) mod timeline;

pub use backup::{backup, BackupReport};
pub use export::{export_user, ExportSummary};
pub use pushes::Notify;
pub use roster::{list_users, UserSummary};

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use messenger_protocol::wire::{ErrorCode, Request};
use messenger_protocol::{DeviceId, UserId};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tracing::error;

use self::checkpoint::{Checkpointer, Wal};
use self::context::Ctx;
use crate::config::{Durability, Limits, StorageConfig};
use crate::rate::{Allowance, Ledger, RateLimits};
use crate::{Effect, Failure, Housekeeping, Input, Liveness, Outcome, StoreError};

/// The writer's page cache, in KiB.
const CACHE_KIB: i64 = 16 * 1024;

/// Bytes the WAL file is cut back to when it is rewound.
pub(crate) const WAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// The store on a SQLite file (shared with the account store).
pub struct SqliteStore {
    conn: Connection,
    limits: Limits,
    /// Per-user rate limits, in this process's memory.
    rates: RateLimits,
    notify: Notify,
    liveness: Option<Liveness>,
    /// Where uploaded files' bytes live.
    files_dir: PathBuf,
    wal: Arc<Wal>,
    /// Removes old events between batches, when `storage.retention_days` is set.
    retention: Option<retention::Retention>,
    /// Taken on drop, to stop the thread.
    checkpointer: Option<Checkpointer>,
}

impl SqliteStore {
    /// Opens the file (migrating it) and starts the checkpoint thread. Blocking.
    ///
    /// `notify` says whether stored messages call for push notifications;
    /// `liveness`, where the broker can tell, which client ids are connected
    /// (devices that look online without one are then marked offline on
    /// [`Input::Reconcile`]).
    pub fn open(
        config: &StorageConfig,
        limits: Limits,
        notify: Notify,
        liveness: Option<Liveness>,
    ) -> Result<Self, StoreError> {
        let conn = open(&config.path, config.durability)?;
        let files_dir = config.files_dir();
        std::fs::create_dir_all(&files_dir).map_err(|e| StoreError::Io(files_dir.clone(), e))?;
        let checkpointer = Checkpointer::start(config.path.clone(), checkpoint::RESTART_FRAMES)?;
        Ok(Self {
            conn,
            rates: RateLimits::new(&limits),
            limits,
            notify,
            liveness,
            wal: checkpointer.wal(),
            retention: retention::Retention::new(config.retention_days, files_dir.clone()),
            checkpointer: Some(checkpointer),
            files_dir,
        })
    }
}

impl crate::Store for SqliteStore {
    fn process(&mut self, inputs: Vec<Input>, now: u64) -> Result<Vec<Outcome>, StoreError> {
        let mut ledger = Ledger::default();
        let mut how = Run::Direct;
        loop {
            match self.run(&inputs, now, how, &mut ledger)? {
                Some(outcomes) => return Ok(outcomes),
                // Only a direct run stops.
                None => how = Run::Savepoints,
            }
        }
    }

    fn between_batches(&mut self) -> Housekeeping {
        self.wal.rewind_if_due(&self.conn);
        self.rates.forget_idle();
        let more = self
            .retention
            .as_mut()
            .is_some_and(|retention| retention.run_if_due(&mut self.conn, now_ms()));
        if more {
            Housekeeping::More
        } else {
            Housekeeping::Done
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.stop();
        }
    }
}

/// How a batch's requests are kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Straight in the batch's transaction. A request that fails without having
    /// written a row (almost every failure: checks come before writes) is
    /// answered and the batch goes on; one that fails after writing ends the
    /// run, rolled back, and the batch runs again with [`Run::Savepoints`].
    /// A savepoint per request costs a copy of every page the request touches
    /// first, and its release: about a sixth of the writer's time per send.
    Direct,
    /// Each request in its own savepoint, rolled back alone if it fails.
    Savepoints,
}

impl SqliteStore {
    /// Handles `inputs` in one transaction, committed at the end; `None` when a
    /// [`Run::Direct`] run had to stop (nothing of it stays).
    fn run(
        &mut self,
        inputs: &[Input],
        now: u64,
        how: Run,
        ledger: &mut Ledger,
    ) -> Result<Option<Vec<Outcome>>, StoreError> {
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut outcomes = Vec::with_capacity(inputs.len());
        // The batch's search index changes, applied before it commits (see `search`).
        let mut index = Vec::new();
        // The hashes of the uploads the batch let go of; their bytes go before it commits.
        let mut released = Vec::new();
        for (place, input) in inputs.iter().enumerate() {
            let outcome = match input {
                Input::Request {
                    user,
                    device,
                    request,
                } => {
                    if matches!(request, Request::Search { .. }) {
                        search::apply(&tx, &mut index)?;
                    }
                    let scope = Scope {
                        limits: &self.limits,
                        notify: self.notify,
                        now,
                    };
                    let allowance = ledger.allowance(place, &self.rates);
                    let handled = match how {
                        Run::Direct => scope.direct(&tx, user, device, request.clone(), &allowance),
                        Run::Savepoints => Some(scope.request(
                            &mut tx,
                            user,
                            device,
                            request.clone(),
                            &allowance,
                        )?),
                    };
                    ledger.note(place, allowance);
                    let Some(Handled {
                        outcome,
                        index: ops,
                        released: gone,
                    }) = handled
                    else {
                        // Dropping the transaction rolls the run back.
                        return Ok(None);
                    };
                    index.extend(ops);
                    released.extend(gone);
                    outcome
                }
                Input::Presence {
                    user,
                    device,
                    online,
                } => effects(presence::update(
                    &tx,
                    user,
                    device,
                    *online,
                    now,
                    self.limits.max_devices_per_user,
                )?),
                Input::Reconcile => match &self.liveness {
                    Some(is_connected) => {
                        effects(presence::reconcile(&tx, is_connected.as_ref(), now)?)
                    }
                    None => Outcome::default(),
                },
                Input::Republish => effects(presence::all(&tx)?),
                Input::ForgetToken {
                    platform,
                    token,
                    not_after_ms,
                } => {
                    pushes::forget(&tx, *platform, token, *not_after_ms)?;
                    Outcome::default()
                }
                Input::SweepFiles { unreferenced_ms } => {
                    released.extend(files::unreferenced(
                        &tx,
                        now.saturating_sub(*unreferenced_ms),
                    )?);
                    files::sweep_directory(
                        &tx,
                        &self.files_dir,
                        Duration::from_millis(*unreferenced_ms),
                    )?;
                    Outcome::default()
                }
            };
            outcomes.push(outcome);
        }
        search::apply(&tx, &mut index)?;
        files::remove_unused(&tx, &self.files_dir, &released)?;
        tx.commit()?;
        Ok(Some(outcomes))
    }
}

/// What every request of a batch shares.
struct Scope<'a> {
    limits: &'a Limits,
    notify: Notify,
    now: u64,
}

/// A request handled: its outcome, and for the end of the batch the search
/// index changes it calls for and the hashes of the uploads it let go of (both
/// empty if it failed).
struct Handled {
    outcome: Outcome,
    index: Vec<search::IndexOp>,
    released: Vec<String>,
}

impl Handled {
    /// A failed request: its `error` reply, nothing else.
    fn failed(failure: &Failure, id: Option<String>) -> Self {
        Self {
            outcome: Outcome {
                effects: vec![Effect::reply(&failure.reply(id))],
                notifications: Vec::new(),
            },
            index: Vec::new(),
            released: Vec::new(),
        }
    }
}

impl Scope<'_> {
    /// Handles one request on `conn`: its effects or its failure, with what the
    /// context collected for the end of the batch.
    fn handle(
        &self,
        conn: &Connection,
        user: &UserId,
        device: &DeviceId,
        request: Request,
        rates: &Allowance<'_>,
    ) -> (Result<Vec<Effect>, Failure>, Handled) {
        let ctx = Ctx {
            conn,
            user,
            device,
            limits: self.limits,
            rates,
            now: self.now,
            notify: self.notify,
            pushes: RefCell::new(Vec::new()),
            index: RefCell::new(Vec::new()),
            released: RefCell::new(Vec::new()),
        };
        let handled = ctx.handle(request).and_then(|out| fits(out, self.limits));
        let collected = Handled {
            outcome: Outcome {
                effects: Vec::new(),
                notifications: ctx.pushes.take(),
            },
            index: ctx.index.take(),
            released: ctx.released.take(),
        };
        (handled, collected)
    }

    /// Handles one request straight in the batch's transaction ([`Run::Direct`]);
    /// `None` if it failed after writing (the run must be rolled back). A
    /// failure reported by SQLite itself counts as one after writing.
    fn direct(
        &self,
        tx: &Transaction<'_>,
        user: &UserId,
        device: &DeviceId,
        request: Request,
        rates: &Allowance<'_>,
    ) -> Option<Handled> {
        let id = request.id().map(|i| i.to_string());
        let before = tx.total_changes();
        match self.handle(tx, user, device, request, rates) {
            (Ok(effects), mut handled) => {
                handled.outcome.effects = effects;
                Some(handled)
            }
            (Err(failure), _)
                if failure.code != ErrorCode::Internal && tx.total_changes() == before =>
            {
                Some(Handled::failed(&failure, id))
            }
            (Err(_), _) => None,
        }
    }

    /// Handles one request in its savepoint ([`Run::Savepoints`]): committed with
    /// its outcome, or rolled back and answered with an `error` reply. Only a
    /// failure of the savepoint itself is an error (it fails the batch).
    fn request(
        &self,
        tx: &mut Transaction<'_>,
        user: &UserId,
        device: &DeviceId,
        request: Request,
        rates: &Allowance<'_>,
    ) -> rusqlite::Result<Handled> {
        let id = request.id().map(|i| i.to_string());
        let sp = tx.savepoint()?;
        Ok(match self.handle(&sp, user, device, request, rates) {
            (Ok(effects), mut handled) => {
                sp.commit()?;
                handled.outcome.effects = effects;
                handled
            }
            // Dropping the savepoint rolls the request back.
            (Err(failure), _) => Handled::failed(&failure, id),
        })
    }
}

fn effects(effects: Vec<Effect>) -> Outcome {
    Outcome {
        effects,
        notifications: Vec::new(),
    }
}

/// Refuses an outcome with a payload over the largest reply (`limits.max_reply_bytes`,
/// under the broker's packet limit): the request is then rolled back and answered
/// `too_large`. Pages are cut to fit before this; it is the last line of defence
/// that keeps a transport from refusing what the store produced.
pub(crate) fn fits(out: Vec<Effect>, limits: &Limits) -> Result<Vec<Effect>, Failure> {
    let max = limits.max_reply_bytes();
    match out.iter().map(|o| o.payload().len()).max() {
        Some(largest) if largest > max => {
            error!(
                bytes = largest,
                max, "a reply or event would be over the packet limit; request refused"
            );
            Err(Failure::new(
                ErrorCode::TooLarge,
                format!("the reply would be over the limit of {max} bytes"),
            ))
        }
        _ => Ok(out),
    }
}

/// The wall clock in ms since the epoch, the unit of `ts`.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Opens the SQLite file with the durability policy and runs migrations.
pub(crate) fn open(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let mut conn = messenger_accounts::open_sqlite(path)?;
    let sync = match durability {
        Durability::Fsync => "FULL",
        Durability::Os => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // Every request runs in its own savepoint; its statement journal stays in memory
    // instead of a temporary file written (not synced) for every request.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Deleted content (a message deleted for everyone) is overwritten on its page
    // where that costs no extra I/O, not left in the file's free space.
    conn.pragma_update(None, "secure_delete", "FAST")?;
    // Checkpoints run on their own thread (`checkpoint`), never in a commit;
    // a WAL rewound after a burst is cut back to this size.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    // The pages a batch touches stay cached from one batch to the next (SQLite's
    // default of 2 MiB re-read them from the file and spilled dirty pages mid-batch).
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    // Every statement of every request kind stays prepared (rusqlite keeps 16).
    conn.set_prepared_statement_cache_capacity(128);
    migrate(&mut conn)?;
    Ok(conn)
}

/// Creates or updates the account tables and the store's tables.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    messenger_accounts::migrate(conn)?;
    messenger_accounts::schema::migrate(conn, "bridge", schema::MIGRATIONS)?;
    Ok(())
}

/// Removes an account and everything it owned in the conversations (see
/// `sqlite::removal`), in one transaction on the shared SQLite file at `path`: safe
/// while a store runs on it, which sees either all of it or none.
pub fn remove_user(path: &Path, user: &UserId) -> Result<(), StoreError> {
    let mut conn = messenger_accounts::open_sqlite(path)?;
    migrate(&mut conn)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    messenger_accounts::remove_user(&tx, user)?;
    removal::purge_user(&tx, user)?;
    tx.commit()?;
    Ok(())
}

/// Removes an account as [`remove_user`] does, then erases the text of every
/// message it sent as `delete` does (see `sqlite::removal`), a few hundred
/// messages per transaction. A user that no longer exists (an erase cut short)
/// has what is left of their messages erased, and their attachments let go of
/// (the bytes of uploads no other message carries are removed from `files_dir`).
/// Returns how many were erased.
pub fn erase_user(path: &Path, files_dir: &Path, user: &UserId) -> Result<u64, StoreError> {
    let gone = match remove_user(path, user) {
        Ok(()) => None,
        Err(err @ StoreError::Account(messenger_accounts::AccountsError::NotFound(_))) => Some(err),
        Err(err) => return Err(err),
    };
    let mut conn = messenger_accounts::open_sqlite(path)?;
    migrate(&mut conn)?;
    let keys = removal::live_messages(&conn, user)?;
    if let (Some(err), true) = (gone, keys.is_empty()) {
        return Err(err);
    }
    let mut erased = 0;
    for batch in keys.chunks(removal::ERASE_BATCH) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (n, released) = removal::erase_messages(&tx, batch)?;
        erased += n;
        files::remove_unused(&tx, files_dir, &released)?;
        tx.commit()?;
    }
    Ok(erased)
}

/// Opens the connection the checkpoint thread uses (same durability rules as SQLite's own checkpoints).
fn open_checkpointer(path: &Path) -> Result<Connection, StoreError> {
    Ok(messenger_accounts::open_sqlite(path)?)
}

#[cfg(test)]
mod tests {
    use messenger_protocol::{DeviceId, UserId};
    use serde_json::{json, Value};

    use super::*;
    use crate::Store;

    /// A store with users ann and bob, sends limited to a burst of `burst`.
    fn setup(burst: u32) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let accounts = messenger_accounts::Accounts::open(&path).unwrap();
        for user in ["ann", "bob"] {
            accounts.add(&UserId::parse(user).unwrap(), "pw").unwrap();
        }
        let config = StorageConfig {
            path,
            durability: Durability::Os,
            ..StorageConfig::default()
        };
        let limits = Limits {
            sends_per_sec: 1,
            sends_burst: burst,
            ..Limits::default()
        };
        let store = SqliteStore::open(&config, limits, Notify::Off, None).unwrap();
        (dir, store)
    }

    fn from_ann(request: Value) -> Input {
        Input::Request {
            user: UserId::parse("ann").unwrap(),
            device: DeviceId::parse("phone").unwrap(),
            request: serde_json::from_value(request).unwrap(),
        }
    }

    /// Each outcome's reply.
    fn replies(outcomes: &[Outcome]) -> Vec<Value> {
        outcomes
            .iter()
            .map(|o| {
                let reply = o.effects.iter().find_map(|e| match e {
                    Effect::Reply(payload) => Some(payload.clone()),
                    _ => None,
                });
                serde_json::from_slice(&reply.expect("a reply")).unwrap()
            })
            .collect()
    }

    /// A request that fails after it wrote (a reply to a message that is not
    /// there is found out after the send took its seq) sends the batch round
    /// again with savepoints: the requests beside it are stored once, seqs stay
    /// gap-free, and each request counts against the sender's limit once.
    #[test]
    fn a_request_failing_after_writing_changes_nothing_and_counts_once() {
        let (_dir, mut store) = setup(3);
        let conv = "dm:ann:bob";
        let batch = vec![
            from_ann(json!({"type": "send", "id": "a1", "conv": conv, "body": "one"})),
            from_ann(
                json!({"type": "send", "id": "bad", "conv": conv, "body": "x", "reply_to": 99}),
            ),
            from_ann(json!({"type": "send", "id": "a2", "conv": conv, "body": "two"})),
            from_ann(json!({"type": "send", "id": "a3", "conv": conv, "body": "three"})),
        ];
        let replies = replies(&store.process(batch, 1_000).unwrap());
        assert_eq!(replies[0]["type"], "ack", "{}", replies[0]);
        assert_eq!(replies[0]["seq"], 1);
        assert_eq!(replies[1]["type"], "error", "{}", replies[1]);
        assert_eq!(replies[1]["code"], "bad_request");
        assert_eq!(replies[2]["type"], "ack", "{}", replies[2]);
        assert_eq!(
            replies[2]["seq"], 2,
            "the failed send's seq was rolled back"
        );
        // Burst 3: a1, bad and a2 took it; asked again, a1 and bad would have taken
        // it twice and a2 would have been refused.
        assert_eq!(replies[3]["code"], "rate_limited", "{}", replies[3]);
        let stored: Vec<(u64, String)> = store
            .conn
            .prepare("SELECT seq, req_id FROM events WHERE conv = ?1 ORDER BY seq")
            .unwrap()
            .query_map([conv], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(stored, vec![(1, "a1".to_owned()), (2, "a2".to_owned())]);
    }

    /// A failure before any write (the common kind) is answered in the direct
    /// run: the batch is not run again, so the limiter is asked once.
    #[test]
    fn a_request_failing_before_writing_is_answered_in_place() {
        let (_dir, mut store) = setup(2);
        let conv = "dm:ann:bob";
        let batch = vec![
            from_ann(json!({"type": "send", "id": "a2", "conv": conv, "body": "two"})),
            from_ann(json!({"type": "send", "id": "a1", "conv": conv, "body": ""})),
        ];
        let before = store.conn.total_changes();
        let replies = replies(&store.process(batch, 1_000).unwrap());
        assert_eq!(replies[0]["type"], "ack", "{}", replies[0]);
        assert_eq!(replies[0]["seq"], 1);
        assert_eq!(replies[1]["code"], "bad_request", "{}", replies[1]);
        // One run: a second would have written the send's rows twice (and rolled
        // one copy back), which total_changes counts.
        let one_run = store.conn.total_changes() - before;
        let (_dir2, mut again) = setup(2);
        let before = again.conn.total_changes();
        let alone = vec![from_ann(
            json!({"type": "send", "id": "a2", "conv": conv, "body": "two"}),
        )];
        again.process(alone, 1_000).unwrap();
        assert_eq!(one_run, again.conn.total_changes() - before);
    }
}
