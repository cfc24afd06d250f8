//! The configured PostgreSQL database (`storage.backend = "postgres"`): connecting
//! to `storage.url` with its schema brought up to date, and the account store
//! on the configured engine.

use anyhow::Context;
use messenger_accounts::Accounts;
use messenger_store::postgres;

use crate::config_failure;
use crate::settings::Settings;

/// A failure of the database at `storage.url`: bad configuration when it is one.
fn failure(err: postgres::PostgresError) -> anyhow::Error {
    if err.is_configuration() {
        config_failure(anyhow::Error::new(err).context("storage.url"))
    } else {
        anyhow::Error::new(err).context("storage.url")
    }
}

/// Connects to `url` and migrates its schema. A connection string that does not
/// parse, a server that cannot be reached or refuses, a schema newer than this
/// binary: bad configuration, naming `storage.url`.
pub(crate) fn open(url: &str) -> anyhow::Result<postgres::Client> {
    let mut client = postgres::connect(url).map_err(failure)?;
    postgres::migrate(&mut client).map_err(failure)?;
    Ok(client)
}

/// The account store on the configured engine.
pub(crate) fn accounts(settings: &Settings) -> anyhow::Result<Accounts> {
    match settings.storage.postgres_url() {
        Some(url) => {
            let client = open(url)?;
            let url = url.to_owned();
            let reconnect = move || postgres::connect(&url).map_err(|err| err.to_string());
            Ok(Accounts::on_postgres(client, Box::new(reconnect))?)
        }
        None => {
            let path = &settings.storage.path;
            Accounts::open(path).with_context(|| format!("opening {}", path.display()))
        }
    }
}

/// `serve`, `broker` and `bridge` on PostgreSQL: the database at `storage.url`
/// is reached and its schema brought up to date before anything listens, so a
/// bad `storage.url` is bad configuration (exit 64) naming the key.
pub(crate) fn check(settings: &Settings) -> anyhow::Result<()> {
    if let Some(url) = settings.storage.postgres_url() {
        open(url)?;
    }
    Ok(())
}
