//! PostgreSQL: connecting to a database, its schema and migrations (`schema`),
//! and copying a single-node SQLite install into an empty database (`copy`,
//! `messenger migrate --to`).
//!
//! `engine` is the store that handles requests there ([`PostgresStore`]), and
//! the operator's commands on it ([`remove_user`], [`erase_user`],
//! [`export_user`]); `roster` lists the accounts ([`list_users`]); `dump`
//! backs the database up with `pg_dump` ([`dump`]).

mod copy;
mod dump;
mod engine;
mod roster;
pub(crate) mod schema;

/// The synchronous PostgreSQL client (rust-postgres), as [`connect`] returns it.
pub use ::postgres::Client;
pub use copy::{copy_from_sqlite, CopyError, CopyReport};
pub use dump::{dump, DumpReport};
pub use engine::{
    erase_user, export_user, remove_user, slot_spread, Connector, PostgresStore, Sharing,
};
pub use roster::list_users;

use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Config, GenericClient, NoTls, Transaction};

/// How long connecting may take before the database counts as unreachable,
/// unless the connection string sets `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Any number taken by nothing else: the advisory lock that keeps processes
/// starting at once from migrating the same database together.
const MIGRATION_LOCK: i64 = 0x6d65_7373_656e;

/// Why a PostgreSQL database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The connection string does not parse.
    #[error(
        "not a PostgreSQL connection string (postgres://USER:PASSWORD@HOST:PORT/DATABASE): {0}"
    )]
    Url(String),
    /// Nothing answered, or the connection broke before the server spoke.
    #[error("cannot reach PostgreSQL at {target}: {cause}")]
    Unreachable {
        /// The hosts and ports tried (never the password).
        target: String,
        /// What failed.
        cause: String,
    },
    /// The server refused the user, the password or the database.
    #[error("PostgreSQL refused the connection: {0}")]
    Refused(String),
    /// The database's schema was written by a newer messenger.
    #[error("the database's schema is version {found}, newer than this messenger's {known}: run a newer messenger")]
    Newer {
        /// The database's version.
        found: i64,
        /// The newest this binary knows.
        known: i64,
    },
    /// A statement failed.
    #[error("PostgreSQL: {0}")]
    Query(#[from] postgres::Error),
}

impl PostgresError {
    /// Whether the fault is in the configuration (the connection string, the
    /// server it names, its credentials, the database's version), as opposed to
    /// a failure while working.
    pub fn is_configuration(&self) -> bool {
        !matches!(self, Self::Query(_))
    }
}

/// Connects to the database `url` names (a `postgres://` URL or `key=value`
/// pairs), without TLS.
pub fn connect(url: &str) -> Result<Client, PostgresError> {
    let mut config: Config = url
        .parse()
        .map_err(|e: postgres::Error| PostgresError::Url(e.to_string()))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.connect(NoTls).map_err(|err| refusal(&config, err))
}

/// Sorts a failed connection into refused (the server answered no) and
/// unreachable (it never answered).
fn refusal(config: &Config, err: postgres::Error) -> PostgresError {
    match (err.code(), err.as_db_error()) {
        (Some(code), Some(db))
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                || *code == SqlState::INVALID_CATALOG_NAME
                || *code == SqlState::INSUFFICIENT_PRIVILEGE =>
        {
            PostgresError::Refused(db.message().to_owned())
        }
        (Some(_), _) => PostgresError::Query(err),
        (None, _) => PostgresError::Unreachable {
            target: target(config),
            cause: err.to_string(),
        },
    }
}

/// `host:port` of each host the configuration names.
fn target(config: &Config) -> String {
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The newest schema version this binary knows.
fn known_version() -> i64 {
    i64::try_from(schema::MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// The database's schema version: 0 for a database messenger never wrote to.
fn version(client: &mut impl GenericClient) -> Result<i64, PostgresError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_versions') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_opt(
            "SELECT version FROM schema_versions WHERE component = 'messenger'",
            &[],
        )?
        .map_or(0, |row| row.get(0)))
}

/// Refuses a database whose schema is newer than this binary's; writes nothing.
pub fn check(client: &mut Client) -> Result<(), PostgresError> {
    let (found, known) = (version(client)?, known_version());
    if found > known {
        return Err(PostgresError::Newer { found, known });
    }
    Ok(())
}

/// Brings the schema up to this binary's version, in one transaction; refuses a
/// database whose schema is newer. Safe when several processes start at once.
pub fn migrate(client: &mut Client) -> Result<(), PostgresError> {
    let mut tx = client.transaction()?;
    migrate_in(&mut tx)?;
    tx.commit()?;
    Ok(())
}

/// [`migrate`] inside the caller's transaction (which the caller commits).
pub(crate) fn migrate_in(tx: &mut Transaction<'_>) -> Result<(), PostgresError> {
    let known = known_version();
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    let found = version(tx)?;
    if found == 0 {
        // Created under the lock (IF NOT EXISTS for a table left without its row).
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_versions (
                 component TEXT PRIMARY KEY,
                 version   BIGINT NOT NULL
             )",
        )?;
    }
    if found > known {
        return Err(PostgresError::Newer { found, known });
    }
    for step in schema::MIGRATIONS
        .iter()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.batch_execute(step)?;
    }
    tx.execute(
        "INSERT INTO schema_versions (component, version) VALUES ('messenger', $1)
         ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
        &[&known],
    )?;
    Ok(())
}
