//! The JSON payloads: requests from devices, replies and events from the bridge.
//!
//! Every payload is a JSON object with a `"type"` field; unknown fields are ignored.

use serde::{Deserialize, Serialize};

use crate::ids::{ConvId, FileId, UserId};

/// A device-chosen request id, 1 to 64 characters, echoed in the reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RequestId(String);

/// A request id of the wrong length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request id must be 1 to 64 characters, got {0}")]
pub struct BadRequestId(pub usize);

impl RequestId {
    /// Validates the length (1 to 64 characters).
    pub fn parse(s: &str) -> Result<Self, BadRequestId> {
        let n = s.chars().count();
        if (1..=64).contains(&n) {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadRequestId(n))
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
        /// The `seq` of the message of the same conversation this one replies to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
        /// Files the sender uploaded (`POST /files`), at most [`MAX_ATTACHMENTS`];
        /// with any, `body` may be empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<AttachmentRef>,
    },
    /// Replace the text of one of the sender's messages (within the edit window).
    Edit {
        /// Request id; a repeat with the same id stores nothing new.
        id: RequestId,
        /// The conversation.
        conv: ConvId,
        /// The message's seq.
        target: u64,
        /// The new text.
        body: String,
    },
    /// Delete a message for everyone: its text is erased from storage.
    Delete {
        /// Request id; a repeat with the same id stores nothing new.
        id: RequestId,
        /// The conversation.
        conv: ConvId,
        /// The message's seq.
        target: u64,
    },
    /// React to a message with an emoji (`""` takes the user's reaction back).
    React {
        /// Request id; a repeat with the same id stores nothing new.
        id: RequestId,
        /// The conversation.
        conv: ConvId,
        /// The message's seq.
        target: u64,
        /// 1 to 16 bytes of text, or `""`.
        emoji: String,
    },
    /// Search the text of the messages the user may read, newest first.
    Search {
        /// Request id.
        id: RequestId,
        /// The words to find, 1 to 256 characters.
        query: String,
        /// Only this conversation.
        #[serde(default)]
        conv: Option<ConvId>,
        /// The `next` of the previous page; the newest first when absent.
        #[serde(default)]
        cursor: Option<String>,
        /// Page size.
        #[serde(default)]
        limit: Option<u32>,
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
    /// A page of the user's conversations, most recently active first.
    Conversations {
        /// Request id.
        id: RequestId,
        /// Page size.
        #[serde(default)]
        limit: Option<u32>,
        /// The `next` of the previous page; the first page when absent.
        #[serde(default)]
        cursor: Option<String>,
    },
    /// A page of a conversation's current members, by user id.
    Members {
        /// Request id.
        id: RequestId,
        /// The conversation.
        conv: ConvId,
        /// Return members whose id sorts after this one; from the first when absent.
        #[serde(default)]
        after: Option<UserId>,
        /// Page size.
        #[serde(default)]
        limit: Option<u32>,
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
    /// Block a user: they can no longer send in the 1-1 chat with the sender, nor see
    /// the sender's presence.
    Block {
        /// Request id.
        id: RequestId,
        /// Who to block.
        user: UserId,
    },
    /// Take a block back.
    Unblock {
        /// Request id.
        id: RequestId,
        /// Who to unblock.
        user: UserId,
    },
    /// The users the sender blocks.
    Blocks {
        /// Request id.
        id: RequestId,
    },
}

impl Request {
    /// The request's id, for the kinds that carry one.
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            Self::Send { id, .. }
            | Self::Edit { id, .. }
            | Self::Delete { id, .. }
            | Self::React { id, .. }
            | Self::Search { id, .. }
            | Self::Sync { id, .. }
            | Self::History { id, .. }
            | Self::Conversations { id, .. }
            | Self::Members { id, .. }
            | Self::GroupCreate { id, .. }
            | Self::GroupAdd { id, .. }
            | Self::GroupRemove { id, .. }
            | Self::GroupLeave { id, .. }
            | Self::PushRegister { id, .. }
            | Self::PushUnregister { id, .. }
            | Self::Mute { id, .. }
            | Self::Token { id }
            | Self::Block { id, .. }
            | Self::Unblock { id, .. }
            | Self::Blocks { id } => Some(id),
            Self::Receipt { .. } | Self::Typing { .. } => None,
        }
    }
}

/// The largest value a numeric field of a request may have: storage keeps
/// numbers as signed 64-bit integers.
pub const MAX_NUMBER: u64 = i64::MAX as u64;

/// A numeric field of a request over [`MAX_NUMBER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}` must be at most {MAX_NUMBER}")]
pub struct OutOfRange {
    /// The field's name.
    pub field: &'static str,
}

impl Request {
    /// Checks that every numeric field is at most [`MAX_NUMBER`].
    pub fn check_numbers(&self) -> Result<(), OutOfRange> {
        let fields: &[(&'static str, Option<u64>)] = match self {
            Self::Receipt { seq, .. } => &[("seq", Some(*seq))],
            Self::Send { reply_to, .. } => &[("reply_to", *reply_to)],
            Self::Edit { target, .. }
            | Self::Delete { target, .. }
            | Self::React { target, .. } => &[("target", Some(*target))],
            Self::Sync { after, .. } => &[("after", Some(*after))],
            Self::History { before, .. } => &[("before", *before)],
            Self::Mute { until, .. } => &[("until", *until)],
            _ => &[],
        };
        match fields
            .iter()
            .find(|(_, value)| value.is_some_and(|v| v > MAX_NUMBER))
        {
            Some((field, _)) => Err(OutOfRange { field }),
            None => Ok(()),
        }
    }
}

/// What a `member` event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberAction {
    /// The group was created (`user` is its creator).
    Created,
    /// `user` was added by `by`.
    Added,
    /// `user` was removed by `by`.
    Removed,
    /// `user` left.
    Left,
}

impl MemberAction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Added => "added",
            Self::Removed => "removed",
            Self::Left => "left",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Created, Self::Added, Self::Removed, Self::Left]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

impl std::fmt::Display for MemberAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A group member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May remove other members.
    Admin,
    /// An ordinary member.
    Member,
}

/// One item of the `members` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberItem {
    /// The member.
    pub user: UserId,
    /// Their role.
    pub role: Role,
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

impl ErrorCode {
    /// The wire name (`bad_request`, `not_member`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::TooLarge => "too_large",
            Self::UnknownUser => "unknown_user",
            Self::UnknownConversation => "unknown_conversation",
            Self::NotMember => "not_member",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
        }
    }
}

/// One item of the `conversations` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationItem {
    /// The conversation.
    pub conv: ConvId,
    /// Its name: the group's name, or the other user's id for a 1-1 chat.
    pub name: String,
    /// The first current members by user id (all of them in a small conversation;
    /// the `members` request pages through the rest).
    pub members: Vec<UserId>,
    /// How many current members there are.
    #[serde(default)]
    pub member_count: u64,
    /// Newest seq in the conversation.
    pub last_seq: u64,
    /// The user's read receipt.
    pub read_seq: u64,
    /// Messages from others above `read_seq`.
    pub unread: u64,
}

/// A message's reactions: each emoji with the users who chose it, by user id.
pub type Reactions = std::collections::BTreeMap<String, Vec<UserId>>;

/// The most bytes of a reaction's emoji.
pub const MAX_EMOJI_BYTES: usize = 16;

/// The most attachments of one message.
pub const MAX_ATTACHMENTS: usize = 10;

/// The most characters of an attachment's name.
pub const MAX_ATTACHMENT_NAME_CHARS: usize = 255;

/// A file named in a `send`: an upload of the sender's, and the name to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    /// The upload (`POST /files` answered it as `file`).
    pub file: FileId,
    /// The name to show, 1 to [`MAX_ATTACHMENT_NAME_CHARS`] characters, no control characters.
    pub name: String,
}

/// A file a `message` carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Where to fetch it: `GET /files/<file>`.
    pub file: FileId,
    /// The name the sender gave it.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type, as uploaded (`Content-Type`).
    #[serde(rename = "type")]
    pub media_type: String,
}

/// The answer to `POST /files` (HTTP 201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    /// The upload's id, for `send`'s `attachments` and `GET /files/<file>`.
    pub file: FileId,
    /// Bytes stored.
    pub size: u64,
    /// The media type stored (the upload's `Content-Type`, or `application/octet-stream`).
    #[serde(rename = "type")]
    pub media_type: String,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
}

/// The most characters of a `search` query.
pub const MAX_QUERY_CHARS: usize = 256;

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
        /// For `rate_limited`: how long to wait before the request can succeed, in ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
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
        /// Whether more conversations follow.
        #[serde(default)]
        more: bool,
        /// The cursor of the next page, while `more`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// The reply to `members`.
    Members {
        /// The request's id.
        id: RequestId,
        /// The conversation.
        conv: ConvId,
        /// Current members, ascending by user id.
        members: Vec<MemberItem>,
        /// Whether more members follow.
        more: bool,
        /// The `after` of the next page, while `more`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<UserId>,
    },
    /// The reply to `token`: a device token usable as the MQTT password.
    Token {
        /// The request's id.
        id: RequestId,
        /// The token.
        token: String,
    },
    /// The reply to `blocks`.
    Blocks {
        /// The request's id.
        id: RequestId,
        /// The users the requester blocks, ascending by user id.
        users: Vec<UserId>,
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
        /// The text (its latest edit in `history` and `search`); empty, and absent
        /// on the wire, once the message was deleted.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        body: String,
        /// The `seq` of the message this one replies to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
        /// The files it carries; none once the message was deleted.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
        /// The `ts` of the latest edit (`history` and `search` only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edited: Option<u64>,
        /// Deleted for everyone (`history` and `search` only).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
        /// Emoji to the users who reacted with it (`history` and `search` only).
        #[serde(default, skip_serializing_if = "Reactions::is_empty")]
        reactions: Reactions,
        /// The recipient's inbox sequence number (absent in `history`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        useq: Option<u64>,
    },
    /// A message's text was replaced.
    Edit {
        /// The conversation.
        conv: ConvId,
        /// This event's place in the conversation.
        seq: u64,
        /// When it was stored.
        ts: u64,
        /// The author.
        from: UserId,
        /// The edited message's seq.
        target: u64,
        /// The new text; absent once the message was deleted (the text is erased).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        /// The recipient's inbox sequence number (absent in `history`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        useq: Option<u64>,
    },
    /// A message was deleted for everyone.
    Delete {
        /// The conversation.
        conv: ConvId,
        /// This event's place in the conversation.
        seq: u64,
        /// When it was stored.
        ts: u64,
        /// Who deleted it (the author, or a group admin).
        from: UserId,
        /// The deleted message's seq.
        target: u64,
        /// The recipient's inbox sequence number (absent in `history`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        useq: Option<u64>,
    },
    /// A member reacted to a message (an empty `emoji` takes their reaction back).
    Reaction {
        /// The conversation.
        conv: ConvId,
        /// This event's place in the conversation.
        seq: u64,
        /// When it was stored.
        ts: u64,
        /// Who reacted.
        from: UserId,
        /// The message's seq.
        target: u64,
        /// The emoji; `""` when the reaction was taken back.
        emoji: String,
        /// The recipient's inbox sequence number (absent in `history`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        useq: Option<u64>,
    },
    /// The reply to `search`.
    Search {
        /// The request's id.
        id: RequestId,
        /// Matching `message` events in their current state, newest first.
        results: Vec<Event>,
        /// Whether to ask again with `cursor` = `next`.
        more: bool,
        /// The cursor of the next page, while `more`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
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
        /// What happened.
        action: MemberAction,
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
            Self::Message { useq, .. }
            | Self::Receipt { useq, .. }
            | Self::Member { useq, .. }
            | Self::Edit { useq, .. }
            | Self::Delete { useq, .. }
            | Self::Reaction { useq, .. } => *useq,
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
    fn numbers_over_the_signed_range_are_refused_naming_the_field() {
        let parse = |json: &str| serde_json::from_str::<Request>(json).unwrap();
        let big = u64::MAX;
        let edge = MAX_NUMBER + 1;
        for (json, field) in [
            (
                format!(r#"{{"type":"sync","id":"1","after":{big}}}"#),
                "after",
            ),
            (
                format!(r#"{{"type":"sync","id":"1","after":{edge}}}"#),
                "after",
            ),
            (
                format!(r#"{{"type":"receipt","conv":"dm:a:b","seq":{edge},"status":"read"}}"#),
                "seq",
            ),
            (
                format!(r#"{{"type":"history","id":"1","conv":"dm:a:b","before":{big}}}"#),
                "before",
            ),
            (
                format!(r#"{{"type":"mute","id":"1","conv":"dm:a:b","until":{big}}}"#),
                "until",
            ),
        ] {
            assert_eq!(
                parse(&json).check_numbers(),
                Err(OutOfRange { field }),
                "{json}"
            );
        }
        let ok = format!(r#"{{"type":"sync","id":"1","after":{MAX_NUMBER}}}"#);
        assert_eq!(parse(&ok).check_numbers(), Ok(()));
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
