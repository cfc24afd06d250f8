//! Where accounts are kept: the reads and writes [`crate::Accounts`] needs, on
//! SQLite (the file shared with the bridge) or PostgreSQL (the database every
//! broker node and bridge shares). The rules (hashing, the sign-in cache,
//! what a password change revokes) stay in `Accounts`; each engine only stores.

pub(crate) mod postgres;
pub(crate) mod sqlite;

use crate::AccountsError;

/// A user's stored credential state.
pub(crate) struct UserRow {
    /// The argon2id PHC string.
    pub(crate) phc: String,
    /// Since when the user is disabled.
    pub(crate) disabled_ms: Option<i64>,
}

/// One account as listed: (name, created_ms, disabled_ms).
pub(crate) type Listed = (String, i64, Option<i64>);

/// The account records of one engine. Every method is blocking.
pub(crate) trait Records: Send + Sync {
    /// Inserts a user; false if the name is taken.
    fn insert_user(&self, name: &str, phc: &str, now: i64) -> Result<bool, AccountsError>;
    /// Replaces a user's password hash, drops their device tokens and records a
    /// revocation, in one transaction; false if there is no such user.
    fn set_password(&self, name: &str, phc: &str, now: i64) -> Result<bool, AccountsError>;
    /// Deletes a user and their tokens and records a revocation; false if there
    /// is no such user.
    fn remove(&self, name: &str, now: i64) -> Result<bool, AccountsError>;
    /// Every account, by name.
    fn list(&self) -> Result<Vec<Listed>, AccountsError>;
    /// Sets or clears `disabled_ms` (recording a revocation when disabling);
    /// `None` if there is no such user, else whether anything changed.
    fn set_disabled(
        &self,
        name: &str,
        disabled: bool,
        now: i64,
    ) -> Result<Option<bool>, AccountsError>;
    /// Whether the user exists.
    fn exists(&self, name: &str) -> Result<bool, AccountsError>;
    /// Stores `hash` as the device's token, replacing any earlier one; false if
    /// there is no such user.
    fn put_token(
        &self,
        name: &str,
        device: &str,
        hash: &[u8],
        now: i64,
    ) -> Result<bool, AccountsError>;
    /// The user's password hash and state.
    fn user(&self, name: &str) -> Result<Option<UserRow>, AccountsError>;
    /// The stored hash of the device's token.
    fn token_hash(&self, name: &str, device: &str) -> Result<Option<Vec<u8>>, AccountsError>;
    /// The (user, device) a token hash belongs to, if its user is not disabled.
    fn token_owner(&self, hash: &[u8]) -> Result<Option<(String, String)>, AccountsError>;
    /// Revocations after number `after`: (number, user, at_ms), oldest first.
    fn revocations_after(&self, after: i64) -> Result<Vec<(i64, String, i64)>, AccountsError>;
    /// The newest revocation number (0 if none).
    fn latest_revocation(&self) -> Result<i64, AccountsError>;
    /// Whether `blocker` blocks `blocked`.
    fn is_blocked(&self, blocker: &str, blocked: &str) -> Result<bool, AccountsError>;
}
