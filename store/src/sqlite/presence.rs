//! Presence: each device's state, and each user's aggregate on `status/<user>`.
//!
//! The `devices` table is the truth; retained messages are for clients. A user
//! is online while any device is; `last_seen` is stamped by the server when the
//! last device goes offline. `status/<user>` is published (retained) only when
//! the aggregate changes.

use std::sync::atomic::{AtomicU64, Ordering};

use messenger_protocol::wire::Status;
use messenger_protocol::{DeviceId, UserId};
use rusqlite::{params, Connection, OptionalExtension};
use tracing::warn;

use crate::Effect;

/// Records a device's presence; returns the status publish if the user's aggregate changed.
///
/// A user has at most `max_devices` devices: presence from one more device id
/// is refused (logged, nothing stored or published). Presence of a user that
/// does not exist (a device whose account was just removed) records nothing.
pub(crate) fn update(
    conn: &Connection,
    user: &UserId,
    device: &DeviceId,
    online: bool,
    now: u64,
    max_devices: usize,
) -> rusqlite::Result<Vec<Effect>> {
    let known = conn
        .prepare_cached(
            "UPDATE devices SET online = ?3, changed_ms = ?4 WHERE user = ?1 AND device = ?2",
        )?
        .execute(params![user.as_str(), device.as_str(), online, now])?;
    if known == 0 {
        // The last word of a device cut by its account's removal: nothing to
        // record for a user that no longer exists.
        if !messenger_accounts::user_exists(conn, user)? {
            return Ok(Vec::new());
        }
        if device_count(conn, user)? >= max_devices {
            refused(user, device, max_devices);
            return Ok(vec![Effect::Forget {
                user: user.clone(),
                device: device.clone(),
            }]);
        }
        conn.prepare_cached(
            "INSERT INTO devices (user, device, online, changed_ms) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![user.as_str(), device.as_str(), online, now])?;
    }
    aggregate(conn, user, now)
}

/// Logs a refused device, at most once a second (a client can send any number).
pub(crate) fn refused(user: &UserId, device: &DeviceId, max_devices: usize) {
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let last = LAST_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 1000
        && LAST_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let also = SUPPRESSED.swap(0, Ordering::Relaxed);
        warn!(%user, %device, max_devices, refused_since_last_log = also, "presence refused: the user has the most devices allowed (limits.max_devices_per_user)");
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many devices the user has had presence from.
pub(crate) fn device_count(conn: &Connection, user: &UserId) -> rusqlite::Result<usize> {
    conn.prepare_cached("SELECT COUNT(*) FROM devices WHERE user = ?1")?
        .query_row([user.as_str()], |r| r.get(0))
}

/// Recomputes a user's aggregate and returns the status publish if it changed.
fn aggregate(conn: &Connection, user: &UserId, now: u64) -> rusqlite::Result<Vec<Effect>> {
    let any_online: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM devices WHERE user = ?1 AND online = 1)")?
        .query_row([user.as_str()], |r| r.get(0))?;
    let stored: Option<(bool, Option<u64>)> = conn
        .prepare_cached("SELECT online, last_seen FROM presence WHERE user = ?1")?
        .query_row([user.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if stored.is_some_and(|(was, _)| was == any_online) {
        return Ok(Vec::new());
    }
    let last_seen = if any_online {
        stored.and_then(|(_, seen)| seen)
    } else {
        Some(now)
    };
    conn.prepare_cached(
        "INSERT INTO presence (user, online, last_seen) VALUES (?1, ?2, ?3)
         ON CONFLICT (user) DO UPDATE SET online = excluded.online, last_seen = excluded.last_seen",
    )?
    .execute(params![user.as_str(), any_online, last_seen])?;
    Ok(vec![status(user, any_online, last_seen)])
}

fn status(user: &UserId, online: bool, last_seen: Option<u64>) -> Effect {
    Effect::status(&Status {
        user: user.clone(),
        online,
        last_seen,
    })
}

/// Marks offline every device that looks online but has no open connection.
pub(crate) fn reconcile(
    conn: &Connection,
    is_connected: &dyn Fn(&str) -> bool,
    now: u64,
) -> rusqlite::Result<Vec<Effect>> {
    // Only rows that exist are updated, so no device cap applies.
    let no_cap = usize::MAX;
    let online: Vec<(String, String)> = conn
        .prepare_cached("SELECT user, device FROM devices WHERE online = 1")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (user, device) in online {
        if is_connected(&format!("{user}:{device}")) {
            continue;
        }
        let (Ok(user), Ok(device)) = (UserId::parse(&user), DeviceId::parse(&device)) else {
            continue;
        };
        tracing::info!(%user, %device, "device has no connection: marking it offline");
        out.extend(update(conn, &user, &device, false, now, no_cap)?);
    }
    Ok(out)
}

/// Every user's current status, to publish again after the broker lost its retained messages.
pub(crate) fn all(conn: &Connection) -> rusqlite::Result<Vec<Effect>> {
    let rows: Vec<(String, bool, Option<u64>)> = conn
        .prepare_cached("SELECT user, online, last_seen FROM presence")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(user, online, seen)| Some(status(&UserId::parse(&user).ok()?, online, seen)))
        .collect())
}
