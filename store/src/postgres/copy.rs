//! `messenger migrate --to`: a single-node SQLite install copied into an empty
//! PostgreSQL database, in one transaction on each side (a consistent snapshot
//! of the file, and all or nothing in the database).
//!
//! Rows go through `COPY ... FROM STDIN BINARY`. The tables kept for lookups by
//! another key (see `schema`) are filled from the rows they index; the SQLite
//! search index is not copied (PostgreSQL indexes the text itself).

use std::fmt;
use std::path::Path;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, Transaction};
use rusqlite::Connection;

use super::{migrate_in, PostgresError};
use crate::config::Durability;
use crate::StoreError;

/// How many rows of each kind a copy wrote, in the order copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// (what, rows).
    pub counts: Vec<(&'static str, u64)>,
}

impl CopyReport {
    /// The rows copied of `what` (0 if it is not a kind copied).
    pub fn count(&self, what: &str) -> u64 {
        self.counts
            .iter()
            .find(|(name, _)| *name == what)
            .map_or(0, |(_, n)| *n)
    }
}

impl fmt::Display for CopyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (what, n) in &self.counts {
            writeln!(f, "{what:<20} {n}")?;
        }
        Ok(())
    }
}

/// One table's copy: what it is called in the report, the SQLite query that
/// reads its rows, the PostgreSQL table and columns, and their types.
struct Table {
    what: &'static str,
    select: &'static str,
    into: &'static str,
    types: &'static [Type],
}

const TEXT: Type = Type::TEXT;
const INT: Type = Type::INT8;
const BOOL: Type = Type::BOOL;
const BYTES: Type = Type::BYTEA;

/// Every table, in an order that never names a row before it exists.
const TABLES: &[Table] = &[
    Table {
        what: "users",
        select: "SELECT name, phc, created_ms, disabled_ms FROM users ORDER BY name",
        into: "users (name, phc, created_ms, disabled_ms)",
        types: &[TEXT, TEXT, INT, INT],
    },
    Table {
        what: "device tokens",
        select: "SELECT user, device, hash, created_ms FROM device_tokens ORDER BY user, device",
        into: "device_tokens (\"user\", device, hash, created_ms)",
        types: &[TEXT, TEXT, BYTES, INT],
    },
    Table {
        what: "token hashes",
        select: "SELECT hash, user, device FROM device_tokens ORDER BY user, device",
        into: "token_hashes (hash, \"user\", device)",
        types: &[BYTES, TEXT, TEXT],
    },
    Table {
        what: "revocations",
        select: "SELECT id, user, at_ms FROM revocations ORDER BY id",
        into: "revocations (id, \"user\", at_ms)",
        types: &[INT, TEXT, INT],
    },
    Table {
        what: "conversations",
        select: "SELECT conv, kind, name, created_ms, last_seq, closed != 0 FROM conversations ORDER BY conv",
        into: "conversations (conv, kind, name, created_ms, last_seq, closed)",
        types: &[TEXT, TEXT, TEXT, INT, INT, BOOL],
    },
    Table {
        what: "members",
        select: "SELECT conv, user, role, joined_seq, left_seq, delivered_seq, read_seq FROM members ORDER BY conv, user",
        into: "members (conv, \"user\", role, joined_seq, left_seq, delivered_seq, read_seq)",
        types: &[TEXT, TEXT, TEXT, INT, INT, INT, INT],
    },
    Table {
        what: "memberships",
        select: "SELECT user, conv, joined_seq, left_seq FROM members ORDER BY user, conv",
        into: "memberships (\"user\", conv, joined_seq, left_seq)",
        types: &[TEXT, TEXT, INT, INT],
    },
    Table {
        what: "events",
        select: "SELECT conv, seq, ts, kind, sender, device, req_id, retired_req_id, body, action,
                        target, ref_seq, edited_ts, COALESCE(deleted, 0) != 0, attachments,
                        useq_lo, useq_hi
                 FROM events ORDER BY conv, seq",
        into: "events (conv, seq, ts, kind, sender, device, req_id, retired_req_id, body, action,
                       target, ref_seq, edited_ts, deleted, attachments, useq_lo, useq_hi)",
        types: &[
            TEXT, INT, INT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, INT, INT, BOOL, TEXT,
            INT, INT,
        ],
    },
    Table {
        what: "request ids",
        select: "SELECT sender, req_id, conv, seq FROM events WHERE req_id IS NOT NULL ORDER BY sender, req_id",
        into: "requests (sender, req_id, conv, seq)",
        types: &[TEXT, TEXT, TEXT, INT],
    },
    Table {
        what: "reactions",
        select: "SELECT conv, seq, user, emoji, ts FROM reactions ORDER BY conv, seq, user",
        into: "reactions (conv, seq, \"user\", emoji, ts)",
        types: &[TEXT, INT, TEXT, TEXT, INT],
    },
    Table {
        what: "uploads",
        select: "SELECT file, uploader, sha256, size, type, created_ms FROM uploads ORDER BY file",
        into: "uploads (file, uploader, sha256, size, type, created_ms)",
        types: &[TEXT, TEXT, TEXT, INT, TEXT, INT],
    },
    Table {
        what: "attachments",
        select: "SELECT file, conv, seq FROM attachments ORDER BY file, conv, seq",
        into: "attachments (file, conv, seq)",
        types: &[TEXT, TEXT, INT],
    },
    Table {
        what: "inbox rows",
        select: "SELECT user, useq, conv, seq, rstatus, ruser, rts FROM inbox WHERE rstatus IS NULL ORDER BY user, useq",
        into: "inbox (\"user\", useq, conv, seq, rstatus, ruser, rts)",
        types: &[TEXT, INT, TEXT, INT, TEXT, TEXT, INT],
    },
    Table {
        what: "receipts",
        select: "SELECT user, useq, conv, seq, rstatus, ruser, rts FROM inbox WHERE rstatus IS NOT NULL ORDER BY user, useq",
        into: "inbox (\"user\", useq, conv, seq, rstatus, ruser, rts)",
        types: &[TEXT, INT, TEXT, INT, TEXT, TEXT, INT],
    },
    Table {
        what: "inbox positions",
        select: "SELECT user, MAX(useq) FROM inbox GROUP BY user ORDER BY user",
        into: "user_seqs (\"user\", last_useq)",
        types: &[TEXT, INT],
    },
    Table {
        what: "devices",
        select: "SELECT user, device, online != 0, changed_ms FROM devices ORDER BY user, device",
        into: "devices (\"user\", device, online, changed_ms)",
        types: &[TEXT, TEXT, BOOL, INT],
    },
    Table {
        what: "presence",
        select: "SELECT user, online != 0, last_seen FROM presence ORDER BY user",
        into: "presence (\"user\", online, last_seen)",
        types: &[TEXT, BOOL, INT],
    },
    Table {
        what: "push registrations",
        select: "SELECT user, device, platform, token, registered_ms FROM push_tokens ORDER BY user, device",
        into: "push_tokens (\"user\", device, platform, token, registered_ms)",
        types: &[TEXT, TEXT, TEXT, TEXT, INT],
    },
    Table {
        what: "push token owners",
        select: "SELECT platform, token, user, device FROM push_tokens ORDER BY platform, token",
        into: "push_token_owners (platform, token, \"user\", device)",
        types: &[TEXT, TEXT, TEXT, TEXT],
    },
    Table {
        what: "mutes",
        select: "SELECT user, conv, until FROM mutes ORDER BY user, conv",
        into: "mutes (\"user\", conv, until)",
        types: &[TEXT, TEXT, INT],
    },
    Table {
        what: "blocks",
        select: "SELECT blocker, blocked, created_ms FROM blocks ORDER BY blocker, blocked",
        into: "blocks (blocker, blocked, created_ms)",
        types: &[TEXT, TEXT, INT],
    },
];

/// Why a copy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading the SQLite file failed.
    #[error(transparent)]
    Source(#[from] StoreError),
    /// The database refused, or is not one to copy into.
    #[error(transparent)]
    Target(#[from] PostgresError),
    /// The database holds accounts or conversations already.
    #[error("the database is not empty ({0}): migrate copies into an empty database only")]
    NotEmpty(String),
}

impl From<rusqlite::Error> for CopyError {
    fn from(err: rusqlite::Error) -> Self {
        Self::Source(StoreError::Sqlite(err))
    }
}

impl From<postgres::Error> for CopyError {
    fn from(err: postgres::Error) -> Self {
        Self::Target(PostgresError::Query(err))
    }
}

/// Copies the SQLite install at `path` (accounts and conversations; migrated to
/// this binary's schema first) into the empty database `client` is connected to,
/// creating its schema. Nothing is written unless all of it is.
pub fn copy_from_sqlite(path: &Path, client: &mut Client) -> Result<CopyReport, CopyError> {
    if !path.exists() {
        return Err(StoreError::NoDatabase(path.to_owned()).into());
    }
    let mut sqlite = crate::sqlite::open(path, Durability::Fsync)?;
    // The schema and the rows in one transaction: a copy that fails leaves the
    // database as it was.
    let mut tx = client.transaction()?;
    migrate_in(&mut tx)?;
    let held: Vec<String> = ["users", "conversations", "events"]
        .into_iter()
        .filter_map(|table| {
            let sql = format!("SELECT EXISTS (SELECT 1 FROM {table})");
            match tx.query_one(sql.as_str(), &[]) {
                Ok(row) if row.get::<_, bool>(0) => Some(Ok(table.to_owned())),
                Ok(_) => None,
                Err(err) => Some(Err(err)),
            }
        })
        .collect::<Result<_, _>>()?;
    if !held.is_empty() {
        return Err(CopyError::NotEmpty(format!("it has {}", held.join(", "))));
    }
    // One read transaction: every table from the same snapshot of the file.
    let snapshot = sqlite.transaction()?;
    let mut report = CopyReport::default();
    for table in TABLES {
        let rows = copy_table(&snapshot, &mut tx, table)?;
        report.counts.push((table.what, rows));
    }
    tx.batch_execute(
        "SELECT setval('revocations_id_seq', COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM revocations",
    )?;
    tx.commit()?;
    Ok(report)
}

/// A column's value read from SQLite, in the type the PostgreSQL column wants.
type Value = Box<dyn ToSql + Sync>;

/// Copies the rows of one table; returns how many.
fn copy_table(
    sqlite: &Connection,
    tx: &mut Transaction<'_>,
    table: &Table,
) -> Result<u64, CopyError> {
    let mut select = sqlite.prepare(table.select)?;
    let mut rows = select.query([])?;
    let sink = tx.copy_in(format!("COPY {} FROM STDIN BINARY", table.into).as_str())?;
    let mut writer = BinaryCopyInWriter::new(sink, table.types);
    let mut n = 0u64;
    while let Some(row) = rows.next()? {
        let values = table
            .types
            .iter()
            .enumerate()
            .map(|(i, ty)| value(row, i, ty))
            .collect::<rusqlite::Result<Vec<Value>>>()?;
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(AsRef::as_ref).collect();
        writer.write(&refs)?;
        n += 1;
    }
    writer.finish()?;
    Ok(n)
}

/// Column `i` of `row` as the PostgreSQL type `ty` takes it.
fn value(row: &rusqlite::Row<'_>, i: usize, ty: &Type) -> rusqlite::Result<Value> {
    Ok(if *ty == INT {
        Box::new(row.get::<_, Option<i64>>(i)?)
    } else if *ty == BOOL {
        Box::new(row.get::<_, Option<bool>>(i)?)
    } else if *ty == BYTES {
        Box::new(row.get::<_, Option<Vec<u8>>>(i)?)
    } else {
        Box::new(row.get::<_, Option<String>>(i)?)
    })
}
