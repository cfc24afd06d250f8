//! 1-1 and group messaging: send, receipts, typing, sync, history, conversations.

use messenger_protocol::wire::{
    Attachment, AttachmentRef, ErrorCode, Event, Reactions, ReceiptStatus, RequestId,
};
use messenger_protocol::{ConvId, UserId};
use rusqlite::{params, OptionalExtension};

use super::files;
use super::rows::{attachments_column, event_columns, event_from_row, receipt_from_row, with_useq};
use super::Ctx;
use crate::outcome::{encode, Effect};
use crate::rate;
use crate::rows::{history_reply, sync_reply};
use crate::Failure;

/// Default page size of `sync` and `history`.
const DEFAULT_PAGE: u32 = 100;

impl Ctx<'_> {
    pub(super) fn send(
        &self,
        id: &RequestId,
        conv: &ConvId,
        body: &str,
        reply_to: Option<u64>,
        refs: &[AttachmentRef],
    ) -> Result<Vec<Effect>, Failure> {
        files::check_refs(refs)?;
        if !body.is_empty() || refs.is_empty() {
            self.check_body(body)?;
        }
        // A repeat: the same ack, nothing stored; delivery is repeated in case it was lost.
        if let Some((stored_conv, seq)) = self.prior(id, "message")? {
            let event = self
                .stored_event(&stored_conv, seq)?
                .ok_or_else(|| Failure::new(ErrorCode::Internal, "stored message is unreadable"))?;
            let Event::Message { ts, .. } = event else {
                return Err(Failure::new(
                    ErrorCode::Internal,
                    "stored message is unreadable",
                ));
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
        let (seq, members) = self.take_send_seq(conv)?;
        if let Some(target) = reply_to {
            self.target_message(conv, target)?;
        }
        let ts = self.now;
        let attachments = files::attach(self.conn, self.user, conv, seq, refs)?;
        let useqs = self.next_useqs(&members)?;
        // A dm's event keeps its two useqs (a repeat redelivers with them); a group's
        // inbox rows are found through the inbox's group index instead.
        let (useq_lo, useq_hi) = match (conv.direct_members(), useqs.as_slice()) {
            (Some(_), [lo, hi]) => (Some(*lo), Some(*hi)),
            _ => (None, None),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO events (conv, seq, ts, kind, sender, device, req_id, body, useq_lo, useq_hi, ref_seq, text_row, attachments)
                 VALUES (?1, ?2, ?3, 'message', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                conv.to_string(),
                seq,
                ts,
                self.user.as_str(),
                self.device.as_str(),
                id.as_str(),
                body,
                useq_lo,
                useq_hi,
                reply_to,
                self.index_new(conv, seq, body)?,
                attachments_column(&attachments)
            ])?;
        // The sender has read what they wrote.
        self.conn
            .prepare_cached(
                "UPDATE members SET read_seq = ?3, delivered_seq = MAX(delivered_seq, ?3) WHERE conv = ?1 AND user = ?2",
            )?
            .execute(params![conv.to_string(), self.user.as_str(), seq])?;
        let mut out = self.deliver_at(conv, seq, &members, &useqs, |useq| {
            self.message_event(conv, seq, ts, id, body, reply_to, &attachments, Some(useq))
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
    /// A dm's members are the two users its id names (they cannot change), so
    /// an existing dm costs one statement here instead of three.
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

    #[allow(clippy::too_many_arguments)]
    fn message_event(
        &self,
        conv: &ConvId,
        seq: u64,
        ts: u64,
        id: &RequestId,
        body: &str,
        reply_to: Option<u64>,
        attachments: &[Attachment],
        useq: Option<u64>,
    ) -> Event {
        Event::Message {
            conv: conv.clone(),
            seq,
            ts,
            from: self.user.clone(),
            device: self.device.to_string(),
            id: id.clone(),
            body: body.to_owned(),
            reply_to,
            attachments: attachments.to_vec(),
            edited: None,
            deleted: false,
            reactions: Reactions::new(),
            useq,
        }
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
        // No row yet for a 1-1 conversation before its first message: nothing to confirm.
        let (delivered, read): (u64, u64) = self
            .conn
            .prepare_cached(
                "SELECT delivered_seq, read_seq FROM members WHERE conv = ?1 AND user = ?2",
            )?
            .query_row(params![conv.to_string(), self.user.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?
            .unwrap_or((0, 0));
        let stored = match status {
            ReceiptStatus::Delivered => delivered,
            ReceiptStatus::Read => read,
        };
        if seq <= stored {
            return Ok(Vec::new());
        }
        let sql = match status {
            ReceiptStatus::Delivered => "UPDATE members SET delivered_seq = ?3 WHERE conv = ?1 AND user = ?2",
            ReceiptStatus::Read => {
                "UPDATE members SET read_seq = ?3, delivered_seq = MAX(delivered_seq, ?3) WHERE conv = ?1 AND user = ?2"
            }
        };
        self.conn.prepare_cached(sql)?.execute(params![
            conv.to_string(),
            self.user.as_str(),
            seq
        ])?;
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO inbox (user, useq, conv, seq, rstatus, ruser, rts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut out = Vec::new();
        for member in self.members(conv)? {
            let useq = self.next_useq(&member)?;
            insert.execute(params![
                member.as_str(),
                useq,
                conv.to_string(),
                seq,
                status.as_str(),
                self.user.as_str(),
                self.now
            ])?;
            let event = Event::Receipt {
                conv: conv.clone(),
                user: self.user.clone(),
                seq,
                status,
                ts: self.now,
                useq: Some(useq),
            };
            out.push(Effect::event(&member, &event));
        }
        Ok(out)
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
        let mut stmt = self.conn.prepare_cached(
            concat!(
                "SELECT i.useq, i.conv, i.seq, i.rstatus, i.ruser, i.rts, ",
                event_columns!(),
                " FROM inbox i LEFT JOIN events e ON i.rstatus IS NULL AND e.conv = i.conv AND e.seq = i.seq
                 WHERE i.user = ?1 AND i.useq > ?2 ORDER BY i.useq LIMIT ?3"
            ),
        )?;
        let rows = stmt
            .query_map(params![self.user.as_str(), after, limit + 1], |r| {
                let useq: u64 = r.get(0)?;
                let conv: String = r.get(1)?;
                let seq: u64 = r.get(2)?;
                let rstatus: Option<String> = r.get(3)?;
                Ok(match rstatus {
                    Some(status) => {
                        receipt_from_row(&conv, seq, &status, r.get(4)?, r.get(5)?, useq)
                    }
                    // A user's newest inbox row outlives its event under retention
                    // (it holds their useq counter): nothing to deliver.
                    None if r.get::<_, Option<String>>(7)?.is_none() => None,
                    None => event_from_row(r, 6, &conv, seq, Some(useq))?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        // A row that no longer decodes (a hand-edited file) is skipped, not fatal.
        Ok(vec![self.reply(&sync_reply(
            id,
            rows,
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
}

/// Which end of a window [`Ctx::events_between`] starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Lowest seq first (an export).
    OldestFirst,
    /// Highest seq first (`history` pages backwards).
    NewestFirst,
}

impl Ctx<'_> {
    /// Up to `limit` stored events of `conv` with seqs `from..=to`, from the end
    /// `order` names, as `history` returns them: messages in their current state
    /// with their reactions folded in. Says whether more events lie in the window.
    /// Rows that no longer decode (a hand-edited file) are skipped.
    pub(super) fn events_between(
        &self,
        conv: &ConvId,
        from: u64,
        to: u64,
        limit: u32,
        order: Order,
    ) -> rusqlite::Result<(Vec<Event>, bool)> {
        let sql = match order {
            Order::NewestFirst => concat!(
                "SELECT e.seq, ",
                event_columns!(),
                " FROM events e WHERE e.conv = ?1 AND e.seq >= ?2 AND e.seq <= ?3 ORDER BY e.seq DESC LIMIT ?4"
            ),
            Order::OldestFirst => concat!(
                "SELECT e.seq, ",
                event_columns!(),
                " FROM events e WHERE e.conv = ?1 AND e.seq >= ?2 AND e.seq <= ?3 ORDER BY e.seq LIMIT ?4"
            ),
        };
        let mut stmt = self.conn.prepare_cached(sql)?;
        let conv_s = conv.to_string();
        let rows = stmt
            .query_map(params![conv_s, from, to, limit + 1], |r| {
                let seq: u64 = r.get(0)?;
                event_from_row(r, 1, &conv_s, seq, None)
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let more = rows.len() > limit as usize;
        let mut rows: Vec<Event> = rows.into_iter().take(limit as usize).flatten().collect();
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            let (a, b) = (seq_of(first), seq_of(last));
            self.fold_reactions(conv, a.min(b), a.max(b), &mut rows)?;
        }
        Ok((rows, more))
    }
}

/// The seq of a stored event of a conversation (0 for other kinds).
pub(crate) fn seq_of(event: &Event) -> u64 {
    match event {
        Event::Message { seq, .. }
        | Event::Member { seq, .. }
        | Event::Edit { seq, .. }
        | Event::Delete { seq, .. }
        | Event::Reaction { seq, .. } => *seq,
        _ => 0,
    }
}
