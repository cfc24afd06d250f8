//! What removing an account does to the conversations: nothing of it is left for
//! a new account of the same name to inherit.
//!
//! The account's inbox, devices, presence, push registrations, mutes, blocks (by it
//! and of it) and
//! memberships are deleted. Its messages stay in the other members'
//! timelines (as sent, by that name), but its request ids stop reserving
//! anything. A 1-1 chat with it is closed: the other user keeps reading it,
//! while sending there fails with `unknown_user`. If an account of that name is
//! created again, the chat opens again for both, and the new account joins it
//! after its newest event, so it never sees what came before.
//!
//! Removing with `erase` also erases the text of every message the account sent,
//! as a `delete` would (the other members see them deleted in `history`), in
//! transactions of [`ERASE_BATCH`] messages so that a server writing meanwhile
//! never waits long. No `delete` events are stored: devices that hold a copy of
//! the text are not told.

use messenger_protocol::UserId;
use rusqlite::{params, Connection, OptionalExtension};

use super::search::{self, IndexOp};

/// Messages erased per transaction.
pub(crate) const ERASE_BATCH: usize = 500;

/// Removes what `user` owned from the bridge's tables, inside the caller's transaction.
pub(crate) fn purge_user(conn: &Connection, user: &UserId) -> rusqlite::Result<()> {
    let user = user.as_str();
    conn.execute(
        "UPDATE conversations SET closed = 1
         WHERE kind = 'dm' AND conv IN (SELECT conv FROM members WHERE user = ?1)",
        params![user],
    )?;
    for table in [
        "members",
        "inbox",
        "devices",
        "presence",
        "push_tokens",
        "mutes",
    ] {
        conn.execute(
            &format!("DELETE FROM {table} WHERE user = ?1"),
            params![user],
        )?;
    }
    conn.execute(
        "UPDATE events SET retired_req_id = req_id, req_id = NULL
         WHERE sender = ?1 AND req_id IS NOT NULL",
        params![user],
    )?;
    conn.execute(
        "DELETE FROM blocks WHERE blocker = ?1 OR blocked = ?1",
        params![user],
    )?;
    Ok(())
}

/// The `(conv, seq)` of every message of `user` not deleted yet.
pub(crate) fn live_messages(
    conn: &Connection,
    user: &UserId,
) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare(
        "SELECT conv, seq FROM events
         WHERE sender = ?1 AND kind = 'message' AND COALESCE(deleted, 0) = 0
         ORDER BY conv, seq",
    )?;
    let keys = stmt
        .query_map(params![user.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect();
    keys
}

/// Erases the text of these messages as `delete` does (their rows and their
/// edits' rows lose the text, the message is marked deleted, its reactions and
/// its search index entry go), inside the caller's transaction; no `delete`
/// event is stored; their attachments are let go of as `delete` does. Returns
/// how many were erased (those not deleted since) and the hashes of the
/// uploads that went with them.
pub(crate) fn erase_messages(
    conn: &Connection,
    keys: &[(String, u64)],
) -> rusqlite::Result<(u64, Vec<String>)> {
    let mut erased = 0;
    let mut released = Vec::new();
    for (conv, seq) in keys {
        let found: Option<(Option<i64>, Option<String>)> = conn
            .prepare_cached(
                "SELECT text_row, body FROM events
                 WHERE conv = ?1 AND seq = ?2 AND kind = 'message' AND COALESCE(deleted, 0) = 0",
            )?
            .query_row(params![conv, seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((text_row, body)) = found else {
            continue;
        };
        conn.prepare_cached(
            "UPDATE events SET body = NULL, deleted = 1, text_row = NULL WHERE conv = ?1 AND seq = ?2",
        )?
        .execute(params![conv, seq])?;
        conn.prepare_cached(
            "UPDATE events SET body = NULL WHERE conv = ?1 AND ref_seq = ?2 AND kind = 'edit'",
        )?
        .execute(params![conv, seq])?;
        conn.prepare_cached("DELETE FROM reactions WHERE conv = ?1 AND seq = ?2")?
            .execute(params![conv, seq])?;
        if let Some(row) = text_row {
            conn.prepare_cached("DELETE FROM search_rows WHERE row = ?1")?
                .execute([row])?;
            if let Some(old) = body {
                let mut ops = vec![IndexOp::Remove { row, old }];
                search::apply(conn, &mut ops)?;
            }
        }
        released.extend(super::files::detach(conn, conv, *seq)?);
        erased += 1;
    }
    Ok((erased, released))
}
