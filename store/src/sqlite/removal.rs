//! What removing an account does to the conversations: nothing of it is left for
//! a new account of the same name to inherit.
//!
//! The account's inbox, devices, presence, push registrations, mutes and
//! memberships are deleted. Its messages stay in the other members'
//! timelines (as sent, by that name), but its request ids stop reserving
//! anything. A 1-1 chat with it is closed: the other user keeps reading it,
//! while sending there fails with `unknown_user`. If an account of that name is
//! created again, the chat opens again for both, and the new account joins it
//! after its newest event, so it never sees what came before.

use messenger_protocol::UserId;
use rusqlite::{params, Connection};

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
    Ok(())
}
