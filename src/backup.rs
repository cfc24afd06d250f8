//! `messenger backup FILE`: a consistent copy of the database while the server
//! runs: the SQLite file through SQLite's online backup API (the store's
//! `backup`), or the PostgreSQL database through `pg_dump`'s custom format
//! (the store's `postgres::dump`, restored with `pg_restore`).

use std::path::Path;

use anyhow::Context;

use crate::settings::Settings;

/// Copies the configured database to `file`, which must not exist.
pub(crate) fn run(settings: &Settings, file: &Path) -> anyhow::Result<()> {
    if let Some(url) = settings.storage.postgres_url() {
        // Reached (and its schema brought up to date) first, so that a bad
        // `storage.url` is bad configuration naming the key, as for every command.
        crate::database::open(url)?;
        let report = messenger_store::postgres::dump(url, file)
            .with_context(|| format!("backing up storage.url to {}", file.display()))?;
        println!(
            "backed up {} to {} with pg_dump (custom format): {} bytes in {} ms",
            report.database,
            file.display(),
            report.bytes,
            report.elapsed.as_millis()
        );
        return Ok(());
    }
    let path = &settings.storage.path;
    let report = messenger_store::backup(path, file)
        .with_context(|| format!("backing up {} to {}", path.display(), file.display()))?;
    println!(
        "backed up {} to {}: {} pages, {} bytes in {} ms",
        path.display(),
        file.display(),
        report.pages,
        report.bytes,
        report.elapsed.as_millis()
    );
    Ok(())
}
