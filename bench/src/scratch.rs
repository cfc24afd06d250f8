//! The scratch directory of one run: a fresh directory per server under the
//! system's temp directory, removed at the end unless `--keep`.

use std::path::PathBuf;

use anyhow::Context;
use tracing::info;

/// The directory all servers of one run live under.
pub(crate) struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    /// Creates the directory; with `keep` it stays after the run.
    pub(crate) fn new(keep: bool) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("messenger-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        if keep {
            info!(dir = %path.display(), "keeping the servers' directories");
        }
        Ok(Self { path, keep })
    }

    /// A fresh directory for one server.
    pub(crate) fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.path.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
