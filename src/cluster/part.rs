//! One supervised child process of `messenger cluster up` (a NATS node or a
//! bridge): spawned with its output appended to its log and its pid written to
//! its pid file, restarted [`RESTART_DELAY`] after it exits on its own, and
//! stopped with SIGTERM, then SIGKILL after [`GRACE`].
//!
//! Children stay in `cluster up`'s process group: whoever signals the group
//! (a terminal's Ctrl-C, a test fixture) reaches every node and bridge too.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long a part that exited on its own stays down before its restart.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// How long a part may take to exit after SIGTERM before it gets SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// A child process and how to start it again.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    /// Its name in logs and pid file: `n1`, `b1`, ...
    pub(crate) name: String,
    /// The program.
    pub(crate) program: PathBuf,
    /// Its arguments.
    pub(crate) args: Vec<OsString>,
    /// Environment variables set besides the inherited ones.
    pub(crate) env: Vec<(String, String)>,
    /// Where its stdout and stderr are appended (across restarts).
    pub(crate) log: PathBuf,
    /// Where its current pid is written (`DIR/<name>.pid`), removed once it is stopped.
    pub(crate) pid_file: PathBuf,
}

/// How a supervised part is told to stop.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    /// Cancelled as soon as the cluster stops: no more restarts.
    pub(crate) shutting_down: CancellationToken,
    /// Cancelled when this part's turn to stop has come (bridges before nodes).
    pub(crate) now: CancellationToken,
}

impl Part {
    /// Starts the part and supervises it on the runtime until `stop.now`.
    pub(crate) fn supervise(self, stop: Stop) -> anyhow::Result<JoinHandle<()>> {
        let child = self.spawn()?;
        Ok(tokio::spawn(self.run(child, stop)))
    }

    /// Spawns the process and writes its pid file.
    fn spawn(&self) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        let pid = child
            .id()
            .with_context(|| format!("{} exited at once", self.name))?;
        write_pid(&self.pid_file, pid)?;
        Ok(child)
    }

    /// Waits on the child: restarts it when it exits on its own (unless the
    /// cluster is stopping), stops it when told.
    async fn run(self, mut child: Child, stop: Stop) {
        loop {
            tokio::select! {
                () = stop.now.cancelled() => {
                    self.terminate(&mut child).await;
                    let _ = std::fs::remove_file(&self.pid_file);
                    return;
                }
                status = child.wait() => {
                    if stop.shutting_down.is_cancelled() {
                        stop.now.cancelled().await;
                        let _ = std::fs::remove_file(&self.pid_file);
                        return;
                    }
                    let status = status.map_or_else(|err| err.to_string(), |s| s.to_string());
                    warn!(part = %self.name, %status, log = %self.log.display(), "exited on its own; restarting in {RESTART_DELAY:?}");
                    match self.respawn(&stop).await {
                        Some(next) => child = next,
                        None => return,
                    }
                }
            }
        }
    }

    /// Spawns the part again after [`RESTART_DELAY`], and again after each
    /// failure to spawn; `None` when the cluster stops meanwhile.
    async fn respawn(&self, stop: &Stop) -> Option<Child> {
        loop {
            tokio::select! {
                () = stop.shutting_down.cancelled() => {
                    let _ = std::fs::remove_file(&self.pid_file);
                    return None;
                }
                () = tokio::time::sleep(RESTART_DELAY) => {}
            }
            match self.spawn() {
                Ok(child) => {
                    info!(part = %self.name, pid = child.id(), "restarted");
                    return Some(child);
                }
                Err(err) => {
                    error!(part = %self.name, cause = %format!("{err:#}"), "cannot restart; trying again")
                }
            }
        }
    }

    /// SIGTERM, then SIGKILL after [`GRACE`]; reaps the child.
    async fn terminate(&self, child: &mut Child) {
        if let Some(pid) = child.id() {
            // `kill`, to need no signal crate (as the tests do).
            let sent = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            if !sent.is_ok_and(|s| s.success()) {
                warn!(part = %self.name, pid, "cannot send SIGTERM");
            }
        }
        match tokio::time::timeout(GRACE, child.wait()).await {
            Ok(_) => info!(part = %self.name, "stopped"),
            Err(_) => {
                warn!(part = %self.name, "still running {GRACE:?} after SIGTERM; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// Writes `pid` to `path` whole (a reader never sees half of it).
pub(crate) fn write_pid(path: &Path, pid: u32) -> anyhow::Result<()> {
    let next = path.with_extension("pid.next");
    std::fs::write(&next, format!("{pid}\n"))
        .and_then(|()| std::fs::rename(&next, path))
        .with_context(|| format!("writing {}", path.display()))
}
