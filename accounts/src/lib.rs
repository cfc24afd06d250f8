//! The account store: users, their argon2id password hashes and their device tokens.
//!
//! # Layout
//!
//! - [`Accounts`]: the store itself, on a SQLite file shared with the bridge or
//!   in a PostgreSQL database shared by every node.
//! - `records`: the reads and writes, one implementation per engine.
//! - [`schema`]: versioned migrations, used by every component that owns tables in the file.
//!
//! Password checks cost tens of milliseconds of CPU (argon2id). Devices therefore
//! get a device token ([`Accounts::issue_token`]): 32 random bytes, stored as a
//! SHA-256 hash, accepted as the MQTT password of that one device and checked in
//! microseconds. A password that verified once is remembered (as a SHA-256 of it,
//! in memory, tied to the stored hash) so that reconnects during one process's life
//! cost no argon2 either.

mod records;
pub mod schema;
pub mod throttle;

pub use records::postgres::Connector;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use messenger_protocol::{DeviceId, UserId};
use rand::RngCore;
use rusqlite::Connection;
use sha2::{Digest, Sha256};

use records::postgres::PostgresRecords;
use records::sqlite::SqliteRecords;
use records::{Records, UserRow};

/// Failures of the account store.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// The SQLite file could not be opened, read or written.
    #[error("account store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A PostgreSQL query failed.
    #[error("account store: {0}")]
    Postgres(#[from] postgres::Error),
    /// There is no connection to PostgreSQL (it could not be made again).
    #[error("account store: PostgreSQL unavailable: {0}")]
    Unavailable(String),
    /// The user already exists.
    #[error("user {0} already exists")]
    Exists(UserId),
    /// The user does not exist.
    #[error("user {0} does not exist")]
    NotFound(UserId),
    /// The password is unacceptable (empty or over 1024 bytes).
    #[error("password must be 1 to 1024 bytes")]
    BadPassword,
    /// Hashing failed.
    #[error("password hashing: {0}")]
    Hash(String),
}

/// What a credential check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The credential is right.
    Accepted,
    /// No such user.
    UnknownUser,
    /// The user exists and the credential is wrong.
    Rejected,
    /// The user exists but is disabled (`messenger user disable`): refused
    /// whatever the credential, which is not checked.
    Disabled,
}

/// One account as `messenger user list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    /// Its id.
    pub user: UserId,
    /// When it was created, ms since the epoch.
    pub created_ms: i64,
    /// Since when it is disabled, ms since the epoch; `None` while it may sign in.
    pub disabled_ms: Option<i64>,
}

/// Prefix that marks a device token, so the check knows which path to take.
pub const TOKEN_PREFIX: &str = "mtk_";

/// The account store.
///
/// Cheap to share behind an `Arc`; every method is blocking (SQLite or
/// PostgreSQL, argon2): call it from a blocking context, never directly on an
/// async worker.
pub struct Accounts {
    /// Where the records are kept.
    records: Box<dyn Records>,
    /// user -> (stored PHC string, SHA-256 of the password that verified against it).
    verified: Mutex<HashMap<String, (String, [u8; 32])>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// How long a connection waits for another process or connection holding a lock.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a SQLite file the way every component of the project does: WAL, a busy
/// timeout so concurrent processes wait for each other instead of failing.
pub fn open_sqlite(path: &Path) -> Result<Connection, rusqlite::Error> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            // A missing directory surfaces as SQLite's own "unable to open" error below.
            let _ = std::fs::create_dir_all(dir);
        }
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE users (
        name TEXT PRIMARY KEY,
        phc TEXT NOT NULL,
        created_ms INTEGER NOT NULL
     );
     CREATE TABLE device_tokens (
        user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        device TEXT NOT NULL,
        hash BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (user, device)
     );
     CREATE TABLE revocations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user TEXT NOT NULL,
        at_ms INTEGER NOT NULL
     );",
    // `messenger user disable`: set while the account may not sign in.
    "ALTER TABLE users ADD COLUMN disabled_ms INTEGER;",
    "
     -- HTTP requests (POST /files) carry a bare device token: find its device by it.
     CREATE INDEX device_tokens_by_hash ON device_tokens (hash);",
];

impl Accounts {
    /// Opens (creating if needed) the store in the SQLite file at `path`.
    pub fn open(path: &Path) -> Result<Self, AccountsError> {
        let mut conn = open_sqlite(path)?;
        migrate(&mut conn)?;
        Ok(Self::on(Box::new(SqliteRecords::new(conn))))
    }

    /// The store in a PostgreSQL database whose schema is in place
    /// (`messenger_store::postgres::migrate`), starting from the connection
    /// `client`; `connect` makes a new one when a query finds it broken (a
    /// database restart).
    pub fn on_postgres(
        client: postgres::Client,
        connect: Connector,
    ) -> Result<Self, AccountsError> {
        Ok(Self::on(Box::new(PostgresRecords::start(client, connect)?)))
    }

    fn on(records: Box<dyn Records>) -> Self {
        Self {
            records,
            verified: Mutex::new(HashMap::new()),
        }
    }

    fn hash_password(password: &str) -> Result<String, AccountsError> {
        if password.is_empty() || password.len() > 1024 {
            return Err(AccountsError::BadPassword);
        }
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AccountsError::Hash(e.to_string()))
    }

    /// Creates a user.
    pub fn add(&self, user: &UserId, password: &str) -> Result<(), AccountsError> {
        let phc = Self::hash_password(password)?;
        if !self.records.insert_user(user.as_str(), &phc, now_ms())? {
            return Err(AccountsError::Exists(user.clone()));
        }
        Ok(())
    }

    /// Changes a user's password; drops their device tokens and signs out their connections.
    pub fn set_password(&self, user: &UserId, password: &str) -> Result<(), AccountsError> {
        let phc = Self::hash_password(password)?;
        if !self.records.set_password(user.as_str(), &phc, now_ms())? {
            return Err(AccountsError::NotFound(user.clone()));
        }
        Ok(())
    }

    /// Deletes a user and their tokens, and signs out their connections.
    ///
    /// This removes the account only; `messenger_bridge::remove_user` also
    /// removes what the account owned in the conversations, in the same transaction.
    pub fn remove(&self, user: &UserId) -> Result<(), AccountsError> {
        if !self.records.remove(user.as_str(), now_ms())? {
            return Err(AccountsError::NotFound(user.clone()));
        }
        Ok(())
    }

    /// Every user id, sorted.
    pub fn list(&self) -> Result<Vec<UserId>, AccountsError> {
        Ok(self.accounts()?.into_iter().map(|a| a.user).collect())
    }

    /// Disables (`true`) or enables a user. A disabled user cannot sign in, with
    /// the password or a device token (kept, and valid again once enabled); disabling
    /// records a revocation, which signs out their connections. Returns whether
    /// anything changed (disabling a disabled user keeps the first time).
    pub fn set_disabled(&self, user: &UserId, disabled: bool) -> Result<bool, AccountsError> {
        self.records
            .set_disabled(user.as_str(), disabled, now_ms())?
            .ok_or_else(|| AccountsError::NotFound(user.clone()))
    }

    /// Every account with when it was created and since when it is disabled, by user id.
    pub fn accounts(&self) -> Result<Vec<AccountInfo>, AccountsError> {
        Ok(infos(self.records.list()?))
    }

    /// [`Accounts::accounts`] on a SQLite connection the caller holds (e.g. inside
    /// its own read transaction).
    pub fn accounts_on(conn: &Connection) -> Result<Vec<AccountInfo>, AccountsError> {
        Ok(infos(records::sqlite::list(conn)?))
    }

    /// Whether the user exists.
    pub fn exists(&self, user: &UserId) -> Result<bool, AccountsError> {
        self.records.exists(user.as_str())
    }

    /// Issues a new device token for `user`'s `device`, replacing any earlier one.
    /// Only its SHA-256 is stored; the token itself is returned once.
    pub fn issue_token(&self, user: &UserId, device: &DeviceId) -> Result<String, AccountsError> {
        let token = new_token();
        if !self.records.put_token(
            user.as_str(),
            device.as_str(),
            &sha256(token.as_bytes()),
            now_ms(),
        )? {
            return Err(AccountsError::NotFound(user.clone()));
        }
        Ok(token)
    }

    /// Checks a sign-in: `secret` is the password or a device token of `device`.
    ///
    /// Blocking: a password check may run argon2id (tens of milliseconds).
    pub fn verify(
        &self,
        user: &UserId,
        device: &DeviceId,
        secret: &str,
    ) -> Result<Verdict, AccountsError> {
        let Some(UserRow { phc, disabled_ms }) = self.records.user(user.as_str())? else {
            return Ok(Verdict::UnknownUser);
        };
        if disabled_ms.is_some() {
            return Ok(Verdict::Disabled);
        }
        if secret.starts_with(TOKEN_PREFIX) {
            let stored = self.records.token_hash(user.as_str(), device.as_str())?;
            let ok = stored.is_some_and(|h| constant_time_eq(&h, &sha256(secret.as_bytes())));
            return Ok(if ok {
                Verdict::Accepted
            } else {
                Verdict::Rejected
            });
        }
        if secret.is_empty() || secret.len() > 1024 {
            return Ok(Verdict::Rejected);
        }
        let digest = sha256(secret.as_bytes());
        if let Some((cached_phc, cached)) = self.verified_lock().get(user.as_str()) {
            if *cached_phc == phc && constant_time_eq(cached, &digest) {
                return Ok(Verdict::Accepted);
            }
        }
        let parsed = PasswordHash::new(&phc).map_err(|e| AccountsError::Hash(e.to_string()))?;
        if Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok()
        {
            self.verified_lock()
                .insert(user.as_str().to_owned(), (phc, digest));
            Ok(Verdict::Accepted)
        } else {
            Ok(Verdict::Rejected)
        }
    }

    /// The user and device a device token belongs to, if it is a current one and
    /// its user is not disabled.
    /// A token is 256 random bits, so its owner is looked up by its hash.
    pub fn token_owner(&self, token: &str) -> Result<Option<(UserId, DeviceId)>, AccountsError> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let found = self.records.token_owner(&sha256(token.as_bytes()))?;
        Ok(found.and_then(|(user, device)| {
            Some((UserId::parse(&user).ok()?, DeviceId::parse(&device).ok()?))
        }))
    }

    fn verified_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, [u8; 32])>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Users whose sessions were revoked (removed, or password changed) after
    /// revocation number `after`, each with when (ms since the epoch), and the
    /// newest revocation number.
    pub fn revocations_after(
        &self,
        after: i64,
    ) -> Result<(Vec<(String, i64)>, i64), AccountsError> {
        let rows = self.records.revocations_after(after)?;
        let last = rows.last().map_or(after, |(id, _, _)| *id);
        Ok((
            rows.into_iter().map(|(_, user, at)| (user, at)).collect(),
            last,
        ))
    }

    /// Whether `blocker` blocks `blocked`. The `blocks` table belongs to the store;
    /// on a SQLite file the store never opened there is none, and nobody blocks anybody.
    pub fn is_blocked(&self, blocker: &UserId, blocked: &UserId) -> Result<bool, AccountsError> {
        self.records.is_blocked(blocker.as_str(), blocked.as_str())
    }

    /// The newest revocation number (to start watching from now on).
    pub fn latest_revocation(&self) -> Result<i64, AccountsError> {
        self.records.latest_revocation()
    }
}

/// Listed rows as accounts. Rows were validated on insert; anything a hand edit
/// broke is skipped.
fn infos(rows: Vec<records::Listed>) -> Vec<AccountInfo> {
    rows.into_iter()
        .filter_map(|(name, created_ms, disabled_ms)| {
            Some(AccountInfo {
                user: UserId::parse(&name).ok()?,
                created_ms,
                disabled_ms,
            })
        })
        .collect()
}

/// A new device token: the prefix and 32 random bytes in hex.
fn new_token() -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    format!("{TOKEN_PREFIX}{}", hex::encode(raw))
}

/// Whether `user` exists, on a connection the caller holds (e.g. inside its own transaction).
pub fn user_exists(conn: &Connection, user: &UserId) -> rusqlite::Result<bool> {
    records::sqlite::exists(conn, user.as_str())
}

/// Deletes a user and their tokens and records the revocation (which signs out
/// their connections), on a connection the caller holds inside its own transaction.
pub fn remove_user(conn: &Connection, user: &UserId) -> Result<(), AccountsError> {
    if !records::sqlite::remove_user(conn, user.as_str(), now_ms())? {
        return Err(AccountsError::NotFound(user.clone()));
    }
    Ok(())
}

/// Issues a device token on a connection the caller holds (the bridge issues
/// tokens inside its own transaction). See [`Accounts::issue_token`].
pub fn issue_token(
    conn: &Connection,
    user: &UserId,
    device: &DeviceId,
) -> Result<String, AccountsError> {
    let token = new_token();
    let hash = sha256(token.as_bytes());
    if !records::sqlite::put_token(conn, user.as_str(), device.as_str(), &hash, now_ms())? {
        return Err(AccountsError::NotFound(user.clone()));
    }
    Ok(token)
}

/// Deletes a user and their tokens and records the revocation (which signs out
/// their connections on every broker node), inside the caller's PostgreSQL
/// transaction. `NotFound` if the user does not exist.
pub fn remove_user_postgres(
    tx: &mut impl postgres::GenericClient,
    user: &UserId,
) -> Result<(), AccountsError> {
    if !records::postgres::remove_user(tx, user.as_str(), now_ms())? {
        return Err(AccountsError::NotFound(user.clone()));
    }
    Ok(())
}

/// Issues a device token inside the caller's PostgreSQL transaction (the bridge
/// issues tokens inside its own). `NotFound` if the user does not exist.
pub fn issue_token_postgres(
    tx: &mut impl postgres::GenericClient,
    user: &UserId,
    device: &DeviceId,
) -> Result<String, AccountsError> {
    let token = new_token();
    let hash = sha256(token.as_bytes());
    let now = now_ms();
    if !records::postgres::put_token(tx, user.as_str(), device.as_str(), &hash, now)? {
        return Err(AccountsError::NotFound(user.clone()));
    }
    Ok(token)
}

/// Creates the account tables if needed; for components that open their own
/// connection to the shared file and query them.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    schema::migrate(conn, "accounts", MIGRATIONS)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let acc = Accounts::open(&dir.path().join("m.db")).unwrap();
        let (alice, phone) = (uid("alice"), DeviceId::parse("phone").unwrap());
        acc.add(&alice, "pw1").unwrap();
        assert!(matches!(
            acc.add(&alice, "x"),
            Err(AccountsError::Exists(_))
        ));
        assert!(matches!(
            acc.add(&uid("bob"), ""),
            Err(AccountsError::BadPassword)
        ));
        assert_eq!(
            acc.verify(&alice, &phone, "pw1").unwrap(),
            Verdict::Accepted
        );
        assert_eq!(
            acc.verify(&alice, &phone, "pw1").unwrap(),
            Verdict::Accepted
        ); // cached
        assert_eq!(
            acc.verify(&alice, &phone, "nope").unwrap(),
            Verdict::Rejected
        );
        assert_eq!(
            acc.verify(&uid("bob"), &phone, "pw1").unwrap(),
            Verdict::UnknownUser
        );

        let token = acc.issue_token(&alice, &phone).unwrap();
        assert_eq!(
            acc.verify(&alice, &phone, &token).unwrap(),
            Verdict::Accepted
        );
        let laptop = DeviceId::parse("laptop").unwrap();
        assert_eq!(
            acc.verify(&alice, &laptop, &token).unwrap(),
            Verdict::Rejected
        );
        assert_eq!(
            acc.verify(&alice, &phone, "mtk_00").unwrap(),
            Verdict::Rejected
        );

        let start = acc.latest_revocation().unwrap();
        acc.set_password(&alice, "pw2").unwrap();
        assert_eq!(
            acc.verify(&alice, &phone, "pw1").unwrap(),
            Verdict::Rejected
        );
        assert_eq!(
            acc.verify(&alice, &phone, &token).unwrap(),
            Verdict::Rejected
        );
        assert_eq!(
            acc.verify(&alice, &phone, "pw2").unwrap(),
            Verdict::Accepted
        );
        acc.remove(&alice).unwrap();
        assert!(matches!(
            acc.remove(&alice),
            Err(AccountsError::NotFound(_))
        ));
        assert_eq!(
            acc.verify(&alice, &phone, "pw2").unwrap(),
            Verdict::UnknownUser
        );
        let (users, last) = acc.revocations_after(start).unwrap();
        let names: Vec<&str> = users.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(names, ["alice", "alice"]);
        assert_eq!(acc.revocations_after(last).unwrap().0.len(), 0);
        assert!(acc.list().unwrap().is_empty());
    }

    #[test]
    fn a_disabled_user_is_refused_whatever_the_credential_until_enabled() {
        let dir = tempfile::tempdir().unwrap();
        let acc = Accounts::open(&dir.path().join("m.db")).unwrap();
        let (alice, phone) = (uid("alice"), DeviceId::parse("phone").unwrap());
        acc.add(&alice, "pw").unwrap();
        let token = acc.issue_token(&alice, &phone).unwrap();
        let start = acc.latest_revocation().unwrap();

        assert!(acc.set_disabled(&alice, true).unwrap());
        assert!(!acc.set_disabled(&alice, true).unwrap(), "already disabled");
        for secret in ["pw", token.as_str(), "wrong"] {
            assert_eq!(
                acc.verify(&alice, &phone, secret).unwrap(),
                Verdict::Disabled
            );
        }
        assert_eq!(
            acc.token_owner(&token).unwrap(),
            None,
            "a disabled user's token opens no HTTP request either"
        );
        let (revoked, _) = acc.revocations_after(start).unwrap();
        assert_eq!(revoked.len(), 1, "disabling once signs out once");
        let listed = acc.accounts().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].disabled_ms.is_some());

        assert!(acc.set_disabled(&alice, false).unwrap());
        assert!(!acc.set_disabled(&alice, false).unwrap(), "already enabled");
        assert_eq!(acc.verify(&alice, &phone, "pw").unwrap(), Verdict::Accepted);
        assert_eq!(
            acc.verify(&alice, &phone, &token).unwrap(),
            Verdict::Accepted
        );
        assert_eq!(
            acc.token_owner(&token).unwrap(),
            Some((alice.clone(), phone.clone()))
        );
        assert_eq!(acc.accounts().unwrap()[0].disabled_ms, None);
        assert!(matches!(
            acc.set_disabled(&uid("nobody"), true),
            Err(AccountsError::NotFound(_))
        ));
    }

    #[test]
    fn reopen_keeps_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        Accounts::open(&path)
            .unwrap()
            .add(&uid("carol"), "pw")
            .unwrap();
        let acc = Accounts::open(&path).unwrap();
        assert_eq!(acc.list().unwrap(), vec![uid("carol")]);
    }
}
