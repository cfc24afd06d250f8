//! What handling an input produces: effects to carry out once the transaction
//! is durable, and the push notifications it calls for. Addressed to users and
//! to the requesting device, never to a transport: the bridge picks topics.

use messenger_protocol::wire::{Event, Platform, Status};
use messenger_protocol::{ConvId, DeviceId, UserId};
use tracing::error;

/// A JSON payload, serialized once when the effect is made.
pub type Payload = Vec<u8>;

/// One thing to tell someone once the batch that produced it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The reply to the device that made the request.
    Reply(Payload),
    /// A stored event, for every device of `user` (their inbox).
    Event {
        /// The recipient.
        user: UserId,
        /// The event.
        payload: Payload,
    },
    /// An event that is not stored (typing), for the devices of `user` that are
    /// connected now; losing it is harmless.
    Transient {
        /// The recipient.
        user: UserId,
        /// The event.
        payload: Payload,
    },
    /// A device's presence was refused (the user has the most devices allowed):
    /// whatever keeps device presence (a retained message) should forget it.
    Forget {
        /// Whose device.
        user: UserId,
        /// Which.
        device: DeviceId,
    },
    /// The user's aggregated presence changed: kept until the next change.
    Status {
        /// Whose.
        user: UserId,
        /// The [`Status`].
        payload: Payload,
    },
}

impl Effect {
    /// A reply carrying `event`.
    pub fn reply(event: &Event) -> Self {
        Self::Reply(encode(event))
    }

    /// A stored `event` for `user`.
    pub fn event(user: &UserId, event: &Event) -> Self {
        Self::Event {
            user: user.clone(),
            payload: encode(event),
        }
    }

    /// `user`'s new status.
    pub fn status(status: &Status) -> Self {
        Self::Status {
            user: status.user.clone(),
            payload: serde_json::to_vec(status).unwrap_or_default(),
        }
    }

    /// The serialized payload.
    pub fn payload(&self) -> &[u8] {
        match self {
            Self::Reply(payload)
            | Self::Event { payload, .. }
            | Self::Transient { payload, .. }
            | Self::Status { payload, .. } => payload,
            Self::Forget { .. } => &[],
        }
    }
}

/// Serializes an event; the protocol's own types always serialize.
pub(crate) fn encode(event: &Event) -> Payload {
    serde_json::to_vec(event).unwrap_or_else(|err| {
        error!(cause = %err, "cannot serialize an event");
        Vec::new()
    })
}

/// A notification to push to a user with no device online, computed in the
/// transaction that stored the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Who it is for.
    pub user: UserId,
    /// The conversation.
    pub conv: ConvId,
    /// The message's seq.
    pub seq: u64,
    /// The sender, or "group name: sender".
    pub title: String,
    /// A preview of the text, or "New message".
    pub body: String,
    /// The user's unread messages across conversations when the message was stored.
    pub badge: u64,
    /// Every push token of the user.
    pub targets: Vec<(Platform, String)>,
}

/// What handling one input produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// In order.
    pub effects: Vec<Effect>,
    /// Notifications to push.
    pub notifications: Vec<Notification>,
}
