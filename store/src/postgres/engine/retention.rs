//! Retention on PostgreSQL (`storage.retention_days`): the rules of
//! `sqlite::retention`, a small step at a time between batches, with any
//! number of bridges on one database.
//!
//! What goes, per conversation: its oldest events up to the first one younger
//! than the cutoff (a prefix in seq order), of every kind; with them their
//! reactions, their inbox rows (not receipts), their request ids (`requests`:
//! a later request with the same id is a new one, as on SQLite, where the id
//! lives on the event), and their attachments: the uploads no other message
//! carries go, and their bytes at the end of the step under the hash's
//! advisory lock, as at the end of a batch (`files`). A message's text goes
//! with its row (and from the trigram index); there is no secure-delete: the
//! space is reused after `VACUUM`. What stays: the conversation, its members
//! with their delivered and read marks, its `last_seq`, receipts. Unlike on
//! SQLite, a user's newest inbox row goes too when its event goes: the next
//! useq comes from `user_seqs`, not from the newest row.
//!
//! # Finding old events
//!
//! By age, through `events_by_age` (ts, conv, seq): a pass reads the old
//! events after its cursor in that order, [`STEP_EVENTS`] at a time, and
//! trims the conversations they belong to, in the order they first appear, at
//! most [`STEP_CONVERSATIONS`] per step. A pass costs what aged since the last
//! one, not a look at every conversation. An old event behind a younger one
//! (a clock that stepped back) stays, by the prefix rule, and the cursor goes
//! past it. Every step is one short transaction of a fixed number of
//! statements; a step stops after [`STEP_EVENTS`] events or about
//! [`STEP_INBOX_ROWS`] inbox rows, counting for each event the conversation's
//! member rows (at least as many as the event's inbox rows) instead of its rows.
//! After a complete pass the next begins [`PASS_INTERVAL`] later.
//!
//! # Several bridges
//!
//! The pass is shared: its cursor is the one row of the `retention` table, and
//! a step begins by locking that row `FOR UPDATE SKIP LOCKED`. The bridge that
//! gets it runs the step; one that finds it locked leaves it (another bridge is
//! in a step) and looks again [`BUSY_RETRY`] later. So one step runs at a time
//! across the bridges, each step carries on the same pass where the last one
//! left it, whoever ran it, and a bridge that goes away leaves the pass to the
//! others. (The row lock is a transaction-level try-lock, like
//! `pg_try_advisory_xact_lock`, with the state it guards in the locked row;
//! the owner of a slot was not chosen: slots change hands, and retention
//! would stall while one is unowned.)
//!
//! # Locks
//!
//! A step never waits for a row another transaction holds: the event rows it
//! removes are locked first with `FOR UPDATE SKIP LOCKED`, and an event a
//! batch holds (it edits, reacts to or deletes that message) ends the step at
//! its conversation, to be tried again; an upload a batch is attaching is
//! skipped the same way (the sweep takes it later if nothing carries it).
//! What else it deletes (the removed events' reactions, attachments, inbox
//! rows, request ids) a batch only changes under the event's row lock, or
//! not at all. Conversation rows and `user_seqs`, which batches lock, are not
//! touched. The only locks it waits for are the per-hash advisory locks, taken
//! last and in key order, as a batch takes them. So a step and a batch never
//! wait for each other in a cycle; a batch waits for a step at most (for an
//! event or upload being removed, which it then sees gone). A step that fails
//! anyway (a serialization failure or deadlock with another kind of writer)
//! is rolled back and tried again later; it never fails the bridge.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use postgres::Client;
use tracing::{debug, info, warn};

use super::context::{int, nat};
use super::db::{Db, Fault, Statements};
use super::files;
use crate::sqlite::retention::{DAY_MS, PASS_INTERVAL, STEP_EVENTS, STEP_INBOX_ROWS};

/// Conversations trimmed in one step at most (their prefixes are read in one
/// statement).
pub(crate) const STEP_CONVERSATIONS: usize = 64;

/// How long a bridge waits before it looks again when another bridge holds
/// the pass, or a batch holds the events a step would remove, or a step
/// conflicted with another transaction.
pub(crate) const BUSY_RETRY: Duration = Duration::from_secs(1);

/// An event's place in age order: (ts, conv, seq).
type Place = (i64, String, i64);

/// The retention job's state in one bridge (the pass itself is in the database).
#[derive(Debug)]
pub(crate) struct Retention {
    /// How long events are kept, in ms.
    keep_ms: u64,
    /// When this bridge next looks for a step to run.
    due: Instant,
}

/// What [`Retention::run_if_due`] asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Nothing to do now.
    Wait,
    /// Another step is due at once.
    More,
    /// The connection broke: reconnect before the next step.
    Reconnect,
}

impl Retention {
    /// The job for `days` of retention; `None` for 0 (keep for ever).
    pub(crate) fn new(days: u32) -> Option<Self> {
        (days > 0).then(|| Self {
            keep_ms: u64::from(days) * DAY_MS,
            due: Instant::now(),
        })
    }

    /// Runs one step if one is due, on `client` (outside any transaction) at
    /// the time `now_ms`; says what comes next.
    pub(crate) fn run_if_due(
        &mut self,
        client: &mut Client,
        statements: &std::cell::RefCell<Statements>,
        files_dir: &Path,
        now_ms: u64,
    ) -> After {
        if Instant::now() < self.due {
            return After::Wait;
        }
        let cutoff = now_ms.saturating_sub(self.keep_ms);
        let run = step_in_transaction(client, statements, files_dir, cutoff, now_ms);
        match run {
            Ok(Stepped::Busy) => {
                debug!("retention: another bridge is in a step");
                self.due = Instant::now() + BUSY_RETRY;
                After::Wait
            }
            Ok(Stepped::NotYet { in_ms }) => {
                self.due = Instant::now() + Duration::from_millis(in_ms).min(PASS_INTERVAL);
                After::Wait
            }
            Ok(Stepped::Blocked { removed }) => {
                debug!(removed, "retention: a batch holds old events; trying again");
                self.due = Instant::now() + BUSY_RETRY;
                After::Wait
            }
            Ok(Stepped::Went { removed }) => {
                debug!(removed, "retention step");
                After::More
            }
            Ok(Stepped::PassDone { in_pass }) => {
                if in_pass > 0 {
                    info!(
                        removed = in_pass,
                        cutoff_ms = cutoff,
                        "retention pass removed old events"
                    );
                } else {
                    debug!(cutoff_ms = cutoff, "retention pass: nothing old");
                }
                self.due = Instant::now() + PASS_INTERVAL;
                After::Wait
            }
            Err(err) => match Fault::of(&err) {
                Fault::Conflict => {
                    debug!(cause = %err, "retention step conflicted with another transaction; will retry");
                    self.due = Instant::now() + BUSY_RETRY;
                    After::Wait
                }
                Fault::Connection => {
                    warn!(cause = %err, "retention step: the connection broke; will retry");
                    self.due = Instant::now() + BUSY_RETRY;
                    After::Reconnect
                }
                Fault::Other => {
                    warn!(cause = %err, "retention step failed; will retry");
                    self.due = Instant::now() + PASS_INTERVAL;
                    After::Wait
                }
            },
        }
    }
}

/// What one attempt at a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stepped {
    /// Another bridge is running a step.
    Busy,
    /// The pass is complete and the next begins in this many ms.
    NotYet { in_ms: u64 },
    /// Removed this many events; the pass goes on.
    Went { removed: u64 },
    /// Removed this many events, then came to events a batch holds.
    Blocked { removed: u64 },
    /// The pass is complete; it removed this many events in all.
    PassDone { in_pass: u64 },
}

/// One step in its own transaction, committed (or rolled back on an error).
fn step_in_transaction(
    client: &mut Client,
    statements: &std::cell::RefCell<Statements>,
    files_dir: &Path,
    cutoff_ms: u64,
    now_ms: u64,
) -> Result<Stepped, postgres::Error> {
    client.batch_execute("BEGIN")?;
    let stepped = {
        let db = Db::new(client, statements);
        step(&db, files_dir, cutoff_ms, now_ms)
    };
    match stepped {
        Ok(stepped) => {
            client.batch_execute("COMMIT")?;
            Ok(stepped)
        }
        Err(err) => {
            // On a broken connection the server has rolled it back already.
            let _ = client.batch_execute("ROLLBACK");
            Err(err)
        }
    }
}

/// The pass's state, as its row holds it.
struct Pass {
    /// Where the pass goes on after; `None`: from the oldest event.
    after: Option<Place>,
    /// Events removed in the pass so far.
    removed: u64,
    /// No new pass begins before this (ms since the epoch).
    next_pass_ms: u64,
}

/// One step inside the open transaction: takes the pass, removes what is due,
/// and moves the pass on.
fn step(
    db: &Db<'_>,
    files_dir: &Path,
    cutoff_ms: u64,
    now_ms: u64,
) -> Result<Stepped, postgres::Error> {
    let Some(pass) = take_pass(db)? else {
        return Ok(Stepped::Busy);
    };
    if pass.after.is_none() && now_ms < pass.next_pass_ms {
        return Ok(Stepped::NotYet {
            in_ms: pass.next_pass_ms - now_ms,
        });
    }
    let start = pass
        .after
        .clone()
        .unwrap_or((i64::MIN, String::new(), i64::MIN));
    let rows = db.rows(
        "SELECT ts, conv, seq FROM events
         WHERE ts < $1 AND (ts, conv, seq) > ($2, $3, $4)
         ORDER BY ts, conv, seq LIMIT $5",
        &[
            &int(cutoff_ms),
            &start.0,
            &start.1,
            &start.2,
            &int(STEP_EVENTS as u64),
        ],
    )?;
    let mut aged: Vec<Place> = Vec::with_capacity(rows.len());
    for row in &rows {
        aged.push((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
    }
    // The conversations, in the order they first appear, with that place.
    let mut convs: Vec<(String, usize)> = Vec::new();
    for (at, (_, conv, _)) in aged.iter().enumerate() {
        if !convs.iter().any(|(c, _)| c == conv) {
            convs.push((conv.clone(), at));
        }
    }
    // Past the cap, the step ends before the first row of the first one left out.
    let left_out = convs.get(STEP_CONVERSATIONS).map(|(_, first)| *first);
    convs.truncate(STEP_CONVERSATIONS);
    let names: Vec<&str> = convs.iter().map(|(c, _)| c.as_str()).collect();
    let prefixes = old_prefixes(db, &names, cutoff_ms)?;
    let bounds = member_rows(db, &names)?;
    let trims: Vec<Trim> = names
        .iter()
        .map(|conv| {
            let seqs = prefixes.get(*conv).cloned().unwrap_or_default();
            Trim {
                complete: seqs.len() < STEP_EVENTS,
                seqs,
                rows_per_event: bounds.get(*conv).copied().unwrap_or(0),
            }
        })
        .collect();
    let mut planned = plan(
        &trims,
        Budget {
            events: STEP_EVENTS,
            inbox_rows: STEP_INBOX_ROWS,
        },
    );
    let blocked = lock(db, &names, &mut planned)?;
    let removed = remove(db, files_dir, &names, &planned.remove)?;
    // Where the next step goes on: before the first conversation not done.
    let stop = match planned.stop {
        Some(at) => convs.get(at).map(|(_, first)| *first),
        None => left_out,
    };
    let (after, pass_done) = match stop {
        Some(first) => {
            let after = match first.checked_sub(1) {
                Some(before) => Some(aged[before].clone()),
                None => pass.after.clone(),
            };
            (after, false)
        }
        None if aged.len() == STEP_EVENTS => (aged.last().cloned(), false),
        None => (None, true),
    };
    let in_pass = pass.removed + removed;
    if pass_done {
        db.exec(
            "UPDATE retention SET after_ts = NULL, after_conv = NULL, after_seq = NULL,
                                  removed = 0, next_pass_ms = $1
             WHERE id = 1",
            &[&int(now_ms + PASS_INTERVAL.as_millis() as u64)],
        )?;
        return Ok(Stepped::PassDone { in_pass });
    }
    let (ts, conv, seq) = match &after {
        Some((ts, conv, seq)) => (Some(*ts), Some(conv.as_str()), Some(*seq)),
        None => (None, None, None),
    };
    db.exec(
        "UPDATE retention SET after_ts = $1, after_conv = $2, after_seq = $3, removed = $4
         WHERE id = 1",
        &[&ts, &conv, &seq, &int(in_pass)],
    )?;
    if blocked {
        Ok(Stepped::Blocked { removed })
    } else {
        Ok(Stepped::Went { removed })
    }
}

/// Locks the pass's row, unless another bridge's step holds it (`None`).
fn take_pass(db: &Db<'_>) -> Result<Option<Pass>, postgres::Error> {
    let Some(row) = db.opt(
        "SELECT after_ts, after_conv, after_seq, removed, next_pass_ms FROM retention
         WHERE id = 1 FOR UPDATE SKIP LOCKED",
        &[],
    )?
    else {
        return Ok(None);
    };
    let after = match (
        row.try_get::<_, Option<i64>>(0)?,
        row.try_get::<_, Option<String>>(1)?,
        row.try_get::<_, Option<i64>>(2)?,
    ) {
        (Some(ts), Some(conv), Some(seq)) => Some((ts, conv, seq)),
        _ => None,
    };
    Ok(Some(Pass {
        after,
        removed: nat(&row, 3)?,
        next_pass_ms: nat(&row, 4)?,
    }))
}

/// Each conversation's old prefix: the seqs of its first events, in order, up
/// to the first one at or after the cutoff, [`STEP_EVENTS`] at most.
fn old_prefixes(
    db: &Db<'_>,
    convs: &[&str],
    cutoff_ms: u64,
) -> Result<HashMap<String, Vec<i64>>, postgres::Error> {
    if convs.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = db.rows(
        "SELECT conv, seq FROM (
             SELECT c.conv, e.seq,
                    bool_and(e.ts < $2) OVER (PARTITION BY c.conv ORDER BY e.seq) AS old
             FROM unnest($1::text[]) AS c(conv)
             CROSS JOIN LATERAL (SELECT seq, ts FROM events WHERE conv = c.conv
                                 ORDER BY seq LIMIT $3) e
         ) p
         WHERE old ORDER BY conv, seq",
        &[&convs, &int(cutoff_ms), &int(STEP_EVENTS as u64)],
    )?;
    let mut prefixes: HashMap<String, Vec<i64>> = HashMap::new();
    for row in &rows {
        prefixes
            .entry(row.try_get(0)?)
            .or_default()
            .push(row.try_get(1)?);
    }
    Ok(prefixes)
}

/// Each conversation's member rows (current and past): at least as many as
/// any of its events has inbox rows.
fn member_rows(db: &Db<'_>, convs: &[&str]) -> Result<HashMap<String, usize>, postgres::Error> {
    if convs.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = db.rows(
        "SELECT conv, COUNT(*) FROM members WHERE conv = ANY($1) GROUP BY conv",
        &[&convs],
    )?;
    let mut counts = HashMap::with_capacity(rows.len());
    for row in &rows {
        counts.insert(row.try_get(0)?, nat(row, 1)? as usize);
    }
    Ok(counts)
}

/// Locks the planned events (`FOR UPDATE SKIP LOCKED`) and keeps of each
/// conversation's the run it locked from its start; a conversation cut short
/// ends the step there. Returns whether one was.
fn lock(db: &Db<'_>, convs: &[&str], planned: &mut Plan) -> Result<bool, postgres::Error> {
    let (names, seqs) = pairs(convs, &planned.remove);
    if names.is_empty() {
        return Ok(false);
    }
    let rows = db.rows(
        "SELECT e.conv, e.seq FROM events e
         JOIN unnest($1::text[], $2::bigint[]) AS t(conv, seq)
           ON e.conv = t.conv AND e.seq = t.seq
         FOR UPDATE OF e SKIP LOCKED",
        &[&names, &seqs],
    )?;
    let mut locked: HashMap<String, Vec<i64>> = HashMap::new();
    for row in &rows {
        locked
            .entry(row.try_get(0)?)
            .or_default()
            .push(row.try_get(1)?);
    }
    let cut = planned
        .remove
        .iter()
        .enumerate()
        .find_map(|(at, (conv, seqs))| {
            let held = locked.get(convs[*conv]).map_or(&[][..], Vec::as_slice);
            let run = seqs.iter().take_while(|seq| held.contains(seq)).count();
            (run < seqs.len()).then_some((at, *conv, run))
        });
    let Some((at, conv, run)) = cut else {
        return Ok(false);
    };
    planned.remove.truncate(at + 1);
    planned.remove[at].1.truncate(run);
    planned.stop = Some(conv);
    Ok(true)
}

/// The removals as two parallel arrays (conv, seq), for `unnest`.
fn pairs(convs: &[&str], remove: &[(usize, Vec<i64>)]) -> (Vec<String>, Vec<i64>) {
    let mut names = Vec::new();
    let mut seqs = Vec::new();
    for (conv, of) in remove {
        for seq in of {
            names.push(convs[*conv].to_owned());
            seqs.push(*seq);
        }
    }
    (names, seqs)
}

/// Removes the events of `remove` (locked) and what hangs on them; the bytes
/// of the uploads let go of go before the commit. Returns how many events went.
fn remove(
    db: &Db<'_>,
    files_dir: &Path,
    convs: &[&str],
    events: &[(usize, Vec<i64>)],
) -> Result<u64, postgres::Error> {
    let (names, seqs) = pairs(convs, events);
    if names.is_empty() {
        return Ok(0);
    }
    let row = db.one(
        "WITH t AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS t(conv, seq)),
         gone AS (
             DELETE FROM events e USING t WHERE e.conv = t.conv AND e.seq = t.seq
             RETURNING e.conv, e.seq, e.sender, e.req_id
         ), ids AS (
             DELETE FROM requests r USING gone
             WHERE r.sender = gone.sender AND r.req_id = gone.req_id
               AND r.conv = gone.conv AND r.seq = gone.seq
         ), reacted AS (
             DELETE FROM reactions r USING t WHERE r.conv = t.conv AND r.seq = t.seq
         ), delivered AS (
             DELETE FROM inbox i USING t
             WHERE i.conv = t.conv AND i.seq = t.seq AND i.rstatus IS NULL
         ), attached AS (
             DELETE FROM attachments a USING t WHERE a.conv = t.conv AND a.seq = t.seq
             RETURNING a.file
         )
         SELECT (SELECT COUNT(*) FROM gone), ARRAY(SELECT DISTINCT file FROM attached)",
        &[&names, &seqs],
    )?;
    let removed = nat(&row, 0)?;
    let files: Vec<String> = row.try_get(1)?;
    if !files.is_empty() {
        // An upload a batch is attaching right now is locked by it: it stays
        // (the sweep looks at it again if nothing carries it).
        let rows = db.rows(
            "DELETE FROM uploads WHERE file IN (
                 SELECT u.file FROM uploads u
                 WHERE u.file = ANY($1)
                   AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.file = u.file)
                 FOR UPDATE SKIP LOCKED)
             RETURNING sha256",
            &[&files],
        )?;
        let mut released = Vec::with_capacity(rows.len());
        for row in &rows {
            released.push(row.try_get::<_, String>(0)?);
        }
        files::remove_unused(db, files_dir, released)?;
    }
    Ok(removed)
}

/// What a step may remove at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Budget {
    /// Events.
    events: usize,
    /// Inbox rows (exceeded by the last event's at most).
    inbox_rows: usize,
}

/// A conversation's old prefix, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Trim {
    /// Its seqs, in order.
    seqs: Vec<i64>,
    /// Whether that is all of it (it was read to a younger event or the end).
    complete: bool,
    /// What each event counts against the inbox budget.
    rows_per_event: usize,
}

/// What a step removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Plan {
    /// The seqs to remove, by conversation (its place in the step's list).
    remove: Vec<(usize, Vec<i64>)>,
    /// The first conversation not done (it may hold more old events); `None`
    /// when every one is.
    stop: Option<usize>,
}

/// Spends `budget` on the prefixes in order, as `sqlite::retention` does: an
/// event at a time, stopping after the one that spends the inbox budget.
fn plan(trims: &[Trim], mut budget: Budget) -> Plan {
    let mut planned = Plan::default();
    for (at, trim) in trims.iter().enumerate() {
        if budget.events == 0 || budget.inbox_rows == 0 {
            planned.stop = Some(at);
            return planned;
        }
        let mut taken = Vec::new();
        for seq in &trim.seqs {
            if budget.events == 0 || budget.inbox_rows == 0 {
                break;
            }
            taken.push(*seq);
            budget.events -= 1;
            budget.inbox_rows = budget.inbox_rows.saturating_sub(trim.rows_per_event);
        }
        let done = trim.complete && taken.len() == trim.seqs.len();
        if !taken.is_empty() {
            planned.remove.push((at, taken));
        }
        if !done {
            planned.stop = Some(at);
            return planned;
        }
    }
    planned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trim(seqs: std::ops::RangeInclusive<i64>, complete: bool, rows: usize) -> Trim {
        Trim {
            seqs: seqs.collect(),
            complete,
            rows_per_event: rows,
        }
    }

    fn budget(events: usize, inbox_rows: usize) -> Budget {
        Budget { events, inbox_rows }
    }

    #[test]
    fn a_plan_takes_whole_prefixes_within_the_budget() {
        let trims = [trim(1..=3, true, 2), trim(5..=6, true, 2)];
        let planned = plan(&trims, budget(100, 1000));
        assert_eq!(planned.remove, [(0, vec![1, 2, 3]), (1, vec![5, 6])]);
        assert_eq!(planned.stop, None);
    }

    #[test]
    fn a_plan_stops_in_the_conversation_that_spends_the_events() {
        let trims = [
            trim(1..=3, true, 2),
            trim(1..=4, true, 2),
            trim(1..=1, true, 2),
        ];
        let planned = plan(&trims, budget(5, 1000));
        assert_eq!(planned.remove, [(0, vec![1, 2, 3]), (1, vec![1, 2])]);
        assert_eq!(planned.stop, Some(1));
    }

    #[test]
    fn a_plan_stops_after_the_event_that_spends_the_inbox_rows() {
        // 7 rows: the first event (5 rows) fits, the second passes it and ends the step.
        let trims = [trim(1..=5, true, 5)];
        let planned = plan(&trims, budget(100, 7));
        assert_eq!(planned.remove, [(0, vec![1, 2])]);
        assert_eq!(planned.stop, Some(0));
    }

    #[test]
    fn a_prefix_read_in_part_is_not_done() {
        let trims = [trim(1..=2, false, 2), trim(1..=1, true, 2)];
        let planned = plan(&trims, budget(100, 1000));
        assert_eq!(planned.remove, [(0, vec![1, 2])]);
        assert_eq!(planned.stop, Some(0));
    }

    #[test]
    fn a_conversation_with_nothing_old_is_done() {
        let nothing = Trim {
            seqs: Vec::new(),
            complete: true,
            rows_per_event: 2,
        };
        let trims = [nothing, trim(3..=3, true, 2)];
        let planned = plan(&trims, budget(100, 1000));
        assert_eq!(planned.remove, [(1, vec![3])]);
        assert_eq!(planned.stop, None);
    }

    #[test]
    fn retention_is_off_at_zero_days() {
        assert!(Retention::new(0).is_none());
        assert_eq!(Retention::new(2).map(|r| r.keep_ms), Some(2 * DAY_MS));
    }
}
