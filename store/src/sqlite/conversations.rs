//! Listing: the user's conversations and a conversation's members, each paged
//! by count and by bytes so that any reply fits the broker's packet limit.

use messenger_protocol::wire::{ConversationItem, Event, MemberItem, RequestId, Role, MAX_NUMBER};
use messenger_protocol::{ConvId, UserId};
use rusqlite::params;

use super::context::Kind;
use super::rows::Budget;
use super::Ctx;
use crate::{Effect, Failure};

/// Default page size of `conversations`.
pub(crate) const DEFAULT_CONVERSATIONS: u32 = 50;

/// Default page size of `members`.
pub(crate) const DEFAULT_MEMBERS: u32 = 100;

/// The members an item of `conversations` names (the first by user id); the
/// `members` request pages through the rest.
pub(crate) const MEMBERS_SHOWN: u32 = 10;

/// Where a page of `conversations` continues: after this conversation, in the
/// order of the list (`last_seq` descending, then `conv` ascending).
pub(crate) struct Cursor {
    pub(crate) last_seq: u64,
    pub(crate) conv: String,
}

impl Cursor {
    /// The wire form, `<last_seq>:<conv>`.
    pub(crate) fn encode(&self) -> String {
        format!("{}:{}", self.last_seq, self.conv)
    }

    /// Reads a cursor of an earlier reply (`bad_request` if it is not one).
    pub(crate) fn parse(s: &str) -> Result<Self, Failure> {
        let bad = || Failure::bad("cursor must be the `next` of an earlier `conversations` reply");
        let (seq, conv) = s.split_once(':').ok_or_else(bad)?;
        let last_seq = seq
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= MAX_NUMBER)
            .ok_or_else(bad)?;
        let conv = ConvId::parse(conv).map_err(|_| bad())?;
        Ok(Self {
            last_seq,
            conv: conv.to_string(),
        })
    }
}

/// A row of the conversation list.
struct Row {
    conv: String,
    kind: Kind,
    name: String,
    last_seq: u64,
    read_seq: u64,
    unread: u64,
}

impl Ctx<'_> {
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
            Some(c) => (c.last_seq as i64, c.conv.as_str()),
            // Before every row: no conversation has a seq above the largest number.
            None => (i64::MAX, ""),
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.conv, c.kind, c.name, c.last_seq, m.read_seq,
                    (SELECT COUNT(*) FROM events e
                      WHERE e.conv = c.conv AND e.seq > m.read_seq AND e.kind = 'message' AND e.sender != m.user)
             FROM members m JOIN conversations c ON c.conv = m.conv
             WHERE m.user = ?1 AND m.left_seq IS NULL
               AND (c.last_seq < ?2 OR (c.last_seq = ?2 AND c.conv > ?3))
             ORDER BY c.last_seq DESC, c.conv LIMIT ?4",
        )?;
        let rows = stmt
            .query_map(
                params![self.user.as_str(), after_seq, after_conv, limit + 1],
                |r| {
                    Ok(Row {
                        conv: r.get(0)?,
                        kind: Kind::from_column(&r.get::<_, String>(1)?),
                        name: r.get(2)?,
                        last_seq: r.get(3)?,
                        read_seq: r.get(4)?,
                        unread: r.get(5)?,
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let mut more = rows.len() > limit as usize;
        let mut items = Vec::with_capacity(rows.len());
        let mut budget = Budget::new(self.limits.max_reply_bytes());
        let mut last = None;
        for row in rows.into_iter().take(limit as usize) {
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
    fn conversation_item(&self, row: &Row) -> Result<Option<ConversationItem>, Failure> {
        let Ok(conv) = ConvId::parse(&row.conv) else {
            // A row that no longer decodes (a hand-edited file) is skipped, not fatal.
            return Ok(None);
        };
        let name = match conv.direct_members() {
            Some((a, b)) => if a == self.user { b } else { a }.to_string(),
            None if row.kind == Kind::Direct => String::new(),
            None => row.name.clone(),
        };
        let (members, more) = self.member_rows(&conv, None, MEMBERS_SHOWN)?;
        let member_count = if more {
            self.conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM members WHERE conv = ?1 AND left_seq IS NULL",
                )?
                .query_row([conv.to_string()], |r| r.get(0))?
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
    ) -> rusqlite::Result<(Vec<MemberItem>, bool)> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT user, role FROM members
             WHERE conv = ?1 AND left_seq IS NULL AND user > ?2 ORDER BY user LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(
                params![
                    conv.to_string(),
                    after.map_or("", UserId::as_str),
                    limit + 1
                ],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let more = rows.len() > limit as usize;
        let members = rows
            .into_iter()
            .take(limit as usize)
            .filter_map(|(user, role)| {
                Some(MemberItem {
                    user: UserId::parse(&user).ok()?,
                    role: if role == "admin" {
                        Role::Admin
                    } else {
                        Role::Member
                    },
                })
            })
            .collect();
        Ok((members, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_protocol::wire::ErrorCode;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let c = Cursor::parse("42:dm:alice:bob").unwrap();
        assert_eq!((c.last_seq, c.conv.as_str()), (42, "dm:alice:bob"));
        assert_eq!(c.encode(), "42:dm:alice:bob");
        for bad in [
            "",
            "42",
            "x:g:a",
            "-1:g:a",
            "9223372036854775808:g:a",
            "1:g:a.b",
        ] {
            let err = Cursor::parse(bad).err().map(|f| f.code);
            assert_eq!(err, Some(ErrorCode::BadRequest), "{bad}");
        }
    }
}
