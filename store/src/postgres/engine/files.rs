//! Uploads on PostgreSQL: the sweep of uploads no message carries
//! (`Input::SweepFiles`) and, at the end of each batch, the removal of the
//! bytes of hashes no `uploads` row names any more: those of the uploads the
//! batch let go of (a deleted message's last carrier, an upload the sweep
//! removed) and stray bytes the sweep found. The rules are those of
//! `sqlite::files`; the directory walk and the bytes' names are shared with it.
//!
//! # The bytes across processes
//!
//! The bytes of a hash are shared by every upload of it, and several processes
//! write at once: the web listeners' catalogs (`sqlite::files::Catalog`)
//! recording uploads, and every bridge letting go of them. SQLite's single
//! writer orders a catalog's insert against a writer's "no row with this hash:
//! remove the bytes"; PostgreSQL has no single writer, so a transaction-level
//! advisory lock per hash (`pg_advisory_xact_lock` on the hash's first 64 bits,
//! `sqlite::files::lock_key`) does:
//!
//! - the catalog takes it, inserts the upload's row, renames the bytes into
//!   place and commits, in one transaction: to anyone holding the lock after
//!   it, the row and the bytes are there together;
//! - a writer takes it at the end of its batch, just before its commit, then
//!   looks for rows with the hash and removes the bytes if there are none, and
//!   holds it to its commit. Its look (`READ COMMITTED`: a new snapshot after
//!   the lock) sees every catalog's insert that took the lock before it (the
//!   bytes stay); a catalog that takes the lock after it renames its bytes in
//!   after the removal (the bytes are back). Held to the commit, the lock also
//!   orders two writers that each remove a different upload of one hash: the
//!   second looks once the first's removal of its row is committed, so the
//!   last one out removes the bytes.
//!
//! A writer takes its locks in key order, all before its look, so two writers
//! never wait for each other in a cycle, and no bytes go before every lock is
//! held (a conflict that runs the batch again cannot follow a removal).
//!
//! Each lock takes a place in the server's shared lock table (room for
//! `max_locks_per_transaction` × `max_connections`), so a batch locks at most
//! [`MAX_RELEASED`] hashes. The bytes of any more (a batch that deletes
//! thousands of files) stay until a later sweep finds them as bytes no row names.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::Duration;

use tracing::info;

use super::context::int;
use super::db::Db;
use crate::sqlite::files::{is_hash, lock_key, old_files, remove_bytes, LOCK_HASH};

/// The most hashes a batch locks and removes the bytes of; also the most
/// uploads one sweep removes (the next sweep goes on).
pub(super) const MAX_RELEASED: usize = 1000;

/// The sweep (`Input::SweepFiles`): removes the rows of the uploads no message
/// has carried for `unreferenced_ms` and the partial uploads older than that,
/// and returns the hashes whose bytes may have to go at the end of the batch
/// ([`remove_unused`]): those of the removed rows, and bytes older than that
/// no upload row names (a crash between a removal and its commit, files put
/// there by hand).
pub(super) fn sweep(
    db: &Db<'_>,
    dir: &Path,
    now: u64,
    unreferenced_ms: u64,
) -> Result<Vec<String>, postgres::Error> {
    // An upload a bridge is attaching right now may be locked by it: skipped,
    // for the next sweep to look at again.
    let rows = db.rows(
        "DELETE FROM uploads WHERE file IN (
             SELECT u.file FROM uploads u
             WHERE u.created_ms < $1
               AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.file = u.file)
             LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING sha256",
        &[
            &int(now.saturating_sub(unreferenced_ms)),
            &int(MAX_RELEASED as u64),
        ],
    )?;
    let mut released = Vec::with_capacity(rows.len());
    for row in &rows {
        released.push(row.try_get::<_, String>(0)?);
    }
    if !released.is_empty() {
        info!(
            uploads = released.len(),
            "removed uploads no message carries"
        );
    }
    // Bytes no row names now; the end of the batch looks again under their locks.
    let old = old_files(dir, Duration::from_millis(unreferenced_ms));
    if !old.is_empty() {
        let rows = db.rows(
            "SELECT t.h FROM unnest($1::text[]) AS t(h)
             WHERE NOT EXISTS (SELECT 1 FROM uploads WHERE sha256 = t.h)",
            &[&old],
        )?;
        for row in &rows {
            released.push(row.try_get::<_, String>(0)?);
        }
    }
    Ok(released)
}

/// Removes the bytes of each of `hashes` that no upload row names, under the
/// hash's advisory lock (see the module's notes). Runs at the end of the
/// batch's transaction, just before its commit; the locks are held to it.
pub(super) fn remove_unused(
    db: &Db<'_>,
    dir: &Path,
    mut hashes: Vec<String>,
) -> Result<(), postgres::Error> {
    hashes.retain(|sha| is_hash(sha));
    if hashes.is_empty() {
        return Ok(());
    }
    hashes.sort_unstable();
    hashes.dedup();
    if hashes.len() > MAX_RELEASED {
        info!(
            left = hashes.len() - MAX_RELEASED,
            "more files let go of than a batch removes: the rest go with a later sweep"
        );
        hashes.truncate(MAX_RELEASED);
    }
    let keys: BTreeSet<i64> = hashes.iter().map(|sha| lock_key(sha)).collect();
    for key in keys {
        db.exec(LOCK_HASH, &[&key])?;
    }
    let rows = db.rows(
        "SELECT DISTINCT sha256 FROM uploads WHERE sha256 = ANY($1)",
        &[&hashes],
    )?;
    let mut used = HashSet::with_capacity(rows.len());
    for row in &rows {
        used.insert(row.try_get::<_, String>(0)?);
    }
    for sha in hashes.iter().filter(|sha| !used.contains(*sha)) {
        remove_bytes(dir, sha);
    }
    Ok(())
}
