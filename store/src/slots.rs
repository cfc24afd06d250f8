//! Which users this bridge handles, when several bridges share one database.
//!
//! Users are spread over [`SLOTS`] slots by a stable hash of their id. On
//! PostgreSQL, each slot is leased to one bridge at a time (`bridge_slots`,
//! see `postgres::engine::leases`); a bridge handles the requests and presence
//! of the users in its slots and passes over the rest, which the other bridges
//! handle (every bridge sees every request: a plain subscription, which keeps
//! a device's requests in order, as a shared subscription would not). On
//! SQLite there is one bridge, which owns every slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use messenger_protocol::UserId;

/// How many slots users are spread over (one bit each in [`Ownership`]).
pub const SLOTS: u32 = 64;

/// How long a slot's lease lasts unless renewed: how long a dead bridge's
/// users wait for another bridge.
pub const LEASE: Duration = Duration::from_secs(5);

/// How often a bridge renews its leases and evens out the slots.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);

/// How long a bridge keeps the requests it passed over (other bridges' users),
/// to handle them itself if it takes their slot over: those that reached the
/// old holder after it stopped handling the slot (it died: at most a lease
/// earlier; it gave the slot back: a lease round earlier) are then handled
/// before anything newer of those users, in the order they came. A lease, two
/// rounds and a second of slack.
pub const HANDOVER_WINDOW: Duration = Duration::from_secs(7);

/// The slot of `user`: FNV-1a over the id's bytes, the same on every bridge
/// and every build.
pub fn slot_of(user: &UserId) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in user.as_str().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    u32::try_from(hash % u64::from(SLOTS)).unwrap_or(0)
}

/// Whether `user`'s slot is among `slots` (one bit each, as [`Ownership::mask`]).
pub fn holds(slots: u64, user: &UserId) -> bool {
    slots & (1 << slot_of(user)) != 0
}

/// The slots this bridge holds, as of its last lease round: what its intake
/// takes on (the store checks each batch against the leases themselves).
#[derive(Debug)]
pub struct Ownership(AtomicU64);

impl Ownership {
    /// Every slot (one bridge: SQLite, or PostgreSQL before it knows better).
    pub fn all() -> Self {
        Self(AtomicU64::new(u64::MAX))
    }

    /// No slot yet.
    pub fn none() -> Self {
        Self(AtomicU64::new(0))
    }

    /// The slots held, one bit each.
    pub fn mask(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Holds no slot (until a lease round says which).
    pub fn set_none(&self) {
        self.set(0);
    }

    /// Records the slots held after a lease round.
    pub(crate) fn set(&self, mask: u64) {
        self.0.store(mask, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_spread() {
        let slot = |name: &str| slot_of(&UserId::parse(name).expect("user id"));
        // Fixed values: a change would move users between bridges mid-upgrade.
        assert_eq!(slot("alice"), 7);
        let used: std::collections::HashSet<u32> =
            (0..1000).map(|i| slot(&format!("user{i}"))).collect();
        assert_eq!(used.len(), SLOTS as usize, "1000 users fill every slot");
        let owned = Ownership::none();
        owned.set(1 << slot("alice"));
        assert!(holds(
            owned.mask(),
            &UserId::parse("alice").expect("user id")
        ));
    }
}
