//! Actions on a stored message: edit, delete for everyone, react. Each is an
//! event of the conversation's timeline with its own seq, delivered to every
//! current member's inbox; the message's row keeps its current state (latest
//! text, when edited, whether deleted) and `reactions` who reacted with what.

use messenger_protocol::wire::{ErrorCode, Event, Reactions, RequestId, MAX_EMOJI_BYTES};
use messenger_protocol::{ConvId, UserId};
use rusqlite::{params, OptionalExtension};

use super::rows::{with_useq, Budget};
use super::Ctx;
use crate::config::Limits;
use crate::outcome::encode;
use crate::rate;
use crate::{Effect, Failure};

/// What an action needs to know of the message it acts on.
pub(super) struct Target {
    /// The author.
    pub(super) from: String,
    /// When it was sent.
    pub(super) ts: u64,
    /// Deleted for everyone.
    pub(super) deleted: bool,
    /// Its row in the search index, while not deleted.
    pub(super) text_row: Option<i64>,
    /// Its current text (none once deleted).
    pub(super) body: Option<String>,
}

/// The kinds of action, as `events.kind` keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Edit,
    Delete,
    Reaction,
}

impl Action {
    /// The action's `events.kind`.
    pub(crate) fn as_column(self) -> &'static str {
        match self {
            Self::Edit => "edit",
            Self::Delete => "delete",
            Self::Reaction => "reaction",
        }
    }

    /// The event of this action stored at `(conv, seq)` by `from`, for a
    /// member's useq. `text` is an edit's body or a reaction's emoji.
    pub(crate) fn event<'a>(
        self,
        conv: &'a ConvId,
        seq: u64,
        ts: u64,
        from: &'a UserId,
        target: u64,
        text: Option<&'a str>,
    ) -> impl Fn(u64) -> Event + 'a {
        move |useq: u64| {
            let (conv, from, useq) = (conv.clone(), from.clone(), Some(useq));
            match self {
                Self::Edit => Event::Edit {
                    conv,
                    seq,
                    ts,
                    from,
                    target,
                    body: text.map(str::to_owned),
                    useq,
                },
                Self::Delete => Event::Delete {
                    conv,
                    seq,
                    ts,
                    from,
                    target,
                    useq,
                },
                Self::Reaction => Event::Reaction {
                    conv,
                    seq,
                    ts,
                    from,
                    target,
                    emoji: text.unwrap_or_default().to_owned(),
                    useq,
                },
            }
        }
    }
}

impl Ctx<'_> {
    /// The message `target` of `conv`, which the sender must be able to see (at or
    /// after their joining); anything else is `bad_request`. The caller has checked
    /// that the sender is a member.
    pub(super) fn target_message(&self, conv: &ConvId, target: u64) -> Result<Target, Failure> {
        let row: Option<(String, Target)> = self
            .conn
            .prepare_cached(
                "SELECT kind, sender, ts, deleted, text_row, body FROM events WHERE conv = ?1 AND seq = ?2",
            )?
            .query_row(params![conv.to_string(), target], |r| {
                Ok((
                    r.get(0)?,
                    Target {
                        from: r.get(1)?,
                        ts: r.get(2)?,
                        deleted: r.get::<_, Option<bool>>(3)?.unwrap_or(false),
                        text_row: r.get(4)?,
                        body: r.get(5)?,
                    },
                ))
            })
            .optional()?;
        let joined = self
            .membership(conv, self.user)?
            .map_or(u64::MAX, |m| m.joined_seq);
        match row {
            Some((kind, found)) if kind == "message" && target >= joined => Ok(found),
            _ => Err(Failure::bad(format!("{conv} has no message {target}"))),
        }
    }

    /// Requires the sender to be a current member and `target` a message they can
    /// see that is not deleted (for what may not touch a deleted message).
    fn live_target(&self, conv: &ConvId, target: u64) -> Result<Target, Failure> {
        self.require_member(conv, false)?;
        let found = self.target_message(conv, target)?;
        if found.deleted {
            return Err(Failure::bad(format!(
                "message {target} of {conv} was deleted"
            )));
        }
        Ok(found)
    }

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
        let found = self.live_target(conv, target)?;
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
        self.conn
            .prepare_cached(
                "UPDATE events SET body = ?3, edited_ts = ?4 WHERE conv = ?1 AND seq = ?2",
            )?
            .execute(params![conv.to_string(), target, body, self.now])?;
        if let (Some(row), Some(old)) = (found.text_row, found.body) {
            self.index_replace(row, old, body);
        }
        self.store_action(id, conv, Action::Edit, target, Some(body))
    }

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
        let found = self.live_target(conv, target)?;
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
        self.conn
            .prepare_cached(
                "UPDATE events SET body = NULL, deleted = 1, text_row = NULL WHERE conv = ?1 AND seq = ?2",
            )?
            .execute(params![conv_s, target])?;
        self.conn
            .prepare_cached(
                "UPDATE events SET body = NULL WHERE conv = ?1 AND ref_seq = ?2 AND kind = 'edit'",
            )?
            .execute(params![conv_s, target])?;
        self.conn
            .prepare_cached("DELETE FROM reactions WHERE conv = ?1 AND seq = ?2")?
            .execute(params![conv_s, target])?;
        if let Some(row) = found.text_row {
            self.conn
                .prepare_cached("DELETE FROM search_rows WHERE row = ?1")?
                .execute([row])?;
            if let Some(old) = found.body {
                self.index_remove(row, old);
            }
        }
        let released = super::files::detach(self.conn, &conv_s, target)?;
        self.released.borrow_mut().extend(released);
        self.store_action(id, conv, Action::Delete, target, None)
    }

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
        self.live_target(conv, target)?;
        let conv_s = conv.to_string();
        if emoji.is_empty() {
            self.conn
                .prepare_cached("DELETE FROM reactions WHERE conv = ?1 AND seq = ?2 AND user = ?3")?
                .execute(params![conv_s, target, self.user.as_str()])?;
        } else {
            self.conn
                .prepare_cached(
                    "INSERT INTO reactions (conv, seq, user, emoji, ts) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (conv, seq, user) DO UPDATE SET emoji = excluded.emoji, ts = excluded.ts",
                )?
                .execute(params![conv_s, target, self.user.as_str(), emoji, self.now])?;
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

    fn action_ack(&self, id: &RequestId, conv: &ConvId, seq: u64, ts: u64) -> Effect {
        self.reply(&Event::Ack {
            id: id.clone(),
            conv: Some(conv.clone()),
            seq: Some(seq),
            ts: Some(ts),
        })
    }

    /// Stores an action's event at the conversation's next seq, delivers it to
    /// every current member and acks it. `text` is an edit's body or a reaction's emoji.
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
                let of = |user: &UserId| members.iter().position(|m| m == user).map(|i| useqs[i]);
                (of(lo), of(hi))
            }
            None => (None, None),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO events (conv, seq, ts, kind, sender, device, req_id, body, ref_seq, useq_lo, useq_hi)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                conv.to_string(),
                seq,
                self.now,
                action.as_column(),
                self.user.as_str(),
                self.device.as_str(),
                id.as_str(),
                text,
                target,
                useq_lo,
                useq_hi
            ])?;
        let ts = self.now;
        let event = action.event(conv, seq, ts, self.user, target, text);
        let mut out = self.deliver_at(conv, seq, &members, &useqs, event)?;
        out.push(self.action_ack(id, conv, seq, ts));
        Ok(out)
    }

    /// Puts the reactions of the messages of `conv` with seqs `lo..=hi` into
    /// those of `events` (see [`with_reactions`]).
    pub(super) fn fold_reactions(
        &self,
        conv: &ConvId,
        lo: u64,
        hi: u64,
        events: &mut [Event],
    ) -> rusqlite::Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, emoji, user FROM reactions WHERE conv = ?1 AND seq >= ?2 AND seq <= ?3
             ORDER BY seq, emoji, user",
        )?;
        let mut rows = stmt
            .query_map(params![conv.to_string(), lo, hi], |r| {
                Ok((
                    r.get::<_, u64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        if rows.is_empty() {
            return Ok(());
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
    pub(super) fn reactions_of(&self, conv: &ConvId, event: &mut Event) -> rusqlite::Result<()> {
        let Event::Message { seq, .. } = event else {
            return Ok(());
        };
        let seq = *seq;
        self.fold_reactions(conv, seq, seq, std::slice::from_mut(event))
    }
}

/// Sets a message event's `reactions` from (emoji, user) pairs, ordered by
/// emoji then user. A message event must fit one reply: users beyond what
/// fits (a large group's reactions to a message near the size limit) are left
/// out; the `reaction` events have them all.
pub(crate) fn with_reactions(limits: &Limits, event: &mut Event, pairs: Vec<(String, String)>) {
    let mut room = Budget::new(limits.max_reply_bytes());
    room.take_bytes(encode(event).len() + 512);
    let mut reactions = Reactions::new();
    for (emoji, user) in pairs {
        let Ok(user) = UserId::parse(&user) else {
            continue;
        };
        // "emoji":["user"], with escapes at their worst.
        let cost = emoji.len() * 6 + user.as_str().len() + 8;
        if !room.take_bytes(cost) {
            break;
        }
        reactions.entry(emoji).or_default().push(user);
    }
    if let Event::Message { reactions: r, .. } = event {
        *r = reactions;
    }
}

/// Requires a reaction's emoji to be at most `MAX_EMOJI_BYTES` without control
/// characters (`""` takes a reaction back).
pub(crate) fn check_emoji(emoji: &str) -> Result<(), Failure> {
    if emoji.len() > MAX_EMOJI_BYTES {
        return Err(Failure::bad(format!(
            "emoji of {} bytes is over the limit of {MAX_EMOJI_BYTES}",
            emoji.len()
        )));
    }
    if emoji.chars().any(char::is_control) {
        return Err(Failure::bad("emoji must not contain control characters"));
    }
    Ok(())
}
