//! `messenger migrate --to URL`: the SQLite install copied into an empty
//! PostgreSQL database (the store's `postgres::copy_from_sqlite`).

use anyhow::Context;
use messenger_store::postgres::{self, CopyError};

use crate::config_failure;
use crate::settings::Settings;

/// Copies `storage.path` into the database `to`; a connection string that does
/// not parse, a server that cannot be reached or refuses, a database whose schema
/// is newer or that is not empty: the configuration exit code, nothing written.
pub(crate) fn run(settings: &Settings, to: &str) -> anyhow::Result<()> {
    let path = &settings.storage.path;
    let mut client = postgres::connect(to).map_err(|err| {
        let err = anyhow::Error::new(err).context("--to");
        config_failure(err)
    })?;
    let report = postgres::copy_from_sqlite(path, &mut client).map_err(|err| match err {
        CopyError::Target(err) if err.is_configuration() => {
            config_failure(anyhow::Error::new(err).context("--to"))
        }
        CopyError::NotEmpty(_) => config_failure(anyhow::Error::new(err).context("--to")),
        err => anyhow::Error::new(err),
    });
    let report = report.with_context(|| format!("copying {}", path.display()))?;
    println!("copied {} into PostgreSQL:", path.display());
    print!("{report}");
    Ok(())
}
