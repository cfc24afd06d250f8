//! Account records in PostgreSQL: the database every broker node and bridge
//! shares (its schema is the store's, `messenger_store::postgres`). The client is
//! synchronous and must not run on an async worker, so one thread owns it and
//! takes the queries in turn; a connection that broke is made again on the next
//! query.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;

use postgres::{Client, GenericClient};

use super::{Listed, Records, UserRow};
use crate::AccountsError;

/// Makes a connection (the caller's connection string, error as text).
pub type Connector = Box<dyn FnMut() -> Result<Client, String> + Send>;

/// A query for the thread that owns the client.
type Job = Box<dyn FnOnce(&mut Owner) + Send>;

/// The thread's state: the connection, when there is one, and how to make one.
struct Owner {
    client: Option<Client>,
    connect: Connector,
}

impl Owner {
    /// Runs `query` on the connection (made first if needed). When the
    /// connection turns out to be broken (the server restarted or cut it), it is
    /// made again and `query` runs once more. A transaction cut off before its
    /// commit stored nothing; one whose commit went through but whose answer was
    /// lost is at worst seen twice (a second revocation, or an add answered
    /// "already exists").
    fn run<T>(
        &mut self,
        mut query: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, AccountsError> {
        let mut tries = 0;
        loop {
            tries += 1;
            if self.client.as_ref().is_none_or(Client::is_closed) {
                self.client = Some((self.connect)().map_err(AccountsError::Unavailable)?);
            }
            let client = self
                .client
                .as_mut()
                .ok_or_else(|| AccountsError::Unavailable("no connection".into()))?;
            let result = query(client);
            if result.is_ok() || !client.is_closed() || tries > 1 {
                return Ok(result?);
            }
            self.client = None;
        }
    }
}

/// The account records on PostgreSQL.
pub(crate) struct PostgresRecords {
    jobs: Mutex<Sender<Job>>,
}

impl PostgresRecords {
    /// Starts the thread that owns the connection; `client` is the first one.
    pub(crate) fn start(client: Client, connect: Connector) -> Result<Self, AccountsError> {
        let (jobs, queue): (Sender<Job>, Receiver<Job>) = mpsc::channel();
        let mut owner = Owner {
            client: Some(client),
            connect,
        };
        std::thread::Builder::new()
            .name("accounts-pg".into())
            .spawn(move || {
                // Ends when the records are dropped (the sender with them).
                for job in queue {
                    job(&mut owner);
                }
            })
            .map_err(|e| AccountsError::Unavailable(format!("cannot start a thread: {e}")))?;
        Ok(Self {
            jobs: Mutex::new(jobs),
        })
    }

    /// Runs `query` on the owning thread and waits for its answer.
    fn with<T: Send + 'static>(
        &self,
        query: impl FnMut(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, AccountsError> {
        let (answer, answered) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |owner: &mut Owner| {
            // The caller may have stopped waiting; nothing to do then.
            let _ = answer.send(owner.run(query));
        });
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| AccountsError::Unavailable("the connection's thread stopped".into()))?;
        answered
            .recv()
            .map_err(|_| AccountsError::Unavailable("the connection's thread stopped".into()))?
    }
}

/// Records a revocation of `name` at `now`. Revocations are taken one at a time
/// (the table lock, held to the commit), so their numbers commit in order and a
/// node that has read up to number N never misses a smaller one committed later.
fn revoke(tx: &mut impl GenericClient, name: &str, now: i64) -> Result<(), postgres::Error> {
    tx.batch_execute("LOCK TABLE revocations IN SHARE ROW EXCLUSIVE MODE")?;
    tx.execute(
        "INSERT INTO revocations (\"user\", at_ms) VALUES ($1, $2)",
        &[&name, &now],
    )?;
    Ok(())
}

/// Drops every device token of `name` (and its lookup rows).
fn drop_tokens(tx: &mut impl GenericClient, name: &str) -> Result<(), postgres::Error> {
    tx.execute(
        "DELETE FROM token_hashes WHERE hash IN (SELECT hash FROM device_tokens WHERE \"user\" = $1)",
        &[&name],
    )?;
    tx.execute("DELETE FROM device_tokens WHERE \"user\" = $1", &[&name])?;
    Ok(())
}

impl Records for PostgresRecords {
    fn insert_user(&self, name: &str, phc: &str, now: i64) -> Result<bool, AccountsError> {
        let (name, phc) = (name.to_owned(), phc.to_owned());
        self.with(move |c| {
            let n = c.execute(
                "INSERT INTO users (name, phc, created_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO NOTHING",
                &[&name, &phc, &now],
            )?;
            Ok(n > 0)
        })
    }

    fn set_password(&self, name: &str, phc: &str, now: i64) -> Result<bool, AccountsError> {
        let (name, phc) = (name.to_owned(), phc.to_owned());
        self.with(move |c| {
            let mut tx = c.transaction()?;
            let n = tx.execute("UPDATE users SET phc = $2 WHERE name = $1", &[&name, &phc])?;
            if n == 0 {
                return Ok(false);
            }
            drop_tokens(&mut tx, &name)?;
            revoke(&mut tx, &name, now)?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn remove(&self, name: &str, now: i64) -> Result<bool, AccountsError> {
        let name = name.to_owned();
        self.with(move |c| {
            let mut tx = c.transaction()?;
            if !remove_user(&mut tx, &name, now)? {
                return Ok(false);
            }
            tx.commit()?;
            Ok(true)
        })
    }

    fn list(&self) -> Result<Vec<Listed>, AccountsError> {
        self.with(|c| {
            Ok(c.query(
                "SELECT name, created_ms, disabled_ms FROM users ORDER BY name",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
        })
    }

    fn set_disabled(
        &self,
        name: &str,
        disabled: bool,
        now: i64,
    ) -> Result<Option<bool>, AccountsError> {
        let name = name.to_owned();
        self.with(move |c| {
            let mut tx = c.transaction()?;
            let Some(row) = tx.query_opt(
                "SELECT disabled_ms FROM users WHERE name = $1 FOR UPDATE",
                &[&name],
            )?
            else {
                return Ok(None);
            };
            let state: Option<i64> = row.get(0);
            if state.is_some() == disabled {
                return Ok(Some(false));
            }
            tx.execute(
                "UPDATE users SET disabled_ms = $2 WHERE name = $1",
                &[&name, &disabled.then_some(now)],
            )?;
            if disabled {
                revoke(&mut tx, &name, now)?;
            }
            tx.commit()?;
            Ok(Some(true))
        })
    }

    fn exists(&self, name: &str) -> Result<bool, AccountsError> {
        let name = name.to_owned();
        self.with(move |c| {
            Ok(
                c.query_opt("SELECT 1 FROM users WHERE name = $1", &[&name])?
                    .is_some(),
            )
        })
    }

    fn put_token(
        &self,
        name: &str,
        device: &str,
        hash: &[u8],
        now: i64,
    ) -> Result<bool, AccountsError> {
        let (name, device, hash) = (name.to_owned(), device.to_owned(), hash.to_vec());
        self.with(move |c| {
            let mut tx = c.transaction()?;
            let found = put_token(&mut tx, &name, &device, &hash, now)?;
            tx.commit()?;
            Ok(found)
        })
    }

    fn user(&self, name: &str) -> Result<Option<UserRow>, AccountsError> {
        let name = name.to_owned();
        self.with(move |c| {
            Ok(c.query_opt(
                "SELECT phc, disabled_ms FROM users WHERE name = $1",
                &[&name],
            )?
            .map(|r| UserRow {
                phc: r.get(0),
                disabled_ms: r.get(1),
            }))
        })
    }

    fn token_hash(&self, name: &str, device: &str) -> Result<Option<Vec<u8>>, AccountsError> {
        let (name, device) = (name.to_owned(), device.to_owned());
        self.with(move |c| {
            Ok(c.query_opt(
                "SELECT hash FROM device_tokens WHERE \"user\" = $1 AND device = $2",
                &[&name, &device],
            )?
            .map(|r| r.get(0)))
        })
    }

    /// Two lookups, each by its table's distribution key (the token's hash,
    /// then the user), not a join across them.
    fn token_owner(&self, hash: &[u8]) -> Result<Option<(String, String)>, AccountsError> {
        let hash = hash.to_vec();
        self.with(move |c| {
            let Some(row) = c.query_opt(
                "SELECT \"user\", device FROM token_hashes WHERE hash = $1",
                &[&hash],
            )?
            else {
                return Ok(None);
            };
            let (user, device): (String, String) = (row.get(0), row.get(1));
            let enabled = c
                .query_opt(
                    "SELECT 1 FROM users WHERE name = $1 AND disabled_ms IS NULL",
                    &[&user],
                )?
                .is_some();
            Ok(enabled.then_some((user, device)))
        })
    }

    fn revocations_after(&self, after: i64) -> Result<Vec<(i64, String, i64)>, AccountsError> {
        self.with(move |c| {
            Ok(c.query(
                "SELECT id, \"user\", at_ms FROM revocations WHERE id > $1 ORDER BY id",
                &[&after],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
        })
    }

    fn latest_revocation(&self) -> Result<i64, AccountsError> {
        self.with(|c| {
            Ok(
                c.query_one("SELECT COALESCE(MAX(id), 0) FROM revocations", &[])?
                    .get(0),
            )
        })
    }

    fn is_blocked(&self, blocker: &str, blocked: &str) -> Result<bool, AccountsError> {
        let (blocker, blocked) = (blocker.to_owned(), blocked.to_owned());
        self.with(move |c| {
            Ok(c.query_opt(
                "SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2",
                &[&blocker, &blocked],
            )?
            .is_some())
        })
    }
}

/// Deletes the user, their tokens (and lookup rows), and records the
/// revocation, inside the caller's transaction; `false` if there is no such user.
pub(crate) fn remove_user(
    tx: &mut impl GenericClient,
    name: &str,
    now: i64,
) -> Result<bool, postgres::Error> {
    let n = tx.execute("DELETE FROM users WHERE name = $1", &[&name])?;
    if n == 0 {
        return Ok(false);
    }
    drop_tokens(tx, name)?;
    revoke(tx, name, now)?;
    Ok(true)
}

/// Stores a device's token hash (replacing its old one) inside the caller's
/// transaction; `false` if the user does not exist. The user's row is held
/// until the commit: a removal waits for the token.
pub(crate) fn put_token(
    tx: &mut impl GenericClient,
    name: &str,
    device: &str,
    hash: &[u8],
    now: i64,
) -> Result<bool, postgres::Error> {
    if tx
        .query_opt(
            "SELECT 1 FROM users WHERE name = $1 FOR KEY SHARE",
            &[&name],
        )?
        .is_none()
    {
        return Ok(false);
    }
    tx.execute(
        "DELETE FROM token_hashes WHERE hash IN
             (SELECT hash FROM device_tokens WHERE \"user\" = $1 AND device = $2)",
        &[&name, &device],
    )?;
    tx.execute(
        "INSERT INTO device_tokens (\"user\", device, hash, created_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (\"user\", device) DO UPDATE
         SET hash = EXCLUDED.hash, created_ms = EXCLUDED.created_ms",
        &[&name, &device, &hash, &now],
    )?;
    tx.execute(
        "INSERT INTO token_hashes (hash, \"user\", device) VALUES ($1, $2, $3)",
        &[&hash, &name, &device],
    )?;
    Ok(true)
}
