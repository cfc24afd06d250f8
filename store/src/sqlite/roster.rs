//! The operator's list of accounts (`messenger user list`): each account with its
//! devices, known (with a presence row or a device token) and online.

use std::path::Path;

use messenger_accounts::AccountInfo;
use rusqlite::Connection;

use crate::StoreError;

/// One account as `messenger user list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSummary {
    /// The account: id, created, disabled since.
    pub account: AccountInfo,
    /// Distinct device ids that signed in (a presence row) or hold a device token.
    pub devices: u64,
    /// Devices online now (as the bridge last recorded).
    pub online: u64,
}

/// Every account, by user id, with its device counts; read in one snapshot of
/// the shared SQLite file at `path` (safe while a server runs on it).
pub fn list_users(path: &Path) -> Result<Vec<UserSummary>, StoreError> {
    if !path.exists() {
        return Err(StoreError::NoDatabase(path.to_path_buf()));
    }
    let mut conn = messenger_accounts::open_sqlite(path)?;
    super::migrate(&mut conn)?;
    let tx = conn.transaction()?;
    let accounts = messenger_accounts::Accounts::accounts_on(&tx)?;
    let mut out = Vec::with_capacity(accounts.len());
    for account in accounts {
        let (devices, online) = counts(&tx, account.user.as_str())?;
        out.push(UserSummary {
            account,
            devices,
            online,
        });
    }
    Ok(out)
}

fn counts(conn: &Connection, user: &str) -> rusqlite::Result<(u64, u64)> {
    conn.prepare_cached(
        "SELECT
            (SELECT COUNT(*) FROM (SELECT device FROM devices WHERE user = ?1
                                   UNION SELECT device FROM device_tokens WHERE user = ?1)),
            (SELECT COUNT(*) FROM devices WHERE user = ?1 AND online = 1)",
    )?
    .query_row([user], |r| Ok((r.get(0)?, r.get(1)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_protocol::{DeviceId, UserId};

    #[test]
    fn devices_with_presence_or_a_token_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let accounts = messenger_accounts::Accounts::open(&path).unwrap();
        let (ann, bob) = (UserId::parse("ann").unwrap(), UserId::parse("bob").unwrap());
        accounts.add(&ann, "pw").unwrap();
        accounts.add(&bob, "pw").unwrap();
        accounts
            .issue_token(&ann, &DeviceId::parse("phone").unwrap())
            .unwrap();
        let mut conn = messenger_accounts::open_sqlite(&path).unwrap();
        super::super::migrate(&mut conn).unwrap();
        conn.execute_batch(
            "INSERT INTO devices (user, device, online, changed_ms) VALUES
                ('ann', 'phone', 1, 0), ('ann', 'laptop', 0, 0);",
        )
        .unwrap();
        accounts.set_disabled(&bob, true).unwrap();

        let listed = list_users(&path).unwrap();
        let rows: Vec<(&str, u64, u64, bool)> = listed
            .iter()
            .map(|u| {
                let a = &u.account;
                (
                    a.user.as_str(),
                    u.devices,
                    u.online,
                    a.disabled_ms.is_some(),
                )
            })
            .collect();
        assert_eq!(rows, [("ann", 2, 1, false), ("bob", 0, 0, true)]);
        assert!(matches!(
            list_users(&dir.path().join("none.db")),
            Err(StoreError::NoDatabase(_))
        ));
    }
}
