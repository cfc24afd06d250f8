//! The web listener's uploads, backed by the store's catalog on the shared SQLite
//! file (`messenger_store::Catalog`), so that the bridge, possibly in another
//! process, sees every upload the broker's HTTP front records.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use messenger_broker::{CatalogError, FileCatalog, Files, StoredFile, UploadLimit};
use messenger_protocol::{FileId, UserId};
use messenger_store::Catalog;

use crate::settings::Settings;

/// The store's catalog as the broker's [`FileCatalog`].
struct StoreCatalog(Catalog);

impl FileCatalog for StoreCatalog {
    fn temp_path(&self) -> PathBuf {
        self.0.temp_path()
    }

    fn keep(
        &self,
        temp: &Path,
        uploader: &UserId,
        sha256: &str,
        size: u64,
        media_type: &str,
        now_ms: u64,
    ) -> Result<FileId, CatalogError> {
        self.0
            .keep(temp, uploader, sha256, size, media_type, now_ms)
            .map(|record| record.file)
            .map_err(|e| CatalogError(e.to_string()))
    }

    fn readable(&self, user: &UserId, file: &FileId) -> Result<Option<StoredFile>, CatalogError> {
        let found = self
            .0
            .readable(user, file)
            .map_err(|e| CatalogError(e.to_string()))?;
        Ok(found.map(|record| StoredFile {
            path: self.0.blob_path(&record),
            size: record.size,
            media_type: record.media_type,
        }))
    }
}

/// Opens the catalog (creating the files directory) for the web listener. Blocking.
pub(crate) fn web_files(settings: &Settings) -> anyhow::Result<Files> {
    let catalog = Catalog::open(&settings.storage).with_context(|| {
        format!(
            "opening the files catalog ({}, {})",
            settings.storage.path.display(),
            settings.storage.files_dir().display()
        )
    })?;
    Ok(Files {
        catalog: Arc::new(StoreCatalog(catalog)),
        max_file_bytes: settings.limits.max_file_bytes,
        stall: std::time::Duration::from_millis(settings.broker.ws_handshake_timeout_ms),
        uploads: UploadLimit::new(
            settings.limits.uploads_per_min,
            settings.limits.uploads_burst,
        )
        .map(Arc::new),
    })
}
