//! Uploaded files: the record of each upload (`uploads`), the messages that
//! carry them (`attachments`), and their bytes on disk.
//!
//! The bytes of an upload are `<files dir>/<sha256>`, shared by every upload of
//! the same bytes; clients only ever see the upload's own random id, so holding
//! one says nothing about what other users uploaded. The HTTP front (in the
//! broker's process) writes the bytes and the upload's row through [`Catalog`]
//! on its own connection to the shared SQLite file; the writer attaches uploads
//! to messages (`send`) and lets go of them when a message is deleted: an
//! upload no message carries any more goes with its last message, and the bytes
//! go with the last upload of their hash.
//!
//! Ordering makes the bytes safe across processes: an upload inserts its row
//! before it renames its bytes into place, and the writer removes bytes only
//! inside its write transaction, after seeing no row with that hash; SQLite's
//! single writer puts every insert either before that look (the bytes stay) or
//! after the removal (the rename puts them back). On PostgreSQL, which has no
//! single writer, a per-hash advisory lock (`lock_key`) does the same: the
//! catalog holds it across its insert, rename and commit, the writers across
//! their look and removal to their commit (see `postgres::engine::files`).
//!
//! What does not touch the database (the bytes' names, the walk of the files
//! directory, removing bytes) is shared by both engines.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use messenger_protocol::wire::{
    Attachment, AttachmentRef, ErrorCode, MAX_ATTACHMENTS, MAX_ATTACHMENT_NAME_CHARS,
};
use messenger_protocol::{ConvId, FileId, UserId};
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use tracing::{info, warn};

use crate::config::StorageConfig;
use crate::{Failure, StoreError};

/// The start of the name of an upload's bytes while they are being written.
pub const TEMP_PREFIX: &str = ".upload-";

/// What is known of one upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    /// Its id, chosen by the server.
    pub file: FileId,
    /// Who uploaded it.
    pub uploader: UserId,
    /// SHA-256 of the bytes, hex; the bytes' name on disk.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// Media type, as uploaded.
    pub media_type: String,
    /// When it was stored, ms since the epoch.
    pub created_ms: u64,
}

/// Uploads as the HTTP front sees them: where to write bytes, recording an
/// upload, and who may read one. Blocking (the database, files); one
/// connection, to the configured engine. The bytes are in the files directory
/// (`storage.files_dir`): with PostgreSQL and several broker nodes, a directory
/// every node and bridge shares.
pub struct Catalog {
    db: Mutex<CatalogDb>,
    dir: PathBuf,
}

/// The catalog's connection.
enum CatalogDb {
    Sqlite(Connection),
    /// The connection, and the `storage.url` to open a new one when it broke.
    Postgres(Box<postgres::Client>, String),
}

impl CatalogDb {
    /// Runs `f` on the PostgreSQL connection, once more on a new connection if
    /// it broke.
    fn postgres<T>(
        client: &mut Box<postgres::Client>,
        url: &str,
        f: impl Fn(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        match f(client) {
            Err(err) if err.code().is_none() || client.is_closed() => {
                warn!(cause = %err, "the files catalog's connection broke: reconnecting");
                **client = crate::postgres::connect(url)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Ok(f(client)?)
            }
            other => Ok(other?),
        }
    }
}

impl Catalog {
    /// Opens the configured database (the shared SQLite file, or PostgreSQL at
    /// `storage.url`; migrating it) and creates the files directory.
    pub fn open(config: &StorageConfig) -> Result<Self, StoreError> {
        let db = match config.postgres_url() {
            Some(url) => {
                let mut client = crate::postgres::connect(url)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                crate::postgres::migrate(&mut client)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                CatalogDb::Postgres(Box::new(client), url.to_owned())
            }
            None => {
                let mut conn = messenger_accounts::open_sqlite(&config.path)?;
                super::migrate(&mut conn)?;
                CatalogDb::Sqlite(conn)
            }
        };
        let dir = config.files_dir();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Io(dir.clone(), e))?;
        Ok(Self {
            db: Mutex::new(db),
            dir,
        })
    }

    /// The files directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh name in the files directory for an upload's bytes while they are written.
    pub fn temp_path(&self) -> PathBuf {
        let mut raw = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut raw);
        self.dir.join(format!("{TEMP_PREFIX}{}", hex::encode(raw)))
    }

    /// Where the bytes of an upload live.
    pub fn blob_path(&self, record: &UploadRecord) -> PathBuf {
        blob_path(&self.dir, &record.sha256)
    }

    /// Records a complete upload whose bytes are at `temp` (written and synced)
    /// and moves them to their content-hash name. On failure the bytes at
    /// `temp` are left for the caller to remove.
    pub fn keep(
        &self,
        temp: &Path,
        uploader: &UserId,
        sha256: &str,
        size: u64,
        media_type: &str,
        now_ms: u64,
    ) -> Result<UploadRecord, StoreError> {
        let mut raw = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut raw);
        let file = FileId::parse(&hex::encode(raw)).expect("32 hex digits are a file id");
        let record = UploadRecord {
            file,
            uploader: uploader.clone(),
            sha256: sha256.to_owned(),
            size,
            media_type: media_type.to_owned(),
            created_ms: now_ms,
        };
        let mut db = self.lock();
        let blob = self.blob_path(&record);
        match &mut *db {
            CatalogDb::Sqlite(conn) => {
                conn.prepare_cached(
                    "INSERT INTO uploads (file, uploader, sha256, size, type, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    record.file.as_str(),
                    uploader.as_str(),
                    sha256,
                    size,
                    media_type,
                    now_ms
                ])?;
                if let Err(err) = std::fs::rename(temp, &blob) {
                    // The row goes again; nothing refers to it yet.
                    let _ = conn.execute(
                        "DELETE FROM uploads WHERE file = ?1",
                        [record.file.as_str()],
                    );
                    return Err(StoreError::Io(blob, err));
                }
            }
            CatalogDb::Postgres(client, url) => {
                let (size, now) = (
                    i64::try_from(size).unwrap_or(i64::MAX),
                    i64::try_from(now_ms).unwrap_or(i64::MAX),
                );
                // One transaction under the hash's lock: the row and the bytes
                // appear together for every writer that looks for this hash.
                // A run again after a broken connection finds `temp` gone if the
                // rename happened: it fails, and the row (if the first commit
                // went through) and the bytes go with the sweep.
                CatalogDb::postgres(client, url, |c| {
                    let mut tx = c.transaction()?;
                    tx.execute(LOCK_HASH, &[&lock_key(sha256)])?;
                    tx.execute(
                        "INSERT INTO uploads (file, uploader, sha256, size, type, created_ms)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[
                            &record.file.as_str(),
                            &uploader.as_str(),
                            &sha256,
                            &size,
                            &media_type,
                            &now,
                        ],
                    )?;
                    if let Err(err) = std::fs::rename(temp, &blob) {
                        // Dropping the transaction rolls the row back.
                        return Ok(Err(err));
                    }
                    tx.commit()?;
                    Ok(Ok(()))
                })?
                .map_err(|err| StoreError::Io(blob, err))?;
            }
        }
        Ok(record)
    }

    /// The upload `file` if `user` may read it: they uploaded it, or a message
    /// that carries it lies in their read window of its conversation (as
    /// `history` would show it to them). `None` otherwise, and when it does not exist.
    pub fn readable(
        &self,
        user: &UserId,
        file: &FileId,
    ) -> Result<Option<UploadRecord>, StoreError> {
        let mut db = self.lock();
        let found = match &mut *db {
            CatalogDb::Sqlite(conn) => conn
                .prepare_cached(
                    "SELECT u.uploader, u.sha256, u.size, u.type, u.created_ms FROM uploads u
                     WHERE u.file = ?1 AND (u.uploader = ?2 OR EXISTS (
                         SELECT 1 FROM attachments a JOIN members m ON m.conv = a.conv AND m.user = ?2
                         WHERE a.file = u.file AND a.seq >= m.joined_seq
                           AND (m.left_seq IS NULL OR a.seq <= m.left_seq)))",
                )?
                .query_row(params![file.as_str(), user.as_str()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, u64>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, u64>(4)?,
                    ))
                })
                .optional()?,
            CatalogDb::Postgres(client, url) => {
                let row = CatalogDb::postgres(client, url, |c| {
                    c.query_opt(
                        "SELECT u.uploader, u.sha256, u.size, u.type, u.created_ms FROM uploads u
                         WHERE u.file = $1 AND (u.uploader = $2 OR EXISTS (
                             SELECT 1 FROM attachments a
                             JOIN members m ON m.conv = a.conv AND m.\"user\" = $2
                             WHERE a.file = u.file AND a.seq >= m.joined_seq
                               AND (m.left_seq IS NULL OR a.seq <= m.left_seq)))",
                        &[&file.as_str(), &user.as_str()],
                    )
                })?;
                match row {
                    Some(r) => Some((
                        r.try_get::<_, String>(0).map_err(StoreError::Postgres)?,
                        r.try_get::<_, String>(1).map_err(StoreError::Postgres)?,
                        u64::try_from(r.try_get::<_, i64>(2).map_err(StoreError::Postgres)?)
                            .unwrap_or(0),
                        r.try_get::<_, String>(3).map_err(StoreError::Postgres)?,
                        u64::try_from(r.try_get::<_, i64>(4).map_err(StoreError::Postgres)?)
                            .unwrap_or(0),
                    )),
                    None => None,
                }
            }
        };
        Ok(
            found.and_then(|(uploader, sha256, size, media_type, created_ms)| {
                Some(UploadRecord {
                    file: file.clone(),
                    uploader: UserId::parse(&uploader).ok()?,
                    sha256,
                    size,
                    media_type,
                    created_ms,
                })
            }),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CatalogDb> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The bytes of uploads with this hash.
pub(crate) fn blob_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(sha256)
}

/// Takes the PostgreSQL advisory lock of a hash ([`lock_key`]) to the end of
/// the transaction.
pub(crate) const LOCK_HASH: &str = "SELECT pg_advisory_xact_lock($1)";

/// The key of a hash's advisory lock on PostgreSQL: its first 64 bits. A name
/// that is no hash (never the name of bytes) gets the key of the empty prefix.
pub(crate) fn lock_key(sha256: &str) -> i64 {
    let bits = sha256
        .get(..16)
        .and_then(|prefix| u64::from_str_radix(prefix, 16).ok())
        .unwrap_or(0);
    i64::from_ne_bytes(bits.to_ne_bytes())
}

/// Checks a `send`'s attachments before anything is stored: at most
/// [`MAX_ATTACHMENTS`], each named (1 to [`MAX_ATTACHMENT_NAME_CHARS`]
/// characters, no control characters), no upload twice.
pub(crate) fn check_refs(refs: &[AttachmentRef]) -> Result<(), Failure> {
    if refs.len() > MAX_ATTACHMENTS {
        return Err(Failure::bad(format!(
            "{} attachments are over the limit of {MAX_ATTACHMENTS}",
            refs.len()
        )));
    }
    for (i, r) in refs.iter().enumerate() {
        let chars = r.name.chars().count();
        if chars == 0 || chars > MAX_ATTACHMENT_NAME_CHARS {
            return Err(Failure::bad(format!(
                "attachment name must be 1 to {MAX_ATTACHMENT_NAME_CHARS} characters, got {chars}"
            )));
        }
        if r.name.chars().any(char::is_control) {
            return Err(Failure::bad(
                "attachment name must not contain control characters",
            ));
        }
        if refs[..i].iter().any(|earlier| earlier.file == r.file) {
            return Err(Failure::bad(format!("file {} is attached twice", r.file)));
        }
    }
    Ok(())
}

/// Attaches the sender's uploads to the message `(conv, seq)` being stored;
/// returns them as the message carries them. An upload that does not exist or
/// is someone else's is `bad_request`, with the same words either way.
pub(super) fn attach(
    conn: &Connection,
    sender: &UserId,
    conv: &ConvId,
    seq: u64,
    refs: &[AttachmentRef],
) -> Result<Vec<Attachment>, Failure> {
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        let found: Option<(u64, String)> = conn
            .prepare_cached("SELECT size, type FROM uploads WHERE file = ?1 AND uploader = ?2")?
            .query_row(params![r.file.as_str(), sender.as_str()], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        let Some((size, media_type)) = found else {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!("file {} is not an upload of yours", r.file),
            ));
        };
        conn.prepare_cached("INSERT INTO attachments (file, conv, seq) VALUES (?1, ?2, ?3)")?
            .execute(params![r.file.as_str(), conv.to_string(), seq])?;
        out.push(Attachment {
            file: r.file.clone(),
            name: r.name.clone(),
            size,
            media_type,
        });
    }
    Ok(out)
}

/// Lets go of the attachments of the message `(conv, seq)` (it is being
/// deleted): the uploads no other message carries go too. Returns the hashes
/// of the uploads that went, whose bytes [`remove_unused`] removes before the commit.
pub(crate) fn detach(conn: &Connection, conv: &str, seq: u64) -> rusqlite::Result<Vec<String>> {
    let files: Vec<String> = conn
        .prepare_cached("SELECT file FROM attachments WHERE conv = ?1 AND seq = ?2")?
        .query_map(params![conv, seq], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if files.is_empty() {
        return Ok(Vec::new());
    }
    conn.prepare_cached("DELETE FROM attachments WHERE conv = ?1 AND seq = ?2")?
        .execute(params![conv, seq])?;
    conn.prepare_cached("UPDATE events SET attachments = NULL WHERE conv = ?1 AND seq = ?2")?
        .execute(params![conv, seq])?;
    let mut gone = Vec::new();
    for file in files {
        let still_carried = conn
            .prepare_cached("SELECT 1 FROM attachments WHERE file = ?1 LIMIT 1")?
            .query_row([&file], |_| Ok(()))
            .optional()?
            .is_some();
        if still_carried {
            continue;
        }
        let sha: Option<String> = conn
            .prepare_cached("DELETE FROM uploads WHERE file = ?1 RETURNING sha256")?
            .query_row([&file], |r| r.get(0))
            .optional()?;
        gone.extend(sha);
    }
    Ok(gone)
}

/// Removes the bytes of each hash no upload row names any more. Runs inside the
/// write transaction, just before its commit (see the module's ordering note).
/// A file that cannot be removed is logged and left for the sweep's next pass.
pub(crate) fn remove_unused(
    conn: &Connection,
    dir: &Path,
    hashes: &[String],
) -> rusqlite::Result<()> {
    for sha in hashes {
        let used = conn
            .prepare_cached("SELECT 1 FROM uploads WHERE sha256 = ?1 LIMIT 1")?
            .query_row([sha], |_| Ok(()))
            .optional()?
            .is_some();
        if !used {
            remove_bytes(dir, sha);
        }
    }
    Ok(())
}

/// Removes the bytes of `sha` (a hash, else nothing happens); bytes already
/// gone are fine, a failure is logged and left for the sweep's next pass.
pub(crate) fn remove_bytes(dir: &Path, sha: &str) {
    if !is_hash(sha) {
        return;
    }
    match std::fs::remove_file(blob_path(dir, sha)) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => warn!(cause = %err, %sha, "cannot remove a file's bytes"),
    }
}

/// The uploads no message carries that are older than `cutoff_ms`: their rows
/// go, and the hashes of their bytes are returned for [`remove_unused`].
pub(super) fn unreferenced(conn: &Connection, cutoff_ms: u64) -> rusqlite::Result<Vec<String>> {
    let gone: Vec<String> = conn
        .prepare_cached(
            "DELETE FROM uploads WHERE created_ms < ?1
               AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.file = uploads.file)
             RETURNING sha256",
        )?
        .query_map([cutoff_ms], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if !gone.is_empty() {
        info!(uploads = gone.len(), "removed uploads no message carries");
    }
    Ok(gone)
}

/// Removes what an interrupted process left in the files directory: partial
/// uploads older than `age`, and bytes no upload row names (a crash between a
/// removal and its commit, or files put there by hand) older than `age`.
pub(super) fn sweep_directory(
    conn: &Connection,
    dir: &Path,
    age: Duration,
) -> rusqlite::Result<()> {
    for sha in old_files(dir, age) {
        let used = conn
            .prepare_cached("SELECT 1 FROM uploads WHERE sha256 = ?1 LIMIT 1")?
            .query_row([&sha], |_| Ok(()))
            .optional()?
            .is_some();
        if !used {
            remove_bytes(dir, &sha);
        }
    }
    Ok(())
}

/// The walk of the files directory behind a sweep, which asks the database
/// nothing: removes partial uploads older than `age` and returns the names of
/// bytes (hashes) older than `age`, for the caller to remove those no upload
/// row names. Anything else in the directory is left alone.
pub(crate) fn old_files(dir: &Path, age: Duration) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let cutoff = SystemTime::now().checked_sub(age);
    let mut hashes = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| cutoff.is_some_and(|c| modified < c));
        if !old {
            continue;
        }
        if name.starts_with(TEMP_PREFIX) {
            if let Err(err) = std::fs::remove_file(entry.path()) {
                warn!(cause = %err, file = %name, "cannot remove a stray file");
            }
        } else if is_hash(name) {
            hashes.push(name.to_owned());
        }
    }
    hashes
}

/// Whether `s` is a SHA-256 in lowercase hex (the only names of bytes on disk).
pub(crate) fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(file: &str, name: &str) -> AttachmentRef {
        AttachmentRef {
            file: FileId::parse(file).unwrap(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn attachment_refs_are_checked_before_anything_is_stored() {
        assert!(check_refs(&[]).is_ok());
        let ten: Vec<_> = (0..10).map(|i| r(&format!("f{i}"), "n")).collect();
        assert!(check_refs(&ten).is_ok());
        let eleven: Vec<_> = (0..11).map(|i| r(&format!("f{i}"), "n")).collect();
        for bad in [
            eleven,
            vec![r("a", "")],
            vec![r("a", &"x".repeat(MAX_ATTACHMENT_NAME_CHARS + 1))],
            vec![r("a", "tab\there")],
            vec![r("a", "one"), r("a", "two")],
        ] {
            let err = check_refs(&bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{bad:?}");
        }
        assert!(check_refs(&[r("a", &"é".repeat(MAX_ATTACHMENT_NAME_CHARS))]).is_ok());
    }

    #[test]
    fn a_hash_locks_under_its_first_64_bits() {
        assert_eq!(lock_key(&"f".repeat(64)), -1);
        assert_eq!(
            lock_key(&format!("{}1{}", "0".repeat(15), "a".repeat(48))),
            1
        );
        assert_eq!(
            lock_key(&format!("{}{}", "7fffffffffffffff", "0".repeat(48))),
            i64::MAX
        );
        assert_ne!(lock_key(&"ab".repeat(32)), lock_key(&"ba".repeat(32)));
        assert_eq!(lock_key("not a hash"), 0);
    }

    #[test]
    fn the_walk_removes_old_partial_uploads_and_names_old_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        let write = |name: &str, aged: bool| {
            let path = dir.path().join(name);
            let file = std::fs::File::create(&path).unwrap();
            if aged {
                file.set_modified(old).unwrap();
            }
            path
        };
        let (old_hash, new_hash) = ("ab".repeat(32), "cd".repeat(32));
        write(&old_hash, true);
        write(&new_hash, false);
        let old_temp = write(&format!("{TEMP_PREFIX}old"), true);
        let new_temp = write(&format!("{TEMP_PREFIX}new"), false);
        let other = write("README", true);

        assert_eq!(old_files(dir.path(), Duration::from_secs(3600)), [old_hash]);
        assert!(!old_temp.exists(), "an old partial upload goes");
        assert!(new_temp.exists() && other.exists());
        assert!(dir.path().join(&new_hash).exists());
        assert!(old_files(&dir.path().join("missing"), Duration::ZERO).is_empty());
    }

    #[test]
    fn only_lowercase_sha256_hex_names_bytes() {
        assert!(is_hash(&"ab".repeat(32)));
        assert!(!is_hash(&"AB".repeat(32)));
        assert!(!is_hash("abc"));
        assert!(!is_hash(&format!(".upload-{}", "a".repeat(56))));
    }
}
