//! WAL checkpoints off the message path.
//!
//! SQLite's automatic checkpoint runs inside the commit that pushes the WAL past
//! 1,000 pages: on the writer thread, between a batch's fsync and its acks, it
//! copies the WAL into the database file and fsyncs that too. At 1,000 messages
//! a second that held back a few percent of all messages by one or two more
//! fsyncs (`messenger bench --phases paced`: delivery p99 4-24 ms with it, about
//! 2-3 ms without). So the writer's connection has automatic checkpoints off and
//! a thread of its own, on its own connection, runs a PASSIVE checkpoint every
//! [`INTERVAL`]: it copies what is committed without blocking the writer.
//!
//! A passive checkpoint cannot rewind the WAL while the writer keeps appending
//! (SQLite starts the WAL over only when a writer begins after a checkpoint
//! that caught up completely), so under sustained load the WAL would grow
//! without end. Once it holds more than [`RESTART_FRAMES`] pages, the writer
//! itself, between two batches, runs a RESTART checkpoint: only the pages the
//! thread has not copied yet remain, and it rewinds the WAL. The two never
//! checkpoint at once (a mutex, not SQLite's busy-wait polling, orders them;
//! the writer only tries it, and skips the rewind while the thread is busy).

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use tracing::{debug, warn};

use super::open_checkpointer;
use crate::StoreError;

/// How often committed pages are copied from the WAL into the database file.
pub(crate) const INTERVAL: Duration = Duration::from_millis(200);

/// How long the writer's RESTART checkpoint may wait for readers of the WAL.
const RESTART_PATIENCE: Duration = Duration::from_millis(20);

/// WAL size (pages; 32 MiB of 4 KiB pages) past which the writer rewinds the WAL.
pub(crate) const RESTART_FRAMES: i64 = 8192;

/// What the checkpoint thread and the writer share.
#[derive(Debug)]
pub(crate) struct Wal {
    /// Held while checkpointing.
    lock: Mutex<()>,
    /// The WAL's size in pages at the last checkpoint.
    frames: AtomicI64,
    /// Past this size the writer rewinds the WAL.
    restart_frames: i64,
}

impl Wal {
    /// Called by the writer between batches: rewinds the WAL on `conn` (the
    /// writer's connection, outside any transaction) once it has grown too big.
    pub(crate) fn rewind_if_due(&self, conn: &Connection) {
        if self.frames.load(Ordering::Relaxed) <= self.restart_frames {
            return;
        }
        // Never wait for a passive checkpoint in progress (it may be copying and
        // syncing thousands of pages): try again after the next batch instead.
        let _held = match self.lock.try_lock() {
            Ok(held) => held,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        // RESTART waits for readers of the WAL (other connections to the file) through
        // the busy handler; the writer must not stall behind one for the connection's
        // 10 s. If it cannot finish at once, the next passive checkpoint's report
        // decides whether to try again.
        let _ = conn.busy_timeout(RESTART_PATIENCE);
        let result = checkpoint(conn, "RESTART");
        let _ = conn.busy_timeout(messenger_accounts::BUSY_TIMEOUT);
        self.frames.store(0, Ordering::Relaxed);
        match result {
            Ok((busy, log, copied)) => debug!(busy, log, copied, "WAL rewind"),
            Err(err) => warn!(cause = %err, "rewinding the WAL failed; will retry"),
        }
    }
}

/// The running checkpoint thread; [`Checkpointer::stop`] (or dropping it) ends it.
pub(crate) struct Checkpointer {
    wal: Arc<Wal>,
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    /// Opens its own connection to the database at `path` and starts the thread.
    /// `restart_frames` is [`RESTART_FRAMES`] but in tests.
    pub(crate) fn start(path: PathBuf, restart_frames: i64) -> Result<Self, StoreError> {
        let conn = open_checkpointer(&path)?;
        let wal = Arc::new(Wal {
            lock: Mutex::new(()),
            frames: AtomicI64::new(0),
            restart_frames,
        });
        let (stop, stopped) = mpsc::channel();
        let shared = wal.clone();
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run(&conn, &shared, &stopped))
            .map_err(StoreError::Thread)?;
        Ok(Self { wal, stop, thread })
    }

    /// What the writer needs to rewind the WAL.
    pub(crate) fn wal(&self) -> Arc<Wal> {
        self.wal.clone()
    }

    /// Ends the thread and waits for it (the last connection to close checkpoints the rest).
    pub(crate) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

fn run(conn: &Connection, wal: &Wal, stopped: &mpsc::Receiver<()>) {
    loop {
        match stopped.recv_timeout(INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let _held = wal
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match checkpoint(conn, "PASSIVE") {
            // Not "copied == log means nothing to rewind": while the writer appends,
            // a passive checkpoint copies only what was there when it began, and the
            // WAL starts over only if it caught up with the writer. Right after a
            // rewind this reports the old size once more, costing one extra RESTART.
            Ok((_, log, _)) => wal.frames.store(log, Ordering::Relaxed),
            Err(err) => warn!(cause = %err, "WAL checkpoint failed; will retry"),
        }
    }
}

/// Runs one checkpoint; returns whether it was cut short, the WAL's size and
/// how much of it is now in the database (pages).
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::{open, WAL_SIZE_LIMIT};
    use super::*;
    use crate::config::Durability;

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
        let writer = open(path, durability).unwrap();
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
        let wal_state = thread.wal();
        // Commits back to back (no pause for a passive checkpoint to catch up),
        // each followed by the writer's rewind check, until the WAL file, grown
        // past the writer's journal_size_limit, is rewound and cut back to it.
        // Passive checkpoints alone let it grow without end (seen: 600 MiB).
        let mut largest = 0;
        let mut k = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            insert(&writer, k % 500);
            wal_state.rewind_if_due(&writer);
            k += 1;
            let now = size(&wal);
            largest = largest.max(now);
            if largest > WAL_SIZE_LIMIT + 8 * 1024 * 1024 && now <= WAL_SIZE_LIMIT {
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
