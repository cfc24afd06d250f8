//! Failed password sign-ins cost time: records of failures per user and per
//! source address, and a lockout window that doubles with each further failure.
//!
//! After `free` failures for a key (a user id, or a source address), every
//! further password attempt for that key within the key's window is refused at
//! once, without a password check; each failure past the free ones doubles the
//! next window, up to a maximum. A successful sign-in clears the user's record
//! (not the address's: one valid account must not reset an address that guesses
//! others' passwords). Both maps are bounded: a record is forgotten once it has
//! been quiet for `FORGET_AFTER_WINDOWS` (10) maximum windows, and a full map drops
//! its oldest record.
//!
//! A user's lockout would also shut the real user out, so it spares the
//! addresses the user signed in from successfully (with the password or a
//! device token) in the last `TRUST_FOR` (30 days): guessing one user's password from
//! many addresses costs the guesser time, while the user, at an address they
//! used before, still gets their password checked (that address's own record
//! still applies). Elsewhere the lockout lasts at most `max_backoff`. At most
//! `MAX_RECORDS` (65,536) such pairs are kept; a full map forgets the oldest.
//!
//! Every method takes the current instant, so tests drive the clock.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most records kept per map (users, addresses).
const MAX_RECORDS: usize = 65_536;

/// How long a successful sign-in keeps its (user, address) exempt from the user's lockout.
const TRUST_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// A record is forgotten this many maximum windows after its last failure.
const FORGET_AFTER_WINDOWS: u32 = 10;

/// How failures are counted and punished.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures of one user's password before its attempts are throttled.
    pub free_per_user: u32,
    /// Failures from one source address before its attempts are throttled.
    pub free_per_address: u32,
    /// The first window; it doubles with each failure after it, up to `max_backoff`.
    pub first_backoff: Duration,
    /// The longest window.
    pub max_backoff: Duration,
}

/// The failures of one key.
#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
    /// Attempts before this instant are refused unchecked.
    blocked_until: Option<Instant>,
}

/// The records of one kind of key, bounded by [`MAX_RECORDS`].
struct Records<K> {
    map: HashMap<K, Record>,
    cap: usize,
}

impl<K: Hash + Eq + Clone> Records<K> {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            cap,
        }
    }

    fn blocked<Q: Hash + Eq + ?Sized>(&self, key: &Q, now: Instant) -> bool
    where
        K: Borrow<Q>,
    {
        self.map
            .get(key)
            .and_then(|r| r.blocked_until)
            .is_some_and(|until| now < until)
    }

    fn fail(&mut self, key: K, now: Instant, free: u32, policy: &Policy) {
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            self.make_room(now, policy);
        }
        let record = self.map.entry(key).or_insert(Record {
            failures: 0,
            last_failure: now,
            blocked_until: None,
        });
        record.failures = record.failures.saturating_add(1);
        record.last_failure = now;
        if record.failures >= free {
            let doublings = (record.failures - free).min(31);
            let window = policy
                .first_backoff
                .saturating_mul(1 << doublings)
                .min(policy.max_backoff);
            record.blocked_until = Some(now + window);
        }
    }

    fn clear<Q: Hash + Eq + ?Sized>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
    {
        self.map.remove(key);
    }

    /// Forgets quiet records; if none is, the one with the oldest failure.
    fn make_room(&mut self, now: Instant, policy: &Policy) {
        let forget_after = policy.max_backoff.saturating_mul(FORGET_AFTER_WINDOWS);
        self.map.retain(|_, r| {
            now.saturating_duration_since(r.last_failure) < forget_after
                || r.blocked_until.is_some_and(|until| now < until)
        });
        if self.map.len() >= self.cap {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, r)| r.last_failure)
                .map(|(k, _)| k.clone());
            if let Some(key) = oldest {
                self.map.remove(&key);
            }
        }
    }
}

/// The key of a source address: IPv6 clients usually hold a whole /64, so
/// their addresses count together.
pub fn address_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Failed password sign-ins per user and per source address.
pub struct Throttle {
    policy: Policy,
    users: Mutex<Records<String>>,
    addresses: Mutex<Records<IpAddr>>,
    /// (user, address key) -> last successful sign-in from there.
    trusted: Mutex<HashMap<(String, IpAddr), Instant>>,
    /// Most entries of `trusted`.
    cap: usize,
}

impl Throttle {
    /// Empty records, bounded by the default capacity.
    pub fn new(policy: Policy) -> Self {
        Self::with_capacity(policy, MAX_RECORDS)
    }

    fn with_capacity(policy: Policy, cap: usize) -> Self {
        Self {
            policy,
            users: Mutex::new(Records::new(cap)),
            addresses: Mutex::new(Records::new(cap)),
            trusted: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// Whether a password attempt for `user` from `addr` may be checked now;
    /// `false`: refuse it unchecked.
    pub fn admits(&self, user: &str, addr: Option<IpAddr>, now: Instant) -> bool {
        if lock(&self.users).blocked(user, now) && !addr.is_some_and(|a| self.trusts(user, a, now))
        {
            return false;
        }
        !addr.is_some_and(|a| lock(&self.addresses).blocked(&address_key(a), now))
    }

    /// Whether `user` signed in successfully from `addr` within [`TRUST_FOR`].
    fn trusts(&self, user: &str, addr: IpAddr, now: Instant) -> bool {
        lock(&self.trusted)
            .get(&(user.to_owned(), address_key(addr)))
            .is_some_and(|since| now.saturating_duration_since(*since) < TRUST_FOR)
    }

    /// Records a successful sign-in of `user` from `addr` (password or token): that
    /// address is spared the user's lockout for `TRUST_FOR` (30 days).
    pub fn trust(&self, user: &str, addr: IpAddr, now: Instant) {
        let mut trusted = lock(&self.trusted);
        let key = (user.to_owned(), address_key(addr));
        if !trusted.contains_key(&key) && trusted.len() >= self.cap {
            trusted.retain(|_, since| now.saturating_duration_since(*since) < TRUST_FOR);
            if trusted.len() >= self.cap {
                let oldest = trusted
                    .iter()
                    .min_by_key(|(_, since)| **since)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    trusted.remove(&oldest);
                }
            }
        }
        trusted.insert(key, now);
    }

    /// Records a failed password attempt: against `user` (when it names an
    /// account) and against `addr`.
    pub fn failed(&self, user: Option<&str>, addr: Option<IpAddr>, now: Instant) {
        if let Some(user) = user {
            lock(&self.users).fail(
                user.to_owned(),
                now,
                self.policy.free_per_user,
                &self.policy,
            );
        }
        if let Some(addr) = addr {
            lock(&self.addresses).fail(
                address_key(addr),
                now,
                self.policy.free_per_address,
                &self.policy,
            );
        }
    }

    /// Forgets `user`'s failures after a successful sign-in.
    pub fn succeeded(&self, user: &str) {
        lock(&self.users).clear(user);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        free_per_user: 3,
        free_per_address: 5,
        first_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(8),
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn free_failures_then_a_doubling_window() {
        let t = Throttle::new(POLICY);
        let t0 = Instant::now();
        for _ in 0..2 {
            t.failed(Some("alice"), None, t0);
            assert!(t.admits("alice", None, t0));
        }
        t.failed(Some("alice"), None, t0);
        assert!(!t.admits("alice", None, t0));
        assert!(!t.admits("alice", None, t0 + Duration::from_millis(999)));
        assert!(t.admits("alice", None, t0 + secs(1)));
        // Each further failure doubles the window: 2, 4, 8, then capped at 8 s.
        let mut now = t0 + secs(1);
        for window in [2, 4, 8, 8] {
            t.failed(Some("alice"), None, now);
            assert!(!t.admits("alice", None, now + secs(window) - Duration::from_millis(1)));
            now += secs(window);
            assert!(t.admits("alice", None, now), "window {window}");
        }
        assert!(t.admits("bob", None, t0), "other users are not affected");
    }

    #[test]
    fn success_clears_the_user_but_not_the_address() {
        let t = Throttle::new(POLICY);
        let ip: IpAddr = [192, 0, 2, 7].into();
        let now = Instant::now();
        for _ in 0..3 {
            t.failed(Some("alice"), Some(ip), now);
        }
        assert!(!t.admits("alice", None, now));
        t.succeeded("alice");
        assert!(t.admits("alice", None, now));
        t.failed(Some("alice"), Some(ip), now);
        assert!(t.admits("alice", None, now), "counting starts over");
        // The address has 4 failures; one more (any user) blocks it for everyone.
        t.failed(None, Some(ip), now);
        assert!(!t.admits("bob", Some(ip), now));
        t.succeeded("bob");
        assert!(!t.admits("carol", Some(ip), now));
        assert!(t.admits("carol", Some([192, 0, 2, 8].into()), now));
    }

    #[test]
    fn a_locked_user_still_gets_in_from_an_address_they_used() {
        let t = Throttle::new(POLICY);
        let home: IpAddr = [198, 51, 100, 7].into();
        let now = Instant::now();
        t.trust("alice", home, now);
        // Guesses from many addresses lock alice's password sign-ins ...
        for i in 0..3u8 {
            t.failed(Some("alice"), Some([203, 0, 113, i].into()), now);
        }
        assert!(!t.admits("alice", Some([203, 0, 113, 9].into()), now));
        assert!(!t.admits("alice", None, now));
        // ... but not from her own address, nor for long elsewhere.
        assert!(t.admits("alice", Some(home), now));
        assert!(t.admits("alice", Some([203, 0, 113, 9].into()), now + secs(1)));
        // Trust expires, and the address's own record still applies.
        let later = now + TRUST_FOR + Duration::from_millis(1);
        t.failed(Some("alice"), None, later);
        assert!(!t.admits("alice", Some(home), later));
        for _ in 0..5 {
            t.failed(None, Some(home), now);
        }
        assert!(!t.admits("alice", Some(home), now));
    }

    #[test]
    fn the_trusted_map_stays_bounded() {
        let t = Throttle::with_capacity(POLICY, 2);
        let now = Instant::now();
        for i in 0..5u8 {
            t.trust("alice", [192, 0, 2, i].into(), now + secs(u64::from(i)));
        }
        let trusted = lock(&t.trusted);
        assert_eq!(trusted.len(), 2);
        assert!(trusted.contains_key(&("alice".to_owned(), [192, 0, 2, 4].into())));
    }

    #[test]
    fn ipv6_addresses_count_per_64() {
        let t = Throttle::new(POLICY);
        let now = Instant::now();
        for i in 0..5u16 {
            let ip = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, i, i, i, i);
            t.failed(None, Some(IpAddr::V6(ip)), now);
        }
        let same_64 = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 9, 9, 9, 9);
        let other_64 = Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1);
        assert!(!t.admits("alice", Some(IpAddr::V6(same_64)), now));
        assert!(t.admits("alice", Some(IpAddr::V6(other_64)), now));
        let mapped = Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0207]);
        assert_eq!(
            address_key(IpAddr::V6(mapped)),
            IpAddr::from([192, 0, 2, 7])
        );
    }

    #[test]
    fn the_maps_stay_bounded() {
        let t = Throttle::with_capacity(POLICY, 4);
        let t0 = Instant::now();
        for i in 0..4 {
            t.failed(Some(&format!("u{i}")), None, t0 + secs(i));
        }
        // Full, nothing quiet yet: the oldest record (u0) goes.
        t.failed(Some("u4"), None, t0 + secs(5));
        let users = lock(&t.users);
        assert_eq!(users.map.len(), 4);
        assert!(!users.map.contains_key("u0"));
        drop(users);
        // Long after, every quiet record goes at the next insertion.
        let later = t0 + secs(5) + POLICY.max_backoff * FORGET_AFTER_WINDOWS;
        for i in 0..3 {
            t.failed(Some("x"), None, later);
            t.failed(Some(&format!("y{i}")), None, later);
        }
        let users = lock(&t.users);
        assert!(users.map.len() <= 4);
        assert!(users.map.contains_key("x"));
    }
}
