//! Idle connections: N devices (several per user) connected with presence to a
//! fresh `serve`, the server's memory per connected device, and the time for all
//! of them to reconnect after the server is killed and started again on the same
//! ports and data.

use std::time::{Duration, Instant};

use tracing::info;

use super::devices::{Fleet, FleetOptions, Kind, Spec};
use super::options::Options;
use super::patience::PATIENCE;
use super::seed;
use super::server::{Role, Server, ServerSpec};

/// How long to let the server settle (presence flowing through the bridge) before reading its memory.
const SETTLE: Duration = Duration::from_secs(2);

/// What the connections phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Connections {
    /// Devices connected.
    pub(crate) devices: usize,
    /// Time to connect them all from the start, one attempt per device at most 128 at a time.
    pub(crate) connect_secs: f64,
    /// Server memory before they connected.
    pub(crate) rss_before_bytes: u64,
    /// Server memory with all of them connected.
    pub(crate) rss_after_bytes: u64,
    /// (after - before) / devices.
    pub(crate) rss_bytes_per_connection: f64,
    /// From the kill until the new server listened.
    pub(crate) restart_listen_secs: f64,
    /// From the kill until every device was connected and subscribed again.
    pub(crate) reconnect_secs: f64,
    /// Server memory once all had reconnected.
    pub(crate) rss_reconnected_bytes: u64,
}

/// Runs the connections phase against a fresh `serve` in `spec.dir`.
pub(crate) async fn run(options: &Options, spec: ServerSpec) -> anyhow::Result<Connections> {
    let spec = ServerSpec {
        role: Role::Serve,
        ..spec
    };
    let n = options.connections;
    let per_user = options.devices_per_user.max(1);
    let mut devices: Vec<(String, String)> = (0..n)
        .map(|k| (seed::user_name(k / per_user), format!("c{}", k % per_user)))
        .collect();
    devices.push((seed::user_name(0), "probe".to_owned()));
    let mut identities = seed::seed(&spec.db(), &devices)?;
    let probe_id = identities.pop();
    let mut server = Server::start(spec).await?;
    let options_idle = FleetOptions {
        inflight: 10,
        channel: 16,
        tls: None,
    };
    let to_spec = |id| Spec {
        id,
        kind: Kind::User,
        conv: None,
    };
    let probe = Fleet::start(
        server.addr(),
        probe_id.into_iter().map(to_spec).collect(),
        options_idle.clone(),
    );
    probe.wait_ready(PATIENCE).await?;
    probe.wait_bridge(0, PATIENCE).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_before = server.rss_bytes()?;

    let start = Instant::now();
    let fleet = Fleet::start(
        server.addr(),
        identities.into_iter().map(to_spec).collect(),
        options_idle,
    );
    let patience = PATIENCE + Duration::from_millis(20 * n as u64);
    fleet.wait_ready(patience).await?;
    let connect_secs = start.elapsed().as_secs_f64();
    info!(devices = n, secs = connect_secs, "connected");
    probe.wait_bridge(0, PATIENCE).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_after = server.rss_bytes()?;

    let before = fleet.connects();
    server.kill()?;
    let killed = Instant::now();
    server.restart().await?;
    let restart_listen_secs = killed.elapsed().as_secs_f64();
    fleet.wait_connects(before + n as u64, patience).await?;
    let reconnect_secs = killed.elapsed().as_secs_f64();
    info!(
        devices = n,
        secs = reconnect_secs,
        "reconnected after a restart"
    );
    tokio::time::sleep(SETTLE).await;
    let rss_reconnected = server.rss_bytes()?;

    fleet.stop().await;
    probe.stop().await;
    server.stop().await?;
    Ok(Connections {
        devices: n,
        connect_secs,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        rss_bytes_per_connection: rss_after.saturating_sub(rss_before) as f64 / n.max(1) as f64,
        restart_listen_secs,
        reconnect_secs,
        rss_reconnected_bytes: rss_reconnected,
    })
}
