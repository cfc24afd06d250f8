//! Blocking on PostgreSQL: `block`, `unblock` and `blocks` (the rules of
//! `sqlite::blocks`). A blocked user may not send, edit, react or type in the
//! 1-1 chat with the blocker (`Ctx::require_not_blocked`). `blocks` is
//! distributed by `blocker`: every read here starts from the blocker.

use messenger_protocol::wire::{ErrorCode, Event, RequestId};
use messenger_protocol::{ConvId, UserId};

use super::context::{int, nat, Ctx};
use crate::sqlite::blocks::MAX_BLOCKS;
use crate::{Effect, Failure};

impl Ctx<'_, '_> {
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
        if self.is_blocked(other, self.user)? {
            return Err(Failure::new(
                ErrorCode::Forbidden,
                format!("{other} has blocked you"),
            ));
        }
        Ok(())
    }

    /// Whether `blocker` blocks `blocked`.
    fn is_blocked(&self, blocker: &UserId, blocked: &UserId) -> Result<bool, postgres::Error> {
        self.db
            .one(
                "SELECT EXISTS (SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2)",
                &[&blocker.as_str(), &blocked.as_str()],
            )?
            .try_get(0)
    }

    /// Requires `user` to be another existing user (the target of a block or unblock).
    fn block_target(&self, user: &UserId) -> Result<(), Failure> {
        if user == self.user {
            return Err(Failure::bad("you cannot block or unblock yourself"));
        }
        self.require_user(user)
    }

    /// Blocks `user` (a repeat is acknowledged again), up to [`MAX_BLOCKS`] users.
    pub(super) fn block(&self, id: &RequestId, user: &UserId) -> Result<Vec<Effect>, Failure> {
        self.block_target(user)?;
        if self.is_blocked(self.user, user)? {
            return Ok(vec![self.ack_id(id)]);
        }
        let row = self.db.one(
            "SELECT COUNT(*) FROM blocks WHERE blocker = $1",
            &[&self.user.as_str()],
        )?;
        let count = usize::try_from(nat(&row, 0)?).unwrap_or(usize::MAX);
        if count >= MAX_BLOCKS {
            return Err(Failure::new(
                ErrorCode::TooLarge,
                format!("a user blocks at most {MAX_BLOCKS} users"),
            ));
        }
        // The same block from another bridge at once: the key conflicts, the
        // batch runs again and finds the block (an ack, as above).
        self.db.exec(
            "INSERT INTO blocks (blocker, blocked, created_ms) VALUES ($1, $2, $3)",
            &[&self.user.as_str(), &user.as_str(), &int(self.now)],
        )?;
        Ok(vec![self.ack_id(id)])
    }

    /// Unblocks `user` (acknowledged whether or not they were blocked).
    pub(super) fn unblock(&self, id: &RequestId, user: &UserId) -> Result<Vec<Effect>, Failure> {
        self.block_target(user)?;
        self.db.exec(
            "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2",
            &[&self.user.as_str(), &user.as_str()],
        )?;
        Ok(vec![self.ack_id(id)])
    }

    /// The users the sender blocks, by user id.
    pub(super) fn blocks(&self, id: &RequestId) -> Result<Vec<Effect>, Failure> {
        let rows = self.db.rows(
            "SELECT blocked FROM blocks WHERE blocker = $1 ORDER BY blocked COLLATE \"C\"",
            &[&self.user.as_str()],
        )?;
        let mut users = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Ok(user) = UserId::parse(row.try_get(0)?) {
                users.push(user);
            }
        }
        Ok(vec![self.reply(&Event::Blocks {
            id: id.clone(),
            users,
        })])
    }
}
