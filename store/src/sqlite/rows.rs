//! Reading stored events back: a row of `events` or `inbox` as the event it
//! was published as, and the byte budget that keeps a page under the reply limit.

use messenger_protocol::wire::{
    Attachment, Event, MemberAction, Reactions, ReceiptStatus, RequestId,
};
use messenger_protocol::{ConvId, UserId};
use rusqlite::Row;

use crate::outcome::encode;

/// The event with the recipient's inbox sequence number.
pub(super) fn with_useq(mut event: Event, value: u64) -> Event {
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

/// The columns [`event_from_row`] reads, in its order, for a query on `events`
/// under the alias `e` (a literal, for `concat!`).
macro_rules! event_columns {
    () => {
        "e.ts, e.kind, e.sender, e.device, COALESCE(e.req_id, e.retired_req_id), \
         e.body, e.action, e.target, e.ref_seq, e.edited_ts, e.deleted, e.attachments"
    };
}
pub(super) use event_columns;

/// Builds a `message`, `member`, `edit`, `delete` or `reaction` event from an
/// `events` row whose `event_columns!()` start at `at`. A message comes in its
/// current state (latest text, `edited`, `deleted`), without its reactions.
pub(super) fn event_from_row(
    r: &Row<'_>,
    at: usize,
    conv: &str,
    seq: u64,
    useq: Option<u64>,
) -> rusqlite::Result<Option<Event>> {
    let ts: u64 = r.get(at)?;
    let kind: String = r.get(at + 1)?;
    let sender: String = r.get(at + 2)?;
    let device: String = r.get(at + 3)?;
    let req_id: Option<String> = r.get(at + 4)?;
    let body: Option<String> = r.get(at + 5)?;
    let action: Option<String> = r.get(at + 6)?;
    let target: Option<String> = r.get(at + 7)?;
    let ref_seq: Option<u64> = r.get(at + 8)?;
    let edited: Option<u64> = r.get(at + 9)?;
    let deleted: Option<bool> = r.get(at + 10)?;
    let attachments: Option<String> = r.get(at + 11)?;
    let (Ok(conv), Ok(from)) = (ConvId::parse(conv), UserId::parse(&sender)) else {
        return Ok(None);
    };
    Ok(match kind.as_str() {
        "message" => req_id
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
            }),
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
    })
}

/// A message's `attachments` column (JSON) as the event carries it; a value that
/// no longer decodes (a hand-edited file) shows none.
fn attachments_from_column(column: Option<&str>) -> Vec<Attachment> {
    column
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

/// A message's attachments as its `attachments` column keeps them (NULL for none).
pub(super) fn attachments_column(attachments: &[Attachment]) -> Option<String> {
    if attachments.is_empty() {
        return None;
    }
    serde_json::to_string(attachments).ok()
}

pub(super) fn receipt_from_row(
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
pub(super) struct Budget {
    left: usize,
    first: bool,
}

impl Budget {
    pub(super) fn new(max: usize) -> Self {
        // Room for the reply's own fields.
        Self {
            left: max.saturating_sub(512),
            first: true,
        }
    }

    pub(super) fn take(&mut self, event: &Event) -> bool {
        self.take_bytes(encode(event).len())
    }

    /// Takes room for an item of `bytes` (and its separating comma), if it fits.
    pub(super) fn take_bytes(&mut self, bytes: usize) -> bool {
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
