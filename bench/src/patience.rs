//! The patience budget: how long any one wait of the bench may take.

use std::time::{Duration, Instant};

use anyhow::bail;

/// How long any one wait (connecting a fleet, a reply, a drain) may take.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// Waits (within [`PATIENCE`]) until `done` holds.
pub(crate) async fn drain(done: impl Fn() -> bool, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what} did not all arrive within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}
