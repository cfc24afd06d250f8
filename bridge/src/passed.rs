//! What the intake passed over: the requests and presence changes of users
//! another bridge handles (several bridges on one database), kept for
//! [`HANDOVER_WINDOW`] so that a bridge taking their slot over handles those
//! the old holder did not, before anything newer of those users.
//!
//! Every bridge reads every request. When a slot changes hands (a bridge
//! joins, stops or dies), a request can reach the old holder after it stopped
//! handling the slot and the new holder before it took it; without this, both
//! would acknowledge it to the broker and neither would store it, and the
//! device's retry could land after a later request of the same conversation.
//! Kept work of a gained slot is handed to the writer first, in the order it
//! came; what the old holder had stored meanwhile is answered as a repeat (the
//! request id), a presence change it had applied changes nothing. `token`
//! requests are not handed on: each issues a new token, so one the old holder
//! answered must not be answered twice.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use messenger_store::slots::{slot_of, HANDOVER_WINDOW};
use messenger_store::Input;
use serde::Deserialize;

use crate::writer::Work;

/// The most payload bytes kept; past it the oldest go (the device's retry
/// still completes them).
const MAX_BYTES: usize = 16 << 20;

/// Work of other bridges' users, oldest first, and the slots held when last looked.
pub(crate) struct Passed {
    kept: VecDeque<Kept>,
    /// Payload bytes in `kept`.
    bytes: usize,
    /// The slots held when [`Passed::gained`] last looked, one bit each.
    held: u64,
}

/// One passed-over piece of work.
struct Kept {
    at: Instant,
    slot: u32,
    work: Work,
}

impl Kept {
    fn bytes(&self) -> usize {
        match &self.work {
            Work::Request { payload, .. } => payload.len(),
            _ => 0,
        }
    }
}

/// The `type` of a request, all that deciding whether to hand it on needs.
#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
}

impl Passed {
    /// Nothing kept; `held` is the slots held now.
    pub(crate) fn new(held: u64) -> Self {
        Self {
            kept: VecDeque::new(),
            bytes: 0,
            held,
        }
    }

    /// Keeps `work` (a request or presence change of a user this bridge does
    /// not handle), received at `now`; anything else is not kept.
    pub(crate) fn keep(&mut self, work: Work, now: Instant) {
        let slot = match &work {
            Work::Request { user, .. } | Work::Store(Input::Presence { user, .. }) => slot_of(user),
            _ => return,
        };
        // A payload is a view of the MQTT client's read buffer: kept as is, it
        // would hold that whole buffer for the window. Its own copy holds itself.
        let work = match work {
            Work::Request {
                user,
                device,
                payload,
            } => Work::Request {
                user,
                device,
                payload: Bytes::copy_from_slice(&payload),
            },
            work => work,
        };
        let kept = Kept {
            at: now,
            slot,
            work,
        };
        self.bytes += kept.bytes();
        self.kept.push_back(kept);
        self.expire(now);
    }

    /// The kept work of the slots gained since the last look (`held` is the
    /// slots held now), oldest first; it is no longer kept.
    pub(crate) fn gained(&mut self, held: u64, now: Instant) -> Vec<Work> {
        let gained = held & !self.held;
        self.held = held;
        self.expire(now);
        if gained == 0 || self.kept.is_empty() {
            return Vec::new();
        }
        let mut handed = Vec::new();
        let mut rest = VecDeque::with_capacity(self.kept.len());
        for kept in self.kept.drain(..) {
            if gained & (1 << kept.slot) == 0 {
                rest.push_back(kept);
                continue;
            }
            self.bytes -= kept.bytes();
            if handed_on(&kept.work) {
                handed.push(kept.work);
            }
        }
        self.kept = rest;
        handed
    }

    /// Drops what is older than [`HANDOVER_WINDOW`], and the oldest past [`MAX_BYTES`].
    fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.kept.front() {
            let old = now.saturating_duration_since(oldest.at) > HANDOVER_WINDOW;
            if !old && self.bytes <= MAX_BYTES {
                break;
            }
            self.bytes -= oldest.bytes();
            self.kept.pop_front();
        }
    }
}

/// Whether kept work is handed to the writer after a handover: all but `token`
/// requests (a payload that is not JSON is handed on, to get its error reply).
fn handed_on(work: &Work) -> bool {
    match work {
        Work::Request { payload, .. } => serde_json::from_slice::<Kind<'_>>(payload)
            .map_or(true, |request| request.kind != "token"),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use messenger_protocol::{DeviceId, UserId};

    use super::*;

    fn request(user: &str, body: &str) -> Work {
        Work::Request {
            user: UserId::parse(user).expect("user"),
            device: DeviceId::parse("phone").expect("device"),
            payload: Bytes::from(body.to_owned()),
        }
    }

    fn bodies(work: &[Work]) -> Vec<String> {
        work.iter()
            .map(|w| match w {
                Work::Request { payload, .. } => String::from_utf8_lossy(payload).into_owned(),
                Work::Store(Input::Presence { online, .. }) => format!("presence {online}"),
                _ => "other".to_owned(),
            })
            .collect()
    }

    fn bit(user: &str) -> u64 {
        1 << slot_of(&UserId::parse(user).expect("user"))
    }

    #[test]
    fn a_gained_slot_hands_on_its_work_in_order_once() {
        let (ann, ben) = ("alice", "bob");
        assert_ne!(bit(ann), bit(ben), "two slots");
        let t0 = Instant::now();
        let mut passed = Passed::new(0);
        passed.keep(request(ann, r#"{"type":"send","id":"1"}"#), t0);
        passed.keep(request(ben, r#"{"type":"send","id":"b"}"#), t0);
        passed.keep(request(ann, r#"{"type":"token","id":"t"}"#), t0);
        passed.keep(
            Work::Store(Input::Presence {
                user: UserId::parse(ann).expect("user"),
                device: DeviceId::parse("phone").expect("device"),
                online: true,
            }),
            t0,
        );
        passed.keep(request(ann, "not json"), t0);
        passed.keep(request(ann, r#"{"type":"send","id":"2"}"#), t0);
        // Nothing gained: nothing handed on.
        assert!(passed.gained(0, t0).is_empty());
        let handed = passed.gained(bit(ann), t0 + Duration::from_secs(1));
        assert_eq!(
            bodies(&handed),
            [
                r#"{"type":"send","id":"1"}"#,
                "presence true",
                "not json",
                r#"{"type":"send","id":"2"}"#,
            ]
        );
        // Handed on once; the other slot's work stays until its slot is gained.
        assert!(passed.gained(bit(ann), t0).is_empty());
        assert!(passed.gained(0, t0).is_empty());
        let handed = passed.gained(bit(ben), t0 + Duration::from_secs(2));
        assert_eq!(bodies(&handed), [r#"{"type":"send","id":"b"}"#]);
        assert_eq!(passed.bytes, 0);
    }

    #[test]
    fn work_older_than_the_window_or_past_the_bound_is_dropped() {
        let t0 = Instant::now();
        let mut passed = Passed::new(0);
        passed.keep(request("alice", r#"{"type":"send","id":"old"}"#), t0);
        let later = t0 + HANDOVER_WINDOW + Duration::from_millis(1);
        passed.keep(request("alice", r#"{"type":"send","id":"new"}"#), later);
        let handed = passed.gained(bit("alice"), later);
        assert_eq!(bodies(&handed), [r#"{"type":"send","id":"new"}"#]);

        let big = "x".repeat(MAX_BYTES / 2 + 1);
        for _ in 0..3 {
            passed.keep(request("alice", &big), later);
        }
        assert_eq!(passed.kept.len(), 1, "the oldest go past the bound");
        assert!(passed.bytes <= MAX_BYTES);
    }
}
