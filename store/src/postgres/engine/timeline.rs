//! Edit, delete and react on PostgreSQL (the rules of `sqlite::timeline`).
//! Each action is an event of the conversation's timeline with its own seq,
//! delivered to every current member's inbox; the message's row keeps its
//! current state and `reactions` who reacted with what.
//!
//! Several bridges may act on one message at once, so an action locks the
//! message's row before it checks it (see [`Lock`]): an edit or a reaction never
//! lands on a message another bridge has just deleted.

use messenger_protocol::wire::{ErrorCode, Event, RequestId};
use messenger_protocol::{ConvId, UserId};

use super::context::{int, nat, Ctx};
use crate::rate;
use crate::rows::with_useq;
use crate::sqlite::timeline::{check_emoji, with_reactions, Action};
use crate::{Effect, Failure};

/// What an action needs to know of the message it acts on.
pub(super) struct Target {
    /// The author.
    pub(super) from: String,
    /// When it was sent.
    pub(super) ts: u64,
    /// Deleted for everyone.
    pub(super) deleted: bool,
}

/// How [`Ctx::target_row`] reads the message's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    /// A plain read (a reply's target: nothing changes the message).
    None,
    /// Shared to the commit (a reaction: a deletion waits for it, or it sees
    /// the deletion).
    Share,
    /// Exclusive to the commit (an edit or a deletion, which update the row).
    Update,
}

impl Ctx<'_, '_> {
    /// The message `target` of `conv`, which the sender must be able to see (at or
    /// after their joining); anything else is `bad_request`. The caller has checked
    /// that the sender is a member.
    pub(super) fn target_message(&self, conv: &ConvId, target: u64) -> Result<Target, Failure> {
        self.target_row(conv, target, Lock::None)
    }

    /// [`Ctx::target_message`], reading the row under `lock`.
    fn target_row(&self, conv: &ConvId, target: u64, lock: Lock) -> Result<Target, Failure> {
        let sql = match lock {
            Lock::None => {
                "SELECT kind, sender, ts, deleted FROM events WHERE conv = $1 AND seq = $2"
            }
            Lock::Share => {
                "SELECT kind, sender, ts, deleted FROM events WHERE conv = $1 AND seq = $2
                 FOR SHARE"
            }
            Lock::Update => {
                "SELECT kind, sender, ts, deleted FROM events WHERE conv = $1 AND seq = $2
                 FOR NO KEY UPDATE"
            }
        };
        let row = match self.db.opt(sql, &[&conv.to_string(), &int(target)])? {
            Some(r) => Some((
                r.try_get::<_, String>(0)?,
                Target {
                    from: r.try_get(1)?,
                    ts: nat(&r, 2)?,
                    deleted: r.try_get(3)?,
                },
            )),
            None => None,
        };
        let joined = self
            .membership(conv, self.user)?
            .map_or(u64::MAX, |m| m.joined_seq);
        match row {
            Some((kind, found)) if kind == "message" && target >= joined => Ok(found),
            _ => Err(Failure::bad(format!("{conv} has no message {target}"))),
        }
    }

    /// Requires the sender to be a current member and `target` a message they can
    /// see that is not deleted (for what may not touch a deleted message); the
    /// message's row stays locked (`lock`) to the commit.
    fn live_target(&self, conv: &ConvId, target: u64, lock: Lock) -> Result<Target, Failure> {
        self.require_member(conv, false)?;
        let found = self.target_row(conv, target, lock)?;
        if found.deleted {
            return Err(Failure::bad(format!(
                "message {target} of {conv} was deleted"
            )));
        }
        Ok(found)
    }

    /// Replaces a message's text (its author, within the edit window).
    pub(super) fn edit(
        &self,
        id: &RequestId,
        conv: &ConvId,
        target: u64,
        body: &str,
    ) -> Result<Vec<Effect>, Failure> {
        self.check_body(body)?;
        if let Some(out) = self.repeated_action(id, Action::Edit)? {
            return Ok(out);
        }
        self.rate(rate::Action::Send)?;
        self.require_not_blocked(conv)?;
        let found = self.live_target(conv, target, Lock::Update)?;
        if found.from != self.user.as_str() {
            return Err(Failure::new(
                ErrorCode::Forbidden,
                "only its author may edit a message",
            ));
        }
        if self.now.saturating_sub(found.ts) > self.limits.edit_window_ms() {
            return Err(Failure::new(
                ErrorCode::Forbidden,
                format!(
                    "a message may be edited within {} s of sending",
                    self.limits.edit_window_secs
                ),
            ));
        }
        self.db.exec(
            "UPDATE events SET body = $3, edited_ts = $4 WHERE conv = $1 AND seq = $2",
            &[&conv.to_string(), &int(target), &body, &int(self.now)],
        )?;
        self.store_action(id, conv, Action::Edit, target, Some(body))
    }

    /// Deletes a message for everyone (its author, or in a group an admin): its
    /// text and its edits' text are erased, its reactions and attachments go.
    pub(super) fn delete(
        &self,
        id: &RequestId,
        conv: &ConvId,
        target: u64,
    ) -> Result<Vec<Effect>, Failure> {
        if let Some(out) = self.repeated_action(id, Action::Delete)? {
            return Ok(out);
        }
        self.rate(rate::Action::Send)?;
        let found = self.live_target(conv, target, Lock::Update)?;
        if found.from != self.user.as_str() {
            let admin = conv.direct_members().is_none()
                && self.membership(conv, self.user)?.is_some_and(|m| m.admin);
            if !admin {
                return Err(Failure::new(
                    ErrorCode::Forbidden,
                    "only its author or a group admin may delete a message",
                ));
            }
        }
        // The text goes, with every edit's: erased from storage, not hidden.
        let conv_s = conv.to_string();
        self.db.exec(
            "UPDATE events SET body = NULL, deleted = TRUE WHERE conv = $1 AND seq = $2",
            &[&conv_s, &int(target)],
        )?;
        self.db.exec(
            "UPDATE events SET body = NULL WHERE conv = $1 AND ref_seq = $2 AND kind = 'edit'",
            &[&conv_s, &int(target)],
        )?;
        self.db.exec(
            "DELETE FROM reactions WHERE conv = $1 AND seq = $2",
            &[&conv_s, &int(target)],
        )?;
        self.detach(&conv_s, target)?;
        self.store_action(id, conv, Action::Delete, target, None)
    }

    /// Lets go of the attachments of the deleted message `(conv, seq)` (the rules
    /// of `sqlite::files::detach`): its `attachments` rows and column, and the
    /// `uploads` row of each file no other message carries. The upload catalog
    /// is not on PostgreSQL yet (each broker node keeps its uploads), so the
    /// bytes on disk are left where they are.
    pub(super) fn detach(&self, conv: &str, seq: u64) -> Result<(), postgres::Error> {
        let files = self.db.rows(
            "DELETE FROM attachments WHERE conv = $1 AND seq = $2 RETURNING file",
            &[&conv, &int(seq)],
        )?;
        if files.is_empty() {
            return Ok(());
        }
        self.db.exec(
            "UPDATE events SET attachments = NULL WHERE conv = $1 AND seq = $2",
            &[&conv, &int(seq)],
        )?;
        for row in &files {
            let file: &str = row.try_get(0)?;
            // The bytes go at the end of the batch if no upload names their hash.
            if let Some(gone) = self.db.opt(
                "DELETE FROM uploads
                 WHERE file = $1 AND NOT EXISTS (SELECT 1 FROM attachments WHERE file = $1)
                 RETURNING sha256",
                &[&file],
            )? {
                self.released.borrow_mut().push(gone.try_get(0)?);
            }
        }
        Ok(())
    }

    /// Sets (or with `""` takes back) the sender's reaction to a message.
    pub(super) fn react(
        &self,
        id: &RequestId,
        conv: &ConvId,
        target: u64,
        emoji: &str,
    ) -> Result<Vec<Effect>, Failure> {
        check_emoji(emoji)?;
        if let Some(out) = self.repeated_action(id, Action::Reaction)? {
            return Ok(out);
        }
        self.rate(rate::Action::Send)?;
        self.require_not_blocked(conv)?;
        self.live_target(conv, target, Lock::Share)?;
        let conv_s = conv.to_string();
        if emoji.is_empty() {
            self.db.exec(
                "DELETE FROM reactions WHERE conv = $1 AND seq = $2 AND \"user\" = $3",
                &[&conv_s, &int(target), &self.user.as_str()],
            )?;
        } else {
            self.db.exec(
                "INSERT INTO reactions (conv, seq, \"user\", emoji, ts) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (conv, seq, \"user\") DO UPDATE SET emoji = EXCLUDED.emoji, ts = EXCLUDED.ts",
                &[
                    &conv_s,
                    &int(target),
                    &self.user.as_str(),
                    &emoji,
                    &int(self.now),
                ],
            )?;
        }
        self.store_action(id, conv, Action::Reaction, target, Some(emoji))
    }

    /// A repeated action: the stored ack, and its event delivered again.
    fn repeated_action(
        &self,
        id: &RequestId,
        action: Action,
    ) -> Result<Option<Vec<Effect>>, Failure> {
        let Some((conv, seq)) = self.prior(id, action.as_column())? else {
            return Ok(None);
        };
        let unreadable = || Failure::new(ErrorCode::Internal, "stored event is unreadable");
        let event = self.stored_event(&conv, seq)?.ok_or_else(unreadable)?;
        let ts = match &event {
            Event::Edit { ts, .. } | Event::Delete { ts, .. } | Event::Reaction { ts, .. } => *ts,
            _ => return Err(unreadable()),
        };
        let mut out = self.redeliver(&conv, seq, |useq| with_useq(event.clone(), useq))?;
        out.push(self.action_ack(id, &conv, seq, ts));
        Ok(Some(out))
    }

    /// The `ack` of an action stored at `(conv, seq)`.
    fn action_ack(&self, id: &RequestId, conv: &ConvId, seq: u64, ts: u64) -> Effect {
        self.reply(&Event::Ack {
            id: id.clone(),
            conv: Some(conv.clone()),
            seq: Some(seq),
            ts: Some(ts),
        })
    }

    /// Stores an action's event at the conversation's next seq (with the
    /// sender's request id, for repeats), delivers it to every current member
    /// and acks it. `text` is an edit's body or a reaction's emoji.
    fn store_action(
        &self,
        id: &RequestId,
        conv: &ConvId,
        action: Action,
        target: u64,
        text: Option<&str>,
    ) -> Result<Vec<Effect>, Failure> {
        let seq = self.next_seq(conv)?;
        let members = self.members(conv)?;
        let useqs = self.next_useqs(&members)?;
        // A dm's event keeps its two useqs (users in id order) for redelivery.
        let (useq_lo, useq_hi) = match conv.direct_members() {
            Some((lo, hi)) => {
                let of = |user: &UserId| {
                    members
                        .iter()
                        .position(|m| m == user)
                        .map(|i| int(useqs[i]))
                };
                (of(lo), of(hi))
            }
            None => (None, None),
        };
        self.db.exec(
            "INSERT INTO events (conv, seq, ts, kind, sender, device, req_id, body, ref_seq, useq_lo, useq_hi)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &conv.to_string(),
                &int(seq),
                &int(self.now),
                &action.as_column(),
                &self.user.as_str(),
                &self.device.as_str(),
                &id.as_str(),
                &text,
                &int(target),
                &useq_lo,
                &useq_hi,
            ],
        )?;
        self.remember_request(id, conv, seq)?;
        let ts = self.now;
        let event = action.event(conv, seq, ts, self.user, target, text);
        let mut out = self.deliver_at(conv, seq, &members, &useqs, event)?;
        out.push(self.action_ack(id, conv, seq, ts));
        Ok(out)
    }

    /// Puts the reactions of the messages of `conv` with seqs `lo..=hi` into
    /// those of `events` (see `sqlite::timeline::with_reactions`). Emoji and
    /// users are ordered by their bytes (`COLLATE "C"`), as SQLite orders them,
    /// whatever the database's collation.
    pub(super) fn fold_reactions(
        &self,
        conv: &ConvId,
        lo: u64,
        hi: u64,
        events: &mut [Event],
    ) -> Result<(), postgres::Error> {
        let found = self.db.rows(
            "SELECT seq, emoji, \"user\" FROM reactions WHERE conv = $1 AND seq >= $2 AND seq <= $3
             ORDER BY seq, emoji COLLATE \"C\", \"user\" COLLATE \"C\"",
            &[&conv.to_string(), &int(lo), &int(hi)],
        )?;
        if found.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(found.len());
        for r in &found {
            rows.push((
                nat(r, 0)?,
                r.try_get::<_, String>(1)?,
                r.try_get::<_, String>(2)?,
            ));
        }
        for event in events.iter_mut() {
            if let Event::Message { seq, .. } = event {
                let seq = *seq;
                let start = rows.partition_point(|r| r.0 < seq);
                let end = rows.partition_point(|r| r.0 <= seq);
                let mine: Vec<_> = rows.drain(start..end).map(|(_, e, u)| (e, u)).collect();
                with_reactions(self.limits, event, mine);
            }
        }
        Ok(())
    }

    /// Puts the reactions of one message into its event.
    pub(super) fn reactions_of(
        &self,
        conv: &ConvId,
        event: &mut Event,
    ) -> Result<(), postgres::Error> {
        let Event::Message { seq, .. } = event else {
            return Ok(());
        };
        let seq = *seq;
        self.fold_reactions(conv, seq, seq, std::slice::from_mut(event))
    }
}
