//! Listing on PostgreSQL: the user's conversations and a conversation's
//! members, each paged by count and by bytes so that any reply fits the
//! broker's packet limit (the rules of `sqlite::conversations`).
//!
//! The list starts from the user's `memberships` rows (distributed by user) and
//! joins each conversation's row and the user's `members` row (distributed by
//! conversation), as docs/SCALING.md allows for the list. Ids are compared and
//! sorted bytewise (`COLLATE "C"`), as SQLite does, whatever the database's
//! locale: the same order and the same cursors on both engines.

use messenger_protocol::wire::{ConversationItem, Event, MemberItem, RequestId, Role};
use messenger_protocol::{ConvId, UserId};

use super::context::{int, nat, Ctx};
use crate::rows::Budget;
use crate::sqlite::context::Kind;
use crate::sqlite::conversations::{Cursor, DEFAULT_CONVERSATIONS, DEFAULT_MEMBERS, MEMBERS_SHOWN};
use crate::{Effect, Failure};

/// A row of the conversation list.
struct ListRow {
    conv: String,
    kind: Kind,
    name: String,
    last_seq: u64,
    read_seq: u64,
    unread: u64,
}

impl Ctx<'_, '_> {
    /// A page of the user's current conversations, most recently active first.
    pub(super) fn conversations(
        &self,
        id: &RequestId,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Vec<Effect>, Failure> {
        let limit = self.page(limit, DEFAULT_CONVERSATIONS)?;
        let cursor = cursor.map(Cursor::parse).transpose()?;
        let (after_seq, after_conv) = match &cursor {
            Some(c) => (int(c.last_seq), c.conv.as_str()),
            // Before every row: no conversation has a seq above the largest number.
            None => (i64::MAX, ""),
        };
        let rows = self.db.rows(
            "SELECT c.conv, c.kind, c.name, c.last_seq, m.read_seq,
                    (SELECT COUNT(*) FROM events e
                      WHERE e.conv = c.conv AND e.seq > m.read_seq AND e.kind = 'message'
                        AND e.sender <> m.\"user\")
             FROM memberships s
             JOIN conversations c ON c.conv = s.conv
             JOIN members m ON m.conv = s.conv AND m.\"user\" = s.\"user\"
             WHERE s.\"user\" = $1 AND s.left_seq IS NULL AND m.left_seq IS NULL
               AND (c.last_seq < $2 OR (c.last_seq = $2 AND c.conv COLLATE \"C\" > $3))
             ORDER BY c.last_seq DESC, c.conv COLLATE \"C\" LIMIT $4",
            &[
                &self.user.as_str(),
                &after_seq,
                &after_conv,
                &i64::from(limit + 1),
            ],
        )?;
        let mut more = rows.len() > limit as usize;
        let mut items = Vec::with_capacity(rows.len());
        let mut budget = Budget::new(self.limits.max_reply_bytes());
        let mut last = None;
        for r in rows.iter().take(limit as usize) {
            let row = ListRow {
                conv: r.try_get(0)?,
                kind: Kind::from_column(r.try_get(1)?),
                name: r.try_get(2)?,
                last_seq: nat(r, 3)?,
                read_seq: nat(r, 4)?,
                unread: nat(r, 5)?,
            };
            let Some(item) = self.conversation_item(&row)? else {
                continue;
            };
            let bytes = serde_json::to_vec(&item).map_or(0, |v| v.len());
            if !budget.take_bytes(bytes) {
                more = true;
                break;
            }
            last = Some(Cursor {
                last_seq: row.last_seq,
                conv: row.conv,
            });
            items.push(item);
        }
        let next = if more {
            last.as_ref().map(Cursor::encode)
        } else {
            None
        };
        Ok(vec![self.reply(&Event::Conversations {
            id: id.clone(),
            items,
            more,
            next,
        })])
    }

    /// An item of the list: a dm is named after the other user (from its id, so
    /// that a chat with a removed account keeps its name).
    fn conversation_item(&self, row: &ListRow) -> Result<Option<ConversationItem>, Failure> {
        let Ok(conv) = ConvId::parse(&row.conv) else {
            // A row that no longer decodes is skipped, not fatal.
            return Ok(None);
        };
        let name = match conv.direct_members() {
            Some((a, b)) => if a == self.user { b } else { a }.to_string(),
            None if row.kind == Kind::Direct => String::new(),
            None => row.name.clone(),
        };
        let (members, more) = self.member_rows(&conv, None, MEMBERS_SHOWN)?;
        let member_count = if more {
            let row = self.db.one(
                "SELECT COUNT(*) FROM members WHERE conv = $1 AND left_seq IS NULL",
                &[&conv.to_string()],
            )?;
            nat(&row, 0)?
        } else {
            members.len() as u64
        };
        Ok(Some(ConversationItem {
            name,
            members: members.into_iter().map(|m| m.user).collect(),
            member_count,
            last_seq: row.last_seq,
            read_seq: row.read_seq,
            unread: row.unread,
            conv,
        }))
    }

    /// A page of a conversation's current members, for its current members.
    pub(super) fn members_page(
        &self,
        id: &RequestId,
        conv: &ConvId,
        after: Option<&UserId>,
        limit: Option<u32>,
    ) -> Result<Vec<Effect>, Failure> {
        let limit = self.page(limit, DEFAULT_MEMBERS)?;
        self.require_member(conv, false)?;
        let (rows, mut more) = self.member_rows(conv, after, limit)?;
        let mut budget = Budget::new(self.limits.max_reply_bytes());
        let mut members = Vec::with_capacity(rows.len());
        for member in rows {
            let bytes = serde_json::to_vec(&member).map_or(0, |v| v.len());
            if !budget.take_bytes(bytes) {
                more = true;
                break;
            }
            members.push(member);
        }
        let next = if more {
            members.last().map(|m| m.user.clone())
        } else {
            None
        };
        Ok(vec![self.reply(&Event::Members {
            id: id.clone(),
            conv: conv.clone(),
            members,
            more,
            next,
        })])
    }

    /// Up to `limit` current members after `after` by user id, and whether more follow.
    pub(super) fn member_rows(
        &self,
        conv: &ConvId,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<(Vec<MemberItem>, bool), postgres::Error> {
        let rows = self.db.rows(
            "SELECT \"user\", role FROM members
             WHERE conv = $1 AND left_seq IS NULL AND \"user\" COLLATE \"C\" > $2
             ORDER BY \"user\" COLLATE \"C\" LIMIT $3",
            &[
                &conv.to_string(),
                &after.map_or("", UserId::as_str),
                &i64::from(limit + 1),
            ],
        )?;
        let more = rows.len() > limit as usize;
        let mut members = Vec::with_capacity(rows.len().min(limit as usize));
        for row in rows.iter().take(limit as usize) {
            let (user, role): (&str, &str) = (row.try_get(0)?, row.try_get(1)?);
            let Ok(user) = UserId::parse(user) else {
                continue;
            };
            members.push(MemberItem {
                user,
                role: if role == "admin" {
                    Role::Admin
                } else {
                    Role::Member
                },
            });
        }
        Ok((members, more))
    }
}
