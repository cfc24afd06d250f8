//! The context a request is handled in on PostgreSQL, and what every handler
//! shares: membership checks, sequencing (`seq`, `useq`), delivery to inboxes,
//! repeats. The rules are those of the SQLite engine (`sqlite::context`); the
//! statements are PostgreSQL's, on the distribution-keyed schema (`schema`).
//!
//! Several bridges may write at once, so every counter is taken under a row
//! lock held to the end of the batch: a conversation's `seq` by the `UPDATE` of
//! its row, a user's `useq` by the upsert of their `user_seqs` row (taken in
//! user order, so that two batches wait for each other rather than deadlock).

use std::cell::RefCell;
use std::collections::HashMap;

use messenger_protocol::wire::{ErrorCode, Event, Request, RequestId};
use messenger_protocol::{ConvId, DeviceId, UserId};
use postgres::Row;

use super::db::Db;
use crate::config::Limits;
use crate::rate::{Action, Allowance};
use crate::sqlite::context::{id_taken, Kind};
use crate::sqlite::pushes::Notify;
use crate::{Effect, Failure, Notification};

/// Who sent a request, and the context to handle it in.
pub(super) struct Ctx<'a, 'd> {
    pub(super) db: &'a Db<'d>,
    pub(super) user: &'a UserId,
    pub(super) device: &'a DeviceId,
    pub(super) limits: &'a Limits,
    /// Per-user rate limits.
    pub(super) rates: &'a Allowance<'a>,
    /// The server's clock for this batch, ms since the epoch.
    pub(super) now: u64,
    /// Whether stored messages call for push notifications.
    pub(super) notify: Notify,
    /// The notifications this request calls for, handed to the push workers once
    /// the transaction is committed (dropped if the request fails).
    pub(super) pushes: RefCell<Vec<Notification>>,
    /// For a plain text to a 1-1 chat, what the batch looked up for it at its
    /// start (see `looked_up`): whether its id was used before, whether the
    /// other user blocks the sender. `None`: look now.
    pub(super) looked: Option<Looked>,
    /// The hashes of the uploads this request let go of (`uploads` rows it
    /// removed), whose bytes go at the end of the batch if no upload row names
    /// them then (see `files`).
    pub(super) released: RefCell<Vec<String>>,
}

/// What a batch looks up at its start for each of its plain texts to a 1-1 chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Looked {
    /// The sender used the request id before.
    pub(super) repeat: bool,
    /// The other user blocks the sender.
    pub(super) blocked: bool,
}

/// A count or sequence number as PostgreSQL's `BIGINT` keeps it (the wire's
/// numbers are at most 2^53).
pub(super) fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A `BIGINT` column that holds a count or sequence number.
pub(super) fn nat(row: &Row, at: usize) -> Result<u64, postgres::Error> {
    Ok(u64::try_from(row.try_get::<_, i64>(at)?).unwrap_or(0))
}

/// A nullable `BIGINT` column that holds a count or sequence number.
pub(super) fn opt_nat(row: &Row, at: usize) -> Result<Option<u64>, postgres::Error> {
    Ok(row
        .try_get::<_, Option<i64>>(at)?
        .map(|v| u64::try_from(v).unwrap_or(0)))
}

impl Ctx<'_, '_> {
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
            Request::Token { id } => self.token(id),
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

    /// A new device token for the requesting device (one device more counts
    /// against `limits.max_devices_per_user`).
    fn token(&self, id: RequestId) -> Result<Vec<Effect>, Failure> {
        self.rates.check(self.user, Action::Token)?;
        self.require_device_room()?;
        let issued = self.db.with_tx(|tx| {
            Ok(messenger_accounts::issue_token_postgres(
                tx,
                self.user,
                self.device,
            ))
        })?;
        let token = issued.map_err(|e| match e {
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

    /// The conversation's row, if it exists.
    pub(super) fn conversation(&self, conv: &ConvId) -> Result<Option<ConvRow>, postgres::Error> {
        self.db
            .opt(
                "SELECT kind, name, last_seq FROM conversations WHERE conv = $1",
                &[&conv.to_string()],
            )?
            .map(|r| {
                Ok(ConvRow {
                    kind: Kind::from_column(r.try_get(0)?),
                    name: r.try_get(1)?,
                    last_seq: nat(&r, 2)?,
                })
            })
            .transpose()
    }

    /// The user's membership, if they ever were a member.
    pub(super) fn membership(
        &self,
        conv: &ConvId,
        user: &UserId,
    ) -> Result<Option<Membership>, postgres::Error> {
        self.db
            .opt(
                "SELECT joined_seq, left_seq, role FROM members WHERE conv = $1 AND \"user\" = $2",
                &[&conv.to_string(), &user.as_str()],
            )?
            .map(|r| {
                Ok(Membership {
                    joined_seq: nat(&r, 0)?,
                    left_seq: opt_nat(&r, 1)?,
                    admin: r.try_get::<_, &str>(2)? == "admin",
                })
            })
            .transpose()
    }

    /// Current members, sorted.
    pub(super) fn members(&self, conv: &ConvId) -> Result<Vec<UserId>, postgres::Error> {
        let rows = self.db.rows(
            "SELECT \"user\" FROM members WHERE conv = $1 AND left_seq IS NULL ORDER BY \"user\" COLLATE \"C\"",
            &[&conv.to_string()],
        )?;
        let mut members = Vec::with_capacity(rows.len());
        for row in rows {
            if let Ok(user) = UserId::parse(row.try_get(0)?) {
                members.push(user);
            }
        }
        Ok(members)
    }

    /// Adds `user` to `conv` from `joined_seq` (the members row and the user's
    /// `memberships` row, written together).
    pub(super) fn add_member(
        &self,
        conv: &ConvId,
        user: &UserId,
        role: &str,
        joined_seq: u64,
    ) -> Result<(), postgres::Error> {
        let conv = conv.to_string();
        self.db.exec(
            "INSERT INTO members (conv, \"user\", role, joined_seq) VALUES ($1, $2, $3, $4)
             ON CONFLICT (conv, \"user\") DO UPDATE
             SET role = EXCLUDED.role, joined_seq = EXCLUDED.joined_seq, left_seq = NULL",
            &[&conv, &user.as_str(), &role, &int(joined_seq)],
        )?;
        self.db.exec(
            "INSERT INTO memberships (\"user\", conv, joined_seq) VALUES ($1, $2, $3)
             ON CONFLICT (\"user\", conv) DO UPDATE
             SET joined_seq = EXCLUDED.joined_seq, left_seq = NULL",
            &[&user.as_str(), &conv, &int(joined_seq)],
        )?;
        Ok(())
    }

    /// Marks `user` as gone from `conv` after `left_seq` (both rows).
    pub(super) fn end_membership(
        &self,
        conv: &ConvId,
        user: &UserId,
        left_seq: u64,
    ) -> Result<(), postgres::Error> {
        let conv = conv.to_string();
        self.db.exec(
            "UPDATE members SET left_seq = $3 WHERE conv = $1 AND \"user\" = $2",
            &[&conv, &user.as_str(), &int(left_seq)],
        )?;
        self.db.exec(
            "UPDATE memberships SET left_seq = $3 WHERE \"user\" = $1 AND conv = $2",
            &[&user.as_str(), &conv, &int(left_seq)],
        )?;
        Ok(())
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
                // Two bridges creating the same dm at once: one insert waits for
                // the other's commit, then conflicts, and its batch runs again.
                self.db.exec(
                    "INSERT INTO conversations (conv, kind, name, created_ms, last_seq)
                     VALUES ($1, 'dm', '', $2, 0)",
                    &[&conv.to_string(), &int(self.now)],
                )?;
                for user in [a, b] {
                    self.add_member(conv, user, "member", 1)?;
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

    /// The seqs of `conv` the sender may read, `(from, to)` inclusive (see the
    /// SQLite engine's `read_window`).
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
                match self.membership(conv, self.user)? {
                    Some(m) => Ok((m.joined_seq, m.left_seq.unwrap_or(0))),
                    None => Err(failure),
                }
            }
            Err(failure) => Err(failure),
        }
    }

    /// Requires the sender's row in an existing dm, rejoining it on a send (see
    /// the SQLite engine's `rejoin_direct`). Returns the conversation's last seq.
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
                self.add_member(conv, user, "member", last + 1)?;
            }
        }
        self.db.exec(
            "UPDATE conversations SET closed = FALSE WHERE conv = $1 AND closed",
            &[&conv.to_string()],
        )?;
        Ok(last)
    }

    /// Requires the requesting device to be known, or room for one more device
    /// (`limits.max_devices_per_user`), counting devices with presence or a token.
    pub(super) fn require_device_room(&self) -> Result<(), Failure> {
        let row = self.db.one(
            "SELECT EXISTS (SELECT 1 FROM device_tokens WHERE \"user\" = $1 AND device = $2)
                 OR EXISTS (SELECT 1 FROM devices WHERE \"user\" = $1 AND device = $2),
                    (SELECT COUNT(*) FROM (SELECT device FROM device_tokens WHERE \"user\" = $1
                                           UNION SELECT device FROM devices WHERE \"user\" = $1) d)",
            &[&self.user.as_str(), &self.device.as_str()],
        )?;
        let known: bool = row.try_get(0)?;
        let count = usize::try_from(nat(&row, 1)?).unwrap_or(usize::MAX);
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

    /// Takes one request of `action` from the sender's allowance.
    pub(super) fn rate(&self, action: Action) -> Result<(), Failure> {
        self.rates.check(self.user, action)
    }

    /// Requires a message text to be non-empty and within `limits.max_body_bytes`.
    pub(super) fn check_body(&self, body: &str) -> Result<(), Failure> {
        crate::sqlite::context::check_body(self.limits, body)
    }

    /// Requires `user` to exist.
    pub(super) fn require_user(&self, user: &UserId) -> Result<(), Failure> {
        let exists: bool = self
            .db
            .one(
                "SELECT EXISTS (SELECT 1 FROM users WHERE name = $1)",
                &[&user.as_str()],
            )?
            .try_get(0)?;
        if exists {
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
        crate::sqlite::context::group_size(self.limits, members)
    }

    /// Takes the conversation's next seq (it must exist).
    pub(super) fn next_seq(&self, conv: &ConvId) -> Result<u64, Failure> {
        self.next_seq_if_exists(conv)?
            .ok_or_else(|| Failure::new(ErrorCode::Internal, "the conversation is gone"))
    }

    /// Takes an open dm's next seq, if it exists and is open.
    pub(super) fn next_open_dm_seq(&self, conv: &ConvId) -> Result<Option<u64>, postgres::Error> {
        self.db
            .opt(
                "UPDATE conversations SET last_seq = last_seq + 1
                 WHERE conv = $1 AND NOT closed RETURNING last_seq",
                &[&conv.to_string()],
            )?
            .map(|r| nat(&r, 0))
            .transpose()
    }

    /// Takes the conversation's next seq if the conversation exists.
    pub(super) fn next_seq_if_exists(&self, conv: &ConvId) -> Result<Option<u64>, postgres::Error> {
        self.db
            .opt(
                "UPDATE conversations SET last_seq = last_seq + 1 WHERE conv = $1 RETURNING last_seq",
                &[&conv.to_string()],
            )?
            .map(|r| nat(&r, 0))
            .transpose()
    }

    /// The next useq of each of `users` (distinct), taken in one statement under
    /// each user's `user_seqs` row lock, in user order.
    pub(super) fn next_useqs(&self, users: &[UserId]) -> Result<Vec<u64>, postgres::Error> {
        let mut sorted: Vec<&str> = users.iter().map(UserId::as_str).collect();
        sorted.sort_unstable();
        let rows = self.db.rows(
            "INSERT INTO user_seqs (\"user\", last_useq)
             SELECT u, 1 FROM unnest($1::text[]) WITH ORDINALITY AS t(u, n) ORDER BY n
             ON CONFLICT (\"user\") DO UPDATE SET last_useq = user_seqs.last_useq + 1
             RETURNING \"user\", last_useq",
            &[&sorted],
        )?;
        let mut taken = HashMap::with_capacity(rows.len());
        for row in &rows {
            taken.insert(row.try_get::<_, String>(0)?, nat(row, 1)?);
        }
        Ok(users
            .iter()
            .map(|user| taken.get(user.as_str()).copied().unwrap_or(0))
            .collect())
    }

    /// Puts the stored event (conv, seq) into each member's inbox and returns the
    /// publishes, built by `event` from the member's useq.
    pub(super) fn deliver(
        &self,
        conv: &ConvId,
        seq: u64,
        to: &[UserId],
        event: impl Fn(u64) -> Event,
    ) -> Result<Vec<Effect>, postgres::Error> {
        let useqs = self.next_useqs(to)?;
        self.deliver_at(conv, seq, to, &useqs, event)
    }

    /// [`Ctx::deliver`] with the useqs taken beforehand by [`Ctx::next_useqs`].
    pub(super) fn deliver_at(
        &self,
        conv: &ConvId,
        seq: u64,
        to: &[UserId],
        useqs: &[u64],
        event: impl Fn(u64) -> Event,
    ) -> Result<Vec<Effect>, postgres::Error> {
        let users: Vec<&str> = to.iter().map(UserId::as_str).collect();
        let numbers: Vec<i64> = useqs.iter().map(|&u| int(u)).collect();
        self.db.exec(
            "INSERT INTO inbox (\"user\", useq, conv, seq)
             SELECT u, n, $3, $4 FROM unnest($1::text[], $2::bigint[]) AS t(u, n)",
            &[&users, &numbers, &conv.to_string(), &int(seq)],
        )?;
        Ok(to
            .iter()
            .zip(useqs)
            .map(|(user, &useq)| Effect::event(user, &event(useq)))
            .collect())
    }

    /// Puts a receipt into each member's inbox; returns each member with their useq.
    pub(super) fn deliver_receipt(
        &self,
        conv: &ConvId,
        seq: u64,
        to: &[UserId],
        status: &str,
    ) -> Result<Vec<u64>, postgres::Error> {
        let useqs = self.next_useqs(to)?;
        let users: Vec<&str> = to.iter().map(UserId::as_str).collect();
        let numbers: Vec<i64> = useqs.iter().map(|&u| int(u)).collect();
        self.db.exec(
            "INSERT INTO inbox (\"user\", useq, conv, seq, rstatus, ruser, rts)
             SELECT u, n, $3, $4, $5, $6, $7 FROM unnest($1::text[], $2::bigint[]) AS t(u, n)",
            &[
                &users,
                &numbers,
                &conv.to_string(),
                &int(seq),
                &status,
                &self.user.as_str(),
                &int(self.now),
            ],
        )?;
        Ok(useqs)
    }

    /// Re-publishes a stored event to the inboxes it went to, with the same useqs
    /// (after a crash between commit and publish, a retried request repairs delivery).
    pub(super) fn redeliver(
        &self,
        conv: &ConvId,
        seq: u64,
        event: impl Fn(u64) -> Event,
    ) -> Result<Vec<Effect>, postgres::Error> {
        let rows = match conv.direct_members() {
            Some((lo, hi)) => self.dm_useqs(conv, seq, lo, hi)?,
            None => {
                // Across users (inbox is keyed by user): a repeat is rare, and
                // `inbox_by_event` finds its rows (docs/SCALING.md).
                let rows = self.db.rows(
                    "SELECT \"user\", useq FROM inbox
                     WHERE conv = $1 AND seq = $2 AND rstatus IS NULL",
                    &[&conv.to_string(), &int(seq)],
                )?;
                let mut found = Vec::with_capacity(rows.len());
                for row in &rows {
                    found.push((row.try_get::<_, String>(0)?, nat(row, 1)?));
                }
                found
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
    fn dm_useqs(
        &self,
        conv: &ConvId,
        seq: u64,
        lo: &UserId,
        hi: &UserId,
    ) -> Result<Vec<(String, u64)>, postgres::Error> {
        let kept = self
            .db
            .opt(
                "SELECT useq_lo, useq_hi FROM events WHERE conv = $1 AND seq = $2",
                &[&conv.to_string(), &int(seq)],
            )?
            .map(|r| Ok::<_, postgres::Error>((opt_nat(&r, 0)?, opt_nat(&r, 1)?)))
            .transpose()?;
        let mut rows = Vec::with_capacity(2);
        for (user, useq) in [(lo, kept.and_then(|k| k.0)), (hi, kept.and_then(|k| k.1))] {
            // Not to a removed account, nor to a new account of that name.
            if self
                .membership(conv, user)?
                .is_none_or(|m| m.joined_seq > seq)
            {
                continue;
            }
            if let Some(useq) = useq {
                rows.push((user.as_str().to_owned(), useq));
            }
        }
        Ok(rows)
    }

    /// Keeps the sender's request id for the event it stored, so that a repeat
    /// is answered from it, whichever bridge sees the repeat.
    pub(super) fn remember_request(
        &self,
        id: &RequestId,
        conv: &ConvId,
        seq: u64,
    ) -> Result<(), postgres::Error> {
        self.db.exec(
            "INSERT INTO requests (sender, req_id, conv, seq) VALUES ($1, $2, $3, $4)",
            &[
                &self.user.as_str(),
                &id.as_str(),
                &conv.to_string(),
                &int(seq),
            ],
        )?;
        Ok(())
    }

    /// The event an earlier request of the sender's with this id stored: (conv, seq).
    /// Request ids are unique per sender across kinds, so an id reused for a
    /// request of another kind is refused.
    pub(super) fn prior(
        &self,
        id: &RequestId,
        kind: &str,
    ) -> Result<Option<(ConvId, u64)>, Failure> {
        let Some(row) = self.db.opt(
            "SELECT conv, seq FROM requests WHERE sender = $1 AND req_id = $2",
            &[&self.user.as_str(), &id.as_str()],
        )?
        else {
            return Ok(None);
        };
        let (conv, seq): (String, u64) = (row.try_get(0)?, nat(&row, 1)?);
        let stored_kind: Option<String> = self
            .db
            .opt(
                "SELECT kind FROM events WHERE conv = $1 AND seq = $2",
                &[&conv, &int(seq)],
            )?
            .map(|r| r.try_get(0))
            .transpose()?;
        if stored_kind.as_deref() != Some(kind) {
            return Err(id_taken(id));
        }
        let conv =
            ConvId::parse(&conv).map_err(|e| Failure::new(ErrorCode::Internal, e.to_string()))?;
        Ok(Some((conv, seq)))
    }

    /// Checks a page size against the limit.
    pub(super) fn page(&self, limit: Option<u32>, default: u32) -> Result<u32, Failure> {
        crate::sqlite::context::page(self.limits, limit, default)
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
