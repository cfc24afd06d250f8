//! Presence on PostgreSQL: each device's state, and each user's aggregate on
//! `status/<user>` (the rules of `sqlite::presence`).
//!
//! Devices of one user may be handled by different bridges: the aggregate is
//! computed under the lock of the user's `presence` row (taken first, created
//! if missing), so two bridges never both publish the same change, and a change
//! is published by the one whose commit made it.

use messenger_protocol::wire::Status;
use messenger_protocol::{DeviceId, UserId};

use super::context::{int, opt_nat};
use super::db::Db;
use crate::sqlite::presence::refused;
use crate::Effect;

/// Records a device's presence; returns the status publish if the user's aggregate changed.
/// Presence from one device more than `max_devices` is refused (logged, nothing stored).
pub(super) fn update(
    db: &Db<'_>,
    user: &UserId,
    device: &DeviceId,
    online: bool,
    now: u64,
    max_devices: usize,
) -> Result<Vec<Effect>, postgres::Error> {
    // The user's presence row, locked to the commit (created offline if new, so
    // that the first device online is a change). None for a user that does not
    // exist: the last word of a device cut by its account's removal
    // (`removal`, which deletes this row first) records nothing.
    db.exec(
        "INSERT INTO presence (\"user\", online, last_seen)
         SELECT $1, FALSE, NULL WHERE EXISTS (SELECT 1 FROM users WHERE name = $1)
         ON CONFLICT (\"user\") DO NOTHING",
        &[&user.as_str()],
    )?;
    let Some(stored) = db.opt(
        "SELECT online, last_seen FROM presence WHERE \"user\" = $1 FOR UPDATE",
        &[&user.as_str()],
    )?
    else {
        return Ok(Vec::new());
    };
    let (was_online, seen): (bool, Option<u64>) = (stored.try_get(0)?, opt_nat(&stored, 1)?);
    let known = db.exec(
        "UPDATE devices SET online = $3, changed_ms = $4 WHERE \"user\" = $1 AND device = $2",
        &[&user.as_str(), &device.as_str(), &online, &int(now)],
    )?;
    if known == 0 {
        let count: i64 = db
            .one(
                "SELECT COUNT(*) FROM devices WHERE \"user\" = $1",
                &[&user.as_str()],
            )?
            .try_get(0)?;
        if usize::try_from(count).unwrap_or(usize::MAX) >= max_devices {
            refused(user, device, max_devices);
            return Ok(vec![Effect::Forget {
                user: user.clone(),
                device: device.clone(),
            }]);
        }
        db.exec(
            "INSERT INTO devices (\"user\", device, online, changed_ms) VALUES ($1, $2, $3, $4)",
            &[&user.as_str(), &device.as_str(), &online, &int(now)],
        )?;
    }
    let any_online: bool = db
        .one(
            "SELECT EXISTS (SELECT 1 FROM devices WHERE \"user\" = $1 AND online)",
            &[&user.as_str()],
        )?
        .try_get(0)?;
    // A new row stands for "never seen": the first offline is a change too.
    let fresh = !was_online && seen.is_none();
    if was_online == any_online && (any_online || !fresh) {
        return Ok(Vec::new());
    }
    let last_seen = if any_online { seen } else { Some(now) };
    db.exec(
        "UPDATE presence SET online = $2, last_seen = $3 WHERE \"user\" = $1",
        &[&user.as_str(), &any_online, &last_seen.map(int)],
    )?;
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
///
/// With several bridges, the broker this bridge asks knows every connection
/// of the broker (one broker, or one node's view: see docs/SCALING.md).
pub(super) fn reconcile(
    db: &Db<'_>,
    is_connected: &dyn Fn(&str) -> bool,
    now: u64,
    ours: &dyn Fn(&UserId) -> bool,
) -> Result<Vec<Effect>, postgres::Error> {
    let rows = db.rows(
        "SELECT \"user\", device FROM devices WHERE online ORDER BY \"user\" COLLATE \"C\", device COLLATE \"C\"",
        &[],
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (user, device): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        if is_connected(&format!("{user}:{device}")) {
            continue;
        }
        let (Ok(user), Ok(device)) = (UserId::parse(&user), DeviceId::parse(&device)) else {
            continue;
        };
        if !ours(&user) {
            continue;
        }
        tracing::info!(%user, %device, "device has no connection: marking it offline");
        out.extend(update(db, &user, &device, false, now, usize::MAX)?);
    }
    Ok(out)
}

/// The current status of every user `ours` says this bridge handles, to
/// publish again after the broker lost its retained messages.
pub(super) fn all(
    db: &Db<'_>,
    ours: &dyn Fn(&UserId) -> bool,
) -> Result<Vec<Effect>, postgres::Error> {
    let rows = db.rows(
        "SELECT \"user\", online, last_seen FROM presence WHERE online OR last_seen IS NOT NULL",
        &[],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let user: String = row.try_get(0)?;
        match UserId::parse(&user) {
            Ok(user) if ours(&user) => {
                out.push(status(&user, row.try_get(1)?, opt_nat(&row, 2)?));
            }
            _ => {}
        }
    }
    Ok(out)
}
