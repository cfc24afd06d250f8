//! Export: everything one user may read, as one JSON document, for
//! data-portability requests.
//!
//! It reads through the same rules as the requests: a conversation's events
//! are those `history` would return to the user (a former group member's end at
//! their leaving; messages in their current state, with edits, deletions and
//! reactions folded in), its members those `members` would list (current
//! members only). It runs in one read transaction on its own connection, so the
//! document is one consistent snapshot, and a server may keep writing meanwhile
//! (in WAL mode a reader never blocks the writer).
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

use std::cell::RefCell;
use std::io::Write;
use std::path::Path;

use messenger_protocol::wire::ErrorCode;
use messenger_protocol::{ConvId, DeviceId, UserId};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::context::{Ctx, Kind};
use super::messages::Order;
use super::Notify;
use crate::config::Limits;
use crate::rate::{Allowance, RateLimits};
use crate::StoreError;

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

/// A row of the user's memberships.
struct Row {
    conv: String,
    kind: Kind,
    name: String,
    role: String,
    left_seq: Option<u64>,
    delivered_seq: u64,
    read_seq: u64,
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

/// Writes everything `user` may read in the SQLite file at `path` to `out`, as
/// JSON (see the module's documentation for the document and its memory bound).
/// `limits` are the server's, which decide how message events are cut as in
/// `history`. Fails with [`crate::StoreError::Account`] for a user that does not
/// exist, and [`crate::StoreError::NoDatabase`] if there is no database at `path`;
/// reading never changes the file.
pub fn export_user(
    path: &Path,
    user: &UserId,
    limits: &Limits,
    out: &mut dyn Write,
) -> Result<ExportSummary, StoreError> {
    if !path.is_file() {
        return Err(StoreError::NoDatabase(path.to_path_buf()));
    }
    // Migrated as `remove_user` does (a file that only `messenger user add` has
    // touched has no store tables yet); from then on, reading only.
    let mut conn = messenger_accounts::open_sqlite(path)?;
    super::migrate(&mut conn)?;
    conn.pragma_update(None, "query_only", true)?;
    // One snapshot for the whole document.
    conn.execute_batch("BEGIN DEFERRED")?;
    let known = conn
        .query_row(
            "SELECT 1 FROM users WHERE name = ?1",
            [user.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !known {
        return Err(messenger_accounts::AccountsError::NotFound(user.clone()).into());
    }
    let device = DeviceId::parse("export").expect("a valid device id");
    let rates = RateLimits::new(limits);
    let rates = Allowance::new(&rates);
    let ctx = Ctx {
        conn: &conn,
        user,
        device: &device,
        limits,
        rates: &rates,
        now: 0,
        notify: Notify::Off,
        pushes: RefCell::new(Vec::new()),
        index: RefCell::new(Vec::new()),
        released: RefCell::new(Vec::new()),
    };
    let mut summary = ExportSummary::default();
    put(
        out,
        b"{\"format\":\"messenger-export\",\"version\":1,\"user\":",
    )?;
    json(out, user)?;
    put(out, b",\"blocks\":")?;
    json(out, &super::blocks::blocked_by(&conn, user)?)?;
    put(out, b",\"conversations\":[")?;
    let mut after = String::new();
    loop {
        let rows = memberships(&conn, user, &after)?;
        let Some(last) = rows.last() else { break };
        after = last.conv.clone();
        for row in &rows {
            let Ok(conv) = ConvId::parse(&row.conv) else {
                // A row that no longer decodes (a hand-edited file) is skipped.
                continue;
            };
            // What `history` would let the user read (a dm whose row the user
            // lost cannot be refused here: a row of `members` is the user's).
            let (from, to) = match ctx.read_window(&conv) {
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
                    let (page, more) = ctx.member_rows(&conv, after.as_ref(), MEMBERS_PER_PAGE)?;
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
                let (page, more) =
                    ctx.events_between(&conv, next, to, EVENTS_PER_PAGE, Order::OldestFirst)?;
                let Some(last) = page.last().map(super::messages::seq_of) else {
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
    conn.execute_batch("COMMIT")?;
    Ok(summary)
}

/// A page of `user`'s rows of `members` (current and former), by conversation id.
fn memberships(conn: &Connection, user: &UserId, after: &str) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(
        "SELECT m.conv, c.kind, c.name, m.role, m.left_seq, m.delivered_seq, m.read_seq
         FROM members m JOIN conversations c ON c.conv = m.conv
         WHERE m.user = ?1 AND m.conv > ?2 ORDER BY m.conv LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![user.as_str(), after, CONVERSATIONS_PER_PAGE], |r| {
            Ok(Row {
                conv: r.get(0)?,
                kind: Kind::from_column(&r.get::<_, String>(1)?),
                name: r.get(2)?,
                role: r.get(3)?,
                left_seq: r.get(4)?,
                delivered_seq: r.get(5)?,
                read_seq: r.get(6)?,
            })
        })?
        .collect();
    rows
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;

    /// More conversations, members and events than a page of each: every one is
    /// written once, in order.
    #[test]
    fn every_page_is_written_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let conn = super::super::open(&path, Durability::Os).unwrap();
        let events = EVENTS_PER_PAGE as u64 * 2 + 50;
        let members = MEMBERS_PER_PAGE as u64 + 50;
        let groups = CONVERSATIONS_PER_PAGE as u64 + 20;
        let tx = conn.unchecked_transaction().unwrap();
        for n in 0..members {
            tx.execute(
                "INSERT INTO users (name, phc, created_ms) VALUES (?1, 'x', 0)",
                [format!("u{n:03}")],
            )
            .unwrap();
        }
        tx.execute(
            "INSERT INTO conversations (conv, kind, name, created_ms, last_seq)
             VALUES ('dm:u000:u001', 'dm', '', 0, ?1)",
            [events],
        )
        .unwrap();
        for user in ["u000", "u001"] {
            tx.execute(
                "INSERT INTO members (conv, user, role, joined_seq) VALUES ('dm:u000:u001', ?1, 'member', 1)",
                [user],
            )
            .unwrap();
        }
        for seq in 1..=events {
            tx.execute(
                "INSERT INTO events (conv, seq, ts, kind, sender, device, req_id, body)
                 VALUES ('dm:u000:u001', ?1, 0, 'message', 'u001', 'p', ?2, 'hi')",
                params![seq, format!("r{seq}")],
            )
            .unwrap();
        }
        for g in 0..groups {
            let conv = format!("g:x{g:03}");
            tx.execute(
                "INSERT INTO conversations (conv, kind, name, created_ms, last_seq)
                 VALUES (?1, 'group', 'big', 0, 0)",
                [&conv],
            )
            .unwrap();
            let in_it = if g == 0 { members } else { 1 };
            for n in 0..in_it {
                tx.execute(
                    "INSERT INTO members (conv, user, role, joined_seq) VALUES (?1, ?2, 'member', 1)",
                    params![conv, format!("u{n:03}")],
                )
                .unwrap();
            }
        }
        tx.commit().unwrap();

        let mut out = Vec::new();
        let user = UserId::parse("u000").unwrap();
        let summary = export_user(&path, &user, &Limits::default(), &mut out).unwrap();
        assert_eq!(summary.conversations, groups + 1);
        assert_eq!(summary.events, events);
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let convs = doc["conversations"].as_array().unwrap();
        assert_eq!(convs.len() as u64, groups + 1);
        let dm = convs.iter().find(|c| c["kind"] == "dm").unwrap();
        let seqs: Vec<u64> = dm["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=events).collect::<Vec<_>>());
        let big = convs.iter().find(|c| c["conv"] == "g:x000").unwrap();
        let names: Vec<&str> = big["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = (0..members).map(|n| format!("u{n:03}")).collect();
        assert_eq!(names, expected);

        let nobody = UserId::parse("nobody").unwrap();
        let err = export_user(&path, &nobody, &Limits::default(), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
