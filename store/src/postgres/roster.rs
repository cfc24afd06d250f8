//! The operator's list of accounts on PostgreSQL (`messenger user list`): each
//! account with its devices, as `sqlite::roster` lists them.

use messenger_accounts::AccountInfo;
use messenger_protocol::UserId;
use postgres::Client;

use crate::sqlite::UserSummary;
use crate::StoreError;

/// Every account, by user id (bytewise, as on SQLite), with its devices: those
/// that signed in (a presence row) or hold a device token, and those online
/// now. Read in one snapshot (safe while bridges run on the database).
pub fn list_users(client: &mut Client) -> Result<Vec<UserSummary>, StoreError> {
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let rows = tx.query(
        "SELECT u.name, u.created_ms, u.disabled_ms,
            (SELECT COUNT(*) FROM (SELECT device FROM devices WHERE \"user\" = u.name
                                   UNION SELECT device FROM device_tokens WHERE \"user\" = u.name) d),
            (SELECT COUNT(*) FROM devices WHERE \"user\" = u.name AND online)
         FROM users u ORDER BY u.name COLLATE \"C\"",
        &[],
    )?;
    tx.commit()?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        // A name that no longer parses (edited by hand) is left out, as on SQLite.
        let Ok(user) = UserId::parse(row.try_get(0)?) else {
            continue;
        };
        out.push(UserSummary {
            account: AccountInfo {
                user,
                created_ms: row.try_get(1)?,
                disabled_ms: row.try_get(2)?,
            },
            devices: count(row.try_get(3)?),
            online: count(row.try_get(4)?),
        });
    }
    Ok(out)
}
