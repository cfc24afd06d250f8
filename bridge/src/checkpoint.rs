//! WAL checkpoints off the message path.
//!
//! SQLite's automatic checkpoint runs inside the commit that pushes the WAL past
//! 1,000 pages: on the writer thread, between a batch's fsync and its acks, it
//! copies the WAL into the database file and fsyncs that too. At 1,000 messages
//! a second that held back a few percent of all messages by one or two more
//! fsyncs (`messenger bench --phases paced`: delivery p99 4-24 ms with it, about
//! 2 ms without). So the writer's connection has automatic checkpoints off and
//! this thread, on its own connection, runs a PASSIVE checkpoint every
//! [`INTERVAL`]: it copies what is committed without ever blocking the writer.
//!
//! A passive checkpoint cannot restart the WAL while the writer keeps
//! appending (the writer restarts it only after a checkpoint caught up fully),
//! so under sustained load the WAL would grow without end. Once it holds more
//! than [`RESTART_FRAMES`] pages, this thread runs a RESTART checkpoint
//! instead, which holds the writer back (through its busy timeout) just long
//! enough to copy the rest and rewind the WAL.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use tracing::{debug, warn};

use crate::store::{self, StoreError};

/// How often committed pages are copied from the WAL into the database file.
pub(crate) const INTERVAL: Duration = Duration::from_millis(200);

/// WAL size (pages; 32 MiB of 4 KiB pages) past which the checkpoint rewinds the WAL.
pub(crate) const RESTART_FRAMES: i64 = 8192;

/// The running checkpoint thread; [`Checkpointer::stop`] (or dropping it) ends it.
pub(crate) struct Checkpointer {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    /// Opens its own connection to the database at `path` and starts the thread.
    /// `restart_frames` is [`RESTART_FRAMES`] but in tests.
    pub(crate) fn start(path: PathBuf, restart_frames: i64) -> Result<Self, StoreError> {
        let conn = store::open_checkpointer(&path)?;
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bridge-checkpoint".into())
            .spawn(move || run(&conn, restart_frames, &stopped))
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        Ok(Self { stop, thread })
    }

    /// Ends the thread and waits for it (the last connection to close checkpoints the rest).
    pub(crate) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

fn run(conn: &Connection, restart_frames: i64, stopped: &mpsc::Receiver<()>) {
    let mut frames = 0;
    loop {
        match stopped.recv_timeout(INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let mode = if frames > restart_frames {
            "RESTART"
        } else {
            "PASSIVE"
        };
        match checkpoint(conn, mode) {
            Ok((log, copied)) => {
                if mode == "RESTART" {
                    debug!(log, copied, "WAL rewound");
                }
                frames = if mode == "RESTART" { 0 } else { log };
            }
            Err(err) => warn!(cause = %err, mode, "WAL checkpoint failed; will retry"),
        }
    }
}

/// Runs one checkpoint; returns the WAL's size and how much of it is now in the database (pages).
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get(1)?, row.get(2)?))
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::config::Durability;
    use crate::store::WAL_SIZE_LIMIT;

    fn size(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn filler(path: &std::path::Path, durability: Durability) -> Connection {
        let writer = store::open(path, durability).unwrap();
        writer
            .execute_batch("CREATE TABLE IF NOT EXISTS filler (k INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        writer
    }

    fn insert(writer: &Connection, k: i64) {
        writer
            .execute(
                "INSERT OR REPLACE INTO filler (k, v) VALUES (?1, zeroblob(8192))",
                [k],
            )
            .unwrap();
    }

    #[test]
    fn the_writer_never_checkpoints_and_the_thread_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let writer = filler(&path, Durability::Fsync);
        let before = size(&path);
        // About 1,800 pages in small commits: past SQLite's automatic threshold of 1,000.
        for k in 0..600 {
            insert(&writer, k);
        }
        assert!(
            size(&path) < before + 1024 * 1024,
            "the writer's commits copied pages into the database file"
        );
        let thread = Checkpointer::start(path.clone(), RESTART_FRAMES).unwrap();
        wait_for("the checkpoint to copy the WAL", || {
            size(&path) > before + 4 * 1024 * 1024
        });
        thread.stop();
    }

    #[test]
    fn under_sustained_writes_the_wal_is_rewound_and_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let writer = filler(&path, Durability::Os);
        let wal = dir.path().join("m.db-wal");
        let thread = Checkpointer::start(path.clone(), 256).unwrap();
        // Commits back to back (no pause for a passive checkpoint to catch up),
        // until the WAL file, grown past the writer's journal_size_limit, is
        // rewound and cut back to it. Without checkpoints it only ever grows.
        let mut largest = 0;
        let mut k = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            insert(&writer, k % 500);
            k += 1;
            let now = size(&wal);
            largest = largest.max(now);
            if largest > 2 * WAL_SIZE_LIMIT && now <= WAL_SIZE_LIMIT {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the WAL was never cut back: {now} bytes, {largest} at most"
            );
        }
        thread.stop();
    }
}
