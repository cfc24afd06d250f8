//! Stored rows back into events, on either engine: the columns of an `events`
//! row as the event it was published as, receipts from `inbox` rows, and the
//! byte budget that keeps a page under the reply limit.

use messenger_protocol::wire::{
    Attachment, Event, MemberAction, Reactions, ReceiptStatus, RequestId,
};
use messenger_protocol::{ConvId, UserId};

use crate::outcome::encode;

/// The event with the recipient's inbox sequence number.
pub(crate) fn with_useq(mut event: Event, value: u64) -> Event {
    if let Event::Member { useq, .. }
    | Event::Message { useq, .. }
    | Event::Edit { useq, .. }
    | Event::Delete { useq, .. }
    | Event::Reaction { useq, .. } = &mut event
    {
        *useq = Some(value);
    }
    event
}

/// The columns of an `events` row that make its event, in the order both
/// engines select them (`event_columns!()` on SQLite).
pub(crate) struct EventColumns {
    pub(crate) ts: u64,
    pub(crate) kind: String,
    pub(crate) sender: String,
    pub(crate) device: String,
    /// The request id, or a removed sender's retired one.
    pub(crate) req_id: Option<String>,
    pub(crate) body: Option<String>,
    pub(crate) action: Option<String>,
    pub(crate) target: Option<String>,
    pub(crate) ref_seq: Option<u64>,
    pub(crate) edited: Option<u64>,
    pub(crate) deleted: Option<bool>,
    pub(crate) attachments: Option<String>,
}

impl EventColumns {
    /// Builds a `message`, `member`, `edit`, `delete` or `reaction` event of
    /// `conv` at `seq`. A message comes in its current state (latest text,
    /// `edited`, `deleted`), without its reactions. `None` for a row that no
    /// longer decodes (a hand-edited file).
    pub(crate) fn into_event(self, conv: &str, seq: u64, useq: Option<u64>) -> Option<Event> {
        let Self {
            ts,
            kind,
            sender,
            device,
            req_id,
            body,
            action,
            target,
            ref_seq,
            edited,
            deleted,
            attachments,
        } = self;
        let (Ok(conv), Ok(from)) = (ConvId::parse(conv), UserId::parse(&sender)) else {
            return None;
        };
        match kind.as_str() {
            "message" => {
                req_id
                    .and_then(|id| RequestId::parse(&id).ok())
                    .map(|id| Event::Message {
                        conv,
                        seq,
                        ts,
                        from,
                        device,
                        id,
                        body: body.unwrap_or_default(),
                        reply_to: ref_seq,
                        attachments: attachments_from_column(attachments.as_deref()),
                        edited,
                        deleted: deleted.unwrap_or(false),
                        reactions: Reactions::new(),
                        useq,
                    })
            }
            "member" => target
                .and_then(|t| UserId::parse(&t).ok())
                .zip(action.as_deref().and_then(MemberAction::parse))
                .map(|(user, action)| Event::Member {
                    conv,
                    seq,
                    ts,
                    action,
                    user,
                    by: from,
                    name: body.unwrap_or_default(),
                    useq,
                }),
            "edit" => ref_seq.map(|target| Event::Edit {
                conv,
                seq,
                ts,
                from,
                target,
                body,
                useq,
            }),
            "delete" => ref_seq.map(|target| Event::Delete {
                conv,
                seq,
                ts,
                from,
                target,
                useq,
            }),
            "reaction" => ref_seq.map(|target| Event::Reaction {
                conv,
                seq,
                ts,
                from,
                target,
                emoji: body.unwrap_or_default(),
                useq,
            }),
            _ => None,
        }
    }
}

/// A message's `attachments` column (JSON) as the event carries it; a value that
/// no longer decodes (a hand-edited file) shows none.
fn attachments_from_column(column: Option<&str>) -> Vec<Attachment> {
    column
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

/// A message's attachments as its `attachments` column keeps them (NULL for none).
pub(crate) fn attachments_column(attachments: &[Attachment]) -> Option<String> {
    if attachments.is_empty() {
        return None;
    }
    serde_json::to_string(attachments).ok()
}

pub(crate) fn receipt_from_row(
    conv: &str,
    seq: u64,
    status: &str,
    user: Option<String>,
    ts: Option<u64>,
    useq: u64,
) -> Option<Event> {
    let status = match status {
        "delivered" => ReceiptStatus::Delivered,
        "read" => ReceiptStatus::Read,
        _ => return None,
    };
    Some(Event::Receipt {
        conv: ConvId::parse(conv).ok()?,
        user: UserId::parse(&user?).ok()?,
        seq,
        status,
        ts: ts.unwrap_or(0),
        useq: Some(useq),
    })
}

/// Keeps a reply under the largest packet: the first item always fits.
pub(crate) struct Budget {
    left: usize,
    first: bool,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Self {
        // Room for the reply's own fields.
        Self {
            left: max.saturating_sub(512),
            first: true,
        }
    }

    pub(crate) fn take(&mut self, event: &Event) -> bool {
        self.take_bytes(encode(event).len())
    }

    /// Takes room for an item of `bytes` (and its separating comma), if it fits.
    pub(crate) fn take_bytes(&mut self, bytes: usize) -> bool {
        let size = bytes + 1;
        if self.first || size <= self.left {
            self.first = false;
            self.left = self.left.saturating_sub(size);
            true
        } else {
            false
        }
    }
}

/// A `sync` reply from its inbox rows as events (`None`: a row with nothing to
/// deliver, or one that no longer decodes, skipped), at most `limit` of them,
/// cut to the reply's byte budget; `more` if rows were left over.
pub(crate) fn sync_reply(
    id: &RequestId,
    rows: Vec<Option<Event>>,
    after: u64,
    limit: u32,
    max_bytes: usize,
) -> Event {
    let mut more = rows.len() > limit as usize;
    let mut events = Vec::new();
    let mut budget = Budget::new(max_bytes);
    let mut next = after;
    for event in rows.into_iter().take(limit as usize).flatten() {
        if !budget.take(&event) {
            more = true;
            break;
        }
        next = event.useq().unwrap_or(next);
        events.push(event);
    }
    Event::Sync {
        id: id.clone(),
        events,
        next,
        more,
    }
}

/// A `history` reply from a page of events newest first (`more` if the window
/// holds more), cut to the reply's byte budget and put oldest first.
pub(crate) fn history_reply(
    id: &RequestId,
    conv: &ConvId,
    newest_first: Vec<Event>,
    mut more: bool,
    max_bytes: usize,
) -> Event {
    let mut events = Vec::new();
    let mut budget = Budget::new(max_bytes);
    for event in newest_first {
        if !budget.take(&event) {
            more = true;
            break;
        }
        events.push(event);
    }
    events.reverse();
    Event::History {
        id: id.clone(),
        conv: conv.clone(),
        events,
        more,
    }
}
