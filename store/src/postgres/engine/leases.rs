//! Slot leases: which users this bridge handles while several share the
//! database (see `crate::slots`).
//!
//! Leases are renewed on a thread of their own, on its own connection, so
//! that a long batch (a lock wait, a deadlock resolved) never lets them run out.
//! Every [`RENEW_EVERY`] each bridge, in one transaction: marks itself alive,
//! renews the leases it holds, and evens out: with `n` bridges alive each
//! holds about `64 / n` slots, taking free or expired ones and giving back
//! the ones over its share. Leases run on the database's clock. A batch reads
//! the slots it holds at its start under a key-share lock (see [`held`]), so a slot
//! cannot change hands while a batch that handles its users is open; a bridge
//! that lost a slot (it paused past its lease) then passes over those users.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::Client;
use tracing::{info, warn};

use super::Connector;
use crate::StoreError;

use super::db::Db;
use crate::slots::{Ownership, LEASE, RENEW_EVERY, SLOTS};

/// The database's clock, ms since the epoch.
macro_rules! db_now {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
    };
}

/// This bridge's part in sharing the database.
pub struct Sharing {
    /// The bridge instance (`bridge.instance`), unique among the bridges.
    pub instance: String,
    /// The slots held, for the bridge's intake.
    pub ownership: Arc<Ownership>,
}

/// Lease rounds commit without waiting for their WAL on disk: a round lost in
/// a crash of the database is a lease renewed less, and the batches never wait
/// behind the lease thread's flushes.
fn unsynced(client: &mut Client) -> Result<(), postgres::Error> {
    client.batch_execute("SET synchronous_commit = off")
}

/// The thread that renews this bridge's leases; stopping it gives them back.
pub(super) struct Leases {
    instance: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Leases {
    /// Takes this bridge's first share (on `client`, before any batch), then
    /// renews on a thread with a connection of its own from `connect`.
    pub(super) fn start(
        sharing: Sharing,
        mut client: Client,
        connect: Connector,
    ) -> Result<Self, StoreError> {
        let mut rounds = Rounds { sharing };
        unsynced(&mut client)?;
        rounds.round(&mut client)?;
        let instance = rounds.sharing.instance.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("slot-leases".into())
            .spawn({
                let stop = stop.clone();
                move || rounds.run(client, &connect, &stop)
            })
            .map_err(StoreError::Thread)?;
        Ok(Self {
            instance,
            stop,
            thread: Some(thread),
        })
    }

    /// This bridge's instance.
    pub(super) fn instance(&self) -> &str {
        &self.instance
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The lease rounds of one bridge.
struct Rounds {
    sharing: Sharing,
}

impl Rounds {
    /// Renews every [`RENEW_EVERY`] until `stop`, reconnecting when the
    /// connection breaks; then gives the slots back (the batches are over: the
    /// store is being dropped), so that the other bridges take them at once.
    fn run(&mut self, mut client: Client, connect: &Connector, stop: &AtomicBool) {
        let mut next = Instant::now() + RENEW_EVERY;
        while !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
            if Instant::now() < next {
                continue;
            }
            next = Instant::now() + RENEW_EVERY;
            if let Err(err) = self.round(&mut client) {
                warn!(cause = %err, "cannot renew this bridge's slot leases");
                if client.is_closed() {
                    match connect() {
                        Ok(mut new) => {
                            if let Err(err) = unsynced(&mut new) {
                                warn!(cause = %err, "cannot set up the lease connection");
                            }
                            client = new;
                        }
                        Err(cause) => warn!(%cause, "PostgreSQL is unreachable"),
                    }
                }
            }
        }
        let me = self.sharing.instance.as_str();
        let released = client.transaction().and_then(|mut tx| {
            tx.execute(
                "UPDATE bridge_slots SET owner = NULL, lease_until_ms = 0 WHERE owner = $1",
                &[&me],
            )?;
            tx.execute("DELETE FROM bridges WHERE instance = $1", &[&me])?;
            tx.commit()
        });
        if let Err(err) = released {
            warn!(cause = %err, "cannot give back this bridge's slots; they free up when their leases end");
        }
        self.sharing.ownership.set(0);
    }

    /// One round: alive, renew, even out. Records the slots held.
    fn round(&mut self, client: &mut Client) -> Result<(), postgres::Error> {
        let me = self.sharing.instance.as_str();
        let lease_ms = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
        let mut tx = client.transaction()?;
        tx.execute(
            concat!(
                "INSERT INTO bridges (instance, seen_ms) VALUES ($1, ",
                db_now!(),
                ") ON CONFLICT (instance) DO UPDATE SET seen_ms = EXCLUDED.seen_ms"
            ),
            &[&me],
        )?;
        let alive: i64 = tx
            .query_one(
                concat!(
                    "SELECT COUNT(*) FROM bridges WHERE seen_ms > ",
                    db_now!(),
                    " - $1"
                ),
                &[&lease_ms],
            )?
            .try_get(0)?;
        let share = i64::from(SLOTS).div_euclid(alive.max(1))
            + i64::from(i64::from(SLOTS).rem_euclid(alive.max(1)) != 0);
        let held: i64 = tx
            .query_one(
                concat!(
                    "WITH renewed AS (UPDATE bridge_slots SET lease_until_ms = ",
                    db_now!(),
                    " + $2 WHERE owner = $1 RETURNING slot) SELECT COUNT(*) FROM renewed"
                ),
                &[&me, &lease_ms],
            )?
            .try_get(0)?;
        if held < share {
            tx.execute(
                concat!(
                    "UPDATE bridge_slots SET owner = $1, lease_until_ms = ",
                    db_now!(),
                    " + $2 WHERE slot IN (SELECT slot FROM bridge_slots
                        WHERE owner IS NULL OR lease_until_ms < ",
                    db_now!(),
                    " ORDER BY slot LIMIT $3 FOR UPDATE SKIP LOCKED)"
                ),
                &[&me, &lease_ms, &(share - held)],
            )?;
        } else if held > share {
            tx.execute(
                "UPDATE bridge_slots SET owner = NULL, lease_until_ms = 0
                 WHERE slot IN (SELECT slot FROM bridge_slots WHERE owner = $1
                                ORDER BY slot DESC LIMIT $2)",
                &[&me, &(held - share)],
            )?;
        }
        let slots = tx.query("SELECT slot FROM bridge_slots WHERE owner = $1", &[&me])?;
        tx.commit()?;
        let mut mask = 0u64;
        for row in &slots {
            let slot: i32 = row.try_get(0)?;
            if (0..64).contains(&slot) {
                mask |= 1 << slot;
            }
        }
        if mask != self.sharing.ownership.mask() {
            info!(
                instance = me,
                slots = mask.count_ones(),
                bridges = alive,
                "this bridge's share of the users changed"
            );
        }
        self.sharing.ownership.set(mask);
        Ok(())
    }
}

/// Which of `slots` (those of a batch's users) this bridge holds a live lease
/// on, locked until the batch's
/// transaction ends so that none changes hands under the batch: `FOR KEY
/// SHARE` lets the lease thread renew them meanwhile (a plain `UPDATE`), and
/// stops another bridge taking them (it locks `FOR UPDATE SKIP LOCKED`).
pub(super) fn held(db: &Db<'_>, instance: &str, slots: &[i32]) -> Result<u64, postgres::Error> {
    if slots.is_empty() {
        return Ok(0);
    }
    let rows = db.rows(
        concat!(
            "SELECT slot FROM bridge_slots WHERE owner = $1 AND slot = ANY($2) AND lease_until_ms > ",
            db_now!(),
            " ORDER BY slot FOR KEY SHARE"
        ),
        &[&instance, &slots],
    )?;
    let mut mask = 0u64;
    for row in &rows {
        let slot: i32 = row.try_get(0)?;
        if (0..64).contains(&slot) {
            mask |= 1 << slot;
        }
    }
    Ok(mask)
}

/// How the slots stand: how many bridges hold slots, and how many slots no
/// bridge holds (for waiting until a set of bridges has shared the users out).
pub fn slot_spread(
    client: &mut impl postgres::GenericClient,
) -> Result<(i64, i64), postgres::Error> {
    let row = client.query_one(
        "SELECT COUNT(DISTINCT owner), COUNT(*) FILTER (WHERE owner IS NULL) FROM bridge_slots",
        &[],
    )?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}
