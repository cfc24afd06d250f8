//! MQTT over TLS beside plain MQTT, in one run: for each transport a fresh
//! `serve` (both with the TLS listener, certificate generated for the run)
//! gets N idle devices (connect rate, server memory per connection), then
//! 1-1 pairs sending flat out in closed loop (e2e throughput).
//!
//! The plain run dials the server's MQTT listener, the TLS run its TLS listener
//! (the TLS front pipes into the MQTT listener: its cost is the handshake, the
//! encryption and the front's two sockets and buffers per connection).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tracing::info;

use super::devices::{Fleet, FleetOptions, Kind, Spec};
use super::e2e::{errors, pairs_at};
use super::options::Options;
use super::patience::PATIENCE;
use super::seed;
use super::server::{Role, Server, ServerSpec};

/// How long to let the server settle before reading its memory.
const SETTLE: Duration = Duration::from_secs(2);
/// How long the e2e run may go without a single delivery.
const STALL: Duration = Duration::from_secs(30);

/// What one transport measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct OverTransport {
    /// Idle devices connected.
    pub(crate) devices: usize,
    /// Devices connected (signed in and subscribed) per second, at most 128 attempts at a time.
    pub(crate) connects_per_s: f64,
    /// Server memory per idle connection.
    pub(crate) rss_bytes_per_connection: f64,
    /// Messages of the e2e run.
    pub(crate) messages: u64,
    /// E2E: messages delivered per second.
    pub(crate) msgs_per_s: f64,
    /// E2E: the server's CPU time per message, microseconds.
    pub(crate) server_cpu_us_per_msg: f64,
}

/// Both transports.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsComparison {
    /// Plain MQTT over TCP.
    pub(crate) plain: OverTransport,
    /// MQTT over TLS.
    pub(crate) tls: OverTransport,
}

/// Runs the plain and then the TLS measurement, each on a fresh server under `scratch`.
pub(crate) async fn run(
    options: &Options,
    plain: ServerSpec,
    tls: ServerSpec,
) -> anyhow::Result<TlsComparison> {
    let client = certificates(&plain.dir)?;
    let (_, cert, key) = files(&plain.dir);
    let with_tls = |spec: ServerSpec| -> anyhow::Result<ServerSpec> {
        // Both servers use the files written under the first one's directory.
        Ok(ServerSpec {
            role: Role::Serve,
            tls: Some((cert.clone(), key.clone())),
            ..spec
        })
    };
    info!("tls: plain MQTT");
    let plain = measure(options, with_tls(plain)?, None).await?;
    info!("tls: MQTT over TLS");
    let tls = measure(options, with_tls(tls)?, Some(client)).await?;
    Ok(TlsComparison { plain, tls })
}

/// Paths of the CA certificate, the server's chain and its key under `dir`.
fn files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// Writes a CA and a server certificate for 127.0.0.1 under `dir`; returns a
/// client configuration that trusts the CA.
fn certificates(dir: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "messenger bench CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
        .signed_by(&key, &ca, &ca_key)?;
    let (ca_path, cert_path, key_path) = files(dir);
    std::fs::write(&ca_path, ca.pem()).context("writing the bench CA")?;
    std::fs::write(&cert_path, format!("{}{}", cert.pem(), ca.pem()))
        .context("writing the bench certificate")?;
    std::fs::write(&key_path, key.serialize_pem()).context("writing the bench key")?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec()))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Idle connections, then the e2e run, over plain MQTT (`tls` None) or TLS.
async fn measure(
    options: &Options,
    spec: ServerSpec,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<OverTransport> {
    let n = options.tls_connections;
    let per_user = options.devices_per_user.max(1);
    let pair_devices = 2 * options.pairs;
    let mut devices: Vec<(String, String)> = (0..n)
        .map(|k| (seed::user_name(k / per_user), format!("c{}", k % per_user)))
        .collect();
    devices.extend((0..pair_devices).map(|k| (seed::user_name(k), "p".to_owned())));
    devices.push((seed::user_name(0), "probe".to_owned()));
    let mut identities = seed::seed(&spec.db(), &devices)?;
    let probe_id = identities.pop().context("no probe identity")?;
    let pair_ids = identities.split_off(n);
    let mut server = Server::start(spec).await?;
    let addr = match &tls {
        Some(_) => server
            .tls_addr()
            .context("the server has no TLS listener")?,
        None => server.addr(),
    };
    let idle = FleetOptions {
        inflight: 10,
        channel: 16,
        tls: tls.clone(),
    };
    let user = |id| Spec {
        id,
        kind: Kind::User,
        conv: None,
    };
    let probe = Fleet::start(addr, vec![user(probe_id)], idle.clone());
    probe.wait_ready(PATIENCE).await?;
    probe.wait_bridge(0, PATIENCE).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_before = server.rss_bytes()?;

    let start = Instant::now();
    let fleet = Fleet::start(addr, identities.into_iter().map(user).collect(), idle);
    fleet
        .wait_ready(PATIENCE + Duration::from_millis(20 * n as u64))
        .await?;
    let connect_secs = start.elapsed().as_secs_f64();
    probe.wait_bridge(0, PATIENCE).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_after = server.rss_bytes()?;
    let transport = if tls.is_some() { "tls" } else { "plain" };
    info!(
        transport,
        devices = n,
        secs = connect_secs,
        "idle devices connected"
    );
    fleet.stop().await;

    let pairs = pairs_at(addr, tls, pair_ids);
    pairs.wait_ready(PATIENCE).await?;
    pairs.wait_bridge(0, PATIENCE).await?;
    // Warm-up, as in the e2e phase: every conversation exists before the clock starts.
    let warm = (pair_devices * options.window * 4) as u64;
    deliver(&pairs, warm, options.window).await?;
    let cpu_before = server.cpu_secs()?;
    let start = Instant::now();
    let messages = options.tls_messages;
    deliver(&pairs, messages, options.window).await?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = server.cpu_secs()? - cpu_before;
    pairs.stop().await;
    probe.stop().await;
    server.stop().await?;
    let result = OverTransport {
        devices: n,
        connects_per_s: n as f64 / connect_secs.max(f64::EPSILON),
        rss_bytes_per_connection: rss_after.saturating_sub(rss_before) as f64 / n.max(1) as f64,
        messages,
        msgs_per_s: messages as f64 / secs.max(f64::EPSILON),
        server_cpu_us_per_msg: super::server::us_per_msg(cpu, messages),
    };
    info!(
        transport,
        connects_per_s = result.connects_per_s as u64,
        rss_per_connection = result.rss_bytes_per_connection as u64,
        msgs_per_s = result.msgs_per_s as u64,
        "tls phase"
    );
    Ok(result)
}

/// Sends `total` messages in closed loop and waits until all are delivered (or answered by an error).
async fn deliver(fleet: &Fleet, total: u64, window: usize) -> anyhow::Result<()> {
    let metrics = &fleet.shared.metrics;
    metrics.reset();
    fleet.closed_loop(total, window).await?;
    let mut progress = (Instant::now(), 0);
    loop {
        let delivered = metrics.deliveries.count();
        if delivered + errors(fleet) >= total {
            let failed = errors(fleet);
            if failed > 0 {
                bail!(
                    "{failed} of {total} messages got an error ({})",
                    metrics.describe()
                );
            }
            return Ok(());
        }
        if delivered != progress.1 {
            progress = (Instant::now(), delivered);
        } else if progress.0.elapsed() > STALL {
            bail!(
                "the run stalled at {delivered} of {total} messages delivered ({})",
                metrics.describe()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
