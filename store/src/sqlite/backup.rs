//! Online backups: a consistent copy of the whole SQLite file (the account
//! tables and the store's) while a server writes to it.
//!
//! SQLite's online backup API copies the file page by page. It restarts a copy
//! whenever another connection commits between two steps, so under steady load a
//! copy made in small steps would never finish. Here the source connection holds
//! one read transaction for the whole copy: every step reads the same snapshot
//! (what was committed when the backup began), and nothing restarts. In WAL mode
//! a reader never blocks the writer; it only keeps checkpoints from copying the
//! frames committed after its snapshot into the database file, so the WAL grows
//! for the length of the backup and is rewound after it (the writer's RESTART
//! checkpoint waits at most 20 ms for readers and tries again later).
//!
//! The copy is made in steps of [`PAGES_PER_STEP`] pages with a short pause
//! between them, so that on a small machine the copy's I/O leaves room to the
//! writer's commits.

use std::fs::OpenOptions;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::StoreError;

/// Pages copied per step (4 MiB of 4 KiB pages).
pub(crate) const PAGES_PER_STEP: i32 = 1024;

/// The pause between two steps, and before a step the destination refused as busy.
const PAUSE: Duration = Duration::from_millis(2);

/// What a backup copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupReport {
    /// Pages in the copy.
    pub pages: u64,
    /// The copy's size in bytes.
    pub bytes: u64,
    /// How long the copy took.
    pub elapsed: Duration,
}

/// Copies the SQLite file at `path` (which a server may be writing to) to a new
/// file at `dest`, as it was when the copy began: a complete database, ready to
/// be put at `storage.path` of a stopped server (with no `-wal` or `-shm` file
/// beside it). Refuses ([`StoreError::BackupExists`]) if `dest` exists, and
/// ([`StoreError::NoDatabase`]) if there is no database at `path`; a copy that
/// fails half-way is removed. The copy is checked with `PRAGMA quick_check`.
pub fn backup(path: &Path, dest: &Path) -> Result<BackupReport, StoreError> {
    if !path.is_file() {
        return Err(StoreError::NoDatabase(path.to_path_buf()));
    }
    // Created here, not by SQLite, so that an existing file is never overwritten
    // (not even one that appears between a check and the open).
    match OpenOptions::new().write(true).create_new(true).open(dest) {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(StoreError::BackupExists(dest.to_path_buf()));
        }
        Err(err) => return Err(StoreError::Io(dest.to_path_buf(), err)),
    }
    let copied = copy(path, dest);
    if copied.is_err() {
        let _ = std::fs::remove_file(dest);
        for suffix in ["-journal", "-wal", "-shm"] {
            let mut side = dest.as_os_str().to_owned();
            side.push(suffix);
            let _ = std::fs::remove_file(side);
        }
    }
    copied
}

fn copy(path: &Path, dest: &Path) -> Result<BackupReport, StoreError> {
    let started = Instant::now();
    // Never creates a database that is not there.
    let source = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    source.busy_timeout(messenger_accounts::BUSY_TIMEOUT)?;
    let mut target = Connection::open(dest)?;
    // One snapshot for every step (see the module's documentation).
    source.execute_batch("BEGIN DEFERRED")?;
    source.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |_| Ok(()))?;
    let pages = {
        let backup = Backup::new(&source, &mut target)?;
        loop {
            match backup.step(PAGES_PER_STEP)? {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked => {
                    std::thread::sleep(PAUSE);
                }
                // `StepResult` is non-exhaustive; anything new is treated as "not yet".
                _ => std::thread::sleep(PAUSE),
            }
        }
        backup.progress().pagecount
    };
    source.execute_batch("COMMIT")?;
    drop(source);
    let check: String = target.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(StoreError::Corrupt(dest.to_path_buf(), check));
    }
    drop(target);
    let bytes = std::fs::metadata(dest)
        .map_err(|err| StoreError::Io(dest.to_path_buf(), err))?
        .len();
    Ok(BackupReport {
        pages: u64::try_from(pages).unwrap_or(0),
        bytes,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::Arc;

    use super::*;

    fn writer(path: &Path) -> Connection {
        let conn = messenger_accounts::open_sqlite(path).unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .unwrap();
        conn
    }

    /// A writer commits without pause during the whole copy: the copy finishes,
    /// holds every row committed before it began, and is a sound database.
    #[test]
    fn a_copy_under_steady_writes_finishes_and_holds_what_was_committed_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let conn = writer(&path);
        // About 40 MiB, so that the copy takes many steps.
        let tx = conn.unchecked_transaction().unwrap();
        for k in 0..10_000 {
            tx.execute(
                "INSERT INTO t (k, v) VALUES (?1, zeroblob(4000))",
                [k as i64],
            )
            .unwrap();
        }
        tx.commit().unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicI64::new(10_000));
        let load = {
            let (stop, committed, path) = (stop.clone(), committed.clone(), path.clone());
            std::thread::spawn(move || {
                let conn = writer(&path);
                let mut k = committed.load(Ordering::SeqCst);
                while !stop.load(Ordering::SeqCst) {
                    conn.execute("INSERT INTO t (k, v) VALUES (?1, zeroblob(100))", [k])
                        .unwrap();
                    k += 1;
                    committed.store(k, Ordering::SeqCst);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let before = committed.load(Ordering::SeqCst);
        let dest = dir.path().join("copy.db");
        let report = backup(&path, &dest).unwrap();
        stop.store(true, Ordering::SeqCst);
        load.join().unwrap();
        assert!(report.pages > 10_000 / 2, "{report:?}");

        let copy = Connection::open(&dest).unwrap();
        let (rows, max): (i64, i64) = copy
            .query_row("SELECT COUNT(*), MAX(k) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert!(
            max + 1 >= before,
            "rows up to {before} were committed before"
        );
        assert_eq!(rows, max + 1, "gap-free: one snapshot");
    }

    #[test]
    fn an_existing_file_is_never_overwritten_and_a_missing_database_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        drop(writer(&path));
        let dest = dir.path().join("copy.db");
        std::fs::write(&dest, b"precious").unwrap();
        let err = backup(&path, &dest).unwrap_err();
        assert!(matches!(err, StoreError::BackupExists(_)), "{err}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"precious");

        let missing = dir.path().join("none.db");
        let err = backup(&missing, &dir.path().join("other.db")).unwrap_err();
        assert!(matches!(err, StoreError::NoDatabase(_)), "{err}");
        assert!(!missing.exists());
        assert!(!dir.path().join("other.db").exists());
    }
}
