//! Export on SQLite: the shared document (`crate::export`) read from the
//! SQLite file in one read transaction on its own connection, so the document
//! is one consistent snapshot, and a server may keep writing meanwhile (in WAL
//! mode a reader never blocks the writer).

use std::cell::RefCell;
use std::io::Write;
use std::path::Path;

use messenger_protocol::wire::{Event, MemberItem};
use messenger_protocol::{ConvId, DeviceId, UserId};
use rusqlite::{params, Connection, OptionalExtension};

use super::context::{Ctx, Kind};
use super::messages::Order;
use super::Notify;
use crate::config::Limits;
pub use crate::export::ExportSummary;
use crate::export::{Membership, Source, CONVERSATIONS_PER_PAGE};
use crate::rate::{Allowance, RateLimits};
use crate::{Failure, StoreError};

/// Writes everything `user` may read in the SQLite file at `path` to `out`, as
/// JSON (see `crate::export` for the document and its memory bound).
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
    let summary = crate::export::write(&ctx, user, out)?;
    conn.execute_batch("COMMIT")?;
    Ok(summary)
}

impl Source for Ctx<'_> {
    fn blocks(&self) -> Result<Vec<UserId>, StoreError> {
        Ok(super::blocks::blocked_by(self.conn, self.user)?)
    }

    fn memberships(&self, after: &str) -> Result<Vec<Membership>, StoreError> {
        Ok(memberships(self.conn, self.user, after)?)
    }

    fn read_window(&self, conv: &ConvId) -> Result<(u64, u64), Failure> {
        Ctx::read_window(self, conv)
    }

    fn member_rows(
        &self,
        conv: &ConvId,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<(Vec<MemberItem>, bool), StoreError> {
        Ok(Ctx::member_rows(self, conv, after, limit)?)
    }

    fn events(
        &self,
        conv: &ConvId,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        Ok(self.events_between(conv, from, to, limit, Order::OldestFirst)?)
    }
}

/// A page of `user`'s rows of `members` (current and former), by conversation id.
fn memberships(conn: &Connection, user: &UserId, after: &str) -> rusqlite::Result<Vec<Membership>> {
    let mut stmt = conn.prepare_cached(
        "SELECT m.conv, c.kind, c.name, m.role, m.left_seq, m.delivered_seq, m.read_seq
         FROM members m JOIN conversations c ON c.conv = m.conv
         WHERE m.user = ?1 AND m.conv > ?2 ORDER BY m.conv LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![user.as_str(), after, CONVERSATIONS_PER_PAGE], |r| {
            Ok(Membership {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::export::{EVENTS_PER_PAGE, MEMBERS_PER_PAGE};

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
