//! Group membership on PostgreSQL: create, add, remove, leave (the rules of
//! `sqlite::groups`). A change locks the group's row first, so that it and the
//! group's messages form one order whichever bridges handle them.

use messenger_protocol::wire::{ErrorCode, Event, MemberAction, RequestId};
use messenger_protocol::{ConvId, GroupId, UserId};
use rand::RngCore;

use super::context::{int, nat, Ctx};
use crate::rate;
use crate::rows::with_useq;
use crate::{Effect, Failure};

impl Ctx<'_, '_> {
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
        out.push(ack(id, &conv, seq, ts));
        Ok(Some(out))
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
        self.db.exec(
            "INSERT INTO events (conv, seq, ts, kind, sender, device, req_id, body, action, target)
             VALUES ($1, $2, $3, 'member', $4, $5, $6, $7, $8, $9)",
            &[
                &conv.to_string(),
                &int(seq),
                &int(self.now),
                &self.user.as_str(),
                &self.device.as_str(),
                &id.as_str(),
                &name,
                &action.as_str(),
                &user.as_str(),
            ],
        )?;
        self.remember_request(id, conv, seq)?;
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
        out.push(ack(id, conv, seq, self.now));
        Ok((seq, out))
    }

    /// The group's name and last seq, requiring a group the sender is a member
    /// of; its row stays locked to the commit.
    fn group(&self, conv: &ConvId) -> Result<(String, u64), Failure> {
        if conv.direct_members().is_some() {
            return Err(Failure::bad(format!("{conv} is not a group")));
        }
        let locked = self.db.opt(
            "SELECT name, last_seq FROM conversations WHERE conv = $1 FOR UPDATE",
            &[&conv.to_string()],
        )?;
        self.require_member(conv, false)?;
        match locked {
            Some(row) => Ok((row.try_get(0)?, nat(&row, 1)?)),
            None => Err(Failure::new(
                ErrorCode::UnknownConversation,
                format!("no conversation {conv}"),
            )),
        }
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
        self.db.exec(
            "INSERT INTO conversations (conv, kind, name, created_ms, last_seq)
             VALUES ($1, 'group', $2, $3, 0)",
            &[&conv.to_string(), &name, &int(self.now)],
        )?;
        for member in &all {
            let role = if member == self.user {
                "admin"
            } else {
                "member"
            };
            self.add_member(&conv, member, role, 1)?;
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
        let (name, last) = self.group(conv)?;
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
        let seq = last + 1;
        self.add_member(conv, user, "member", seq)?;
        // Joins have nothing unread from before.
        self.db.exec(
            "UPDATE members SET read_seq = $3, delivered_seq = $3 WHERE conv = $1 AND \"user\" = $2",
            &[&conv.to_string(), &user.as_str(), &int(seq)],
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
        let (name, _) = self.group(conv)?;
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
        self.end_membership(conv, user, seq)?;
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
        let (name, _) = self.group(conv)?;
        self.leave(id, conv, &name)
    }

    fn leave(&self, id: &RequestId, conv: &ConvId, name: &str) -> Result<Vec<Effect>, Failure> {
        let members = self.members(conv)?;
        let me = self.user.clone();
        let (seq, out) = self.member_event(id, conv, name, MemberAction::Left, &me, &members)?;
        self.end_membership(conv, &me, seq)?;
        let conv_s = conv.to_string();
        self.db.exec(
            "UPDATE members SET role = 'member' WHERE conv = $1 AND \"user\" = $2",
            &[&conv_s, &me.as_str()],
        )?;
        // A group is never left without an admin: the longest-standing member takes over.
        self.db.exec(
            "UPDATE members SET role = 'admin'
             WHERE conv = $1
               AND NOT EXISTS (SELECT 1 FROM members WHERE conv = $1 AND role = 'admin' AND left_seq IS NULL)
               AND \"user\" = (SELECT \"user\" FROM members WHERE conv = $1 AND left_seq IS NULL
                               ORDER BY joined_seq, \"user\" COLLATE \"C\" LIMIT 1)",
            &[&conv_s],
        )?;
        Ok(out)
    }
}

fn ack(id: &RequestId, conv: &ConvId, seq: u64, ts: u64) -> Effect {
    Effect::reply(&Event::Ack {
        id: id.clone(),
        conv: Some(conv.clone()),
        seq: Some(seq),
        ts: Some(ts),
    })
}
