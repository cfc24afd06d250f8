//! Reading `events` rows on SQLite (the columns, in the order the shared
//! [`EventColumns`] takes them).

use messenger_protocol::wire::Event;
use rusqlite::Row;

pub(super) use crate::rows::{
    attachments_column, receipt_from_row, with_useq, Budget, EventColumns,
};

/// The columns [`event_from_row`] reads, in its order, for a query on `events`
/// under the alias `e` (a literal, for `concat!`).
macro_rules! event_columns {
    () => {
        "e.ts, e.kind, e.sender, e.device, COALESCE(e.req_id, e.retired_req_id), \
         e.body, e.action, e.target, e.ref_seq, e.edited_ts, e.deleted, e.attachments"
    };
}
pub(crate) use event_columns;

/// Builds the event of an `events` row whose `event_columns!()` start at `at`
/// (see [`EventColumns::into_event`]).
pub(super) fn event_from_row(
    r: &Row<'_>,
    at: usize,
    conv: &str,
    seq: u64,
    useq: Option<u64>,
) -> rusqlite::Result<Option<Event>> {
    let columns = EventColumns {
        ts: r.get(at)?,
        kind: r.get(at + 1)?,
        sender: r.get(at + 2)?,
        device: r.get(at + 3)?,
        req_id: r.get(at + 4)?,
        body: r.get(at + 5)?,
        action: r.get(at + 6)?,
        target: r.get(at + 7)?,
        ref_seq: r.get(at + 8)?,
        edited: r.get(at + 9)?,
        deleted: r.get(at + 10)?,
        attachments: r.get(at + 11)?,
    };
    Ok(columns.into_event(conv, seq, useq))
}
