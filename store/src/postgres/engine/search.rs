//! `search` on PostgreSQL: the rules of `sqlite::search` (the same query
//! parser, the same readable windows, the same reply), with the candidates
//! found by `pg_trgm` instead of an FTS5 table.
//!
//! # Candidates
//!
//! `events_text` (see `schema`) is a GIN trigram index on the text of the
//! messages that are not deleted; PostgreSQL keeps it in the writing
//! transaction itself, so there is nothing to note or apply as on SQLite. A
//! query's words become `ILIKE` patterns, checked in the statement that reads
//! the user's readable messages (`memberships` joined to `events`), and each
//! candidate's text then decides by [`Query::matches`], so that results are
//! SQLite's. An `ILIKE` pattern must never miss a message the rule finds (see
//! [`like_pattern`]): it only narrows the candidates down.
//!
//! # Order and cursor
//!
//! There is no storage-order row number on PostgreSQL (`search_rows` on
//! SQLite): candidates come newest first by their `ts`, the server's clock when
//! stored, then by conversation and seq (descending), one total order. A cursor
//! is still a positive number as a string: `ts << 20 | n`, where the page
//! stopped after the first `n` candidates of that millisecond. The messages of
//! one millisecond are a few batches at most, so `n` stays far under 2^20, and
//! `ts` under 2^43 (the year 2248). A message of that millisecond that starts
//! or stops matching between two pages shifts the rest of it by one (one result
//! is then shown twice or not at all), where SQLite's row numbers do not move.

use messenger_protocol::wire::{Event, RequestId};
use messenger_protocol::ConvId;
use postgres::types::ToSql;
use postgres::Row;

use super::context::{int, nat, Ctx};
use super::messages::event_from_row;
use crate::rows::Budget;
use crate::sqlite::rows::event_columns;
use crate::sqlite::search::{Query, CHUNK, DEFAULT_PAGE, SCAN_BUDGET};
use crate::{Effect, Failure};

/// Bits of a cursor that count the candidates of its millisecond.
const COUNT_BITS: u32 = 20;

/// The largest count a cursor holds.
const MAX_COUNT: u64 = (1 << COUNT_BITS) - 1;

/// The latest `ts` a cursor holds.
const MAX_TS: u64 = (i64::MAX as u64) >> COUNT_BITS;

/// How many of a query's patterns get an `ILIKE` of their own, which the
/// trigram index can serve (the others are checked all at once, unindexed).
const INDEXED: usize = 3;

/// The statement that reads the next candidates: the user's readable messages,
/// not deleted, below a position, holding every pattern of `$6` and those
/// appended (`$8` on).
macro_rules! candidates {
    ($($indexed:literal),*) => {
        concat!(
            "SELECT e.conv, e.seq, ",
            event_columns!(),
            " FROM memberships m JOIN events e ON e.conv = m.conv
             WHERE m.\"user\" = $1 AND ($2::text IS NULL OR m.conv = $2)
               AND e.seq >= m.joined_seq AND (m.left_seq IS NULL OR e.seq <= m.left_seq)
               AND e.kind = 'message' AND NOT e.deleted
               AND (e.ts, e.conv, e.seq) < ($3, $4, $5)
               AND e.body ILIKE ALL ($6::text[])",
            $(" AND e.body ILIKE ", $indexed,)*
            " ORDER BY e.ts DESC, e.conv DESC, e.seq DESC LIMIT $7"
        )
    };
}

/// An `ILIKE` pattern that finds every text holding `word` (lowercased, as
/// [`Query`] keeps it) by [`Query::matches`]' rule, perhaps more; `None` when
/// no pattern is sure to (the word is then left to `Query::matches` alone).
///
/// `ILIKE` folds case as the database's collation does, and the trigram index
/// as its default collation does, not as Rust's `to_lowercase`; so only ASCII
/// letters, which every collation but the Turkish and Azeri ones folds as Rust
/// does, are compared as themselves. Any other character with case (`é`, `ς`,
/// which Rust writes for a final `Σ`) matches any one character (`_`), and
/// `%`, `_` and `\` are escaped. Rust lowercases `İ` into two characters (`i`
/// and U+0307), so a word holding U+0307 gets no pattern. Left as is: under a
/// `C` collation, `k` and `i` do not find the Kelvin sign and `İ`, which Rust
/// lowercases to them.
pub(crate) fn like_pattern(word: &str) -> Option<String> {
    if word.contains('\u{307}') {
        return None;
    }
    let mut pattern = String::with_capacity(word.len() + 2);
    pattern.push('%');
    for c in word.chars() {
        let cased = !c.is_ascii()
            && (c.is_lowercase()
                || c.is_uppercase()
                || c.to_uppercase().ne(std::iter::once(c))
                || c.to_lowercase().ne(std::iter::once(c)));
        match c {
            '%' | '_' | '\\' => {
                pattern.push('\\');
                pattern.push(c);
            }
            _ if cased => pattern.push('_'),
            _ => pattern.push(c),
        }
    }
    pattern.push('%');
    Some(pattern)
}

/// The longest run of letters and digits a pattern matches as themselves: what
/// the trigram index can look up (`pg_trgm` makes trigrams of words only).
fn literal_run(pattern: &str) -> usize {
    let (mut longest, mut run, mut escaped) = (0, 0, false);
    for c in pattern.chars() {
        if !escaped && c == '\\' {
            escaped = true;
            continue;
        }
        let literal = escaped || !matches!(c, '%' | '_');
        escaped = false;
        if literal && c.is_alphanumeric() {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    longest
}

/// A query's patterns: up to [`INDEXED`] of them, those with the longest runs
/// of three or more literal characters, for `ILIKE`s of their own; the others.
fn split_patterns(query: &Query) -> (Vec<String>, Vec<String>) {
    let mut patterns: Vec<(usize, String)> = query
        .words
        .iter()
        .filter_map(|w| like_pattern(w))
        .map(|p| (literal_run(&p), p))
        .collect();
    patterns.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let (mut indexed, mut rest) = (Vec::new(), Vec::new());
    for (run, pattern) in patterns {
        if run >= 3 && indexed.len() < INDEXED {
            indexed.push(pattern);
        } else {
            rest.push(pattern);
        }
    }
    (indexed, rest)
}

/// Where a search stands in the candidates' order: past every candidate newer
/// than `ts` and the first `count` of `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    ts: u64,
    count: u64,
}

impl Position {
    /// The position a cursor names (any positive number names one).
    fn parse(cursor: &str) -> Result<Self, Failure> {
        let value = cursor
            .parse::<i64>()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| Failure::bad("cursor must be the `next` of a search reply"))?;
        let value = value.unsigned_abs();
        Ok(Self {
            ts: value >> COUNT_BITS,
            count: value & MAX_COUNT,
        })
    }

    /// The cursor that names this position.
    fn cursor(self) -> i64 {
        let value = (self.ts.min(MAX_TS) << COUNT_BITS) | self.count.min(MAX_COUNT);
        i64::try_from(value).unwrap_or(i64::MAX)
    }

    /// Past one more candidate, stored at `ts`.
    fn pass(&mut self, ts: u64) {
        if ts == self.ts {
            self.count += 1;
        } else {
            *self = Self { ts, count: 1 };
        }
    }
}

/// A candidate: its key in the order (ts, conv, seq) and its message event.
struct Candidate {
    ts: u64,
    conv: String,
    seq: u64,
    event: Option<Event>,
}

impl Candidate {
    fn of(row: &Row) -> Result<Self, postgres::Error> {
        let conv: String = row.try_get(0)?;
        let seq = nat(row, 1)?;
        let event = event_from_row(row, 2, &conv, seq, None)?;
        Ok(Self {
            ts: nat(row, 2)?,
            conv,
            seq,
            event,
        })
    }
}

impl Ctx<'_, '_> {
    /// Messages the user may read that hold every word of `query`, newest first.
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
        let start = cursor.map(Position::parse).transpose()?;
        // One conversation: refused as `history` would refuse it.
        if let Some(conv) = conv {
            self.read_window(conv)?;
        }
        let only = conv.map(ToString::to_string);
        let (indexed, rest) = split_patterns(&query);
        // Candidates of the cursor's millisecond an earlier page examined.
        let mut skip = start.map_or(0, |p| p.count);
        let mut position = start.map(|p| Position { count: 0, ..p });
        // Below the first candidate: at or before the cursor's millisecond.
        let mut below = (
            start.map_or(i64::MAX, |p| int(p.ts).saturating_add(1)),
            String::new(),
            0,
        );
        let mut results = Vec::new();
        let mut budget = Budget::new(self.limits.max_reply_bytes());
        let mut scanned = 0;
        let mut more = false;
        'scan: loop {
            let chunk =
                self.candidates(self.user.as_str(), only.as_ref(), &below, &indexed, &rest)?;
            let end = chunk.len() < CHUNK as usize;
            for candidate in chunk {
                below = (
                    int(candidate.ts),
                    candidate.conv.clone(),
                    int(candidate.seq),
                );
                if skip > 0 && position.is_some_and(|p| p.ts == candidate.ts) {
                    skip -= 1;
                    position
                        .get_or_insert(Position { ts: 0, count: 0 })
                        .pass(candidate.ts);
                    continue;
                }
                skip = 0;
                if results.len() == limit || scanned == SCAN_BUDGET {
                    more = true;
                    break 'scan;
                }
                scanned += 1;
                if let Some(event) = self.confirmed(&query, candidate.event)? {
                    if !budget.take(&event) {
                        more = true;
                        break 'scan;
                    }
                    results.push(event);
                }
                position
                    .get_or_insert(Position { ts: 0, count: 0 })
                    .pass(candidate.ts);
            }
            if end {
                break;
            }
        }
        let next = more.then(|| position.map_or(i64::MAX, Position::cursor).to_string());
        Ok(vec![self.reply(&Event::Search {
            id: id.clone(),
            results,
            more,
            next,
        })])
    }

    /// The next [`CHUNK`] candidates of `user` below `below` (ts, conv, seq),
    /// newest first, in `only` if set, holding every pattern.
    fn candidates(
        &self,
        user: &str,
        only: Option<&String>,
        below: &(i64, String, i64),
        indexed: &[String],
        rest: &[String],
    ) -> Result<Vec<Candidate>, postgres::Error> {
        let sql = match indexed.len() {
            0 => candidates!(),
            1 => candidates!("$8"),
            2 => candidates!("$8", "$9"),
            _ => candidates!("$8", "$9", "$10"),
        };
        let chunk = i64::from(CHUNK);
        let mut params: Vec<&(dyn ToSql + Sync)> =
            vec![&user, &only, &below.0, &below.1, &below.2, &rest, &chunk];
        params.extend(indexed.iter().map(|p| p as &(dyn ToSql + Sync)));
        self.db
            .rows(sql, &params)?
            .iter()
            .map(Candidate::of)
            .collect()
    }

    /// A candidate's message with its reactions, if its text holds every word
    /// (a pattern may find more than the rule: the text decides).
    fn confirmed(&self, query: &Query, event: Option<Event>) -> Result<Option<Event>, Failure> {
        let Some(mut event) = event else {
            return Ok(None);
        };
        let conv = match &event {
            Event::Message {
                conv,
                body,
                deleted,
                ..
            } if !deleted && query.matches(body) => conv.clone(),
            _ => return Ok(None),
        };
        self.reactions_of(&conv, &mut event)?;
        Ok(Some(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `text` matches an ILIKE `pattern` whose case folding is Rust's,
    /// for ASCII letters only (the least any collation folds).
    fn ilike_ascii(text: &str, pattern: &str) -> bool {
        fn go(t: &[char], p: &[char]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some(('%', rest)) => (0..=t.len()).any(|i| go(&t[i..], rest)),
                Some(('_', rest)) => !t.is_empty() && go(&t[1..], rest),
                Some(('\\', rest)) => match (rest.split_first(), t.split_first()) {
                    (Some((c, rest)), Some((d, t))) => c == d && go(t, rest),
                    _ => false,
                },
                Some((c, rest)) => t
                    .split_first()
                    .is_some_and(|(d, t)| c.eq_ignore_ascii_case(d) && go(t, rest)),
            }
        }
        let t: Vec<char> = text.chars().collect();
        let p: Vec<char> = pattern.chars().collect();
        go(&t, &p)
    }

    #[test]
    fn patterns_escape_wildcards_and_never_miss_what_the_rule_finds() {
        assert_eq!(like_pattern("hello").as_deref(), Some("%hello%"));
        assert_eq!(
            like_pattern("50%_a\\b").as_deref(),
            Some("%50\\%\\_a\\\\b%")
        );
        assert_eq!(like_pattern("東京").as_deref(), Some("%東京%"));
        assert_eq!(like_pattern("café").as_deref(), Some("%caf_%"));
        assert_eq!(like_pattern("i\u{307}x"), None);
        let cases = [
            ("Hello World", "world"),
            ("CAFÉ au lait", "café"),
            ("ΟΔΟΣ", "οδος"),
            ("ΟΔΟΣ", "ος"),
            ("Straße", "straße"),
            ("100%_sure\\", "100%_sure\\"),
            ("東京タワーに行きました", "タワー"),
        ];
        for (text, query) in cases {
            let q = Query::parse(query).unwrap();
            assert!(q.matches(text), "{text:?} {query:?}");
            for word in &q.words {
                let pattern = like_pattern(word).unwrap();
                assert!(ilike_ascii(text, &pattern), "{text:?} {pattern:?}");
            }
        }
        assert!(!ilike_ascii("100x_sure", "%100\\%%"));
        assert!(!ilike_ascii("hello", "%h\\_llo%"));
    }

    #[test]
    fn the_most_literal_patterns_are_indexed() {
        let q = Query::parse("ab tokyo 東京タワー x%yz hi café longest").unwrap();
        let (indexed, rest) = split_patterns(&q);
        assert_eq!(indexed, ["%longest%", "%tokyo%", "%東京タワー%"]);
        assert_eq!(rest, ["%caf_%", "%ab%", "%hi%", "%x\\%yz%"]);
        assert_eq!(literal_run("%x\\%yz%"), 2);
        assert_eq!(literal_run("%a\\_bcd%"), 3);
        assert_eq!(literal_run("%caf_%"), 3);
    }

    #[test]
    fn cursors_name_a_millisecond_and_a_count() {
        let p = Position {
            ts: 1_795_972_364_406,
            count: 7,
        };
        let cursor = p.cursor();
        assert!(cursor > 0);
        assert_eq!(Position::parse(&cursor.to_string()).unwrap(), p);
        assert!(Position::parse("0").is_err());
        assert!(Position::parse("-3").is_err());
        assert!(Position::parse("nonsense").is_err());
        assert_eq!(
            Position::parse(&i64::MAX.to_string()).unwrap(),
            Position {
                ts: MAX_TS,
                count: MAX_COUNT
            }
        );
    }
}
