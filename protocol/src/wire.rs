//! The JSON payloads: requests from devices, replies and events from the bridge.
//!
//! Every payload is a JSON object with a `"type"` field; unknown fields are ignored.

use serde::{Deserialize, Serialize};

use crate::ids::{ConvId, UserId};

/// A device-chosen request id, 1 to 64 characters, echoed in the reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RequestId(String);

impl RequestId {
    /// Validates the length (1 to 64 characters).
    pub fn parse(s: &str) -> Result<Self, String> {
        let n = s.chars().count();
        if (1..=64).contains(&n) {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!("request id must be 1 to 64 characters, got {n}"))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cumulative receipt's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// Reached at least one of the user's devices.
    Delivered,
    /// Seen by the user.
    Read,
}

impl ReceiptStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Read => "read",
        }
    }
}

/// A push service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging.
    Fcm,
}

/// A request a device publishes on `chat/<user>/out/<device>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Send a message to a conversation.
    Send {
        /// Request id; a repeat with the same id stores nothing new.
        id: RequestId,
        /// Target conversation.
        conv: ConvId,
        /// The text.
        body: String,
    },
    /// A cumulative delivered/read receipt.
    Receipt {
        /// The conversation.
        conv: ConvId,
        /// Everything up to this seq.
        seq: u64,
        /// Delivered or read.
        status: ReceiptStatus,
    },
    /// Fetch inbox events after a user sequence number.
    Sync {
        /// Request id.
        id: RequestId,
        /// Return events with `useq` above this.
        after: u64,
        /// Page size.
        #[serde(default)]
        limit: Option<u32>,
    },
    /// A page of a conversation's history.
    History {
        /// Request id.
        id: RequestId,
        /// The conversation.
        conv: ConvId,
        /// Return events with `seq` below this; the newest page when absent.
        #[serde(default)]
        before: Option<u64>,
        /// Page size.
        #[serde(default)]
        limit: Option<u32>,
    },
    /// List the user's conversations.
    Conversations {
        /// Request id.
        id: RequestId,
    },
    /// Create a group (the creator becomes its admin).
    GroupCreate {
        /// Request id.
        id: RequestId,
        /// Group name.
        name: String,
        /// Initial members besides the creator.
        members: Vec<UserId>,
    },
    /// Add a member to a group.
    GroupAdd {
        /// Request id.
        id: RequestId,
        /// The group.
        conv: ConvId,
        /// Who to add.
        user: UserId,
    },
    /// Remove a member from a group (admins only).
    GroupRemove {
        /// Request id.
        id: RequestId,
        /// The group.
        conv: ConvId,
        /// Who to remove.
        user: UserId,
    },
    /// Leave a group.
    GroupLeave {
        /// Request id.
        id: RequestId,
        /// The group.
        conv: ConvId,
    },
    /// Register this device's push token.
    PushRegister {
        /// Request id.
        id: RequestId,
        /// Push service.
        platform: Platform,
        /// The token.
        token: String,
    },
    /// Drop this device's push token.
    PushUnregister {
        /// Request id.
        id: RequestId,
        /// Push service.
        platform: Platform,
        /// The token.
        token: String,
    },
    /// Mute a conversation's pushes.
    Mute {
        /// Request id.
        id: RequestId,
        /// The conversation.
        conv: ConvId,
        /// Until this ts; 0 unmutes; absent mutes for ever.
        #[serde(default)]
        until: Option<u64>,
    },
    /// A typing indicator, relayed at QoS 0, never stored.
    Typing {
        /// The conversation.
        conv: ConvId,
    },
    /// Ask for a device token: a cheap reconnect credential (extension, see docs/PROTOCOL.md).
    Token {
        /// Request id.
        id: RequestId,
    },
}

impl Request {
    /// The request's id, for the kinds that carry one.
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            Self::Send { id, .. }
            | Self::Sync { id, .. }
            | Self::History { id, .. }
            | Self::Conversations { id }
            | Self::GroupCreate { id, .. }
            | Self::GroupAdd { id, .. }
            | Self::GroupRemove { id, .. }
            | Self::GroupLeave { id, .. }
            | Self::PushRegister { id, .. }
            | Self::PushUnregister { id, .. }
            | Self::Mute { id, .. }
            | Self::Token { id } => Some(id),
            Self::Receipt { .. } | Self::Typing { .. } => None,
        }
    }
}

/// Error codes of the `error` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, wrong types, missing or invalid fields.
    BadRequest,
    /// The payload or body is over its limit.
    TooLarge,
    /// A named user does not exist.
    UnknownUser,
    /// The conversation does not exist.
    UnknownConversation,
    /// The sender is not a member of the conversation.
    NotMember,
    /// The sender may not do this.
    Forbidden,
    /// Too many requests.
    RateLimited,
    /// The server failed; retry later.
    Internal,
}

/// One item of the `conversations` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationItem {
    /// The conversation.
    pub conv: ConvId,
    /// Its name: the group's name, or the other user's id for a 1-1 chat.
    pub name: String,
    /// Current members.
    pub members: Vec<UserId>,
    /// Newest seq in the conversation.
    pub last_seq: u64,
    /// The user's read receipt.
    pub read_seq: u64,
    /// Messages from others above `read_seq`.
    pub unread: u64,
}

/// A reply (on `chat/<user>/dev/<device>`) or an event (on `chat/<user>/inbox`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A request succeeded.
    Ack {
        /// The request's id.
        id: RequestId,
        /// The conversation, for `send` and group requests.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conv: Option<ConvId>,
        /// The event's seq, for `send` and group requests.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// When it was stored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<u64>,
    },
    /// A request failed and changed nothing.
    Error {
        /// The request's id, null where none could be read.
        id: Option<String>,
        /// What kind of failure.
        code: ErrorCode,
        /// A human-readable explanation.
        message: String,
    },
    /// The reply to `sync`.
    Sync {
        /// The request's id.
        id: RequestId,
        /// Inbox events, ascending by `useq`.
        events: Vec<Event>,
        /// The cursor to continue from.
        next: u64,
        /// Whether more events follow.
        more: bool,
    },
    /// The reply to `history`.
    History {
        /// The request's id.
        id: RequestId,
        /// The conversation.
        conv: ConvId,
        /// `message` and `member` events, ascending by `seq`.
        events: Vec<Event>,
        /// Whether older events exist.
        more: bool,
    },
    /// The reply to `conversations`.
    Conversations {
        /// The request's id.
        id: RequestId,
        /// One per conversation.
        items: Vec<ConversationItem>,
    },
    /// The reply to `token`: a device token usable as the MQTT password.
    Token {
        /// The request's id.
        id: RequestId,
        /// The token.
        token: String,
    },
    /// A chat message.
    Message {
        /// The conversation.
        conv: ConvId,
        /// Its place in the conversation.
        seq: u64,
        /// When it was stored.
        ts: u64,
        /// The sender.
        from: UserId,
        /// The sender's device.
        device: String,
        /// The sender's request id.
        id: RequestId,
        /// The text.
        body: String,
        /// The recipient's inbox sequence number (absent in `history`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        useq: Option<u64>,
    },
    /// A delivered/read receipt.
    Receipt {
        /// The conversation.
        conv: ConvId,
        /// Whose receipt.
        user: UserId,
        /// Up to which seq.
        seq: u64,
        /// Delivered or read.
        status: ReceiptStatus,
        /// When it was stored.
        ts: u64,
        /// The recipient's inbox sequence number.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        useq: Option<u64>,
    },
    /// A group membership change.
    Member {
        /// The group.
        conv: ConvId,
        /// Its place in the conversation.
        seq: u64,
        /// When it was stored.
        ts: u64,
        /// `created`, `added`, `removed` or `left`.
        action: String,
        /// Who joined or went.
        user: UserId,
        /// Who did it.
        by: UserId,
        /// The group's name.
        name: String,
        /// The recipient's inbox sequence number (absent in `history`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        useq: Option<u64>,
    },
    /// Someone is typing (QoS 0, never stored).
    Typing {
        /// The conversation.
        conv: ConvId,
        /// Who is typing.
        user: UserId,
    },
}

impl Event {
    /// The inbox sequence number of a stored event.
    pub fn useq(&self) -> Option<u64> {
        match self {
            Self::Message { useq, .. } | Self::Receipt { useq, .. } | Self::Member { useq, .. } => {
                *useq
            }
            _ => None,
        }
    }
}

/// A user's aggregated presence, retained on `status/<user>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The user.
    pub user: UserId,
    /// Whether any device is online.
    pub online: bool,
    /// When the last device went offline (ms since the epoch); absent if never seen.
    pub last_seen: Option<u64>,
}

/// The presence payload a device publishes when connected.
pub const ONLINE: &str = "online";
/// The presence payload of a device's last will.
pub const OFFLINE: &str = "offline";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_send() {
        let r: Request =
            serde_json::from_str(r#"{"type":"send","id":"1","conv":"dm:a:b","body":"hi","x":1}"#)
                .unwrap();
        assert!(matches!(r, Request::Send { .. }));
        assert!(serde_json::from_str::<Request>(
            r#"{"type":"send","id":"1","conv":"dm:b:a","body":"hi"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Request>(
            r#"{"type":"send","id":"","conv":"dm:a:b","body":"hi"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Request>(
            r#"{"type":"send","id":"1","conv":"dm:a:b","body":5}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Request>(r#"{"type":"nope","id":"1"}"#).is_err());
    }

    #[test]
    fn ack_shape() {
        let ack = Event::Ack {
            id: RequestId::parse("x").unwrap(),
            conv: None,
            seq: None,
            ts: None,
        };
        assert_eq!(
            serde_json::to_string(&ack).unwrap(),
            r#"{"type":"ack","id":"x"}"#
        );
    }
}
