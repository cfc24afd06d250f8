//! The PostgreSQL engine ([`PostgresStore`]): the same requests and rules as
//! the SQLite engine, on the distribution-keyed schema, with any number of
//! bridges writing at once.
//!
//! Each batch is one transaction (`READ COMMITTED`), each request in it a
//! savepoint, rolled back alone if the request fails. What several bridges
//! share is serialized by the database, never in a bridge's memory: counters
//! under row locks (see `context`), request ids under a unique key
//! (`requests`). When another transaction got there first (a unique key just
//! taken, a deadlock), the whole batch is rolled back and runs again, and sees
//! what the other committed (a repeated request is then answered as a repeat).
//! When the connection is lost, the batch runs again on a new one, with
//! backoff, for as long as `RECONNECT_FOR`: nothing is acknowledged without a
//! commit.
//!
//! # Layout
//!
//! - `db`: the batch's transaction, its prepared statements and faults.
//! - `context`: the per-request context and what every handler shares.
//! - `messages`, `groups`, `listing`, `pushes`, `blocks`, `timeline`,
//!   `search`: the handlers, by request.
//! - `presence`: device rows and each user's aggregate.
//! - `files`: the sweep of uploads, and the bytes of those let go of, removed
//!   at the end of the batch under per-hash advisory locks.
//! - `retention`: removing events older than `storage.retention_days`, a step
//!   at a time between batches, one bridge's step at a time.
//! - `operator`, `removal`, `export`: the operator's commands (`messenger user
//!   remove [--erase]`, `messenger export`) in transactions of their own.

mod blocks;
mod context;
mod db;
mod export;
mod files;
mod groups;
mod leases;
mod listing;
mod messages;
mod operator;
mod presence;
mod pushes;
mod removal;
mod retention;
mod search;
mod texts;
mod timeline;

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_protocol::wire::{ErrorCode, Request};
use postgres::Client;
use tracing::{error, info, warn};

use std::collections::{HashMap, HashSet};

use self::context::{Ctx, Looked};
use self::db::{Db, Fault, Statements};
pub use self::export::export_user;
use self::leases::Leases;
pub use self::leases::{slot_spread, Sharing};
pub use self::removal::{erase_user, remove_user};
use crate::config::Limits;
use crate::rate::{Ledger, RateLimits};
use crate::slots::{holds, slot_of};
use crate::sqlite::fits;
use crate::sqlite::pushes::Notify;
use crate::{Effect, Failure, Housekeeping, Input, Liveness, Outcome, StoreError};

/// How many times a batch runs again after conflicts with other bridges before
/// its conflicting request is answered `internal` instead.
pub(super) const CONFLICT_RUNS: u32 = 8;

/// How long a batch keeps trying to reach a database that went away before it
/// fails (its requests are then answered `internal`).
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Longest pause between two attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Opens a new connection to the database (the `storage.url`), for after the
/// old one broke; the error says why not, without the password.
pub type Connector = Arc<dyn Fn() -> Result<Client, String> + Send + Sync>;

/// The store on a PostgreSQL database (shared with the account store and with
/// every other bridge).
pub struct PostgresStore {
    client: Client,
    connect: Connector,
    /// Prepared statements of `client`; emptied with a new connection.
    statements: RefCell<Statements>,
    limits: Limits,
    /// Per-user rate limits, in this process's memory.
    rates: RateLimits,
    notify: Notify,
    liveness: Option<Liveness>,
    /// The slots of users this bridge handles, leased in the database.
    leases: Leases,
    /// The files directory (`storage.files_dir()`), shared with every node.
    files_dir: PathBuf,
    /// Removes old events between batches, when `storage.retention_days` is set.
    retention: Option<retention::Retention>,
}

impl PostgresStore {
    /// A store on `client`, whose schema is migrated already (see
    /// [`crate::postgres::migrate`]); `connect` opens a new connection when it breaks.
    ///
    /// `notify` and `liveness` are as for [`crate::SqliteStore::open`];
    /// `sharing` names this bridge among the others on the database;
    /// `files_dir` is where uploads' bytes are (`storage.files_dir()`). Takes
    /// this bridge's first share of the users' slots (blocking).
    pub fn new(
        client: Client,
        connect: Connector,
        limits: Limits,
        notify: Notify,
        liveness: Option<Liveness>,
        sharing: Sharing,
        files_dir: PathBuf,
    ) -> Result<Self, StoreError> {
        let lease_client = connect().map_err(StoreError::Unavailable)?;
        let leases = Leases::start(sharing, lease_client, connect.clone())?;
        Ok(Self {
            client,
            connect,
            statements: RefCell::new(Statements::new()),
            rates: RateLimits::new(&limits),
            limits,
            notify,
            liveness,
            leases,
            files_dir,
            retention: None,
        })
    }

    /// The store with `storage.retention_days` of retention (0: keep for ever,
    /// the default): events older than that are removed between batches.
    pub fn with_retention(mut self, days: u32) -> Self {
        self.retention = retention::Retention::new(days);
        self
    }

    /// Replaces a broken connection, with backoff, until `deadline`.
    fn reconnect(&mut self, deadline: Instant) -> Result<(), StoreError> {
        let mut pause = Duration::from_millis(50);
        loop {
            match (self.connect)() {
                Ok(client) => {
                    info!("reconnected to PostgreSQL");
                    self.client = client;
                    self.statements.borrow_mut().clear();
                    return Ok(());
                }
                Err(cause) if Instant::now() + pause < deadline => {
                    warn!(%cause, retry_in_ms = pause.as_millis() as u64, "PostgreSQL is unreachable");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
                Err(cause) => return Err(StoreError::Unavailable(cause)),
            }
        }
    }
}

impl crate::Store for PostgresStore {
    fn process(&mut self, inputs: Vec<Input>, now: u64) -> Result<Vec<Outcome>, StoreError> {
        let mut ledger = Ledger::default();
        let mut conflicts = 0;
        let mut deadline = None;
        let mut how = Run::Direct;
        loop {
            let tolerate = conflicts < CONFLICT_RUNS;
            match self.run(&inputs, now, &mut ledger, Mode { how, tolerate }) {
                Ok(outcomes) => return Ok(outcomes),
                Err(Stop::Savepoints) => how = Run::Savepoints,
                Err(Stop::Conflict) => {
                    conflicts += 1;
                    info!(
                        runs = conflicts,
                        "another transaction got there first: the batch runs again"
                    );
                }
                Err(Stop::Connection(cause)) => {
                    warn!(%cause, "the connection to PostgreSQL broke: the batch runs again on a new one");
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + RECONNECT_FOR);
                    self.reconnect(deadline)?;
                }
                Err(Stop::Failed(err)) => return Err(err),
            }
        }
    }

    fn between_batches(&mut self) -> Housekeeping {
        self.rates.forget_idle();
        let Some(retention) = self.retention.as_mut() else {
            return Housekeeping::Done;
        };
        let after = retention.run_if_due(
            &mut self.client,
            &self.statements,
            &self.files_dir,
            crate::sqlite::now_ms(),
        );
        match after {
            retention::After::More => Housekeeping::More,
            retention::After::Wait => Housekeeping::Done,
            retention::After::Reconnect => {
                // One attempt; a batch that finds it still broken tries for longer.
                if let Err(err) = self.reconnect(Instant::now()) {
                    warn!(cause = %err, "retention: PostgreSQL is still unreachable");
                }
                Housekeeping::Done
            }
        }
    }
}

/// How a batch's requests are kept apart (as on SQLite, see `sqlite::Run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Straight in the batch's transaction: a request that fails before
    /// writing is answered and the batch goes on; one that fails after writing
    /// (or on a database error, which aborts the transaction) stops the run,
    /// and the batch runs again with [`Run::Savepoints`]. A savepoint costs two
    /// round trips and a subtransaction per request.
    Direct,
    /// Each request in its own savepoint, rolled back alone if it fails.
    Savepoints,
}

/// How one run of a batch goes.
#[derive(Debug, Clone, Copy)]
struct Mode {
    how: Run,
    /// Whether a conflict stops the run (false after many runs: the conflicting
    /// request is answered `internal`).
    tolerate: bool,
}

/// Why a run of a batch stopped before its commit (nothing of it stays).
enum Stop {
    /// A request failed after writing in a [`Run::Direct`] run: run the batch
    /// again with savepoints.
    Savepoints,
    /// Another transaction got there first: run the batch again.
    Conflict,
    /// The connection broke: run the batch again on a new one.
    Connection(String),
    /// The batch fails.
    Failed(StoreError),
}

impl Stop {
    /// The stop a database error calls for.
    fn of(err: postgres::Error) -> Self {
        match Fault::of(&err) {
            Fault::Conflict => Self::Conflict,
            Fault::Connection => Self::Connection(err.to_string()),
            Fault::Other => Self::Failed(StoreError::Postgres(err)),
        }
    }
}

impl PostgresStore {
    /// Handles `inputs` in one transaction, committed at the end.
    fn run(
        &mut self,
        inputs: &[Input],
        now: u64,
        ledger: &mut Ledger,
        mode: Mode,
    ) -> Result<Vec<Outcome>, Stop> {
        let run = self.run_in_transaction(inputs, now, ledger, mode);
        match run {
            Ok(outcomes) => {
                self.client.batch_execute("COMMIT").map_err(Stop::of)?;
                Ok(outcomes)
            }
            Err(stop) => {
                // Nothing of the run stays (on a broken connection the server
                // has rolled it back already).
                let _ = self.client.batch_execute("ROLLBACK");
                Err(stop)
            }
        }
    }

    /// [`PostgresStore::run`]'s transaction up to its commit (opened here).
    fn run_in_transaction(
        &mut self,
        inputs: &[Input],
        now: u64,
        ledger: &mut Ledger,
        mode: Mode,
    ) -> Result<Vec<Outcome>, Stop> {
        self.client.batch_execute("BEGIN").map_err(Stop::of)?;
        let outcomes = {
            let db = Db::new(&mut self.client, &self.statements);
            let held =
                leases::held(&db, self.leases.instance(), &slots_of(inputs)).map_err(Stop::of)?;
            let ours = |user: &messenger_protocol::UserId| holds(held, user);
            lock_users(&db, inputs, &ours).map_err(Stop::of)?;
            let looked = look_up(&db, inputs, &ours).map_err(Stop::of)?;
            let mut outcomes = Vec::with_capacity(inputs.len());
            // The hashes of the uploads the batch let go of; their bytes go before it commits.
            let mut released = Vec::new();
            let mut place = 0;
            while place < inputs.len() {
                if mode.how == Run::Direct && self.notify == Notify::Off {
                    let end = texts::run_end(inputs, place, &looked);
                    if end - place >= 2 {
                        let stored = texts::store(
                            &db,
                            &inputs[place..end],
                            place,
                            ledger,
                            (&self.rates, &self.limits),
                            now,
                        )
                        .map_err(|stop| match stop {
                            texts::Stop::Database(err) => match Stop::of(err) {
                                // Any other failure: the general path, request by request.
                                Stop::Failed(_) => Stop::Savepoints,
                                stop => stop,
                            },
                            texts::Stop::NotOpen => Stop::Savepoints,
                        })?;
                        outcomes.extend(stored);
                        place = end;
                        continue;
                    }
                }
                let input = &inputs[place];
                let outcome = match input {
                    // Another bridge's user (its own copy of the publish reaches it).
                    Input::Request { user, .. } | Input::Presence { user, .. } if !ours(user) => {
                        Outcome::default()
                    }
                    Input::Request {
                        user,
                        device,
                        request,
                    } => {
                        let allowance = ledger.allowance(place, &self.rates);
                        let outcome = {
                            let ctx = Ctx {
                                db: &db,
                                user,
                                device,
                                limits: &self.limits,
                                rates: &allowance,
                                now,
                                notify: self.notify,
                                pushes: RefCell::new(Vec::new()),
                                looked: looked.get(&place).copied(),
                                released: RefCell::new(Vec::new()),
                            };
                            let outcome = handle(&db, &ctx, request, mode);
                            // Those of a request that failed are harmless: the
                            // end of the batch looks for their rows again.
                            released.extend(ctx.released.take());
                            outcome
                        };
                        // Kept even if the run stops: a run again asks no limiter twice.
                        ledger.note(place, allowance);
                        outcome?
                    }
                    Input::Presence {
                        user,
                        device,
                        online,
                    } => effects(
                        presence::update(
                            &db,
                            user,
                            device,
                            *online,
                            now,
                            self.limits.max_devices_per_user,
                        )
                        .map_err(Stop::of)?,
                    ),
                    Input::Reconcile => match &self.liveness {
                        Some(is_connected) => effects(
                            presence::reconcile(&db, is_connected.as_ref(), now, &ours)
                                .map_err(Stop::of)?,
                        ),
                        None => Outcome::default(),
                    },
                    Input::Republish => effects(presence::all(&db, &ours).map_err(Stop::of)?),
                    Input::ForgetToken {
                        platform,
                        token,
                        not_after_ms,
                    } => {
                        pushes::forget(&db, *platform, token, *not_after_ms).map_err(Stop::of)?;
                        Outcome::default()
                    }
                    Input::SweepFiles { unreferenced_ms } => {
                        released.extend(
                            files::sweep(&db, &self.files_dir, now, *unreferenced_ms)
                                .map_err(Stop::of)?,
                        );
                        Outcome::default()
                    }
                };
                outcomes.push(outcome);
                place += 1;
            }
            files::remove_unused(&db, &self.files_dir, released).map_err(Stop::of)?;
            outcomes
        };
        Ok(outcomes)
    }
}

/// Handles one request as `mode` says: its outcome, or its `error` reply with
/// nothing of it stored. A conflict with another transaction or a broken
/// connection stops the run instead (a conflict only when `mode.tolerate`),
/// as does, in a [`Run::Direct`] run, a failure after writing.
fn handle(db: &Db<'_>, ctx: &Ctx<'_, '_>, request: &Request, mode: Mode) -> Result<Outcome, Stop> {
    let id = request.id().map(|i| i.to_string());
    let savepoint = mode.how == Run::Savepoints;
    if savepoint {
        db.simple("SAVEPOINT request").map_err(Stop::of)?;
    }
    db.take_wrote();
    let handled = ctx
        .handle(request.clone())
        .and_then(|out| fits(out, ctx.limits));
    let wrote = db.take_wrote();
    let failure = match (handled, db.take_fault()) {
        (Ok(effects), None) => {
            if savepoint {
                db.simple("RELEASE SAVEPOINT request").map_err(Stop::of)?;
            }
            return Ok(Outcome {
                effects,
                notifications: ctx.pushes.take(),
            });
        }
        (_, Some(Fault::Connection)) => {
            return Err(Stop::Connection(
                "the connection broke in a request".to_owned(),
            ))
        }
        (_, Some(Fault::Conflict)) if mode.tolerate => return Err(Stop::Conflict),
        (Err(failure), None) if !wrote && failure.code != ErrorCode::Internal => failure,
        (_, _) if !savepoint => return Err(Stop::Savepoints),
        (result, fault) => {
            db.simple("ROLLBACK TO SAVEPOINT request")
                .map_err(Stop::of)?;
            match result {
                // A handler that went on after a database error (it should not).
                Ok(_) => {
                    error!(?fault, "a request went on after a database error");
                    Failure::new(ErrorCode::Internal, "storage failure; retry later")
                }
                Err(failure) => failure,
            }
        }
    };
    if savepoint {
        db.simple("RELEASE SAVEPOINT request").map_err(Stop::of)?;
    }
    Ok(Outcome {
        effects: vec![Effect::reply(&failure.reply(id))],
        notifications: Vec::new(),
    })
}

/// The slots of the users whose requests and presence are in `inputs` (every
/// slot when an input concerns every user: reconciling, publishing again).
fn slots_of(inputs: &[Input]) -> Vec<i32> {
    if inputs
        .iter()
        .any(|input| matches!(input, Input::Reconcile | Input::Republish))
    {
        return (0..crate::slots::SLOTS)
            .filter_map(|slot| i32::try_from(slot).ok())
            .collect();
    }
    let mut slots: Vec<i32> = inputs
        .iter()
        .filter_map(|input| match input {
            Input::Request { user, .. } | Input::Presence { user, .. } => {
                i32::try_from(slot_of(user)).ok()
            }
            _ => None,
        })
        .collect();
    slots.sort_unstable();
    slots.dedup();
    slots
}

/// Locks, in one order for every bridge, the `user_seqs` rows of the users
/// whose useq the batch's requests will take (those of a 1-1 chat's two users,
/// the sender's otherwise), creating missing ones. Without it two bridges
/// whose batches take the useqs of the same users in different orders (the
/// two sides of a chat on two bridges) would deadlock, and PostgreSQL would
/// only find out after `deadlock_timeout`. A group's members are locked as
/// their messages come (rarely in a cycle; a deadlock then runs a batch again).
fn lock_users(
    db: &Db<'_>,
    inputs: &[Input],
    ours: &dyn Fn(&messenger_protocol::UserId) -> bool,
) -> Result<(), postgres::Error> {
    let mut users: Vec<&str> = Vec::new();
    for input in inputs {
        let Input::Request { user, request, .. } = input else {
            continue;
        };
        if !ours(user) {
            continue;
        }
        let conv = match request {
            Request::Send { conv, .. }
            | Request::Receipt { conv, .. }
            | Request::Edit { conv, .. }
            | Request::Delete { conv, .. }
            | Request::React { conv, .. }
            | Request::GroupAdd { conv, .. }
            | Request::GroupRemove { conv, .. }
            | Request::GroupLeave { conv, .. } => conv,
            _ => continue,
        };
        users.push(user.as_str());
        if let Some((a, b)) = conv.direct_members() {
            users.extend([a.as_str(), b.as_str()]);
        }
    }
    if users.is_empty() {
        return Ok(());
    }
    users.sort_unstable();
    users.dedup();
    db.exec(
        "INSERT INTO user_seqs (\"user\", last_useq)
         SELECT u, 0 FROM unnest($1::text[]) AS t(u) ORDER BY u COLLATE \"C\"
         ON CONFLICT (\"user\") DO UPDATE SET last_useq = user_seqs.last_useq",
        &[&users],
    )?;
    Ok(())
}

/// For each plain text to a 1-1 chat in the batch (by place), whether its
/// request id was used before and whether the other user blocks the sender: one
/// query for the batch instead of one per message. A text whose id comes twice
/// in the batch, and texts after a block or unblock, are left out (they look
/// when they run, and see what the batch did before them).
fn look_up(
    db: &Db<'_>,
    inputs: &[Input],
    ours: &dyn Fn(&messenger_protocol::UserId) -> bool,
) -> Result<HashMap<usize, Looked>, postgres::Error> {
    let mut places = Vec::new();
    let (mut senders, mut ids, mut others) = (Vec::new(), Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for (place, input) in inputs.iter().enumerate() {
        let Input::Request { user, request, .. } = input else {
            continue;
        };
        match request {
            Request::Block { .. } | Request::Unblock { .. } => break,
            Request::Send {
                id,
                conv,
                reply_to: None,
                attachments,
                ..
            } if attachments.is_empty() && ours(user) => {
                let Some((a, b)) = conv.direct_members() else {
                    continue;
                };
                let other = if user == a {
                    b
                } else if user == b {
                    a
                } else {
                    continue;
                };
                if !seen.insert((user.as_str(), id.as_str())) {
                    continue;
                }
                places.push(i32::try_from(place).unwrap_or(i32::MAX));
                senders.push(user.as_str());
                ids.push(id.as_str());
                others.push(other.as_str());
            }
            _ => {}
        }
    }
    // Ids that come twice: the later ones look for themselves.
    let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
    for input in inputs {
        if let Input::Request { user, request, .. } = input {
            if let Some(id) = request.id() {
                *counts.entry((user.as_str(), id.as_str())).or_default() += 1;
            }
        }
    }
    if places.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = db.rows(
        // LATERAL ... LIMIT 1: one index probe per text. As EXISTS sublinks the
        // planner may hash the whole table instead (it did, per batch, as
        // `requests` grew).
        "SELECT t.n, r.found IS NOT NULL, b.found IS NOT NULL
         FROM unnest($1::int[], $2::text[], $3::text[], $4::text[]) AS t(n, s, i, o)
         LEFT JOIN LATERAL (SELECT 1 AS found FROM requests
                            WHERE sender = t.s AND req_id = t.i LIMIT 1) r ON TRUE
         LEFT JOIN LATERAL (SELECT 1 AS found FROM blocks
                            WHERE blocker = t.o AND blocked = t.s LIMIT 1) b ON TRUE",
        &[&places, &senders, &ids, &others],
    )?;
    let mut looked = HashMap::with_capacity(rows.len());
    for row in &rows {
        let place: i32 = row.try_get(0)?;
        let Ok(place) = usize::try_from(place) else {
            continue;
        };
        if let Some(Input::Request { user, request, .. }) = inputs.get(place) {
            let once = request
                .id()
                .is_some_and(|id| counts.get(&(user.as_str(), id.as_str())) == Some(&1));
            if !once {
                continue;
            }
        }
        looked.insert(
            place,
            Looked {
                repeat: row.try_get(1)?,
                blocked: row.try_get(2)?,
            },
        );
    }
    Ok(looked)
}

fn effects(effects: Vec<Effect>) -> Outcome {
    Outcome {
        effects,
        notifications: Vec::new(),
    }
}
