//! End to end through the bridge (`messenger serve`): 1-1 pairs of devices
//! sending 100-byte messages to each other, paced at a fixed rate and then
//! saturated in closed loop for the long run, with the server's memory sampled
//! along the way; then the group phase on the same server.
//!
//! A message's ack latency runs from the `send` publish to the `ack` on the
//! sender's dev topic (after the durable commit); its delivery latency to the
//! `message` event in the partner's inbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tracing::info;

use super::devices::{Fleet, FleetOptions, Kind, Sender, Spec};
use super::groups::{self, Group};
use super::options::{Options, Phase};
use super::pacer::Pacer;
use super::patience::{drain, PATIENCE};
use super::seed::{self, Identity};
use super::server::{cpu_secs_of, us_per_msg, Measured, Role, Server, ServerSpec};
use super::stats::Summary;

/// How long the long run may go without a single delivery before it is declared stuck.
const STALL: Duration = Duration::from_secs(30);

/// What the paced phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Paced {
    /// Messages sent.
    pub(crate) messages: u64,
    /// Send -> ack.
    pub(crate) ack: Summary,
    /// Send -> partner's inbox.
    pub(crate) delivery: Summary,
}

/// One sample of the server's memory during the long run.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct RssSample {
    /// Seconds since the long run started.
    pub(crate) secs: f64,
    /// Messages delivered so far.
    pub(crate) delivered: u64,
    /// The server's resident memory.
    pub(crate) rss_bytes: u64,
}

/// What the saturated long run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Saturated {
    /// Messages sent.
    pub(crate) messages: u64,
    /// Delivered messages per second after the baseline point.
    pub(crate) msgs_per_s: f64,
    /// Send -> ack, after the baseline point.
    pub(crate) ack: Summary,
    /// Send -> partner's inbox, after the baseline point.
    pub(crate) delivery: Summary,
    /// Server memory once the first `baseline_messages` were delivered.
    pub(crate) rss_baseline_bytes: u64,
    /// Server memory at the end.
    pub(crate) rss_end_bytes: u64,
    /// Server memory over the run.
    pub(crate) rss_series: Vec<RssSample>,
    /// `error` replies.
    pub(crate) errors: u64,
    /// Wall time of the run.
    pub(crate) secs: f64,
    /// The server's CPU time per delivered message after the baseline point, microseconds.
    pub(crate) server_cpu_us_per_msg: f64,
    /// The load generator's (this process's) CPU time per delivered message, microseconds.
    pub(crate) bench_cpu_us_per_msg: f64,
    /// The server's CPU time per delivered message by part (a cluster's NATS
    /// nodes, bridges, PostgreSQL), microseconds; empty for one process.
    pub(crate) parts_cpu_us_per_msg: Vec<(&'static str, f64)>,
}

/// Everything measured on the messaging server.
#[derive(Debug, Clone, Default)]
pub(crate) struct Messaging {
    /// Paced 1-1 messages.
    pub(crate) paced: Paced,
    /// Saturated 1-1 messages, the long run.
    pub(crate) saturated: Saturated,
    /// The big group.
    pub(crate) group: Group,
}

/// Runs the paced, saturated and group phases (those selected) on one fresh
/// `serve` (the 1-1 phases only with `one_to_one`, the group phase only with
/// `groups`). On PostgreSQL, the spec's extra bridges share the users with
/// `serve`'s own.
pub(crate) async fn run(
    options: &Options,
    spec: ServerSpec,
    one_to_one: bool,
    groups: bool,
) -> anyhow::Result<Messaging> {
    let spec = ServerSpec {
        role: Role::Serve,
        ..spec
    };
    let pair_devices = 2 * options.pairs;
    let group_devices = options.group_size;
    let mut devices: Vec<(String, String)> = (0..pair_devices)
        .map(|n| (seed::user_name(n), "p".to_owned()))
        .collect();
    devices.extend((0..group_devices).map(|n| (seed::user_name(n), "g".to_owned())));
    let mut identities = match &spec.postgres {
        // The client is synchronous (it runs a runtime of its own): off this one.
        Some((url, _)) => {
            let (url, devices) = (url.clone(), devices.clone());
            tokio::task::spawn_blocking(move || seed::seed_postgres(&url, &devices)).await??
        }
        None => seed::seed(&spec.db(), &devices)?,
    };
    let group_ids = identities.split_off(pair_devices);
    let bridges = 1 + spec.more_bridges;
    let url = spec.postgres.as_ref().map(|(url, _)| url.clone());
    let mut server = Server::start(spec).await?;
    if let Some(url) = url {
        shared_out(&url, bridges).await?;
    }
    let mut result = Messaging::default();
    if one_to_one && (options.runs(Phase::Paced) || options.runs(Phase::Saturated)) {
        let fleet = pairs(&server, identities);
        one_to_one_phases(&fleet, &server, options, &mut result).await?;
        fleet.stop().await;
    }
    if groups && options.runs(Phase::Groups) {
        result.group = groups::run(&server, group_ids, options).await?;
    }
    server.stop().await?;
    Ok(result)
}

/// The paced and saturated 1-1 phases on a NATS cluster: the users seeded in
/// its database, each pair's two devices on two different nodes.
pub(crate) async fn run_on_cluster(
    options: &Options,
    cluster: &crate::cluster::Cluster,
) -> anyhow::Result<Messaging> {
    let devices: Vec<(String, String)> = (0..2 * options.pairs)
        .map(|n| (seed::user_name(n), "p".to_owned()))
        .collect();
    let url = cluster.postgres_url().to_owned();
    let seeded = url.clone();
    let identities =
        tokio::task::spawn_blocking(move || seed::seed_postgres(&seeded, &devices)).await??;
    shared_out(&url, cluster.bridges()).await?;
    let fleet = pairs_across(cluster.addrs(), identities);
    let mut result = Messaging::default();
    let run = one_to_one_phases(&fleet, cluster, options, &mut result).await;
    fleet.stop().await;
    run?;
    Ok(result)
}

/// Warms the pairs up (every conversation created, the bridge's statements
/// cached), then runs the paced and saturated phases selected.
async fn one_to_one_phases(
    fleet: &Fleet,
    server: &impl Measured,
    options: &Options,
    result: &mut Messaging,
) -> anyhow::Result<()> {
    fleet.wait_ready(PATIENCE).await?;
    fleet.wait_bridge(0, PATIENCE).await?;
    let warm = (fleet.devices.len() * options.window * 4) as u64;
    fleet.closed_loop(warm, options.window).await?;
    let metrics = &fleet.shared.metrics;
    drain(
        || metrics.deliveries.count() + errors(fleet) >= warm,
        "warm-up messages",
    )
    .await
    .with_context(|| metrics.describe())?;
    if options.runs(Phase::Paced) {
        result.paced = paced(fleet, options).await?;
    }
    if options.runs(Phase::Saturated) {
        result.saturated = saturated(fleet, server, options).await?;
    }
    Ok(())
}

/// Waits until `bridges` bridges hold every slot of the users between them (a
/// request of a user whose slot is changing hands is passed over).
async fn shared_out(url: &str, bridges: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        // The client is synchronous (it runs a runtime of its own): off this one.
        let url = url.to_owned();
        let (owners, free) = tokio::task::spawn_blocking(move || -> anyhow::Result<(i64, i64)> {
            let mut client = messenger_store::postgres::connect(&url)?;
            Ok(messenger_store::postgres::slot_spread(&mut client)?)
        })
        .await??;
        if usize::try_from(owners).ok() == Some(bridges) && free == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the users' slots were not shared out over {bridges} bridges: {owners} hold them, {free} free");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Device 2k and 2k+1 talk to each other in `dm:<a>:<b>`.
fn pairs(server: &Server, identities: Vec<Identity>) -> Fleet {
    pairs_at(server.addr(), None, identities)
}

/// Device 2k and 2k+1 talk to each other, device `n` on `addrs[n % len]`:
/// with two nodes or more, the two ends of every pair are on different nodes.
fn pairs_across(addrs: &[std::net::SocketAddr], identities: Vec<Identity>) -> Fleet {
    let (specs, options) = pair_specs(identities, None);
    Fleet::start_across(addrs, specs, options)
}

/// [`pairs`] against `addr`, over TLS with `tls`.
pub(crate) fn pairs_at(
    addr: std::net::SocketAddr,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    identities: Vec<Identity>,
) -> Fleet {
    let (specs, options) = pair_specs(identities, tls);
    Fleet::start(addr, specs, options)
}

/// The devices of [`pairs_at`]: device 2k and 2k+1 in `dm:<a>:<b>`.
fn pair_specs(
    identities: Vec<Identity>,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
) -> (Vec<Spec>, FleetOptions) {
    let users: Vec<String> = identities.iter().map(|id| id.user.clone()).collect();
    let specs = identities
        .into_iter()
        .enumerate()
        .map(|(n, id)| {
            let (me, partner) = (&users[n], &users[n ^ 1]);
            let (a, b) = if me < partner {
                (me, partner)
            } else {
                (partner, me)
            };
            Spec {
                conv: Some(format!("dm:{a}:{b}")),
                id,
                kind: Kind::User,
            }
        })
        .collect();
    let options = FleetOptions {
        inflight: 100,
        channel: 256,
        tls,
    };
    (specs, options)
}

/// `error` replies (and refused sends) so far.
pub(crate) fn errors(fleet: &Fleet) -> u64 {
    fleet
        .shared
        .metrics
        .errors
        .load(std::sync::atomic::Ordering::Relaxed)
}

async fn paced(fleet: &Fleet, options: &Options) -> anyhow::Result<Paced> {
    let metrics = &fleet.shared.metrics;
    metrics.reset();
    let senders: Vec<&Arc<Sender>> = fleet
        .devices
        .iter()
        .filter_map(|d| d.sender.as_ref())
        .collect();
    let total = (options.paced_rate * options.paced_secs) as u64;
    let mut pacer = Pacer::new(options.paced_rate, total);
    let mut k = 0usize;
    while let Some(due) = pacer.next_batch().await {
        for _ in 0..due {
            senders[k % senders.len()].send(metrics).await?;
            k += 1;
        }
    }
    drain(
        || metrics.deliveries.count() + errors(fleet) >= total,
        "paced messages",
    )
    .await
    .with_context(|| metrics.describe())?;
    let paced = Paced {
        messages: total,
        ack: Summary::of(metrics.acks.take()),
        delivery: Summary::of(metrics.deliveries.take()),
    };
    info!(
        rate = options.paced_rate,
        ack_p99_ms = paced.ack.p99_ms,
        delivery_p50_ms = paced.delivery.p50_ms,
        delivery_p99_ms = paced.delivery.p99_ms,
        "e2e paced"
    );
    Ok(paced)
}

/// The point of the long run from which throughput and latency are counted.
struct Baseline {
    at: Instant,
    delivered: u64,
    acks: u64,
    rss: u64,
    server_cpu: f64,
    bench_cpu: f64,
    parts: Vec<(&'static str, f64)>,
}

async fn saturated(
    fleet: &Fleet,
    server: &impl Measured,
    options: &Options,
) -> anyhow::Result<Saturated> {
    let metrics = &fleet.shared.metrics;
    metrics.reset();
    let total = options.messages;
    let start = Instant::now();
    fleet.closed_loop(total, options.window).await?;
    let mut baseline: Option<Baseline> = None;
    let mut series = Vec::new();
    let mut next_sample = start;
    let mut progress = (Instant::now(), 0);
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let delivered = metrics.deliveries.count();
        let done = delivered + errors(fleet) >= total;
        if baseline.is_none() && (delivered >= options.baseline_messages || done) {
            baseline = Some(Baseline {
                at: Instant::now(),
                delivered,
                acks: metrics.acks.count(),
                rss: server.rss_bytes()?,
                server_cpu: server.cpu_secs()?,
                bench_cpu: cpu_secs_of("self")?,
                parts: server.cpu_parts(),
            });
            info!(delivered, "long run: baseline taken");
        }
        if Instant::now() >= next_sample {
            series.push(RssSample {
                secs: start.elapsed().as_secs_f64(),
                delivered,
                rss_bytes: server.rss_bytes()?,
            });
            next_sample += Duration::from_secs(1);
            if series.len() % 10 == 0 {
                info!(delivered, of = total, "long run");
            }
        }
        if done {
            break;
        }
        if delivered != progress.1 {
            progress = (Instant::now(), delivered);
        } else if progress.0.elapsed() > STALL {
            bail!(
                "the long run stalled at {delivered} of {total} messages delivered ({})",
                metrics.describe()
            );
        }
    }
    let end = Instant::now();
    let rss_end = server.rss_bytes()?;
    let (server_cpu_end, bench_cpu_end) = (server.cpu_secs()?, cpu_secs_of("self")?);
    series.push(RssSample {
        secs: start.elapsed().as_secs_f64(),
        delivered: metrics.deliveries.count(),
        rss_bytes: rss_end,
    });
    let base = baseline.unwrap_or(Baseline {
        at: start,
        delivered: 0,
        acks: 0,
        rss: rss_end,
        server_cpu: 0.0,
        bench_cpu: 0.0,
        parts: Vec::new(),
    });
    let delivered = metrics.deliveries.count();
    let window = end.duration_since(base.at).as_secs_f64();
    let msgs_per_s = if window > 0.0 {
        (delivered - base.delivered) as f64 / window
    } else {
        0.0
    };
    let counted = delivered.saturating_sub(base.delivered);
    let server_cpu_us_per_msg = us_per_msg(server_cpu_end - base.server_cpu, counted);
    let bench_cpu_us_per_msg = us_per_msg(bench_cpu_end - base.bench_cpu, counted);
    let parts_cpu_us_per_msg = server
        .cpu_parts()
        .into_iter()
        .map(|(part, end)| {
            let start = base
                .parts
                .iter()
                .find(|(p, _)| *p == part)
                .map_or(0.0, |(_, s)| *s);
            (part, us_per_msg(end - start, counted))
        })
        .collect();
    let mut acks = metrics.acks.take();
    let mut deliveries = metrics.deliveries.take();
    acks.drain(..(base.acks as usize).min(acks.len()));
    deliveries.drain(..(base.delivered as usize).min(deliveries.len()));
    let result = Saturated {
        messages: total,
        msgs_per_s,
        ack: Summary::of(acks),
        delivery: Summary::of(deliveries),
        rss_baseline_bytes: base.rss,
        rss_end_bytes: rss_end,
        rss_series: series,
        errors: errors(fleet),
        secs: start.elapsed().as_secs_f64(),
        server_cpu_us_per_msg,
        bench_cpu_us_per_msg,
        parts_cpu_us_per_msg,
    };
    info!(
        msgs_per_s = result.msgs_per_s as u64,
        ack_p99_ms = result.ack.p99_ms,
        delivery_p99_ms = result.delivery.p99_ms,
        rss_growth = result.rss_end_bytes as i64 - result.rss_baseline_bytes as i64,
        "e2e saturated"
    );
    Ok(result)
}
