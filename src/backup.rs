//! `messenger backup FILE`: a consistent copy of the SQLite file while the
//! server runs (the store's `backup`, on SQLite's online backup API).

use std::path::Path;

use anyhow::Context;

use crate::settings::Settings;

/// Copies the configured SQLite file to `file`, which must not exist.
pub(crate) fn run(settings: &Settings, file: &Path) -> anyhow::Result<()> {
    crate::database::sqlite_only(settings, "backup", "back the database up with pg_dump")?;
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
