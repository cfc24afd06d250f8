//! 1-1 and group messaging on PostgreSQL: send, receipts, typing, sync,
//! history (the rules of `sqlite::messages`).

use messenger_protocol::wire::{
    Attachment, AttachmentRef, ErrorCode, Event, Reactions, ReceiptStatus, RequestId,
};
use messenger_protocol::{ConvId, UserId};
use postgres::Row;

use super::context::{int, nat, opt_nat, Ctx, Looked};
use crate::outcome::{encode, Effect};
use crate::rate;
use crate::rows::{
    attachments_column, history_reply, receipt_from_row, sync_reply, with_useq, EventColumns,
};
use crate::sqlite::messages::{seq_of, Order};
use crate::sqlite::rows::event_columns;
use crate::Failure;

/// Default page size of `sync` and `history`.
const DEFAULT_PAGE: u32 = 100;

/// Builds the event of an `events` row whose `event_columns!()` start at `at`.
pub(super) fn event_from_row(
    r: &Row,
    at: usize,
    conv: &str,
    seq: u64,
    useq: Option<u64>,
) -> Result<Option<Event>, postgres::Error> {
    let columns = EventColumns {
        ts: nat(r, at)?,
        kind: r.try_get(at + 1)?,
        sender: r.try_get(at + 2)?,
        device: r.try_get(at + 3)?,
        req_id: r.try_get(at + 4)?,
        body: r.try_get(at + 5)?,
        action: r.try_get(at + 6)?,
        target: r.try_get(at + 7)?,
        ref_seq: opt_nat(r, at + 8)?,
        edited: opt_nat(r, at + 9)?,
        deleted: r.try_get(at + 10)?,
        attachments: r.try_get(at + 11)?,
    };
    Ok(columns.into_event(conv, seq, useq))
}

impl Ctx<'_, '_> {
    pub(super) fn send(
        &self,
        id: &RequestId,
        conv: &ConvId,
        body: &str,
        reply_to: Option<u64>,
        refs: &[AttachmentRef],
    ) -> Result<Vec<Effect>, Failure> {
        crate::sqlite::files::check_refs(refs)?;
        if !body.is_empty() || refs.is_empty() {
            self.check_body(body)?;
        }
        if reply_to.is_none() && refs.is_empty() {
            if let Some(other) = self.other_in_dm(conv) {
                // One look for a repeat and a block (made for the whole batch
                // at its start); a repeat takes the path below.
                let Looked { repeat, blocked } = match self.looked {
                    Some(looked) => looked,
                    None => {
                        let row = self.db.one(
                            "SELECT EXISTS (SELECT 1 FROM requests WHERE sender = $1 AND req_id = $2),
                                    EXISTS (SELECT 1 FROM blocks WHERE blocker = $3 AND blocked = $1)",
                            &[&self.user.as_str(), &id.as_str(), &other.as_str()],
                        )?;
                        Looked {
                            repeat: row.try_get(0)?,
                            blocked: row.try_get(1)?,
                        }
                    }
                };
                if !repeat {
                    self.rate(rate::Action::Send)?;
                    if blocked {
                        return Err(Failure::new(
                            ErrorCode::Forbidden,
                            format!("{other} has blocked you"),
                        ));
                    }
                    if let Some(out) = self.send_in_open_dm(id, conv, body)? {
                        return Ok(out);
                    }
                    return self.store_message(id, conv, body, reply_to, refs);
                }
            }
        }
        // A repeat: the same ack, nothing stored; delivery is repeated in case it was lost.
        if let Some((stored_conv, seq)) = self.prior(id, "message")? {
            let unreadable = || Failure::new(ErrorCode::Internal, "stored message is unreadable");
            let event = self
                .stored_event(&stored_conv, seq)?
                .ok_or_else(unreadable)?;
            let Event::Message { ts, .. } = event else {
                return Err(unreadable());
            };
            let mut out =
                self.redeliver(&stored_conv, seq, |useq| with_useq(event.clone(), useq))?;
            out.push(self.reply(&Event::Ack {
                id: id.clone(),
                conv: Some(stored_conv),
                seq: Some(seq),
                ts: Some(ts),
            }));
            return Ok(out);
        }
        self.rate(rate::Action::Send)?;
        self.require_not_blocked(conv)?;
        self.store_message(id, conv, body, reply_to, refs)
    }

    /// The other user of the 1-1 chat `conv` the sender is in, if it is one.
    fn other_in_dm<'c>(&self, conv: &'c ConvId) -> Option<&'c UserId> {
        let (a, b) = conv.direct_members()?;
        if self.user == a {
            Some(b)
        } else if self.user == b {
            Some(a)
        } else {
            None
        }
    }

    /// The common send: a text to an existing, open 1-1 chat, stored in one
    /// statement (seq, both useqs, the event, the request id, the sender's read
    /// mark, both inbox rows); `None` if the chat does not exist or is closed
    /// (nothing was written).
    fn send_in_open_dm(
        &self,
        id: &RequestId,
        conv: &ConvId,
        body: &str,
    ) -> Result<Option<Vec<Effect>>, Failure> {
        let Some((a, b)) = conv.direct_members() else {
            return Ok(None);
        };
        let mut members = [a.clone(), b.clone()];
        members.sort();
        let names: Vec<&str> = members.iter().map(UserId::as_str).collect();
        let ts = self.now;
        let Some(row) = self.db.opt(
            "WITH s AS (
                 UPDATE conversations SET last_seq = last_seq + 1
                 WHERE conv = $1 AND NOT closed RETURNING last_seq
             ), u AS (
                 INSERT INTO user_seqs (\"user\", last_useq)
                 SELECT t.u, 1 FROM s, unnest($2::text[]) WITH ORDINALITY AS t(u, n) ORDER BY t.n
                 ON CONFLICT (\"user\") DO UPDATE SET last_useq = user_seqs.last_useq + 1
                 RETURNING \"user\", last_useq
             ), e AS (
                 INSERT INTO events (conv, seq, ts, kind, sender, device, req_id, body, useq_lo, useq_hi)
                 SELECT $1, s.last_seq, $3, 'message', $4, $5, $6, $7,
                        (SELECT last_useq FROM u WHERE \"user\" = ($2::text[])[1]),
                        (SELECT last_useq FROM u WHERE \"user\" = ($2::text[])[2])
                 FROM s
             ), r AS (
                 INSERT INTO requests (sender, req_id, conv, seq) SELECT $4, $6, $1, s.last_seq FROM s
             ), m AS (
                 UPDATE members SET read_seq = s.last_seq,
                                    delivered_seq = GREATEST(members.delivered_seq, s.last_seq)
                 FROM s WHERE members.conv = $1 AND members.\"user\" = $4
             ), i AS (
                 INSERT INTO inbox (\"user\", useq, conv, seq)
                 SELECT u.\"user\", u.last_useq, $1, s.last_seq FROM u, s
             )
             SELECT s.last_seq,
                    (SELECT last_useq FROM u WHERE \"user\" = ($2::text[])[1]),
                    (SELECT last_useq FROM u WHERE \"user\" = ($2::text[])[2])
             FROM s",
            &[
                &conv.to_string(),
                &names,
                &int(ts),
                &self.user.as_str(),
                &self.device.as_str(),
                &id.as_str(),
                &body,
            ],
        )?
        else {
            return Ok(None);
        };
        let seq = nat(&row, 0)?;
        let useqs = [nat(&row, 1)?, nat(&row, 2)?];
        let mut out: Vec<Effect> = members
            .iter()
            .zip(useqs)
            .map(|(member, useq)| {
                Effect::event(
                    member,
                    &Event::Message {
                        conv: conv.clone(),
                        seq,
                        ts,
                        from: self.user.clone(),
                        device: self.device.to_string(),
                        id: id.clone(),
                        body: body.to_owned(),
                        reply_to: None,
                        attachments: Vec::new(),
                        edited: None,
                        deleted: false,
                        reactions: Reactions::new(),
                        useq: Some(useq),
                    },
                )
            })
            .collect();
        self.notify_offline(conv, seq, body)?;
        out.push(self.reply(&Event::Ack {
            id: id.clone(),
            conv: Some(conv.clone()),
            seq: Some(seq),
            ts: Some(ts),
        }));
        Ok(Some(out))
    }

    /// Stores a message whose sender passed the checks (not a repeat, within
    /// the rate, not blocked): takes the seq (creating or rejoining a 1-1 chat),
    /// attaches the uploads, delivers it to every member.
    fn store_message(
        &self,
        id: &RequestId,
        conv: &ConvId,
        body: &str,
        reply_to: Option<u64>,
        refs: &[AttachmentRef],
    ) -> Result<Vec<Effect>, Failure> {
        let (seq, members) = self.take_send_seq(conv)?;
        if let Some(target) = reply_to {
            self.target_message(conv, target)?;
        }
        let ts = self.now;
        let attachments = self.attach(conv, seq, refs)?;
        let useqs = self.next_useqs(&members)?;
        let (useq_lo, useq_hi) = match (conv.direct_members(), useqs.as_slice()) {
            (Some(_), [lo, hi]) => (Some(int(*lo)), Some(int(*hi))),
            _ => (None, None),
        };
        let conv_s = conv.to_string();
        self.db.exec(
            "INSERT INTO events (conv, seq, ts, kind, sender, device, req_id, body, useq_lo, useq_hi, ref_seq, attachments)
             VALUES ($1, $2, $3, 'message', $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &conv_s,
                &int(seq),
                &int(ts),
                &self.user.as_str(),
                &self.device.as_str(),
                &id.as_str(),
                &body,
                &useq_lo,
                &useq_hi,
                &reply_to.map(int),
                &attachments_column(&attachments),
            ],
        )?;
        self.remember_request(id, conv, seq)?;
        // The sender has read what they wrote.
        self.db.exec(
            "UPDATE members SET read_seq = $3, delivered_seq = GREATEST(delivered_seq, $3)
             WHERE conv = $1 AND \"user\" = $2",
            &[&conv_s, &self.user.as_str(), &int(seq)],
        )?;
        let mut out = self.deliver_at(conv, seq, &members, &useqs, |useq| Event::Message {
            conv: conv.clone(),
            seq,
            ts,
            from: self.user.clone(),
            device: self.device.to_string(),
            id: id.clone(),
            body: body.to_owned(),
            reply_to,
            attachments: attachments.clone(),
            edited: None,
            deleted: false,
            reactions: Reactions::new(),
            useq: Some(useq),
        })?;
        match attachments.first() {
            Some(file) if body.is_empty() => {
                self.notify_offline(conv, seq, &format!("\u{1f4ce} {}", file.name))?;
            }
            _ => self.notify_offline(conv, seq, body)?,
        }
        out.push(self.reply(&Event::Ack {
            id: id.clone(),
            conv: Some(conv.clone()),
            seq: Some(seq),
            ts: Some(ts),
        }));
        Ok(out)
    }

    /// Requires the sender to be a member (creating a dm on first use) and takes
    /// the conversation's next seq; returns it with the members to deliver to.
    fn take_send_seq(&self, conv: &ConvId) -> Result<(u64, Vec<UserId>), Failure> {
        if let Some((a, b)) = conv.direct_members() {
            if self.user == a || self.user == b {
                let mut members = vec![a.clone(), b.clone()];
                members.sort();
                if let Some(seq) = self.next_open_dm_seq(conv)? {
                    return Ok((seq, members));
                }
                self.require_member(conv, true)?;
                return Ok((self.next_seq(conv)?, members));
            }
        }
        self.require_member(conv, true)?;
        let seq = self.next_seq(conv)?;
        Ok((seq, self.members(conv)?))
    }

    /// Attaches the sender's uploads to the message `(conv, seq)` being stored
    /// (the rules of `sqlite::files::attach`).
    fn attach(
        &self,
        conv: &ConvId,
        seq: u64,
        refs: &[AttachmentRef],
    ) -> Result<Vec<Attachment>, Failure> {
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let Some(row) = self.db.opt(
                // Locked to the commit: a sweep on another bridge passes it over.
                "SELECT size, type FROM uploads WHERE file = $1 AND uploader = $2 FOR KEY SHARE",
                &[&r.file.as_str(), &self.user.as_str()],
            )?
            else {
                return Err(Failure::new(
                    ErrorCode::BadRequest,
                    format!("file {} is not an upload of yours", r.file),
                ));
            };
            self.db.exec(
                "INSERT INTO attachments (file, conv, seq) VALUES ($1, $2, $3)",
                &[&r.file.as_str(), &conv.to_string(), &int(seq)],
            )?;
            out.push(Attachment {
                file: r.file.clone(),
                name: r.name.clone(),
                size: nat(&row, 0)?,
                media_type: row.try_get(1)?,
            });
        }
        Ok(out)
    }

    pub(super) fn receipt(
        &self,
        conv: &ConvId,
        seq: u64,
        status: ReceiptStatus,
    ) -> Result<Vec<Effect>, Failure> {
        let last = self.require_member(conv, false)?;
        if seq > last {
            return Err(Failure::bad(format!(
                "seq {seq} is beyond the newest event {last} of {conv}"
            )));
        }
        // The row is locked to the commit: receipts of two bridges never go backwards.
        let conv_s = conv.to_string();
        let (delivered, read) = self
            .db
            .opt(
                "SELECT delivered_seq, read_seq FROM members
                 WHERE conv = $1 AND \"user\" = $2 FOR UPDATE",
                &[&conv_s, &self.user.as_str()],
            )?
            .map(|r| Ok::<_, postgres::Error>((nat(&r, 0)?, nat(&r, 1)?)))
            .transpose()?
            .unwrap_or((0, 0));
        let stored = match status {
            ReceiptStatus::Delivered => delivered,
            ReceiptStatus::Read => read,
        };
        if seq <= stored {
            return Ok(Vec::new());
        }
        match status {
            ReceiptStatus::Delivered => self.db.exec(
                "UPDATE members SET delivered_seq = $3 WHERE conv = $1 AND \"user\" = $2",
                &[&conv_s, &self.user.as_str(), &int(seq)],
            )?,
            ReceiptStatus::Read => self.db.exec(
                "UPDATE members SET read_seq = $3, delivered_seq = GREATEST(delivered_seq, $3)
                 WHERE conv = $1 AND \"user\" = $2",
                &[&conv_s, &self.user.as_str(), &int(seq)],
            )?,
        };
        let members = self.members(conv)?;
        let useqs = self.deliver_receipt(conv, seq, &members, status.as_str())?;
        Ok(members
            .iter()
            .zip(useqs)
            .map(|(member, useq)| {
                let event = Event::Receipt {
                    conv: conv.clone(),
                    user: self.user.clone(),
                    seq,
                    status,
                    ts: self.now,
                    useq: Some(useq),
                };
                Effect::event(member, &event)
            })
            .collect())
    }

    pub(super) fn typing(&self, conv: &ConvId) -> Result<Vec<Effect>, Failure> {
        self.require_member(conv, false)?;
        self.require_not_blocked(conv)?;
        let event = encode(&Event::Typing {
            conv: conv.clone(),
            user: self.user.clone(),
        });
        Ok(self
            .members(conv)?
            .into_iter()
            .filter(|m| m != self.user)
            .map(|user| Effect::Transient {
                user,
                payload: event.clone(),
            })
            .collect())
    }

    pub(super) fn sync(
        &self,
        id: &RequestId,
        after: u64,
        limit: Option<u32>,
    ) -> Result<Vec<Effect>, Failure> {
        let limit = self.page(limit, DEFAULT_PAGE)?;
        let rows = self.db.rows(
            concat!(
                "SELECT i.useq, i.conv, i.seq, i.rstatus, i.ruser, i.rts, ",
                event_columns!(),
                " FROM inbox i LEFT JOIN events e ON i.rstatus IS NULL AND e.conv = i.conv AND e.seq = i.seq
                 WHERE i.\"user\" = $1 AND i.useq > $2 ORDER BY i.useq LIMIT $3"
            ),
            &[&self.user.as_str(), &int(after), &i64::from(limit + 1)],
        )?;
        let mut events = Vec::with_capacity(rows.len());
        for r in &rows {
            let useq = nat(r, 0)?;
            let conv: String = r.try_get(1)?;
            let seq = nat(r, 2)?;
            let rstatus: Option<String> = r.try_get(3)?;
            events.push(match rstatus {
                Some(status) => {
                    receipt_from_row(&conv, seq, &status, r.try_get(4)?, opt_nat(r, 5)?, useq)
                }
                // An inbox row whose event is gone (retention): nothing to deliver.
                None if r.try_get::<_, Option<String>>(7)?.is_none() => None,
                None => event_from_row(r, 6, &conv, seq, Some(useq))?,
            });
        }
        Ok(vec![self.reply(&sync_reply(
            id,
            events,
            after,
            limit,
            self.limits.max_reply_bytes(),
        ))])
    }

    pub(super) fn history(
        &self,
        id: &RequestId,
        conv: &ConvId,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<Vec<Effect>, Failure> {
        let limit = self.page(limit, DEFAULT_PAGE)?;
        let (from, to) = self.read_window(conv)?;
        let upper = before.map_or(to, |b| b.saturating_sub(1).min(to));
        let (rows, more) = self.events_between(conv, from, upper, limit, Order::NewestFirst)?;
        Ok(vec![self.reply(&history_reply(
            id,
            conv,
            rows,
            more,
            self.limits.max_reply_bytes(),
        ))])
    }

    /// Up to `limit` stored events of `conv` with seqs `from..=to`, from the end
    /// `order` names, with their reactions folded in; whether more lie in the window.
    pub(super) fn events_between(
        &self,
        conv: &ConvId,
        from: u64,
        to: u64,
        limit: u32,
        order: Order,
    ) -> Result<(Vec<Event>, bool), postgres::Error> {
        let sql = match order {
            Order::NewestFirst => concat!(
                "SELECT e.seq, ",
                event_columns!(),
                " FROM events e WHERE e.conv = $1 AND e.seq >= $2 AND e.seq <= $3 ORDER BY e.seq DESC LIMIT $4"
            ),
            Order::OldestFirst => concat!(
                "SELECT e.seq, ",
                event_columns!(),
                " FROM events e WHERE e.conv = $1 AND e.seq >= $2 AND e.seq <= $3 ORDER BY e.seq LIMIT $4"
            ),
        };
        let conv_s = conv.to_string();
        let rows = self
            .db
            .rows(sql, &[&conv_s, &int(from), &int(to), &i64::from(limit + 1)])?;
        let more = rows.len() > limit as usize;
        let mut events = Vec::with_capacity(rows.len().min(limit as usize));
        for r in rows.iter().take(limit as usize) {
            if let Some(event) = event_from_row(r, 1, &conv_s, nat(r, 0)?, None)? {
                events.push(event);
            }
        }
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            let (a, b) = (seq_of(first), seq_of(last));
            self.fold_reactions(conv, a.min(b), a.max(b), &mut events)?;
        }
        Ok((events, more))
    }

    /// A stored event of the timeline (without `useq`); a message in its current state.
    pub(super) fn stored_event(
        &self,
        conv: &ConvId,
        seq: u64,
    ) -> Result<Option<Event>, postgres::Error> {
        let conv_s = conv.to_string();
        match self.db.opt(
            concat!(
                "SELECT ",
                event_columns!(),
                " FROM events e WHERE e.conv = $1 AND e.seq = $2"
            ),
            &[&conv_s, &int(seq)],
        )? {
            Some(r) => event_from_row(&r, 0, &conv_s, seq, None),
            None => Ok(None),
        }
    }
}
