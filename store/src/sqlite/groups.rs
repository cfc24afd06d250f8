//! Group membership: create, add, remove, leave. Each change is a `member`
//! event in the group's timeline, with its own seq.

use messenger_protocol::wire::{ErrorCode, Event, MemberAction, RequestId};
use messenger_protocol::{ConvId, GroupId, UserId};
use rand::RngCore;
use rusqlite::{params, OptionalExtension};

use super::rows::with_useq;
use super::Ctx;
use crate::rate;
use crate::{Effect, Failure};

impl Ctx<'_> {
    /// A repeated group request: the stored ack, and its event delivered again.
    fn repeated(&self, id: &RequestId) -> Result<Option<Vec<Effect>>, Failure> {
        let Some((conv, seq)) = self.prior(id, "member")? else {
            return Ok(None);
        };
        let unreadable = || Failure::new(ErrorCode::Internal, "stored member event is unreadable");
        let event = self.stored_event(&conv, seq)?.ok_or_else(unreadable)?;
        let Event::Member { ts, .. } = event else {
            return Err(unreadable());
        };
        let mut out = self.redeliver(&conv, seq, |useq| with_useq(event.clone(), useq))?;
        out.push(self.ack(id, &conv, seq, ts));
        Ok(Some(out))
    }

    /// A stored event of the timeline (without `useq`); a message in its current state.
    pub(super) fn stored_event(&self, conv: &ConvId, seq: u64) -> rusqlite::Result<Option<Event>> {
        let conv_s = conv.to_string();
        Ok(self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                super::rows::event_columns!(),
                " FROM events e WHERE e.conv = ?1 AND e.seq = ?2"
            ))?
            .query_row(params![conv_s, seq], |r| {
                super::rows::event_from_row(r, 0, &conv_s, seq, None)
            })
            .optional()?
            .flatten())
    }

    fn ack(&self, id: &RequestId, conv: &ConvId, seq: u64, ts: u64) -> Effect {
        self.reply(&Event::Ack {
            id: id.clone(),
            conv: Some(conv.clone()),
            seq: Some(seq),
            ts: Some(ts),
        })
    }

    /// Stores a member event and delivers it to `to`.
    fn member_event(
        &self,
        id: &RequestId,
        conv: &ConvId,
        name: &str,
        action: MemberAction,
        user: &UserId,
        to: &[UserId],
    ) -> Result<(u64, Vec<Effect>), Failure> {
        let seq = self.next_seq(conv)?;
        self.conn
            .prepare_cached(
                "INSERT INTO events (conv, seq, ts, kind, sender, device, req_id, body, action, target)
                 VALUES (?1, ?2, ?3, 'member', ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                conv.to_string(),
                seq,
                self.now,
                self.user.as_str(),
                self.device.as_str(),
                id.as_str(),
                name,
                action.as_str(),
                user.as_str()
            ])?;
        let event = Event::Member {
            conv: conv.clone(),
            seq,
            ts: self.now,
            action,
            user: user.clone(),
            by: self.user.clone(),
            name: name.to_owned(),
            useq: None,
        };
        let mut out = self.deliver(conv, seq, to, |useq| with_useq(event.clone(), useq))?;
        out.push(self.ack(id, conv, seq, self.now));
        Ok((seq, out))
    }

    /// The group's name, requiring a group the sender is a member of.
    fn group(&self, conv: &ConvId) -> Result<String, Failure> {
        if conv.direct_members().is_some() {
            return Err(Failure::bad(format!("{conv} is not a group")));
        }
        self.require_member(conv, false)?;
        Ok(self.conversation(conv)?.map(|c| c.name).unwrap_or_default())
    }

    pub(super) fn group_create(
        &self,
        id: &RequestId,
        name: &str,
        members: &[UserId],
    ) -> Result<Vec<Effect>, Failure> {
        if let Some(out) = self.repeated(id)? {
            return Ok(out);
        }
        self.rate(rate::Action::GroupCreate)?;
        let name = name.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > self.limits.max_group_name_chars {
            return Err(Failure::bad(format!(
                "group name must be 1 to {} characters",
                self.limits.max_group_name_chars
            )));
        }
        let mut all: Vec<UserId> = members
            .iter()
            .filter(|m| *m != self.user)
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        self.require_group_size(all.len() + 1)?;
        for member in &all {
            self.require_user(member)?;
        }
        all.push(self.user.clone());
        let mut raw = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut raw);
        let group = GroupId::parse(&hex::encode(raw))
            .map_err(|e| Failure::new(ErrorCode::Internal, e.to_string()))?;
        let conv = ConvId::Group(group);
        self.conn.execute(
            "INSERT INTO conversations (conv, kind, name, created_ms, last_seq) VALUES (?1, 'group', ?2, ?3, 0)",
            params![conv.to_string(), name, self.now],
        )?;
        for member in &all {
            let role = if member == self.user {
                "admin"
            } else {
                "member"
            };
            self.conn.execute(
                "INSERT INTO members (conv, user, role, joined_seq) VALUES (?1, ?2, ?3, 1)",
                params![conv.to_string(), member.as_str(), role],
            )?;
        }
        let creator = self.user.clone();
        let (_, out) = self.member_event(
            id,
            &conv,
            name,
            MemberAction::Created,
            &creator,
            &self.members(&conv)?,
        )?;
        Ok(out)
    }

    pub(super) fn group_add(
        &self,
        id: &RequestId,
        conv: &ConvId,
        user: &UserId,
    ) -> Result<Vec<Effect>, Failure> {
        if let Some(out) = self.repeated(id)? {
            return Ok(out);
        }
        self.rate(rate::Action::Send)?;
        let name = self.group(conv)?;
        self.require_user(user)?;
        if self
            .membership(conv, user)?
            .is_some_and(|m| m.left_seq.is_none())
        {
            return Err(Failure::bad(format!(
                "{user} is already a member of {conv}"
            )));
        }
        let mut members = self.members(conv)?;
        self.require_group_size(members.len() + 1)?;
        let seq = self.conversation(conv)?.map_or(0, |c| c.last_seq) + 1;
        // Joins see history from their joining on, and have nothing unread from before.
        self.conn.execute(
            "INSERT INTO members (conv, user, role, joined_seq, read_seq, delivered_seq) VALUES (?1, ?2, 'member', ?3, ?3, ?3)
             ON CONFLICT (conv, user) DO UPDATE SET role = 'member', joined_seq = ?3, left_seq = NULL, read_seq = ?3, delivered_seq = ?3",
            params![conv.to_string(), user.as_str(), seq],
        )?;
        members.push(user.clone());
        let (stored, out) =
            self.member_event(id, conv, &name, MemberAction::Added, user, &members)?;
        debug_assert_eq!(stored, seq);
        Ok(out)
    }

    pub(super) fn group_remove(
        &self,
        id: &RequestId,
        conv: &ConvId,
        user: &UserId,
    ) -> Result<Vec<Effect>, Failure> {
        if let Some(out) = self.repeated(id)? {
            return Ok(out);
        }
        self.rate(rate::Action::Send)?;
        let name = self.group(conv)?;
        if user == self.user {
            return self.leave(id, conv, &name);
        }
        if !self.membership(conv, self.user)?.is_some_and(|m| m.admin) {
            return Err(Failure::new(
                ErrorCode::Forbidden,
                "only an admin may remove members",
            ));
        }
        if self
            .membership(conv, user)?
            .is_none_or(|m| m.left_seq.is_some())
        {
            return Err(Failure::new(
                ErrorCode::NotMember,
                format!("{user} is not a member of {conv}"),
            ));
        }
        let members = self.members(conv)?;
        let (seq, out) =
            self.member_event(id, conv, &name, MemberAction::Removed, user, &members)?;
        self.conn.execute(
            "UPDATE members SET left_seq = ?3 WHERE conv = ?1 AND user = ?2",
            params![conv.to_string(), user.as_str(), seq],
        )?;
        Ok(out)
    }

    pub(super) fn group_leave(
        &self,
        id: &RequestId,
        conv: &ConvId,
    ) -> Result<Vec<Effect>, Failure> {
        if let Some(out) = self.repeated(id)? {
            return Ok(out);
        }
        self.rate(rate::Action::Send)?;
        let name = self.group(conv)?;
        self.leave(id, conv, &name)
    }

    fn leave(&self, id: &RequestId, conv: &ConvId, name: &str) -> Result<Vec<Effect>, Failure> {
        let members = self.members(conv)?;
        let me = self.user.clone();
        let (seq, out) = self.member_event(id, conv, name, MemberAction::Left, &me, &members)?;
        self.conn.execute(
            "UPDATE members SET left_seq = ?3, role = 'member' WHERE conv = ?1 AND user = ?2",
            params![conv.to_string(), me.as_str(), seq],
        )?;
        // A group is never left without an admin: the longest-standing member takes over.
        self.conn.execute(
            "UPDATE members SET role = 'admin'
             WHERE conv = ?1 AND NOT EXISTS (SELECT 1 FROM members WHERE conv = ?1 AND role = 'admin' AND left_seq IS NULL)
               AND user = (SELECT user FROM members WHERE conv = ?1 AND left_seq IS NULL ORDER BY joined_seq, user LIMIT 1)",
            [conv.to_string()],
        )?;
        Ok(out)
    }
}
