//! Everything that arrives on the session's topics: inbox events (applied in
//! `useq` order), replies (routed to their requests by id), sync pages and
//! presence statuses.

use std::sync::atomic::Ordering;

use messenger_protocol::topics::Topic;
use messenger_protocol::wire::{self, ReceiptStatus, Status};
use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, warn};

use super::Session;
use crate::error::ClientError;
use crate::event::ClientEvent;
use crate::inbox::Verdict;
use crate::requests::{Pending, Waiter};

/// The parts of a reply read before its type is known.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
}

/// The `sync` reply, its events left undecoded so that one unreadable event
/// (a newer bridge's type) does not lose the page.
#[derive(Deserialize)]
struct SyncReply {
    events: Vec<Value>,
    #[serde(default)]
    next: u64,
    #[serde(default)]
    more: bool,
}

impl Session {
    /// Routes a message from the broker by its topic.
    pub(super) async fn on_publish(&mut self, topic: &str, payload: &[u8]) {
        if topic == self.inbox_topic {
            self.on_inbox(payload).await;
        } else if topic == self.dev_topic {
            self.on_reply(payload).await;
        } else if let Some(Topic::Status(_)) = Topic::parse(topic) {
            if payload.is_empty() {
                return;
            }
            match serde_json::from_slice::<Status>(payload) {
                Ok(status) => self.emit(ClientEvent::Status(status)),
                Err(err) => warn!(topic, cause = %err, "undecodable status"),
            }
        } else {
            debug!(topic, "message on an unexpected topic");
        }
    }

    async fn on_inbox(&mut self, payload: &[u8]) {
        let value: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(err) => {
                warn!(cause = %err, "undecodable inbox payload");
                return;
            }
        };
        let Some(useq) = value.get("useq").and_then(Value::as_u64) else {
            // Typing indicators: never stored, no order to keep.
            self.apply(value);
            return;
        };
        match self.inbox.live(useq) {
            Verdict::Apply => self.apply(value),
            Verdict::Repeat => debug!(useq, "repeated inbox event dropped"),
            Verdict::Gap => {
                debug!(useq, cursor = self.inbox.cursor(), "inbox gap; syncing");
                if let Some(after) = self.inbox.start_sync() {
                    self.send_sync(after).await;
                }
            }
        }
    }

    /// Hands an inbox event (already judged) to the app and notes its receipt.
    fn apply(&mut self, value: Value) {
        match serde_json::from_value::<wire::Event>(value) {
            Ok(event) => match ClientEvent::from_wire(event) {
                Some(event) => {
                    if let ClientEvent::Message(m) = &event {
                        if m.from != self.user
                            && self.receipts.note(&m.conv, ReceiptStatus::Delivered, m.seq)
                        {
                            self.arm_flush();
                        }
                    }
                    self.emit(event);
                }
                None => debug!("reply type in the inbox ignored"),
            },
            Err(err) => warn!(cause = %err, "skipping an inbox event this client cannot read"),
        }
        self.cursor.store(self.inbox.cursor(), Ordering::Release);
    }

    async fn on_reply(&mut self, payload: &[u8]) {
        let envelope: Envelope = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(err) => {
                warn!(cause = %err, "undecodable reply");
                return;
            }
        };
        let Some(id) = envelope.id else {
            warn!(reply = %String::from_utf8_lossy(payload), "error reply without a request id");
            return;
        };
        if envelope.kind == "sync" {
            self.on_sync_reply(&id, payload).await;
            return;
        }
        let Some(pending) = self.requests.take(&id) else {
            debug!(id, "reply to no pending request");
            return;
        };
        let parsed = serde_json::from_slice::<wire::Event>(payload);
        match pending.waiter {
            Waiter::Caller(reply) => {
                let result = match parsed {
                    Ok(wire::Event::Error {
                        code,
                        message,
                        retry_after_ms,
                        ..
                    }) => Err(ClientError::Server {
                        code,
                        message,
                        retry_after: retry_after_ms.map(std::time::Duration::from_millis),
                    }),
                    Ok(event) => Ok(event),
                    Err(err) => Err(ClientError::Decode(err.to_string())),
                };
                let _ = reply.send(result);
            }
            Waiter::Token => match parsed {
                Ok(wire::Event::Token { token, .. }) => {
                    debug!("device token issued");
                    let _ = self.tokens.send(Some(token));
                }
                other => {
                    warn!(reply = ?other, "no device token; reconnects keep using the password");
                    self.want_token = false;
                }
            },
            Waiter::Sync { after } => {
                warn!(after, reply = ?parsed, "sync failed; retrying shortly");
                self.inbox.sync_failed();
            }
        }
    }

    async fn on_sync_reply(&mut self, id: &str, payload: &[u8]) {
        let page = self.requests.take(id);
        let reply: SyncReply = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(err) => {
                warn!(cause = %err, "undecodable sync reply");
                if let Some(Pending {
                    waiter: Waiter::Sync { .. },
                    ..
                }) = page
                {
                    self.inbox.sync_failed();
                }
                return;
            }
        };
        // Replies to an earlier sync (before a reconnect) are applied too: the rules
        // make that safe, and it saves waiting for the new one.
        for value in reply.events {
            let Some(useq) = value.get("useq").and_then(Value::as_u64) else {
                warn!("sync event without useq skipped");
                continue;
            };
            if self.inbox.synced(useq) {
                self.apply(value);
            }
        }
        match page {
            Some(Pending {
                waiter: Waiter::Sync { after },
                ..
            }) => {
                if let Some(after) = self.inbox.page_done(after, reply.more, reply.next) {
                    self.send_sync(after).await;
                }
            }
            Some(Pending {
                waiter: Waiter::Caller(caller),
                ..
            }) => {
                // The app's own `sync` through `Client::call`: it gets the page as well.
                let parsed = serde_json::from_slice::<wire::Event>(payload)
                    .map_err(|err| ClientError::Decode(err.to_string()));
                let _ = caller.send(parsed);
            }
            Some(other) => {
                // Not a sync request after all: put it back for its real reply.
                self.requests.insert(id.to_owned(), other);
            }
            None => {}
        }
    }
}
