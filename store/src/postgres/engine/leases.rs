//! Slot leases: which users this bridge handles while several share the
//! database (see `crate::slots`).
//!
//! Every [`RENEW_EVERY`] each bridge, in one transaction: marks itself alive,
//! renews the leases it holds, and evens out: with `n` bridges alive each
//! holds about `64 / n` slots, taking free or expired ones and giving back
//! the ones over its share. Leases run on the database's clock. A batch reads
//! the slots it holds at its start under a share lock (see [`held`]), so a slot
//! cannot change hands while a batch that handles its users is open; a bridge
//! that lost a slot (it paused past its lease) then passes over those users.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::Client;
use tracing::info;

use super::db::Db;
use crate::slots::{Ownership, SLOTS};

/// How long a lease lasts unless renewed: how long a dead bridge's users wait
/// for another bridge.
pub(crate) const LEASE: Duration = Duration::from_secs(3);

/// How often a bridge renews its leases and evens out the slots.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);

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

/// The lease rounds of one bridge.
pub(super) struct Leases {
    sharing: Sharing,
    last_round: Option<Instant>,
}

impl Leases {
    pub(super) fn new(sharing: Sharing) -> Self {
        Self {
            sharing,
            last_round: None,
        }
    }

    /// This bridge's instance.
    pub(super) fn instance(&self) -> &str {
        &self.sharing.instance
    }

    /// Whether a round is due.
    pub(super) fn due(&self) -> bool {
        self.last_round
            .is_none_or(|last| last.elapsed() >= RENEW_EVERY)
    }

    /// One round: alive, renew, even out. Records the slots held.
    pub(super) fn round(&mut self, client: &mut Client) -> Result<(), postgres::Error> {
        self.last_round = Some(Instant::now());
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
        let slots = tx.query(
            "SELECT slot FROM bridge_slots WHERE owner = $1",
            &[&me],
        )?;
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

/// The slots this bridge holds a live lease on, locked (shared) until the
/// batch's transaction ends, so that none changes hands under the batch.
pub(super) fn held(db: &Db<'_>, instance: &str) -> Result<u64, postgres::Error> {
    let rows = db.rows(
        concat!(
            "SELECT slot FROM bridge_slots WHERE owner = $1 AND lease_until_ms > ",
            db_now!(),
            " FOR SHARE"
        ),
        &[&instance],
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
