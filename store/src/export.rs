//! Export: everything one user may read, as one JSON document, for
//! data-portability requests. The document and its paging are the same on
//! both engines; each engine reads through its own [`Source`] (`sqlite::export`,
//! `postgres::engine::export`), in one read transaction.
//!
//! It reads through the same rules as the requests: a conversation's events
//! are those `history` would return to the user (a former group member's end at
//! their leaving; messages in their current state, with edits, deletions and
//! reactions folded in), its members those `members` would list (current
//! members only).
//!
//! The document is written as it is read: conversations [`CONVERSATIONS_PER_PAGE`]
//! at a time, members [`MEMBERS_PER_PAGE`] and events [`EVENTS_PER_PAGE`] at a
//! time, so memory stays bounded by one page of each (at most
//! `EVENTS_PER_PAGE` events of at most `limits.max_body_bytes` each) whatever the
//! length of the history.
//!
//! ```json
//! {"format": "messenger-export", "version": 1, "user": "alice",
//!  "blocks": ["mallory"],
//!  "conversations": [
//!   {"conv": "dm:alice:bob", "kind": "dm", "name": "bob", "role": "member",
//!    "member": true, "joined_seq": 1, "left_seq": null, "last_seq": 7,
//!    "delivered_seq": 7, "read_seq": 5,
//!    "members": [{"user": "alice", "role": "member"}, ...],
//!    "events": [{"type": "message", "conv": "dm:alice:bob", "seq": 1, ...}, ...]},
//!   ...]}
//! ```
//!
//! `blocks` are the users the user blocks, by user id.
//! `last_seq` is the newest seq the user may read; `delivered_seq` and `read_seq`
//! are the user's own receipts; a group the user has left has `"member": false`,
//! its `left_seq`, and no `members`.

use std::io::Write;

use messenger_protocol::wire::{ErrorCode, Event, MemberItem};
use messenger_protocol::{ConvId, UserId};
use serde::Serialize;

use crate::sqlite::context::Kind;
use crate::sqlite::messages::seq_of;
use crate::{Failure, StoreError};

/// Conversations read at a time.
pub(crate) const CONVERSATIONS_PER_PAGE: u32 = 100;

/// Members read at a time.
pub(crate) const MEMBERS_PER_PAGE: u32 = 100;

/// Events read at a time.
pub(crate) const EVENTS_PER_PAGE: u32 = 100;

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Conversations in the document.
    pub conversations: u64,
    /// Events in the document.
    pub events: u64,
}

/// A row of the user's memberships (current and former).
pub(crate) struct Membership {
    pub(crate) conv: String,
    pub(crate) kind: Kind,
    pub(crate) name: String,
    pub(crate) role: String,
    pub(crate) left_seq: Option<u64>,
    pub(crate) delivered_seq: u64,
    pub(crate) read_seq: u64,
}

/// What an export reads, on one engine, inside one read transaction.
pub(crate) trait Source {
    /// The users the user blocks, by user id.
    fn blocks(&self) -> Result<Vec<UserId>, StoreError>;
    /// Up to [`CONVERSATIONS_PER_PAGE`] of the user's memberships, by
    /// conversation id (bytewise), after `after`.
    fn memberships(&self, after: &str) -> Result<Vec<Membership>, StoreError>;
    /// The seqs of `conv` the user may read, as `history` decides.
    fn read_window(&self, conv: &ConvId) -> Result<(u64, u64), Failure>;
    /// A page of `conv`'s current members after `after`; whether more follow.
    fn member_rows(
        &self,
        conv: &ConvId,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<(Vec<MemberItem>, bool), StoreError>;
    /// Up to `limit` events of `conv` with seqs `from..=to`, oldest first, as
    /// `history` shows them; whether more lie in the window.
    fn events(
        &self,
        conv: &ConvId,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<(Vec<Event>, bool), StoreError>;
}

/// A conversation's fields before its `members` and `events`.
#[derive(Serialize)]
struct Header<'a> {
    conv: &'a ConvId,
    kind: &'static str,
    name: &'a str,
    role: &'a str,
    member: bool,
    joined_seq: u64,
    left_seq: Option<u64>,
    last_seq: u64,
    delivered_seq: u64,
    read_seq: u64,
}

/// Writes `user`'s document from `source` to `out` (see the module's
/// documentation); the caller has checked that the user exists.
pub(crate) fn write(
    source: &dyn Source,
    user: &UserId,
    out: &mut dyn Write,
) -> Result<ExportSummary, StoreError> {
    let mut summary = ExportSummary::default();
    put(
        out,
        b"{\"format\":\"messenger-export\",\"version\":1,\"user\":",
    )?;
    json(out, user)?;
    put(out, b",\"blocks\":")?;
    json(out, &source.blocks()?)?;
    put(out, b",\"conversations\":[")?;
    let mut after = String::new();
    loop {
        let rows = source.memberships(&after)?;
        let Some(last) = rows.last() else { break };
        after = last.conv.clone();
        for row in &rows {
            let Ok(conv) = ConvId::parse(&row.conv) else {
                // A row that no longer decodes (a hand-edited file) is skipped.
                continue;
            };
            // What `history` would let the user read (a dm whose row the user
            // lost cannot be refused here: a row of `members` is the user's).
            let (from, to) = match source.read_window(&conv) {
                Ok(window) => window,
                Err(failure) if failure.code == ErrorCode::Internal => {
                    return Err(StoreError::Read(failure.message));
                }
                Err(_) => continue,
            };
            if summary.conversations > 0 {
                put(out, b",")?;
            }
            summary.conversations += 1;
            let name = match conv.direct_members() {
                Some((a, b)) => if a == user { b } else { a }.to_string(),
                None => row.name.clone(),
            };
            let member = row.left_seq.is_none();
            let header = Header {
                conv: &conv,
                kind: row.kind.as_column(),
                name: &name,
                role: &row.role,
                member,
                joined_seq: from,
                left_seq: row.left_seq,
                last_seq: to,
                delivered_seq: row.delivered_seq,
                read_seq: row.read_seq,
            };
            let mut text = serde_json::to_vec(&header).map_err(StoreError::Encode)?;
            text.pop(); // the closing brace: members and events follow
            put(out, &text)?;
            if member {
                put(out, b",\"members\":[")?;
                let mut after: Option<UserId> = None;
                let mut first = true;
                loop {
                    let (page, more) =
                        source.member_rows(&conv, after.as_ref(), MEMBERS_PER_PAGE)?;
                    for item in &page {
                        if !first {
                            put(out, b",")?;
                        }
                        first = false;
                        json(out, item)?;
                    }
                    match page.last() {
                        Some(last) if more => after = Some(last.user.clone()),
                        _ => break,
                    }
                }
                put(out, b"]")?;
            }
            put(out, b",\"events\":[")?;
            let mut next = from;
            let mut first = true;
            while next <= to {
                let (page, more) = source.events(&conv, next, to, EVENTS_PER_PAGE)?;
                let Some(last) = page.last().map(seq_of) else {
                    break;
                };
                for event in &page {
                    if !first {
                        put(out, b",")?;
                    }
                    first = false;
                    summary.events += 1;
                    json(out, event)?;
                }
                if !more {
                    break;
                }
                next = last + 1;
            }
            put(out, b"]}")?;
        }
    }
    put(out, b"]}\n")?;
    out.flush().map_err(StoreError::Write)?;
    Ok(summary)
}

fn put(out: &mut dyn Write, bytes: &[u8]) -> Result<(), StoreError> {
    out.write_all(bytes).map_err(StoreError::Write)
}

fn json(out: &mut dyn Write, value: &impl Serialize) -> Result<(), StoreError> {
    serde_json::to_writer(&mut *out, value).map_err(|err| {
        if err.is_io() {
            StoreError::Write(err.into())
        } else {
            StoreError::Encode(err)
        }
    })
}
