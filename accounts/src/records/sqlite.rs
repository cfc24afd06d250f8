//! Account records in the SQLite file shared with the bridge.

use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Listed, Records, UserRow};
use crate::AccountsError;

/// One connection; SQLite serializes writers anyway and every query is short.
pub(crate) struct SqliteRecords {
    conn: Mutex<Connection>,
}

impl SqliteRecords {
    pub(crate) fn new(conn: Connection) -> Self {
        Self {
            conn: Mutex::new(conn),
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (it is
        // transactional), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Records for SqliteRecords {
    fn insert_user(&self, name: &str, phc: &str, now: i64) -> Result<bool, AccountsError> {
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO users (name, phc, created_ms) VALUES (?1, ?2, ?3)",
            params![name, phc, now],
        )?;
        Ok(n > 0)
    }

    fn set_password(&self, name: &str, phc: &str, now: i64) -> Result<bool, AccountsError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE users SET phc = ?2 WHERE name = ?1",
            params![name, phc],
        )?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute("DELETE FROM device_tokens WHERE user = ?1", [name])?;
        tx.execute(
            "INSERT INTO revocations (user, at_ms) VALUES (?1, ?2)",
            params![name, now],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn remove(&self, name: &str, now: i64) -> Result<bool, AccountsError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if !remove_user(&tx, name, now)? {
            return Ok(false);
        }
        tx.commit()?;
        Ok(true)
    }

    fn list(&self) -> Result<Vec<Listed>, AccountsError> {
        list(&self.conn())
    }

    fn set_disabled(
        &self,
        name: &str,
        disabled: bool,
        now: i64,
    ) -> Result<Option<bool>, AccountsError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let state: Option<Option<i64>> = tx
            .query_row(
                "SELECT disabled_ms FROM users WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        let Some(state) = state else {
            return Ok(None);
        };
        if state.is_some() == disabled {
            return Ok(Some(false));
        }
        tx.execute(
            "UPDATE users SET disabled_ms = ?2 WHERE name = ?1",
            params![name, disabled.then_some(now)],
        )?;
        if disabled {
            tx.execute(
                "INSERT INTO revocations (user, at_ms) VALUES (?1, ?2)",
                params![name, now],
            )?;
        }
        tx.commit()?;
        Ok(Some(true))
    }

    fn exists(&self, name: &str) -> Result<bool, AccountsError> {
        Ok(exists(&self.conn(), name)?)
    }

    fn put_token(
        &self,
        name: &str,
        device: &str,
        hash: &[u8],
        now: i64,
    ) -> Result<bool, AccountsError> {
        put_token(&self.conn(), name, device, hash, now)
    }

    fn user(&self, name: &str) -> Result<Option<UserRow>, AccountsError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT phc, disabled_ms FROM users WHERE name = ?1",
                [name],
                |r| {
                    Ok(UserRow {
                        phc: r.get(0)?,
                        disabled_ms: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    fn token_hash(&self, name: &str, device: &str) -> Result<Option<Vec<u8>>, AccountsError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT hash FROM device_tokens WHERE user = ?1 AND device = ?2",
                [name, device],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn token_owner(&self, hash: &[u8]) -> Result<Option<(String, String)>, AccountsError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT t.user, t.device FROM device_tokens t JOIN users u ON u.name = t.user
                 WHERE t.hash = ?1 AND u.disabled_ms IS NULL",
                [hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    fn revocations_after(&self, after: i64) -> Result<Vec<(i64, String, i64)>, AccountsError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT id, user, at_ms FROM revocations WHERE id > ?1 ORDER BY id")?;
        let rows = stmt
            .query_map([after], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn latest_revocation(&self) -> Result<i64, AccountsError> {
        Ok(self
            .conn()
            .query_row("SELECT COALESCE(MAX(id), 0) FROM revocations", [], |r| {
                r.get(0)
            })?)
    }

    /// The `blocks` table belongs to the store (its migrations create it); on a
    /// file the store never opened there is none, and nobody blocks anybody.
    fn is_blocked(&self, blocker: &str, blocked: &str) -> Result<bool, AccountsError> {
        let conn = self.conn();
        let found = conn
            .prepare_cached("SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2")
            .and_then(|mut stmt| stmt.query_row([blocker, blocked], |_| Ok(())).optional());
        match found {
            Ok(found) => Ok(found.is_some()),
            Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.contains("no such table") => {
                Ok(false)
            }
            Err(err) => Err(err.into()),
        }
    }
}

/// Every account on `conn`, by name.
pub(crate) fn list(conn: &Connection) -> Result<Vec<Listed>, AccountsError> {
    let mut stmt = conn.prepare("SELECT name, created_ms, disabled_ms FROM users ORDER BY name")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Whether `name` has an account, on `conn`.
pub(crate) fn exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM users WHERE name = ?1")?
        .query_row([name], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Deletes the user (tokens go with it: a foreign key) and records the
/// revocation; false if there is no such user.
pub(crate) fn remove_user(conn: &Connection, name: &str, now: i64) -> Result<bool, AccountsError> {
    let n = conn.execute("DELETE FROM users WHERE name = ?1", [name])?;
    if n == 0 {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO revocations (user, at_ms) VALUES (?1, ?2)",
        params![name, now],
    )?;
    Ok(true)
}

/// Stores a device's token hash; false if there is no such user.
pub(crate) fn put_token(
    conn: &Connection,
    name: &str,
    device: &str,
    hash: &[u8],
    now: i64,
) -> Result<bool, AccountsError> {
    if !exists(conn, name)? {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO device_tokens (user, device, hash, created_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (user, device) DO UPDATE SET hash = excluded.hash, created_ms = excluded.created_ms",
        params![name, device, hash, now],
    )?;
    Ok(true)
}
