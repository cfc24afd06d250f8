//! Versioned schema migrations.
//!
//! Several components keep tables in one SQLite file, so each tracks its own
//! version in `schema_versions` (one row per component) instead of sharing
//! `PRAGMA user_version`. Migrations only ever move forward; nothing is dropped
//! and recreated.

use rusqlite::{Connection, OptionalExtension};

/// Applies the migrations of `component` that have not run yet, each in its own transaction.
/// `migrations[i]` takes the schema from version `i` to `i + 1`.
pub fn migrate(
    conn: &mut Connection,
    component: &str,
    migrations: &[&str],
) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    )?;
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: usize = tx
            .query_row(
                "SELECT version FROM schema_versions WHERE component = ?1",
                [component],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map_or(0, |v| usize::try_from(v).unwrap_or(usize::MAX));
        let Some(step) = migrations.get(version) else {
            return Ok(());
        };
        tx.execute_batch(step)?;
        tx.execute(
            "INSERT INTO schema_versions (component, version) VALUES (?1, ?2)
             ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            rusqlite::params![component, (version + 1) as i64],
        )?;
        tx.commit()?;
    }
}
