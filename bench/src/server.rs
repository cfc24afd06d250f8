//! The server under test: a child process running `messenger serve` or
//! `messenger broker` from this same executable, so its memory is measured alone.
//!
//! Each server gets its own directory (SQLite file, log) and ports chosen up
//! front, so that it can be killed and started again on the same ports and data.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::options::Durability;

/// How long a server may take to start listening.
const START_PATIENCE: Duration = Duration::from_secs(30);
/// How long a server may take to stop after SIGTERM before it is killed.
const STOP_PATIENCE: Duration = Duration::from_secs(15);

/// The per-user limits off for the servers under test: `--devices-per-user`
/// (100 by default) devices of one user connect at once, and a simulated user
/// sends far above a person's rate (`--server-env` may turn them on).
pub(crate) const LIMITS_OFF: [(&str, &str); 6] = [
    ("MESSENGER_LIMITS__MAX_DEVICES_PER_USER", "10000"),
    ("MESSENGER_LIMITS__MAX_DEVICES", "10000"),
    ("MESSENGER_LIMITS__SENDS_PER_SEC", "0"),
    ("MESSENGER_LIMITS__GROUP_CREATES_PER_HOUR", "0"),
    ("MESSENGER_LIMITS__TOKEN_REQUESTS_PER_MIN", "0"),
    ("MESSENGER_LIMITS__UPLOADS_PER_MIN", "0"),
];

/// What the long run samples of the server under test.
pub(crate) trait Measured {
    /// Resident memory of the server's processes.
    fn rss_bytes(&self) -> anyhow::Result<u64>;
    /// CPU time (user + system) of the server's processes so far, seconds.
    fn cpu_secs(&self) -> anyhow::Result<f64>;
    /// The CPU time of each part, when the server has several kinds of parts.
    fn cpu_parts(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
}

impl Measured for Server {
    fn rss_bytes(&self) -> anyhow::Result<u64> {
        Server::rss_bytes(self)
    }

    fn cpu_secs(&self) -> anyhow::Result<f64> {
        Server::cpu_secs(self)
    }
}

/// Which long-running command the child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `messenger serve`: broker and bridge.
    Serve,
    /// `messenger broker`: the broker alone (the raw ceiling).
    Broker,
}

/// Everything needed to start (and restart) one server.
#[derive(Debug, Clone)]
pub(crate) struct ServerSpec {
    /// The command.
    pub(crate) role: Role,
    /// Working directory: holds `m.db` and `server.log`; no config file, so built-in defaults apply.
    pub(crate) dir: PathBuf,
    /// `storage.durability`.
    pub(crate) durability: Durability,
    /// The service account's password (`bridge.password`).
    pub(crate) service_password: String,
    /// `broker.max_connections`.
    pub(crate) max_connections: usize,
    /// More `MESSENGER_*` variables for the server (`--server-env`), applied last.
    pub(crate) env: Vec<(String, String)>,
    /// The certificate chain and key files for an MQTT over TLS listener, if it has one.
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    /// The PostgreSQL database to store in (`storage.backend = "postgres"`), if
    /// not the SQLite file, with the directory of the server that holds it
    /// (whose processes' CPU time counts as the server's).
    pub(crate) postgres: Option<(String, PathBuf)>,
    /// `messenger bridge` processes beside `serve`'s own bridge, sharing its
    /// database (PostgreSQL only).
    pub(crate) more_bridges: usize,
}

impl ServerSpec {
    /// The SQLite file.
    pub(crate) fn db(&self) -> PathBuf {
        self.dir.join("m.db")
    }
}

/// A running (or crashed, or stopped) server child.
pub(crate) struct Server {
    spec: ServerSpec,
    /// MQTT over TCP, fixed for the server's life across restarts.
    addr: SocketAddr,
    /// The web listener: MQTT over WebSocket (unused) and `/files` (the files phase).
    ws_addr: SocketAddr,
    /// MQTT over TLS, when the spec has a certificate.
    tls_addr: Option<SocketAddr>,
    /// `None` once stopped or killed.
    child: Option<Child>,
    /// The extra `messenger bridge` processes ([`ServerSpec::more_bridges`]).
    bridges: Vec<Child>,
}

impl Server {
    /// Starts the child on two free loopback ports (three with TLS); returns once
    /// it accepts connections.
    pub(crate) async fn start(spec: ServerSpec) -> anyhow::Result<Self> {
        let addr = free_port(None)?;
        let ws_addr = free_port(Some(addr.port()))?;
        let tls_addr = match spec.tls {
            Some(_) => Some(loop {
                let port = free_port(Some(addr.port()))?;
                if port != ws_addr {
                    break port;
                }
            }),
            None => None,
        };
        let mut server = Self {
            ws_addr,
            tls_addr,
            addr,
            spec,
            child: None,
            bridges: Vec::new(),
        };
        server.spawn()?;
        server.wait_listening().await?;
        server.spawn_bridges()?;
        Ok(server)
    }

    /// The MQTT address devices connect to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The web listener (MQTT over WebSocket, `/files`).
    pub(crate) fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The MQTT over TLS address, if the server has one.
    pub(crate) fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The child's resident memory, from `/proc/<pid>/status` (`VmRSS`).
    pub(crate) fn rss_bytes(&self) -> anyhow::Result<u64> {
        let child = self.child.as_ref().context("the server is not running")?;
        rss_of(child.id())
    }

    /// CPU time the child, its extra bridges and its PostgreSQL (when on one)
    /// have used so far (user + system, all threads), in seconds.
    pub(crate) fn cpu_secs(&self) -> anyhow::Result<f64> {
        let child = self.child.as_ref().context("the server is not running")?;
        let mut secs = cpu_secs_of(&child.id().to_string())?;
        for bridge in &self.bridges {
            secs += cpu_secs_of(&bridge.id().to_string())?;
        }
        if let Some((_, dir)) = &self.spec.postgres {
            for pid in crate::postgres::pids_of(dir) {
                // A backend may end between listing and reading: not counted.
                secs += cpu_secs_of(&pid.to_string()).unwrap_or(0.0);
            }
        }
        Ok(secs)
    }

    /// Kills the child at once (SIGKILL), as a crash would.
    pub(crate) fn kill(&mut self) -> anyhow::Result<()> {
        for mut bridge in self.bridges.drain(..) {
            let _ = bridge.kill();
            let _ = bridge.wait();
        }
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing the server")?;
            child.wait().context("waiting for the killed server")?;
        }
        Ok(())
    }

    /// Starts the child again on the same ports and data; returns once it listens.
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        self.spawn()?;
        self.wait_listening().await?;
        self.spawn_bridges()
    }

    /// Stops the child with SIGTERM (a clean shutdown), killing it if it takes too long.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<()> {
        for mut bridge in self.bridges.drain(..) {
            let _ = bridge.kill();
            let _ = bridge.wait();
        }
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // std can only SIGKILL, and unsafe code is forbidden here: ask kill(1).
        let termed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + STOP_PATIENCE;
        while termed && Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().context("killing the server")?;
        child.wait()?;
        Ok(())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let role = match self.spec.role {
            Role::Serve => "serve",
            Role::Broker => "broker",
        };
        let cmd = self.command(role, &self.log_path())?;
        self.child = Some(spawn(cmd)?);
        Ok(())
    }

    /// Starts the extra bridges (`bridge.instance` `b2`, `b3`, ...) against the server.
    fn spawn_bridges(&mut self) -> anyhow::Result<()> {
        for n in 0..self.spec.more_bridges {
            let instance = format!("b{}", n + 2);
            let mut cmd = self.command("bridge", &self.spec.dir.join(format!("{instance}.log")))?;
            cmd.env("MESSENGER_BRIDGE__BROKER", self.addr.to_string())
                .env("MESSENGER_BRIDGE__INSTANCE", &instance);
            self.bridges.push(spawn(cmd)?);
        }
        Ok(())
    }

    /// `messenger <role>` with the spec's settings, logging to `log`.
    fn command(&self, role: &str, log: &Path) -> anyhow::Result<Command> {
        let spec = &self.spec;
        let exe = std::env::current_exe().context("locating the messenger executable")?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(log)
            .context("creating the server log")?;
        let mut cmd = Command::new(exe);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MESSENGER_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg(role)
            .current_dir(&spec.dir)
            .env("MESSENGER_BROKER__LISTEN", self.addr.to_string())
            .env("MESSENGER_BROKER__WS_LISTEN", self.ws_addr.to_string())
            .env(
                "MESSENGER_BROKER__MAX_CONNECTIONS",
                spec.max_connections.to_string(),
            )
            .env("MESSENGER_STORAGE__PATH", spec.db())
            .env("MESSENGER_STORAGE__DURABILITY", spec.durability.as_str())
            .env("MESSENGER_BRIDGE__PASSWORD", &spec.service_password)
            // The abuse limits off: every simulated device comes from one address, and
            // a simulated user sends far above a person's rate (`--server-env` may turn them on).
            .env("MESSENGER_BROKER__MAX_CONNECTIONS_PER_IP", "0")
            .envs(LIMITS_OFF)
            // Metrics on, as in production, on a port of its own (`--server-env` may turn it off).
            .env("MESSENGER_ADMIN__LISTEN", "127.0.0.1:0")
            .envs(
                self.tls_addr
                    .iter()
                    .flat_map(|addr| [("MESSENGER_BROKER__TLS_LISTEN", addr.to_string())]),
            )
            .envs(spec.tls.iter().flat_map(|(cert, key)| {
                [
                    ("MESSENGER_TLS__CERT_PATH", cert.display().to_string()),
                    ("MESSENGER_TLS__KEY_PATH", key.display().to_string()),
                ]
            }))
            .envs(spec.postgres.iter().flat_map(|(url, _)| {
                [
                    ("MESSENGER_STORAGE__BACKEND", "postgres".to_owned()),
                    ("MESSENGER_STORAGE__URL", url.clone()),
                ]
            }))
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        Ok(cmd)
    }

    fn log_path(&self) -> PathBuf {
        self.spec.dir.join("server.log")
    }

    async fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => bail!("the server is not running"),
            };
            if let Some(status) = exited {
                self.child = None;
                bail!(
                    "the server exited ({status}) while starting:\n{}",
                    tail(&self.log_path())
                );
            }
            // Both listeners: until the second one is bound, its port is only reserved by chance.
            let tls_up = match self.tls_addr {
                Some(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
                None => true,
            };
            if tls_up
                && tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && tokio::net::TcpStream::connect(self.ws_addr).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the server did not listen on {} within {START_PATIENCE:?}:\n{}",
                    self.addr,
                    tail(&self.log_path())
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Starts `cmd`.
fn spawn(mut cmd: Command) -> anyhow::Result<Child> {
    cmd.spawn().context("starting the server")
}

impl Drop for Server {
    fn drop(&mut self) {
        for bridge in &mut self.bridges {
            let _ = bridge.kill();
            let _ = bridge.wait();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free loopback port for a server, below the kernel's ephemeral range.
///
/// The servers are started again on the same ports while thousands of devices
/// reconnect, and the ports are chosen before the server binds them: a port
/// from the ephemeral range could meanwhile become a device's source port, and
/// the server would fail to listen ("address already in use"). Outside that
/// range only another program binding it on purpose can take it.
/// `taken`: a port chosen a moment ago (already released), not to be chosen again.
fn free_port(taken: Option<u16>) -> anyhow::Result<SocketAddr> {
    let (low, _) = ephemeral_range();
    let floor = 10_000u16.min(low.saturating_sub(1));
    let span = u32::from(low.saturating_sub(floor)).max(1);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for attempt in 0..span.min(4096) {
        let offset = (seed.wrapping_add(attempt.wrapping_mul(7919))) % span;
        let port = floor + offset as u16;
        if Some(port) == taken {
            continue;
        }
        if let Ok(probe) = TcpListener::bind(("127.0.0.1", port)) {
            return Ok(probe.local_addr()?);
        }
    }
    let probe = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(probe.local_addr()?)
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`), Linux's default if unreadable.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text))
        .unwrap_or((32768, 60999))
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    match (fields.next(), fields.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => Some((low, high)),
        _ => None,
    }
}

/// CPU time (user + system, every thread, exited ones included) of a process
/// (`self` for this one), from `/proc/<pid>/stat`, in seconds.
pub(crate) fn cpu_secs_of(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_secs(&stat).context("unreadable /proc/<pid>/stat")
}

/// CPU seconds spread over `messages`, in microseconds each (0 without messages).
pub(crate) fn us_per_msg(cpu_secs: f64, messages: u64) -> f64 {
    if messages == 0 {
        0.0
    } else {
        cpu_secs * 1e6 / messages as f64
    }
}

/// utime + stime (fields 14 and 15) in USER_HZ ticks, which Linux fixes at 100
/// a second for this interface.
fn parse_cpu_secs(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces; the fields after it do not.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Resident memory of a process, in bytes.
pub(crate) fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_vm_rss(&status).context("no VmRSS in /proc/<pid>/status")
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tmessenger\nVmPeak:\t  9000 kB\nVmRSS:\t  1234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(rss_of(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn reads_cpu_time() {
        let stat = "42 (my prog) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_cpu_secs(stat), Some(3.0));
        assert_eq!(parse_cpu_secs("42 (x) S 1"), None);
        assert!(cpu_secs_of("self").unwrap() >= 0.0);
        assert_eq!(us_per_msg(2.0, 1_000_000), 2.0);
        assert_eq!(us_per_msg(2.0, 0), 0.0);
    }

    #[test]
    fn server_ports_avoid_the_ephemeral_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("junk"), None);
        let (low, _) = ephemeral_range();
        let port = free_port(None).unwrap().port();
        assert!(
            port < low || low <= 1024,
            "{port} is in the ephemeral range from {low}"
        );
        for _ in 0..100 {
            assert_ne!(free_port(Some(port)).unwrap().port(), port);
        }
    }
}
