//! Requests waiting for their reply, keyed by request id.
//!
//! Replies arrive on the device's `dev` topic and carry the request's id. A
//! request is published as soon as it is made while connected, or on the next
//! connection otherwise. Whether it is published again depends on its [`Retry`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use messenger_protocol::wire::{Event, RequestId};
use rand::RngCore;
use tokio::sync::oneshot;

use crate::error::ClientError;

/// How often an unanswered `send` (or internal `sync`) is published again while connected.
pub(crate) const RETRANSMIT_EVERY: Duration = Duration::from_secs(10);

/// A new random request id: 128 bits in hex, so it never repeats an earlier one
/// (the bridge answers a repeated `send` id with the earlier message's ack).
pub fn new_request_id() -> RequestId {
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    RequestId::parse(&hex).expect("32 hex characters are a valid request id")
}

/// Who waits for the reply.
#[derive(Debug)]
pub(crate) enum Waiter {
    /// A caller of the public API.
    Caller(oneshot::Sender<Result<Event, ClientError>>),
    /// The session's own sync, for the page requested with this `after`.
    Sync {
        /// The page's `after`.
        after: u64,
    },
    /// The session's own device-token request.
    Token,
}

/// When a request is published again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Never after its first publication (it is not idempotent).
    Never,
    /// After every reconnect (read-only requests: a repeat is harmless).
    OnReconnect,
    /// After every reconnect and every [`RETRANSMIT_EVERY`] while unanswered
    /// (`send`, whose id makes repeats safe, and the internal `sync`).
    Periodic,
}

/// A request waiting for its reply.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The encoded request, published as is every time.
    pub(crate) payload: Vec<u8>,
    /// Who gets the reply.
    pub(crate) waiter: Waiter,
    /// The retransmission policy.
    pub(crate) retry: Retry,
    /// When it was last published; `None` while it waits for a connection.
    pub(crate) sent_at: Option<Instant>,
}

/// The table of pending requests.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    pending: HashMap<String, Pending>,
}

impl Requests {
    /// Whether a request with this id waits.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.pending.contains_key(id)
    }

    /// Adds a request.
    pub(crate) fn insert(&mut self, id: String, pending: Pending) {
        self.pending.insert(id, pending);
    }

    /// Removes and returns the request a reply with this id answers.
    pub(crate) fn take(&mut self, id: &str) -> Option<Pending> {
        self.pending.remove(id)
    }

    /// Records that the request was just published.
    pub(crate) fn mark_sent(&mut self, id: &str, now: Instant) {
        if let Some(p) = self.pending.get_mut(id) {
            p.sent_at = Some(now);
        }
    }

    /// Whether a device-token request waits.
    pub(crate) fn has_token_request(&self) -> bool {
        self.pending
            .values()
            .any(|p| matches!(p.waiter, Waiter::Token))
    }

    /// Drops requests whose caller stopped waiting (dropped the future or timed out).
    pub(crate) fn prune(&mut self) -> usize {
        let before = self.pending.len();
        self.pending.retain(|_, p| match &p.waiter {
            Waiter::Caller(tx) => !tx.is_closed(),
            Waiter::Sync { .. } | Waiter::Token => true,
        });
        before - self.pending.len()
    }

    /// After a reconnect: drops the internal sync pages (a fresh sync replaces
    /// them) and returns the payloads to publish: every request not yet published,
    /// and every one whose [`Retry`] allows a repeat. All count as published `now`.
    pub(crate) fn on_reconnect(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.pending
            .retain(|_, p| !matches!(p.waiter, Waiter::Sync { .. }));
        let mut out = Vec::new();
        for p in self.pending.values_mut() {
            if p.sent_at.is_none() || p.retry != Retry::Never {
                p.sent_at = Some(now);
                out.push(p.payload.clone());
            }
        }
        out
    }

    /// While connected: the payloads of [`Retry::Periodic`] requests unanswered for
    /// `every` since they were last published. All count as published `now`.
    pub(crate) fn due(&mut self, now: Instant, every: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for p in self.pending.values_mut() {
            let due = match p.sent_at {
                Some(at) => p.retry == Retry::Periodic && now.duration_since(at) >= every,
                None => true,
            };
            if due {
                p.sent_at = Some(now);
                out.push(p.payload.clone());
            }
        }
        out
    }

    /// Drops every request (the session ends): each caller sees [`ClientError::Closed`].
    pub(crate) fn clear(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(payload: &str, retry: Retry, sent_at: Option<Instant>) -> Pending {
        Pending {
            payload: payload.as_bytes().to_vec(),
            waiter: Waiter::Token,
            retry,
            sent_at,
        }
    }

    #[test]
    fn ids_are_unique_and_valid() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
    }

    #[test]
    fn reconnect_republishes_by_policy_and_drops_old_syncs() {
        let t0 = Instant::now();
        let mut r = Requests::default();
        r.insert("send".into(), pending("s", Retry::Periodic, Some(t0)));
        r.insert("hist".into(), pending("h", Retry::OnReconnect, Some(t0)));
        r.insert("group".into(), pending("g", Retry::Never, Some(t0)));
        r.insert("queued".into(), pending("q", Retry::Never, None));
        r.insert(
            "sync".into(),
            Pending {
                payload: b"y".to_vec(),
                waiter: Waiter::Sync { after: 0 },
                retry: Retry::Periodic,
                sent_at: Some(t0),
            },
        );
        let mut out = r.on_reconnect(t0);
        out.sort();
        assert_eq!(out, vec![b"h".to_vec(), b"q".to_vec(), b"s".to_vec()]);
        assert!(!r.contains("sync"));
        assert!(r.contains("group"));
    }

    #[test]
    fn only_periodic_requests_come_due() {
        let t0 = Instant::now();
        let mut r = Requests::default();
        r.insert("send".into(), pending("s", Retry::Periodic, Some(t0)));
        r.insert("hist".into(), pending("h", Retry::OnReconnect, Some(t0)));
        assert!(r
            .due(t0 + Duration::from_secs(1), RETRANSMIT_EVERY)
            .is_empty());
        let later = t0 + RETRANSMIT_EVERY;
        assert_eq!(r.due(later, RETRANSMIT_EVERY), vec![b"s".to_vec()]);
        // Counted as published: not due again right away.
        assert!(r.due(later, RETRANSMIT_EVERY).is_empty());
        assert_eq!(
            r.due(later + RETRANSMIT_EVERY, RETRANSMIT_EVERY),
            vec![b"s".to_vec()]
        );
    }

    #[test]
    fn callers_that_gave_up_are_pruned() {
        let mut r = Requests::default();
        let (tx, rx) = oneshot::channel();
        r.insert(
            "a".into(),
            Pending {
                payload: vec![],
                waiter: Waiter::Caller(tx),
                retry: Retry::Periodic,
                sent_at: None,
            },
        );
        let (tx2, _rx2) = oneshot::channel();
        r.insert(
            "b".into(),
            Pending {
                payload: vec![],
                waiter: Waiter::Caller(tx2),
                retry: Retry::Periodic,
                sent_at: None,
            },
        );
        assert_eq!(r.prune(), 0);
        drop(rx);
        assert_eq!(r.prune(), 1);
        assert!(!r.contains("a"));
        assert!(r.contains("b"));
        assert!(r.take("b").is_some());
        assert!(r.take("b").is_none());
    }
}
