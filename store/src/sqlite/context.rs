//! The context a request is handled in, and what every handler shares:
//! membership checks, sequencing (`seq`, `useq`), delivery to inboxes, repeats.

use std::cell::RefCell;

use messenger_protocol::wire::{ErrorCode, Event, Request, RequestId};
use messenger_protocol::{ConvId, DeviceId, UserId};
use rusqlite::{params, Connection, OptionalExtension};

use super::pushes::Notify;
use super::search::IndexOp;
use crate::config::Limits;
use crate::rate::{Action, Allowance};
use crate::{Effect, Failure, Notification};

/// Who sent a request, and the context to handle it in.
pub(super) struct Ctx<'a> {
    pub(super) conn: &'a Connection,
    pub(super) user: &'a UserId,
    pub(super) device: &'a DeviceId,
    pub(super) limits: &'a Limits,
    /// Per-user rate limits.
    pub(super) rates: &'a Allowance<'a>,
    /// The server's clock for this batch, ms since the epoch.
    pub(super) now: u64,
    /// Whether stored messages call for push notifications.
    pub(super) notify: Notify,
    /// The notifications this request calls for, to hand to the push workers
    /// once the transaction is committed (dropped if the request fails).
    pub(super) pushes: RefCell<Vec<Notification>>,
    /// The search index changes this request calls for, applied at the end of
    /// the batch (see `search::IndexOp`; dropped if the request fails).
    pub(super) index: RefCell<Vec<IndexOp>>,
    /// The hashes of the uploads this request let go of (a deleted message's
    /// files), whose bytes go at the end of the batch (dropped if the request fails).
    pub(super) released: RefCell<Vec<String>>,
}

impl Ctx<'_> {
    /// Handles one decoded request.
    pub(super) fn handle(&self, request: Request) -> Result<Vec<Effect>, Failure> {
        match request {
            Request::Send {
                id,
                conv,
                body,
                reply_to,
                attachments,
            } => self.send(&id, &conv, &body, reply_to, &attachments),
            Request::Edit {
                id,
                conv,
                target,
                body,
            } => self.edit(&id, &conv, target, &body),
            Request::Delete { id, conv, target } => self.delete(&id, &conv, target),
            Request::React {
                id,
                conv,
                target,
                emoji,
            } => self.react(&id, &conv, target, &emoji),
            Request::Search {
                id,
                query,
                conv,
                cursor,
                limit,
            } => self.search(&id, &query, conv.as_ref(), cursor.as_deref(), limit),
            Request::Receipt { conv, seq, status } => self.receipt(&conv, seq, status),
            Request::Sync { id, after, limit } => self.sync(&id, after, limit),
            Request::History {
                id,
                conv,
                before,
                limit,
            } => self.history(&id, &conv, before, limit),
            Request::Conversations { id, limit, cursor } => {
                self.conversations(&id, limit, cursor.as_deref())
            }
            Request::Members {
                id,
                conv,
                after,
                limit,
            } => self.members_page(&id, &conv, after.as_ref(), limit),
            Request::Typing { conv } => self.typing(&conv),
            Request::Token { id } => {
                self.rates.check(self.user, Action::Token)?;
                self.require_device_room()?;
                let token = messenger_accounts::issue_token(self.conn, self.user, self.device)
                    .map_err(|e| match e {
                        messenger_accounts::AccountsError::NotFound(_) => {
                            Failure::new(ErrorCode::UnknownUser, "your account no longer exists")
                        }
                        other => {
                            tracing::error!(cause = %other, "cannot issue a token");
                            Failure::new(ErrorCode::Internal, "cannot issue a token; retry later")
                        }
                    })?;
                Ok(vec![self.reply(&Event::Token { id, token })])
            }
            Request::GroupCreate { id, name, members } => self.group_create(&id, &name, &members),
            Request::GroupAdd { id, conv, user } => self.group_add(&id, &conv, &user),
            Request::GroupRemove { id, conv, user } => self.group_remove(&id, &conv, &user),
            Request::GroupLeave { id, conv } => self.group_leave(&id, &conv),
            Request::PushRegister {
                id,
                platform,
                token,
            } => self.push_register(&id, platform, &token),
            Request::PushUnregister {
                id,
                platform,
                token,
            } => self.push_unregister(&id, platform, &token),
            Request::Mute { id, conv, until } => self.mute(&id, &conv, until),
            Request::Block { id, user } => self.block(&id, &user),
            Request::Unblock { id, user } => self.unblock(&id, &user),
            Request::Blocks { id } => self.blocks(&id),
        }
    }

    /// The reply to the requesting device.
    pub(super) fn reply(&self, event: &Event) -> Effect {
        Effect::reply(event)
    }

    /// The conversation's row: (kind, name, last_seq), if it exists.
    pub(super) fn conversation(&self, conv: &ConvId) -> rusqlite::Result<Option<ConvRow>> {
        self.conn
            .prepare_cached("SELECT kind, name, last_seq FROM conversations WHERE conv = ?1")?
            .query_row([conv.to_string()], |r| {
                Ok(ConvRow {
                    kind: Kind::from_column(&r.get::<_, String>(0)?),
                    name: r.get(1)?,
                    last_seq: r.get(2)?,
                })
            })
            .optional()
    }

    /// The user's membership: (joined_seq, left_seq, role), if they ever were a member.
    pub(super) fn membership(
        &self,
        conv: &ConvId,
        user: &UserId,
    ) -> rusqlite::Result<Option<Membership>> {
        self.conn
            .prepare_cached(
                "SELECT joined_seq, left_seq, role FROM members WHERE conv = ?1 AND user = ?2",
            )?
            .query_row(params![conv.to_string(), user.as_str()], |r| {
                Ok(Membership {
                    joined_seq: r.get(0)?,
                    left_seq: r.get(1)?,
                    admin: r.get::<_, String>(2)? == "admin",
                })
            })
            .optional()
    }

    /// Current members, sorted.
    pub(super) fn members(&self, conv: &ConvId) -> rusqlite::Result<Vec<UserId>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT user FROM members WHERE conv = ?1 AND left_seq IS NULL ORDER BY user",
        )?;
        let names = stmt
            .query_map([conv.to_string()], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(names.iter().filter_map(|n| UserId::parse(n).ok()).collect())
    }

    /// Requires the sender to be a current member (creating a dm on first use
    /// when `create` is set); returns the conversation's last seq.
    pub(super) fn require_member(&self, conv: &ConvId, create: bool) -> Result<u64, Failure> {
        if let Some((a, b)) = conv.direct_members() {
            if self.user != a && self.user != b {
                return Err(Failure::new(
                    ErrorCode::NotMember,
                    format!("you are not a member of {conv}"),
                ));
            }
            let other = if self.user == a { b } else { a };
            if let Some(row) = self.conversation(conv)? {
                return self.rejoin_direct(conv, other, row.last_seq, create);
            }
            self.require_user(other)?;
            if create {
                self.conn.execute(
                    "INSERT INTO conversations (conv, kind, name, created_ms, last_seq) VALUES (?1, 'dm', '', ?2, 0)",
                    params![conv.to_string(), self.now],
                )?;
                for user in [a, b] {
                    self.conn.execute(
                        "INSERT INTO members (conv, user, role, joined_seq) VALUES (?1, ?2, 'member', 1)",
                        params![conv.to_string(), user.as_str()],
                    )?;
                }
            }
            return Ok(0);
        }
        let Some(ConvRow { last_seq: last, .. }) = self.conversation(conv)? else {
            return Err(Failure::new(
                ErrorCode::UnknownConversation,
                format!("no conversation {conv}"),
            ));
        };
        match self.membership(conv, self.user)? {
            Some(m) if m.left_seq.is_none() => Ok(last),
            _ => Err(Failure::new(
                ErrorCode::NotMember,
                format!("you are not a member of {conv}"),
            )),
        }
    }

    /// The seqs of `conv` the sender may read, `(from, to)` inclusive: a member's
    /// from their joining to the newest event, a former group member's from their
    /// joining to their leaving. Refuses others as `require_member` does.
    pub(super) fn read_window(&self, conv: &ConvId) -> Result<(u64, u64), Failure> {
        match self.require_member(conv, false) {
            Ok(last) => {
                let joined = self
                    .membership(conv, self.user)?
                    .map_or(1, |m| m.joined_seq);
                Ok((joined, last))
            }
            Err(failure)
                if failure.code == ErrorCode::NotMember && conv.direct_members().is_none() =>
            {
                // A former group member may read what they saw while a member.
                match self.membership(conv, self.user)? {
                    Some(m) => Ok((m.joined_seq, m.left_seq.unwrap_or(0))),
                    None => Err(failure),
                }
            }
            Err(failure) => Err(failure),
        }
    }

    /// Requires the sender's row in an existing dm. A dm outlives a removed account
    /// (see `removal`): a new account of that name has no row in it, and joins it
    /// after its newest event by sending (`create`); until then it cannot read it.
    /// Sending also needs the other user: a removed one is `unknown_user`, a new
    /// account of that name joins the same way. Returns the conversation's last seq.
    pub(super) fn rejoin_direct(
        &self,
        conv: &ConvId,
        other: &UserId,
        last: u64,
        create: bool,
    ) -> Result<u64, Failure> {
        let mine = self.membership(conv, self.user)?.is_some();
        if !create {
            return if mine {
                Ok(last)
            } else {
                Err(Failure::new(
                    ErrorCode::NotMember,
                    format!("you are not a member of {conv}"),
                ))
            };
        }
        let theirs = self.membership(conv, other)?.is_some();
        if !theirs {
            self.require_user(other)?;
        }
        for (user, present) in [(self.user, mine), (other, theirs)] {
            if !present {
                self.conn.execute(
                    "INSERT INTO members (conv, user, role, joined_seq) VALUES (?1, ?2, 'member', ?3)",
                    params![conv.to_string(), user.as_str(), last + 1],
                )?;
            }
        }
        self.conn.execute(
            "UPDATE conversations SET closed = 0 WHERE conv = ?1 AND closed = 1",
            [conv.to_string()],
        )?;
        Ok(last)
    }

    /// Requires the requesting device to be known, or room for one more device
    /// (`limits.max_devices_per_user`), counting devices with presence or a token.
    pub(super) fn require_device_room(&self) -> Result<(), Failure> {
        let (known, count): (bool, usize) = self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM device_tokens WHERE user = ?1 AND device = ?2)
                     OR EXISTS (SELECT 1 FROM devices WHERE user = ?1 AND device = ?2),
                        (SELECT COUNT(*) FROM (SELECT device FROM device_tokens WHERE user = ?1
                                               UNION SELECT device FROM devices WHERE user = ?1))",
            )?
            .query_row(params![self.user.as_str(), self.device.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        if known || count < self.limits.max_devices_per_user {
            Ok(())
        } else {
            Err(Failure::new(
                ErrorCode::Forbidden,
                format!(
                    "a user has at most {} devices",
                    self.limits.max_devices_per_user
                ),
            ))
        }
    }

    /// Takes one request of `action` from the sender's allowance, or refuses it
    /// `rate_limited`. Handlers call it after answering repeats, before storing.
    pub(super) fn rate(&self, action: Action) -> Result<(), Failure> {
        self.rates.check(self.user, action)
    }

    /// Requires a message text to be non-empty and within `limits.max_body_bytes`.
    pub(super) fn check_body(&self, body: &str) -> Result<(), Failure> {
        check_body(self.limits, body)
    }

    /// Requires `user` to exist.
    pub(super) fn require_user(&self, user: &UserId) -> Result<(), Failure> {
        if messenger_accounts::user_exists(self.conn, user)? {
            Ok(())
        } else {
            Err(Failure::new(
                ErrorCode::UnknownUser,
                format!("user {user} does not exist"),
            ))
        }
    }

    /// Requires a group of `members` to be within `limits.max_group_members`.
    pub(super) fn require_group_size(&self, members: usize) -> Result<(), Failure> {
        group_size(self.limits, members)
    }

    /// Takes the conversation's next seq.
    pub(super) fn next_seq(&self, conv: &ConvId) -> rusqlite::Result<u64> {
        self.next_seq_if_exists(conv)?
            .ok_or(rusqlite::Error::QueryReturnedNoRows)
    }

    /// Takes an open dm's next seq, if it exists and is open (the one statement
    /// of a message to an existing 1-1 chat).
    pub(super) fn next_open_dm_seq(&self, conv: &ConvId) -> rusqlite::Result<Option<u64>> {
        self.conn
            .prepare_cached("UPDATE conversations SET last_seq = last_seq + 1 WHERE conv = ?1 AND closed = 0 RETURNING last_seq")?
            .query_row([conv.to_string()], |r| r.get(0))
            .optional()
    }

    /// Takes the conversation's next seq if the conversation exists.
    pub(super) fn next_seq_if_exists(&self, conv: &ConvId) -> rusqlite::Result<Option<u64>> {
        self.conn
            .prepare_cached("UPDATE conversations SET last_seq = last_seq + 1 WHERE conv = ?1 RETURNING last_seq")?
            .query_row([conv.to_string()], |r| r.get(0))
            .optional()
    }

    /// The user's next useq: one past their newest inbox row (one seek on the
    /// inbox's primary key, whose last page the caller is about to write anyway).
    /// Gap-free because inbox rows are never deleted and the caller inserts the
    /// row in the same transaction.
    pub(super) fn next_useq(&self, user: &UserId) -> rusqlite::Result<u64> {
        self.conn
            .prepare_cached("SELECT COALESCE(MAX(useq), 0) + 1 FROM inbox WHERE user = ?1")?
            .query_row([user.as_str()], |r| r.get(0))
    }

    /// Puts the stored event (conv, seq) into each member's inbox and returns the
    /// publishes, built by `event` from the member's useq.
    pub(super) fn deliver(
        &self,
        conv: &ConvId,
        seq: u64,
        to: &[UserId],
        event: impl Fn(u64) -> Event,
    ) -> rusqlite::Result<Vec<Effect>> {
        let useqs = self.next_useqs(to)?;
        self.deliver_at(conv, seq, to, &useqs, event)
    }

    /// The next useq of each of `users` (distinct), before their inbox rows are inserted.
    pub(super) fn next_useqs(&self, users: &[UserId]) -> rusqlite::Result<Vec<u64>> {
        users.iter().map(|user| self.next_useq(user)).collect()
    }

    /// [`Ctx::deliver`] with the useqs taken beforehand by [`Ctx::next_useqs`].
    pub(super) fn deliver_at(
        &self,
        conv: &ConvId,
        seq: u64,
        to: &[UserId],
        useqs: &[u64],
        event: impl Fn(u64) -> Event,
    ) -> rusqlite::Result<Vec<Effect>> {
        let mut out = Vec::with_capacity(to.len());
        let mut insert = self
            .conn
            .prepare_cached("INSERT INTO inbox (user, useq, conv, seq) VALUES (?1, ?2, ?3, ?4)")?;
        let conv_s = conv.to_string();
        for (user, &useq) in to.iter().zip(useqs) {
            insert.execute(params![user.as_str(), useq, conv_s, seq])?;
            out.push(Effect::event(user, &event(useq)));
        }
        Ok(out)
    }

    /// Re-publishes a stored event to the inboxes it went to, with the same useqs
    /// (after a crash between commit and publish, a retried request repairs delivery).
    pub(super) fn redeliver(
        &self,
        conv: &ConvId,
        seq: u64,
        event: impl Fn(u64) -> Event,
    ) -> rusqlite::Result<Vec<Effect>> {
        let rows = match conv.direct_members() {
            Some((lo, hi)) => self.dm_useqs(conv, seq, lo, hi)?,
            None => {
                // The terms of the partial index `inbox_by_group_event`, verbatim.
                let mut stmt = self.conn.prepare_cached(
                    "SELECT user, useq FROM inbox
                     WHERE conv = ?1 AND seq = ?2 AND rstatus IS NULL AND conv LIKE 'g:%'",
                )?;
                let rows = stmt
                    .query_map(params![conv.to_string(), seq], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                rows
            }
        };
        Ok(rows
            .into_iter()
            .filter_map(|(user, useq)| {
                let user = UserId::parse(&user).ok()?;
                Some(Effect::event(&user, &event(useq)))
            })
            .collect())
    }

    /// Where a dm's event went: each user's useq, kept on the event row.
    pub(super) fn dm_useqs(
        &self,
        conv: &ConvId,
        seq: u64,
        lo: &UserId,
        hi: &UserId,
    ) -> rusqlite::Result<Vec<(String, u64)>> {
        let conv_s = conv.to_string();
        let kept: Option<(Option<u64>, Option<u64>)> = self
            .conn
            .prepare_cached("SELECT useq_lo, useq_hi FROM events WHERE conv = ?1 AND seq = ?2")?
            .query_row(params![conv_s, seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let mut rows = Vec::with_capacity(2);
        for (user, useq) in [(lo, kept.and_then(|k| k.0)), (hi, kept.and_then(|k| k.1))] {
            // Not to a removed account, nor to a new account of that name.
            if self
                .membership(conv, user)?
                .is_none_or(|m| m.joined_seq > seq)
            {
                continue;
            }
            let useq = match useq {
                Some(useq) => Some(useq),
                // Not kept (cannot happen for events stored since the column exists, and
                // the migration filled in the older ones): look through the user's inbox.
                None => self
                    .conn
                    .prepare_cached(
                        "SELECT useq FROM inbox WHERE user = ?1 AND conv = ?2 AND seq = ?3 AND rstatus IS NULL",
                    )?
                    .query_row(params![user.as_str(), conv_s, seq], |r| r.get(0))
                    .optional()?,
            };
            if let Some(useq) = useq {
                rows.push((user.as_str().to_owned(), useq));
            }
        }
        Ok(rows)
    }

    /// The event an earlier request of the sender's with this id stored: (conv, seq).
    /// Request ids are unique per sender across kinds, so an id reused for a
    /// request of another kind is refused.
    pub(super) fn prior(
        &self,
        id: &RequestId,
        kind: &str,
    ) -> Result<Option<(ConvId, u64)>, Failure> {
        let stored: Option<(String, u64, String)> = self
            .conn
            .prepare_cached("SELECT conv, seq, kind FROM events WHERE sender = ?1 AND req_id = ?2")?
            .query_row(params![self.user.as_str(), id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((conv, seq, stored_kind)) = stored else {
            return Ok(None);
        };
        if stored_kind != kind {
            return Err(id_taken(id));
        }
        let conv =
            ConvId::parse(&conv).map_err(|e| Failure::new(ErrorCode::Internal, e.to_string()))?;
        Ok(Some((conv, seq)))
    }

    /// Checks a page size against the limit.
    pub(super) fn page(&self, limit: Option<u32>, default: u32) -> Result<u32, Failure> {
        page(self.limits, limit, default)
    }
}

/// Requires a message text to be non-empty and within `limits.max_body_bytes`.
pub(crate) fn check_body(limits: &Limits, body: &str) -> Result<(), Failure> {
    if body.len() > limits.max_body_bytes {
        return Err(Failure::new(
            ErrorCode::TooLarge,
            format!(
                "body of {} bytes is over the limit of {}",
                body.len(),
                limits.max_body_bytes
            ),
        ));
    }
    if body.is_empty() {
        return Err(Failure::bad("body must not be empty"));
    }
    Ok(())
}

/// Requires a group of `members` to be within `limits.max_group_members`.
pub(crate) fn group_size(limits: &Limits, members: usize) -> Result<(), Failure> {
    if members > limits.max_group_members {
        return Err(Failure::new(
            ErrorCode::TooLarge,
            format!("a group has at most {} members", limits.max_group_members),
        ));
    }
    Ok(())
}

/// A page size (`default`, capped at `limits.max_page`, when none is given),
/// refused outside 1..=`limits.max_page`.
pub(crate) fn page(limits: &Limits, limit: Option<u32>, default: u32) -> Result<u32, Failure> {
    let limit = limit.unwrap_or(default.min(limits.max_page));
    if limit == 0 || limit > limits.max_page {
        return Err(Failure::bad(format!(
            "limit must be between 1 and {}",
            limits.max_page
        )));
    }
    Ok(limit)
}

/// The refusal of a request whose id the user already gave a request of another
/// kind: `send` and group requests share one id space per user (a repeat must
/// be the same kind of request to get the stored answer).
pub(crate) fn id_taken(id: &RequestId) -> Failure {
    Failure::bad(format!(
        "request id {id} was already used by another kind of request"
    ))
}

/// A conversation's kind, as the `conversations` table keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A 1-1 conversation (`dm`).
    Direct,
    /// A group (`group`).
    Group,
}

impl Kind {
    /// The column's value.
    pub(crate) fn as_column(self) -> &'static str {
        match self {
            Self::Direct => "dm",
            Self::Group => "group",
        }
    }

    /// Reads the column (anything but `group` is a 1-1 conversation).
    pub(crate) fn from_column(s: &str) -> Self {
        if s == Self::Group.as_column() {
            Self::Group
        } else {
            Self::Direct
        }
    }
}

/// A row of `conversations`.
pub(super) struct ConvRow {
    pub(super) kind: Kind,
    pub(super) name: String,
    pub(super) last_seq: u64,
}

/// A row of `members`.
pub(super) struct Membership {
    pub(super) joined_seq: u64,
    pub(super) left_seq: Option<u64>,
    pub(super) admin: bool,
}
