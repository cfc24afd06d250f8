//! `search`, and the full-text index it reads.
//!
//! The index is an FTS5 table with the trigram tokenizer (`message_text`,
//! contentless: it keeps no copy of the text; `detail = none`: no positions,
//! so it only narrows the candidates down to the rows holding every trigram of
//! the query, and the text decides). Its rowid is a message's row in
//! `search_rows` (conversation and seq), numbered in storage order, so newest
//! first is rowid descending and a page's cursor is the last rowid it examined.
//!
//! FTS5 writes the terms it holds in memory to a new index segment at every
//! savepoint, and every request runs in one: indexing in the request itself
//! would cost a segment (and later merges) per message. A request therefore
//! only notes its [`IndexOp`]s; they are applied in the same transaction at the
//! end of the batch (or before a `search` in it), one segment per batch.

use std::collections::HashMap;

use messenger_protocol::wire::{Event, RequestId, MAX_QUERY_CHARS};
use messenger_protocol::ConvId;
use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{event_columns, event_from_row, Budget};
use super::Ctx;
use crate::{Effect, Failure};

/// Default page size of `search`.
pub(crate) const DEFAULT_PAGE: u32 = 20;

/// Index rows a `search` request examines at most; past them it answers the
/// page it has (perhaps empty) with `more` and a cursor to go on from.
pub(crate) const SCAN_BUDGET: usize = 5_000;

/// An index row: (rowid, conv, seq).
type Candidate = (i64, Option<String>, Option<u64>);

/// Candidates fetched from the index at a time.
pub(crate) const CHUNK: u32 = 200;

/// A change to the search index, noted by a request and applied at the end of
/// its batch. Changes to a row carry its indexed text: the index keeps no copy
/// of it, and needs it to remove the row's entries (secure-delete: none of them
/// stays behind, not even as a delete marker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IndexOp {
    /// A new message's text, under its row.
    Insert {
        /// The `search_rows` row.
        row: i64,
        /// The text.
        body: String,
    },
    /// An edit: the row's text is replaced.
    Replace {
        /// The `search_rows` row.
        row: i64,
        /// The text indexed until now.
        old: String,
        /// The new text.
        body: String,
    },
    /// A deletion: the row leaves the index.
    Remove {
        /// The `search_rows` row.
        row: i64,
        /// The text indexed until now.
        old: String,
    },
}

/// Applies (and empties) the noted index changes, in order.
pub(crate) fn apply(conn: &Connection, ops: &mut Vec<IndexOp>) -> rusqlite::Result<()> {
    let insert = "INSERT INTO message_text (rowid, body) VALUES (?1, ?2)";
    let remove = "INSERT INTO message_text (message_text, rowid, body) VALUES ('delete', ?1, ?2)";
    for op in ops.drain(..) {
        match op {
            IndexOp::Insert { row, body } => {
                conn.prepare_cached(insert)?.execute(params![row, body])?;
            }
            IndexOp::Replace { row, old, body } => {
                conn.prepare_cached(remove)?.execute(params![row, old])?;
                conn.prepare_cached(insert)?.execute(params![row, body])?;
            }
            IndexOp::Remove { row, old } => {
                conn.prepare_cached(remove)?.execute(params![row, old])?;
            }
        }
    }
    Ok(())
}

/// A parsed query: every word must occur in the text, case-insensitively.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Query {
    /// The trigrams of the words of three or more characters, as one FTS5
    /// expression (each a quoted one-trigram string, all required); `None` when
    /// no word is that long. The index keeps no positions (`detail = none`), so
    /// a row that has every trigram may still lack a word: [`Query::matches`]
    /// decides.
    fts: Option<String>,
    /// Every word, lowercased.
    pub(crate) words: Vec<String>,
}

impl Query {
    /// Splits at whitespace (and control characters).
    pub(crate) fn parse(query: &str) -> Result<Self, Failure> {
        let chars = query.chars().count();
        if chars == 0 || chars > MAX_QUERY_CHARS {
            return Err(Failure::bad(format!(
                "query must be 1 to {MAX_QUERY_CHARS} characters, got {chars}"
            )));
        }
        let mut words: Vec<String> = query
            .split(|c: char| c.is_whitespace() || c.is_control())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        if words.is_empty() {
            return Err(Failure::bad("query has no words"));
        }
        words.sort();
        words.dedup();
        let mut trigrams: Vec<String> = words
            .iter()
            .flat_map(|word| {
                let chars: Vec<char> = word.chars().collect();
                chars
                    .windows(3)
                    .map(|t| format!("\"{}\"", t.iter().collect::<String>().replace('"', "\"\"")))
                    .collect::<Vec<_>>()
            })
            .collect();
        trigrams.sort();
        trigrams.dedup();
        Ok(Self {
            fts: (!trigrams.is_empty()).then(|| trigrams.join(" ")),
            words,
        })
    }

    /// Whether `body` holds every word, case-insensitively.
    pub(crate) fn matches(&self, body: &str) -> bool {
        let body = body.to_lowercase();
        self.words.iter().all(|w| body.contains(w.as_str()))
    }
}

impl Ctx<'_> {
    /// Gives a new message a row in the search index (applied at the end of the
    /// batch); returns the row, for the message's `text_row`.
    pub(super) fn index_new(&self, conv: &ConvId, seq: u64, body: &str) -> rusqlite::Result<i64> {
        self.conn
            .prepare_cached("INSERT INTO search_rows (conv, seq) VALUES (?1, ?2)")?
            .execute(params![conv.to_string(), seq])?;
        let row = self.conn.last_insert_rowid();
        self.index.borrow_mut().push(IndexOp::Insert {
            row,
            body: body.to_owned(),
        });
        Ok(row)
    }

    /// Notes an edit's new text for the index.
    pub(super) fn index_replace(&self, row: i64, old: String, body: &str) {
        self.index.borrow_mut().push(IndexOp::Replace {
            row,
            old,
            body: body.to_owned(),
        });
    }

    /// Notes a deleted message's row for removal from the index.
    pub(super) fn index_remove(&self, row: i64, old: String) {
        self.index.borrow_mut().push(IndexOp::Remove { row, old });
    }

    pub(super) fn search(
        &self,
        id: &RequestId,
        query: &str,
        conv: Option<&ConvId>,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<Effect>, Failure> {
        let query = Query::parse(query)?;
        let limit = self.page(limit, DEFAULT_PAGE)? as usize;
        let below = match cursor {
            None => i64::MAX,
            Some(c) => c
                .parse::<i64>()
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| Failure::bad("cursor must be the `next` of a search reply"))?,
        };
        // One conversation: refused as `history` would refuse it.
        if let Some(conv) = conv {
            self.read_window(conv)?;
        }
        let only = conv.map(ToString::to_string);
        let mut windows: HashMap<String, Option<(u64, u64)>> = HashMap::new();
        let mut results = Vec::new();
        let mut budget = Budget::new(self.limits.max_reply_bytes());
        let mut scanned = 0;
        let mut next = below;
        let mut more = false;
        'scan: loop {
            let chunk = self.candidates(&query, next)?;
            let end = chunk.len() < CHUNK as usize;
            for (row, conv_s, seq) in chunk {
                if results.len() == limit || scanned == SCAN_BUDGET {
                    more = true;
                    break 'scan;
                }
                scanned += 1;
                let (Some(conv_s), Some(seq)) = (conv_s, seq) else {
                    next = row;
                    continue;
                };
                if only.as_deref().is_some_and(|c| c != conv_s) {
                    next = row;
                    continue;
                }
                if let Some(event) = self.readable_match(&query, &mut windows, &conv_s, seq)? {
                    if !budget.take(&event) {
                        more = true;
                        break 'scan;
                    }
                    results.push(event);
                }
                next = row;
            }
            if end {
                break;
            }
        }
        Ok(vec![self.reply(&Event::Search {
            id: id.clone(),
            results,
            more,
            next: more.then(|| next.to_string()),
        })])
    }

    /// The next candidates below `below`, newest first: (row, conv, seq); conv
    /// and seq are `None` for an index row without its `search_rows` row (which
    /// cannot happen, but must not end the scan early).
    fn candidates(&self, query: &Query, below: i64) -> rusqlite::Result<Vec<Candidate>> {
        let map = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?));
        match &query.fts {
            Some(expr) => self
                .conn
                .prepare_cached(
                    "SELECT t.rowid, s.conv, s.seq FROM
                        (SELECT rowid FROM message_text WHERE message_text MATCH ?1 AND rowid < ?2
                         ORDER BY rowid DESC LIMIT ?3) t
                     LEFT JOIN search_rows s ON s.row = t.rowid
                     ORDER BY t.rowid DESC",
                )?
                .query_map(params![expr, below, CHUNK], map)?
                .collect(),
            None => self
                .conn
                .prepare_cached(
                    "SELECT row, conv, seq FROM search_rows WHERE row < ?1 ORDER BY row DESC LIMIT ?2",
                )?
                .query_map(params![below, CHUNK], map)?
                .collect(),
        }
    }

    /// The message (conv, seq) in its current state, if the user may read it and
    /// it holds every word.
    fn readable_match(
        &self,
        query: &Query,
        windows: &mut HashMap<String, Option<(u64, u64)>>,
        conv_s: &str,
        seq: u64,
    ) -> Result<Option<Event>, Failure> {
        let Ok(conv) = ConvId::parse(conv_s) else {
            return Ok(None);
        };
        let window = match windows.get(conv_s) {
            Some(w) => *w,
            None => {
                let w = self
                    .membership(&conv, self.user)?
                    .map(|m| (m.joined_seq, m.left_seq.unwrap_or(u64::MAX)));
                windows.insert(conv_s.to_owned(), w);
                w
            }
        };
        if !window.is_some_and(|(from, to)| (from..=to).contains(&seq)) {
            return Ok(None);
        }
        let event = self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                event_columns!(),
                " FROM events e WHERE e.conv = ?1 AND e.seq = ?2 AND e.kind = 'message'"
            ))?
            .query_row(params![conv_s, seq], |r| {
                event_from_row(r, 0, conv_s, seq, None)
            })
            .optional()?
            .flatten();
        let Some(mut event) = event else {
            return Ok(None);
        };
        match &event {
            Event::Message { body, deleted, .. } if !deleted && query.matches(body) => {}
            _ => return Ok(None),
        }
        self.reactions_of(&conv, &mut event)?;
        Ok(Some(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_split_into_words_and_their_trigrams() {
        let q = Query::parse("Hello  東京 a \"x\"y ok hello").unwrap();
        assert_eq!(
            q.fts.as_deref(),
            Some("\"\"\"x\"\"\" \"ell\" \"hel\" \"llo\" \"x\"\"y\"")
        );
        assert_eq!(q.words, ["\"x\"y", "a", "hello", "ok", "東京"]);
        assert!(q.matches("OK, a trip to 東京 said \"X\"Y: HELLO"));
        assert!(!q.matches("OK, a trip to 東京 said \"X\" Y: HELLO"));
        assert_eq!(Query::parse("ok 東京").unwrap().fts, None);
        assert!(Query::parse("").is_err());
        assert!(Query::parse("   ").is_err());
        assert!(Query::parse(&"x".repeat(257)).is_err());
        assert!(Query::parse(&"é".repeat(256)).is_ok());
    }

    #[test]
    fn the_bundled_sqlite_has_fts5_with_the_trigram_tokenizer() {
        let conn = Connection::open_in_memory().unwrap();
        let fts5: bool = conn
            .query_row("SELECT sqlite_compileoption_used('ENABLE_FTS5')", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(fts5);
        conn.execute_batch(
            "CREATE VIRTUAL TABLE t USING fts5(body, tokenize = 'trigram', content = '', columnsize = 0, detail = none);
             INSERT INTO t (t, rank) VALUES ('secure-delete', 1);
             CREATE VIRTUAL TABLE terms USING fts5vocab(t, 'row');
             INSERT INTO t (rowid, body) VALUES (1, '東京タワーに行きました'), (2, 'Hello World');",
        )
        .unwrap();
        let has_term = |term: &str| -> bool {
            conn.query_row("SELECT count(*) FROM terms WHERE term = ?1", [term], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
                > 0
        };
        assert!(has_term("wor"));
        let hits = |q: &str| -> Vec<i64> {
            conn.prepare("SELECT rowid FROM t WHERE t MATCH ?1 ORDER BY rowid")
                .unwrap()
                .query_map([q], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(hits("\"タワー\""), vec![1]);
        assert_eq!(hits("\"WOR\" \"rld\" \"hel\""), vec![2]);
        conn.execute(
            "INSERT INTO t (t, rowid, body) VALUES ('delete', 2, 'Hello World')",
            [],
        )
        .unwrap();
        assert!(hits("\"wor\"").is_empty());
        // Secure delete: the index no longer holds the deleted row's terms.
        assert!(!has_term("wor"));
        assert!(has_term("タワー"));
    }
}
