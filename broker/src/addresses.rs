//! Open connections per client address (`broker.max_connections_per_ip`).
//!
//! A connection counts from its CONNECT (the first packet; before it, a
//! connection is bounded by `connect_timeout_ms`) until it ends, against its
//! client's address: the TCP peer, or behind the WebSocket front the client the
//! front carries. IPv6 addresses count per /64, as in the sign-in throttle. The
//! service account (the bridge) is not counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use messenger_accounts::throttle::address_key;

/// Open connections per address, bounded by `max` (0: no bound).
pub(crate) struct Addresses {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Counts one connection against its address until dropped.
pub(crate) struct AddressGuard {
    addresses: Arc<Addresses>,
    key: IpAddr,
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let mut open = self.addresses.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl Addresses {
    /// At most `max` connections per address; 0 turns the bound off.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::default(),
        }
    }

    /// Counts a new connection from `addr`, or `Err(open)` when the address has
    /// `max` open already. With the bound off nothing is counted (`Ok(None)`).
    pub(crate) fn open(self: &Arc<Self>, addr: IpAddr) -> Result<Option<AddressGuard>, usize> {
        if self.max == 0 {
            return Ok(None);
        }
        let key = address_key(addr);
        let mut open = self.lock();
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return Err(*n);
        }
        *n += 1;
        Ok(Some(AddressGuard {
            addresses: self.clone(),
            key,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_per_address_until_one_closes() {
        let addresses = Arc::new(Addresses::new(2));
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = addresses.open(a).unwrap();
        let _second = addresses.open(a).unwrap();
        assert_eq!(addresses.open(a).err(), Some(2));
        assert!(addresses.open(b).is_ok(), "per address");
        drop(first);
        assert!(addresses.open(a).is_ok(), "a place came free");
        assert!(Arc::new(Addresses::new(0)).open(a).unwrap().is_none());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let addresses = Arc::new(Addresses::new(1));
        let _one = addresses.open("2001:db8::1".parse().unwrap()).unwrap();
        assert!(addresses.open("2001:db8::2".parse().unwrap()).is_err());
        assert!(addresses.open("2001:db8:0:1::1".parse().unwrap()).is_ok());
    }
}
