//! `--cluster N`: the e2e phases against a NATS cluster, `messenger cluster up`
//! (N nodes, one bridge, PostgreSQL) run as a child of this same executable,
//! with each pair's two devices on different nodes.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::server::{cpu_secs_of, rss_of, Measured, LIMITS_OFF};

/// How long the cluster may take to be ready.
const START_PATIENCE: Duration = Duration::from_secs(120);
/// How long it may take to stop after SIGTERM.
const STOP_PATIENCE: Duration = Duration::from_secs(30);

/// What `cluster.json` says (the parts the bench needs).
#[derive(Debug, Deserialize)]
struct Description {
    mqtt: Vec<String>,
    postgres: String,
}

/// A running `messenger cluster up`.
pub(crate) struct Cluster {
    child: Option<Child>,
    /// `--dir`.
    dir: PathBuf,
    addrs: Vec<SocketAddr>,
    postgres: String,
    nodes: usize,
    bridges: usize,
}

impl Cluster {
    /// Starts `nodes` nodes and `bridges` bridges in `parent/cluster`, the
    /// abuse limits off as on the single node; returns once it is ready.
    pub(crate) async fn start(
        parent: &Path,
        nodes: usize,
        bridges: usize,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let dir = parent.join("cluster");
        let exe = std::env::current_exe().context("locating the messenger executable")?;
        let log = std::fs::File::create(parent.join("cluster-up.log"))
            .context("creating the cluster's log")?;
        let mut cmd = Command::new(exe);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("MESSENGER_") && key != "MESSENGER_NATS_SERVER" {
                cmd.env_remove(key);
            }
        }
        cmd.args(["cluster", "up", "--nodes", &nodes.to_string()])
            .args(["--bridges", &bridges.to_string(), "--dir"])
            .arg(&dir)
            .current_dir(parent)
            .envs(LIMITS_OFF)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group, so that stopping it reaches every part.
            .process_group(0);
        let mut child = cmd.spawn().context("starting messenger cluster up")?;
        let json = dir.join("cluster.json");
        let deadline = Instant::now() + START_PATIENCE;
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&json) {
                break text;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "messenger cluster up exited ({status}) before it was ready; see {}",
                    parent.join("cluster-up.log").display()
                );
            }
            if Instant::now() > deadline {
                let _ = signal_group(child.id(), "-KILL");
                bail!("the cluster was not ready within {START_PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let description: Description =
            serde_json::from_str(&text).context("reading cluster.json")?;
        let addrs = description
            .mqtt
            .iter()
            .map(|a| a.parse().context("cluster.json: an MQTT address"))
            .collect::<anyhow::Result<Vec<SocketAddr>>>()?;
        Ok(Self {
            child: Some(child),
            dir,
            addrs,
            postgres: description.postgres,
            nodes,
            bridges,
        })
    }

    /// Every node's MQTT address.
    pub(crate) fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The cluster's database.
    pub(crate) fn postgres_url(&self) -> &str {
        &self.postgres
    }

    /// How many bridges it runs.
    pub(crate) fn bridges(&self) -> usize {
        self.bridges
    }

    /// The pids of the parts whose pid files are `<prefix>1.pid`, `<prefix>2.pid`, ...
    fn pids(&self, prefix: &str, count: usize) -> Vec<u32> {
        (1..=count)
            .filter_map(|i| {
                std::fs::read_to_string(self.dir.join(format!("{prefix}{i}.pid")))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// PostgreSQL's processes (its data directory is under `DIR/pg`).
    fn postgres_pids(&self) -> Vec<u32> {
        std::fs::read_dir(self.dir.join("pg"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|entry| crate::postgres::pids_of(&entry.path()))
            .collect()
    }

    fn cpu_of(pids: &[u32]) -> f64 {
        // A process may end between listing and reading: not counted.
        pids.iter()
            .map(|pid| cpu_secs_of(&pid.to_string()).unwrap_or(0.0))
            .sum()
    }

    /// Stops it with SIGTERM to its group (it stops its parts in order),
    /// killing the group if that takes too long.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal_group(child.id(), "-TERM")?;
        let deadline = Instant::now() + STOP_PATIENCE;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = signal_group(child.id(), "-KILL");
        child.wait()?;
        Ok(())
    }
}

impl Measured for Cluster {
    /// The nodes' and bridges' resident memory.
    fn rss_bytes(&self) -> anyhow::Result<u64> {
        let mut pids = self.pids("n", self.nodes);
        pids.extend(self.pids("b", self.bridges));
        Ok(pids.iter().map(|pid| rss_of(*pid).unwrap_or(0)).sum())
    }

    /// The nodes', bridges' and PostgreSQL's CPU time.
    fn cpu_secs(&self) -> anyhow::Result<f64> {
        Ok(self.cpu_parts().iter().map(|(_, secs)| secs).sum())
    }

    fn cpu_parts(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("NATS", Self::cpu_of(&self.pids("n", self.nodes))),
            ("bridges", Self::cpu_of(&self.pids("b", self.bridges))),
            ("PostgreSQL", Self::cpu_of(&self.postgres_pids())),
        ]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = signal_group(child.id(), "-TERM");
            let deadline = Instant::now() + STOP_PATIENCE;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = signal_group(child.id(), "-KILL");
            let _ = child.wait();
        }
    }
}

/// Sends `signal` (`-TERM`, `-KILL`) to the process group `leader` leads.
fn signal_group(leader: u32, signal: &str) -> anyhow::Result<()> {
    // std cannot signal a group, and unsafe code is forbidden here: ask kill(1).
    Command::new("kill")
        .args([signal, "--", &format!("-{leader}")])
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    Ok(())
}
