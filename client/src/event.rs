//! What the client hands to the app: events, acks, history pages.

use messenger_protocol::wire::{
    self, Attachment, MemberAction, Reactions, ReceiptStatus, RequestId, Status,
};
use messenger_protocol::{ConvId, UserId};

use crate::error::RefusalCode;

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The conversation.
    pub conv: ConvId,
    /// Its place in the conversation: gap-free, the same on every device.
    pub seq: u64,
    /// When the server stored it (ms since the Unix epoch).
    pub ts: u64,
    /// The sender.
    pub from: UserId,
    /// The sender's device.
    pub device: String,
    /// The sender's request id.
    pub id: RequestId,
    /// The text: in history and search, its latest edit; empty once deleted.
    pub body: String,
    /// The `seq` of the message this one replies to.
    pub reply_to: Option<u64>,
    /// The files it carries (fetch each with [`WebFiles::download`](crate::WebFiles::download));
    /// none once deleted.
    pub attachments: Vec<Attachment>,
    /// When it was last edited (history and search; also in a sync).
    pub edited: Option<u64>,
    /// Deleted for everyone (history and search; also in a sync).
    pub deleted: bool,
    /// Emoji to the users who reacted with it (history and search only).
    pub reactions: Reactions,
    /// This user's inbox sequence number; `None` in a history page.
    pub useq: Option<u64>,
}

/// A message's text was replaced by its author.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The conversation.
    pub conv: ConvId,
    /// This event's place in the conversation.
    pub seq: u64,
    /// When the server stored it.
    pub ts: u64,
    /// The author.
    pub from: UserId,
    /// The edited message's seq.
    pub target: u64,
    /// The new text; `None` once the message was deleted (the text is erased).
    pub body: Option<String>,
    /// This user's inbox sequence number; `None` in a history page.
    pub useq: Option<u64>,
}

/// A message was deleted for everyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The conversation.
    pub conv: ConvId,
    /// This event's place in the conversation.
    pub seq: u64,
    /// When the server stored it.
    pub ts: u64,
    /// Who deleted it: its author or a group admin.
    pub from: UserId,
    /// The deleted message's seq.
    pub target: u64,
    /// This user's inbox sequence number; `None` in a history page.
    pub useq: Option<u64>,
}

/// A member reacted to a message, or took their reaction back (`emoji` empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// The conversation.
    pub conv: ConvId,
    /// This event's place in the conversation.
    pub seq: u64,
    /// When the server stored it.
    pub ts: u64,
    /// Who reacted.
    pub from: UserId,
    /// The message's seq.
    pub target: u64,
    /// The emoji; empty when the reaction was taken back.
    pub emoji: String,
    /// This user's inbox sequence number; `None` in a history page.
    pub useq: Option<u64>,
}

/// A cumulative delivered/read receipt: `user` got (or read) everything up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The conversation.
    pub conv: ConvId,
    /// Whose receipt (another member, or this user from another device).
    pub user: UserId,
    /// Up to which seq.
    pub seq: u64,
    /// Delivered or read.
    pub status: ReceiptStatus,
    /// When the server stored it.
    pub ts: u64,
    /// This user's inbox sequence number.
    pub useq: Option<u64>,
}

/// A group membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The group.
    pub conv: ConvId,
    /// Its place in the conversation.
    pub seq: u64,
    /// When the server stored it.
    pub ts: u64,
    /// `created`, `added`, `removed` or `left`.
    pub action: MemberAction,
    /// Who joined or went.
    pub user: UserId,
    /// Who did it.
    pub by: UserId,
    /// The group's name.
    pub name: String,
    /// This user's inbox sequence number; `None` in a history page.
    pub useq: Option<u64>,
}

/// What the [`EventStream`](crate::EventStream) yields.
///
/// Stored events (`Message`, `Receipt`, `Member`) arrive in `useq` order, each
/// once: repeats are dropped and gaps filled by the client. An app that persists
/// its place stores [`ClientEvent::useq`] of the last event it handled and passes
/// it as `start_after_useq` next time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A message, in any of the user's conversations (the user's own included,
    /// from this device or another).
    Message(Message),
    /// A receipt from another member, or from the user's other devices.
    Receipt(Receipt),
    /// A group membership change.
    Member(Member),
    /// A message was edited.
    Edit(Edit),
    /// A message was deleted for everyone.
    Delete(Deletion),
    /// A reaction to a message was chosen, changed or taken back.
    Reaction(Reaction),
    /// Someone is typing (never stored; no `useq`).
    Typing {
        /// The conversation.
        conv: ConvId,
        /// Who is typing.
        user: UserId,
    },
    /// A user's presence changed (after [`Client::subscribe_status`](crate::Client::subscribe_status)).
    Status(Status),
    /// Signed in (the first time and after each reconnect); a sync follows.
    Connected,
    /// The connection was lost; the client reconnects by itself.
    Disconnected,
    /// The broker refused to sign this device in again (password changed, user
    /// removed): the client stops and the stream ends after this event.
    Refused(RefusalCode),
}

impl ClientEvent {
    /// The inbox sequence number of a stored event.
    pub fn useq(&self) -> Option<u64> {
        match self {
            Self::Message(m) => m.useq,
            Self::Receipt(r) => r.useq,
            Self::Member(m) => m.useq,
            Self::Edit(e) => e.useq,
            Self::Delete(d) => d.useq,
            Self::Reaction(r) => r.useq,
            _ => None,
        }
    }

    /// Converts an inbox event; `None` for a reply type, which has no place in the inbox.
    pub(crate) fn from_wire(event: wire::Event) -> Option<Self> {
        Some(match event {
            wire::Event::Message {
                conv,
                seq,
                ts,
                from,
                device,
                id,
                body,
                reply_to,
                attachments,
                edited,
                deleted,
                reactions,
                useq,
            } => Self::Message(Message {
                conv,
                seq,
                ts,
                from,
                device,
                id,
                body,
                reply_to,
                attachments,
                edited,
                deleted,
                reactions,
                useq,
            }),
            wire::Event::Edit {
                conv,
                seq,
                ts,
                from,
                target,
                body,
                useq,
            } => Self::Edit(Edit {
                conv,
                seq,
                ts,
                from,
                target,
                body,
                useq,
            }),
            wire::Event::Delete {
                conv,
                seq,
                ts,
                from,
                target,
                useq,
            } => Self::Delete(Deletion {
                conv,
                seq,
                ts,
                from,
                target,
                useq,
            }),
            wire::Event::Reaction {
                conv,
                seq,
                ts,
                from,
                target,
                emoji,
                useq,
            } => Self::Reaction(Reaction {
                conv,
                seq,
                ts,
                from,
                target,
                emoji,
                useq,
            }),
            wire::Event::Receipt {
                conv,
                user,
                seq,
                status,
                ts,
                useq,
            } => Self::Receipt(Receipt {
                conv,
                user,
                seq,
                status,
                ts,
                useq,
            }),
            wire::Event::Member {
                conv,
                seq,
                ts,
                action,
                user,
                by,
                name,
                useq,
            } => Self::Member(Member {
                conv,
                seq,
                ts,
                action,
                user,
                by,
                name,
                useq,
            }),
            wire::Event::Typing { conv, user } => Self::Typing { conv, user },
            _ => return None,
        })
    }
}

/// One entry of a conversation's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryItem {
    /// A message.
    Message(Message),
    /// A membership change.
    Member(Member),
    /// An edit (the message it edits already shows the latest text).
    Edit(Edit),
    /// A deletion (the message it deletes already shows `deleted`).
    Delete(Deletion),
    /// A reaction (the message it reacts to already lists the current reactions).
    Reaction(Reaction),
}

impl HistoryItem {
    /// Its place in the conversation.
    pub fn seq(&self) -> u64 {
        match self {
            Self::Message(m) => m.seq,
            Self::Member(m) => m.seq,
            Self::Edit(e) => e.seq,
            Self::Delete(d) => d.seq,
            Self::Reaction(r) => r.seq,
        }
    }
}

/// A page of a conversation's history, ascending by `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The conversation.
    pub conv: ConvId,
    /// Messages and membership changes, oldest first.
    pub events: Vec<HistoryItem>,
    /// Whether older events exist (ask again with `before` = the first event's seq).
    pub more: bool,
}

impl HistoryPage {
    /// Converts the `history` reply; other event types in it are skipped.
    pub(crate) fn from_wire(conv: ConvId, events: Vec<wire::Event>, more: bool) -> Self {
        let events = events
            .into_iter()
            .filter_map(|e| match ClientEvent::from_wire(e) {
                Some(ClientEvent::Message(m)) => Some(HistoryItem::Message(m)),
                Some(ClientEvent::Member(m)) => Some(HistoryItem::Member(m)),
                Some(ClientEvent::Edit(e)) => Some(HistoryItem::Edit(e)),
                Some(ClientEvent::Delete(d)) => Some(HistoryItem::Delete(d)),
                Some(ClientEvent::Reaction(r)) => Some(HistoryItem::Reaction(r)),
                _ => None,
            })
            .collect();
        Self { conv, events, more }
    }
}

/// A page of `search` results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPage {
    /// Matching messages in their current state, newest first.
    pub results: Vec<Message>,
    /// Whether to ask again with the cursor `next` (a page may hold fewer
    /// results than asked for, even none, and still have `more`).
    pub more: bool,
    /// The cursor of the next page, while `more`.
    pub next: Option<String>,
}

impl SearchPage {
    /// Converts the `search` reply; anything but a message in it is skipped.
    pub(crate) fn from_wire(results: Vec<wire::Event>, more: bool, next: Option<String>) -> Self {
        let results = results
            .into_iter()
            .filter_map(|e| match ClientEvent::from_wire(e) {
                Some(ClientEvent::Message(m)) => Some(m),
                _ => None,
            })
            .collect();
        Self {
            results,
            more,
            next,
        }
    }
}

/// The bridge's `ack` of a stored message, edit, deletion or reaction: it is
/// durable from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The request id (for a message, the same as its `id`).
    pub id: RequestId,
    /// The conversation.
    pub conv: ConvId,
    /// The stored event's seq in the conversation.
    pub seq: u64,
    /// When it was stored (ms since the Unix epoch).
    pub ts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_events_convert() {
        let m: wire::Event = serde_json::from_str(
            r#"{"type":"message","conv":"dm:alice:bob","seq":3,"ts":10,"from":"bob",
                "device":"phone","id":"r1","body":"hi","useq":7}"#,
        )
        .unwrap();
        let e = ClientEvent::from_wire(m).unwrap();
        assert_eq!(e.useq(), Some(7));
        assert!(matches!(&e, ClientEvent::Message(m) if m.body == "hi" && m.seq == 3));
        let t: wire::Event =
            serde_json::from_str(r#"{"type":"typing","conv":"g:x","user":"bob"}"#).unwrap();
        let e = ClientEvent::from_wire(t).unwrap();
        assert_eq!(e.useq(), None);
        let ack: wire::Event = serde_json::from_str(r#"{"type":"ack","id":"x"}"#).unwrap();
        assert_eq!(ClientEvent::from_wire(ack), None);
    }

    #[test]
    fn history_pages_keep_messages_and_members() {
        let events: Vec<wire::Event> = serde_json::from_str(
            r#"[{"type":"member","conv":"g:x","seq":1,"ts":1,"action":"created","user":"bob",
                 "by":"bob","name":"x"},
                {"type":"message","conv":"g:x","seq":2,"ts":2,"from":"bob","device":"d",
                 "id":"r","body":"b"},
                {"type":"typing","conv":"g:x","user":"bob"}]"#,
        )
        .unwrap();
        let page = HistoryPage::from_wire(ConvId::parse("g:x").unwrap(), events, true);
        assert_eq!(page.events.len(), 2);
        assert_eq!(page.events[0].seq(), 1);
        assert_eq!(page.events[1].seq(), 2);
        assert!(page.more);
    }
}
