//! Retention (`storage.retention_days`): events older than that are removed,
//! a little at a time, by the writer between two batches (`Store::between_batches`),
//! so that sends never wait for more than one small step.
//!
//! What goes, per conversation: the oldest events, up to the first one younger
//! than the cutoff (a prefix in seq order, so `history` simply starts later; a
//! clock that stepped back cannot punch holes), of every kind (messages, member
//! events, edits, deletions, reactions). With a message go its reactions, its
//! search index entry and text (secure-delete), and its inbox rows. What stays:
//! the conversation, its members with their delivered and read marks, and its
//! `last_seq`; seqs and useqs are never reused, so a device's `useq` cursor and
//! a `history` `before` stay valid. Receipt rows in the inbox stay (they carry
//! no text). An inbox row that is its user's newest is kept even when its
//! event goes: a user's next useq is one past their newest row, and must not go
//! back; `sync` skips such a row (`messages.rs`).
//!
//! A pass walks the conversations in id order, [`STEP_EVENTS`] events,
//! about [`STEP_INBOX_ROWS`] inbox rows (a group event has one per member) and
//! [`STEP_CONVERSATIONS`] conversations at most per step, each step one
//! transaction; the writer runs further steps while no request waits. After a
//! complete pass the next one begins [`PASS_INTERVAL`] later.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use messenger_protocol::ConvId;
use rusqlite::{params, Connection, TransactionBehavior};
use tracing::{debug, info, warn};

use super::files;
use super::search::{self, IndexOp};

/// Events removed in one step (one transaction) at most.
pub(crate) const STEP_EVENTS: usize = 256;

/// Inbox rows deleted in one step, about: a step stops after the event that
/// reaches it (one event of a group deletes a row per member).
pub(crate) const STEP_INBOX_ROWS: usize = 4096;

/// Conversations looked at in one step at most (each costs one index seek when
/// it has nothing old).
pub(crate) const STEP_CONVERSATIONS: usize = 512;

/// Time between the end of a pass and the start of the next.
pub(crate) const PASS_INTERVAL: Duration = Duration::from_secs(60);

/// A day in ms, the unit of `retention_days`.
pub(crate) const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Where a pass goes on from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resume {
    /// From the first conversation (a new pass).
    Start,
    /// From this conversation, which may hold more old events.
    At(String),
    /// From the conversation after this one.
    After(String),
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    /// Events removed.
    pub(crate) removed: usize,
    /// Where the next step goes on; `None` once the pass is complete.
    pub(crate) next: Option<Resume>,
}

/// The retention job's state, owned by the store.
#[derive(Debug)]
pub(crate) struct Retention {
    /// How long events are kept, in ms.
    keep_ms: u64,
    /// When the next step may run.
    due: Instant,
    /// Where the pass in progress stands.
    resume: Resume,
    /// Events removed in the pass in progress.
    removed_in_pass: u64,
    /// Where uploads' bytes live (a removed message's attachments go too).
    files_dir: PathBuf,
}

impl Retention {
    /// The job for `days` of retention; `None` for 0 (keep for ever).
    pub(crate) fn new(days: u32, files_dir: PathBuf) -> Option<Self> {
        (days > 0).then(|| Self {
            files_dir,
            keep_ms: u64::from(days) * DAY_MS,
            due: Instant::now(),
            resume: Resume::Start,
            removed_in_pass: 0,
        })
    }

    /// Runs one step if one is due, on the writer's connection (outside any
    /// transaction) at the time `now_ms`; returns whether another step is due at once.
    pub(crate) fn run_if_due(&mut self, conn: &mut Connection, now_ms: u64) -> bool {
        if Instant::now() < self.due {
            return false;
        }
        let cutoff = now_ms.saturating_sub(self.keep_ms);
        let budget = Budget {
            events: STEP_EVENTS,
            inbox_rows: STEP_INBOX_ROWS,
        };
        match step(
            conn,
            &self.files_dir,
            cutoff,
            &self.resume,
            budget,
            STEP_CONVERSATIONS,
        ) {
            Ok(Step { removed, next }) => {
                self.removed_in_pass += removed as u64;
                match next {
                    Some(resume) => {
                        self.resume = resume;
                        true
                    }
                    None => {
                        if self.removed_in_pass > 0 {
                            info!(
                                removed = self.removed_in_pass,
                                cutoff_ms = cutoff,
                                "retention pass removed old events"
                            );
                        } else {
                            debug!(cutoff_ms = cutoff, "retention pass: nothing old");
                        }
                        self.resume = Resume::Start;
                        self.removed_in_pass = 0;
                        self.due = Instant::now() + PASS_INTERVAL;
                        false
                    }
                }
            }
            Err(err) => {
                warn!(cause = %err, "retention step failed; will retry");
                self.due = Instant::now() + PASS_INTERVAL;
                false
            }
        }
    }
}

/// What a step's removals leave to do before it commits.
struct Gone<'a> {
    /// Search index entries to remove.
    index: &'a mut Vec<IndexOp>,
    /// Hashes of uploads that went, whose bytes go if no upload names them.
    released: &'a mut Vec<String>,
}

/// An event about to be removed.
struct Old {
    seq: u64,
    kind: String,
    text_row: Option<i64>,
    body: Option<String>,
    useqs: [Option<u64>; 2],
}

/// What one step may do at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Events removed.
    pub(crate) events: usize,
    /// Inbox rows deleted (exceeded by the last event's rows at most).
    pub(crate) inbox_rows: usize,
}

/// One step: in one transaction, removes events older than `cutoff_ms` (ts in
/// ms) from at most `max_conversations` conversations, from `resume` on, within `budget`.
pub(crate) fn step(
    conn: &mut Connection,
    files_dir: &Path,
    cutoff_ms: u64,
    resume: &Resume,
    mut budget: Budget,
    max_conversations: usize,
) -> rusqlite::Result<Step> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let convs = conversations(&tx, resume, max_conversations)?;
    let mut removed = 0;
    let mut index = Vec::new();
    let mut released = Vec::new();
    let mut next = None;
    for conv in &convs {
        let mut gone = Gone {
            index: &mut index,
            released: &mut released,
        };
        let (n, maybe_more) = trim(&tx, conv, cutoff_ms, &mut budget, &mut gone)?;
        removed += n;
        if maybe_more {
            next = Some(Resume::At(conv.clone()));
            break;
        }
    }
    if next.is_none() && convs.len() == max_conversations {
        next = convs.last().cloned().map(Resume::After);
    }
    search::apply(&tx, &mut index)?;
    files::remove_unused(&tx, files_dir, &released)?;
    tx.commit()?;
    Ok(Step { removed, next })
}

/// Up to `limit` conversation ids from `resume` on, in id order.
fn conversations(
    conn: &Connection,
    resume: &Resume,
    limit: usize,
) -> rusqlite::Result<Vec<String>> {
    let (from, inclusive) = match resume {
        Resume::Start => ("", true),
        Resume::At(conv) => (conv.as_str(), true),
        Resume::After(conv) => (conv.as_str(), false),
    };
    let mut stmt = conn.prepare_cached(
        "SELECT conv FROM conversations WHERE conv > ?1 OR (?2 AND conv = ?1) ORDER BY conv LIMIT ?3",
    )?;
    let convs = stmt
        .query_map(params![from, inclusive, limit as i64], |r| r.get(0))?
        .collect();
    convs
}

/// Removes the old prefix of `conv` within what is left of `budget` (and takes
/// it from there); returns how many events went and whether more old ones may remain.
fn trim(
    conn: &Connection,
    conv: &str,
    cutoff_ms: u64,
    budget: &mut Budget,
    gone: &mut Gone<'_>,
) -> rusqlite::Result<(usize, bool)> {
    if budget.events == 0 || budget.inbox_rows == 0 {
        return Ok((0, true));
    }
    let mut stmt = conn.prepare_cached(
        "SELECT seq, ts, kind, text_row, body, useq_lo, useq_hi FROM events
         WHERE conv = ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut old = Vec::new();
    let fetched = budget.events;
    let mut rows = stmt.query(params![conv, fetched as i64])?;
    while let Some(r) = rows.next()? {
        let ts: u64 = r.get(1)?;
        if ts >= cutoff_ms {
            break;
        }
        old.push(Old {
            seq: r.get(0)?,
            kind: r.get(2)?,
            text_row: r.get(3)?,
            body: r.get(4)?,
            useqs: [r.get(5)?, r.get(6)?],
        });
    }
    drop(rows);
    let found = old.len();
    let direct = ConvId::parse(conv).ok().and_then(|c| {
        c.direct_members()
            .map(|(lo, hi)| [lo.as_str().to_owned(), hi.as_str().to_owned()])
    });
    let mut n = 0;
    for event in old {
        let inbox_rows = remove(conn, conv, direct.as_ref(), &event, gone)?;
        n += 1;
        budget.events -= 1;
        budget.inbox_rows = budget.inbox_rows.saturating_sub(inbox_rows);
        if budget.inbox_rows == 0 {
            return Ok((n, true));
        }
    }
    Ok((n, found == fetched))
}

/// Removes one event and what hangs on it (see the module docs); returns how
/// many inbox rows went.
fn remove(
    conn: &Connection,
    conv: &str,
    direct: Option<&[String; 2]>,
    event: &Old,
    gone: &mut Gone<'_>,
) -> rusqlite::Result<usize> {
    let seq = event.seq;
    conn.prepare_cached("DELETE FROM events WHERE conv = ?1 AND seq = ?2")?
        .execute(params![conv, seq])?;
    if event.kind == "message" {
        conn.prepare_cached("DELETE FROM reactions WHERE conv = ?1 AND seq = ?2")?
            .execute(params![conv, seq])?;
        if let Some(row) = event.text_row {
            conn.prepare_cached("DELETE FROM search_rows WHERE row = ?1")?
                .execute([row])?;
            if let Some(old) = event.body.clone() {
                gone.index.push(IndexOp::Remove { row, old });
            }
        }
        // Its attachments: the uploads no other message carries go, and their
        // bytes before the step commits.
        gone.released.extend(files::detach(conn, conv, seq)?);
    }
    // Inbox rows of the event, but not a user's newest (it holds their useq counter).
    let keep_newest = "AND useq < (SELECT MAX(n.useq) FROM inbox n WHERE n.user = inbox.user)";
    let mut inbox_rows = 0;
    match direct {
        Some(users) => {
            for (user, useq) in users.iter().zip(event.useqs) {
                let Some(useq) = useq else { continue };
                inbox_rows += conn
                    .prepare_cached(&format!(
                        "DELETE FROM inbox WHERE user = ?1 AND useq = ?2 AND conv = ?3 AND seq = ?4
                         AND rstatus IS NULL {keep_newest}"
                    ))?
                    .execute(params![user, useq, conv, seq])?;
            }
        }
        None => {
            inbox_rows += conn
                .prepare_cached(&format!(
                    "DELETE FROM inbox WHERE conv = ?1 AND seq = ?2 AND rstatus IS NULL
                     AND conv LIKE 'g:%' {keep_newest}"
                ))?
                .execute(params![conv, seq])?;
        }
    }
    Ok(inbox_rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Durability, Limits, StorageConfig};
    use crate::{Effect, Input, Store};
    use messenger_protocol::{DeviceId, UserId};
    use serde_json::{json, Value};

    use super::super::{Notify, SqliteStore};

    /// No message in these tests carries a file: the steps never look here.
    fn no_files() -> &'static Path {
        Path::new("no-files-here")
    }

    /// A store with these users, and a second connection to its file for the steps.
    fn setup(users: &[&str]) -> (tempfile::TempDir, SqliteStore, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let accounts = messenger_accounts::Accounts::open(&path).unwrap();
        for user in users {
            accounts.add(&UserId::parse(user).unwrap(), "pw").unwrap();
        }
        let config = StorageConfig {
            path: path.clone(),
            durability: Durability::Os,
            ..StorageConfig::default()
        };
        let store = SqliteStore::open(&config, Limits::default(), Notify::Off, None).unwrap();
        let conn = messenger_accounts::open_sqlite(&path).unwrap();
        (dir, store, conn)
    }

    /// `request` (JSON) from `user`'s phone at `ts`; its reply.
    fn request(store: &mut SqliteStore, user: &str, ts: u64, request: Value) -> Value {
        let input = Input::Request {
            user: UserId::parse(user).unwrap(),
            device: DeviceId::parse("phone").unwrap(),
            request: serde_json::from_value(request).unwrap(),
        };
        let outcome = store.process(vec![input], ts).unwrap().remove(0);
        let reply = outcome
            .effects
            .iter()
            .find_map(|e| match e {
                Effect::Reply(payload) => Some(payload.clone()),
                _ => None,
            })
            .expect("a reply");
        serde_json::from_slice(&reply).unwrap()
    }

    fn send(store: &mut SqliteStore, from: &str, conv: &str, ts: u64, n: u64) {
        for i in 0..n {
            let id = format!("m{ts}-{i}-{}", conv.replace(':', "-"));
            let reply = request(
                store,
                from,
                ts,
                json!({"type": "send", "id": id, "conv": conv, "body": format!("hello {id}")}),
            );
            assert_eq!(reply["type"], "ack", "{reply}");
        }
    }

    /// A budget of `n` events and inbox rows to spare.
    fn events(n: usize) -> Budget {
        Budget {
            events: n,
            inbox_rows: 1_000_000,
        }
    }

    fn seqs(conn: &Connection, conv: &str) -> Vec<u64> {
        conn.prepare("SELECT seq FROM events WHERE conv = ?1 ORDER BY seq")
            .unwrap()
            .query_map([conv], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_step_removes_its_budget_at_most_and_nothing_at_or_after_the_cutoff() {
        let (_dir, mut store, mut conn) = setup(&["ann", "bob"]);
        let dm = "dm:ann:bob";
        send(&mut store, "ann", dm, 1_000, 10);
        let reacted = request(
            &mut store,
            "bob",
            1_001,
            json!({"type": "react", "id": "r1", "conv": dm, "target": 1, "emoji": "👍"}),
        );
        assert_eq!(reacted["type"], "ack", "{reacted}");
        send(&mut store, "bob", dm, 5_000, 3);
        assert_eq!(seqs(&conn, dm).len(), 14);

        // Budget 4: the four oldest go, and the conversation may hold more.
        let first = step(&mut conn, no_files(), 5_000, &Resume::Start, events(4), 10).unwrap();
        assert_eq!(first.removed, 4);
        assert_eq!(first.next, Some(Resume::At(dm.to_owned())));
        assert_eq!(seqs(&conn, dm), (5..=14).collect::<Vec<_>>());

        // The rest of the old prefix; ts = cutoff stays.
        let second = step(
            &mut conn,
            no_files(),
            5_000,
            first.next.as_ref().unwrap(),
            events(100),
            10,
        )
        .unwrap();
        assert_eq!(second.removed, 7, "messages 5..=10 and the reaction event");
        assert_eq!(second.next, None, "one conversation: the pass is complete");
        assert_eq!(seqs(&conn, dm), [12, 13, 14]);
        let again = step(
            &mut conn,
            no_files(),
            5_000,
            &Resume::Start,
            events(100),
            10,
        )
        .unwrap();
        assert_eq!(again.removed, 0);

        // What hung on the old messages went with them.
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM reactions"), 0);
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM search_rows"), 3);
        assert_eq!(
            count(&conn, "SELECT COUNT(*) FROM inbox WHERE rstatus IS NULL"),
            6,
            "each of the three new messages in both inboxes"
        );
        let hits = request(
            &mut store,
            "ann",
            6_000,
            json!({"type": "search", "id": "s1", "query": "hello"}),
        );
        assert_eq!(hits["results"].as_array().map(Vec::len), Some(3), "{hits}");
        // history starts later; the conversation's last_seq is unchanged.
        let page = request(
            &mut store,
            "ann",
            6_000,
            json!({"type": "history", "id": "h1", "conv": dm}),
        );
        let got: Vec<u64> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(got, [12, 13, 14]);
        assert_eq!(page["more"], false);
    }

    #[test]
    fn a_pass_walks_the_conversations_a_few_per_step() {
        let users = ["ann", "u1", "u2", "u3", "u4", "u5"];
        let (_dir, mut store, mut conn) = setup(&users);
        for other in &users[1..] {
            send(&mut store, "ann", &format!("dm:ann:{other}"), 1_000, 2);
        }
        let mut resume = Resume::Start;
        let mut steps = Vec::new();
        loop {
            let done = step(&mut conn, no_files(), 2_000, &resume, events(100), 2).unwrap();
            steps.push(done.removed);
            match done.next {
                Some(next) => resume = next,
                None => break,
            }
        }
        assert_eq!(steps, [4, 4, 2], "two conversations of two events per step");
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM events"), 0);
        assert_eq!(
            count(&conn, "SELECT COUNT(*) FROM conversations"),
            5,
            "conversations stay"
        );
    }

    #[test]
    fn a_step_stops_after_the_event_that_spends_its_inbox_rows() {
        let users = ["ann", "u1", "u2", "u3", "u4"];
        let (_dir, mut store, mut conn) = setup(&users);
        let created = request(
            &mut store,
            "ann",
            1_000,
            json!({"type": "group_create", "id": "g1", "name": "five", "members": ["u1", "u2", "u3", "u4"]}),
        );
        let conv = created["conv"].as_str().expect("a group id").to_owned();
        send(&mut store, "ann", &conv, 1_000, 4);
        send(&mut store, "u1", &conv, 9_000, 1);
        let rows_of = |conn: &Connection, seq: u64| -> i64 {
            conn.query_row(
                "SELECT COUNT(*) FROM inbox WHERE conv = ?1 AND seq = ?2 AND rstatus IS NULL",
                params![conv, seq],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(rows_of(&conn, 1), 5, "the created event is in five inboxes");

        // 7 rows: the first event (5 rows) fits, the second (5 more) passes it and ends the step.
        let budget = Budget {
            events: 100,
            inbox_rows: 7,
        };
        let first = step(&mut conn, no_files(), 5_000, &Resume::Start, budget, 10).unwrap();
        assert_eq!(first.removed, 2);
        assert_eq!(first.next, Some(Resume::At(conv.clone())));
        assert_eq!(seqs(&conn, &conv), [3, 4, 5, 6]);
        assert_eq!((rows_of(&conn, 1), rows_of(&conn, 2)), (0, 0));
        let rest = step(
            &mut conn,
            no_files(),
            5_000,
            first.next.as_ref().unwrap(),
            events(100),
            10,
        )
        .unwrap();
        assert_eq!(rest.removed, 3);
        assert_eq!(seqs(&conn, &conv), [6], "the new message stays");
    }

    #[test]
    fn a_users_newest_inbox_row_outlives_its_event_and_sync_goes_on() {
        let (_dir, mut store, mut conn) = setup(&["ann", "bob"]);
        let dm = "dm:ann:bob";
        send(&mut store, "ann", dm, 1_000, 2);
        let done = step(
            &mut conn,
            no_files(),
            2_000,
            &Resume::Start,
            events(100),
            10,
        )
        .unwrap();
        assert_eq!(done.removed, 2);
        let kept: Vec<(String, u64)> = conn
            .prepare("SELECT user, useq FROM inbox ORDER BY user")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kept, [("ann".to_owned(), 2), ("bob".to_owned(), 2)]);

        // A sync over the kept row skips it; the next event gets the next useq.
        let sync = request(
            &mut store,
            "bob",
            3_000,
            json!({"type": "sync", "id": "s1", "after": 0}),
        );
        assert_eq!(sync["events"], json!([]), "{sync}");
        send(&mut store, "ann", dm, 3_000, 1);
        let sync = request(
            &mut store,
            "bob",
            3_000,
            json!({"type": "sync", "id": "s2", "after": 2}),
        );
        let events = sync["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{sync}");
        assert_eq!(events[0]["useq"], 3);
        assert_eq!(events[0]["seq"], 3);
    }

    #[test]
    fn retention_is_off_at_zero_days() {
        let files = PathBuf::from("files");
        assert!(Retention::new(0, files.clone()).is_none());
        assert_eq!(
            Retention::new(2, files).map(|r| r.keep_ms),
            Some(2 * DAY_MS)
        );
    }
}
