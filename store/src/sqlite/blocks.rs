//! Blocking: `block`, `unblock` and `blocks`. A blocked user may not send, edit,
//! react or type in the 1-1 chat with the blocker (`Ctx::require_not_blocked`), nor
//! see the blocker's presence (the broker reads the same table).

use messenger_protocol::wire::{ErrorCode, Event, RequestId};
use messenger_protocol::{ConvId, UserId};
use rusqlite::{params, Connection, OptionalExtension};

use super::Ctx;
use crate::{Effect, Failure};

/// The most users one user may block: the `blocks` reply lists them all in one packet.
pub(crate) const MAX_BLOCKS: usize = 1000;

/// Whether `blocker` blocks `blocked`.
pub(super) fn blocks(
    conn: &Connection,
    blocker: &UserId,
    blocked: &UserId,
) -> rusqlite::Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
        .query_row(params![blocker.as_str(), blocked.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The users `blocker` blocks, by user id.
pub(super) fn blocked_by(conn: &Connection, blocker: &UserId) -> rusqlite::Result<Vec<UserId>> {
    let mut stmt =
        conn.prepare_cached("SELECT blocked FROM blocks WHERE blocker = ?1 ORDER BY blocked")?;
    let names = stmt
        .query_map([blocker.as_str()], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names.iter().filter_map(|n| UserId::parse(n).ok()).collect())
}

impl Ctx<'_> {
    /// Refuses (`forbidden`) a sender whom the other user of the 1-1 chat `conv`
    /// blocks; anything else passes (groups, conversations the sender is not in).
    pub(super) fn require_not_blocked(&self, conv: &ConvId) -> Result<(), Failure> {
        let Some((a, b)) = conv.direct_members() else {
            return Ok(());
        };
        let other = if self.user == a {
            b
        } else if self.user == b {
            a
        } else {
            return Ok(());
        };
        if blocks(self.conn, other, self.user)? {
            return Err(Failure::new(
                ErrorCode::Forbidden,
                format!("{other} has blocked you"),
            ));
        }
        Ok(())
    }

    /// Requires `user` to be another existing user (the target of a block or unblock).
    fn block_target(&self, user: &UserId) -> Result<(), Failure> {
        if user == self.user {
            return Err(Failure::bad("you cannot block or unblock yourself"));
        }
        self.require_user(user)
    }

    pub(super) fn block(&self, id: &RequestId, user: &UserId) -> Result<Vec<Effect>, Failure> {
        self.block_target(user)?;
        if blocks(self.conn, self.user, user)? {
            return Ok(vec![self.ack_id(id)]);
        }
        let count: usize = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM blocks WHERE blocker = ?1")?
            .query_row([self.user.as_str()], |r| r.get(0))?;
        if count >= MAX_BLOCKS {
            return Err(Failure::new(
                ErrorCode::TooLarge,
                format!("a user blocks at most {MAX_BLOCKS} users"),
            ));
        }
        self.conn
            .prepare_cached(
                "INSERT INTO blocks (blocker, blocked, created_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![self.user.as_str(), user.as_str(), self.now])?;
        Ok(vec![self.ack_id(id)])
    }

    pub(super) fn unblock(&self, id: &RequestId, user: &UserId) -> Result<Vec<Effect>, Failure> {
        self.block_target(user)?;
        self.conn
            .prepare_cached("DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
            .execute(params![self.user.as_str(), user.as_str()])?;
        Ok(vec![self.ack_id(id)])
    }

    pub(super) fn blocks(&self, id: &RequestId) -> Result<Vec<Effect>, Failure> {
        let users = blocked_by(self.conn, self.user)?;
        Ok(vec![self.reply(&Event::Blocks {
            id: id.clone(),
            users,
        })])
    }
}
