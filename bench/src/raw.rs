//! The ceiling: the bare broker (`messenger broker`), user devices publishing
//! 100-byte QoS 1 messages on their `chat/<user>/out/<device>` topics and one
//! service-account consumer on `chat/+/out/+` — exactly the path a request takes
//! to the bridge, with the same sign-in and ACL, but nothing behind it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::QoS;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::devices::{raw_payload, Fleet, FleetOptions, Kind, Spec};
use super::options::Options;
use super::pacer::Pacer;
use super::patience::{drain, PATIENCE};
use super::seed::{self, Identity};
use super::server::{cpu_secs_of, us_per_msg, Role, Server, ServerSpec};
use super::stats::Summary;

/// What the raw phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Raw {
    /// Messages per second reaching the consumer, publishers flat out.
    pub(crate) msgs_per_s: f64,
    /// Publish -> consumer latency at the paced rate.
    pub(crate) paced: Summary,
    /// The broker's CPU time per message consumed while saturated, microseconds.
    pub(crate) server_cpu_us_per_msg: f64,
    /// The load generator's CPU time per message consumed while saturated, microseconds.
    pub(crate) bench_cpu_us_per_msg: f64,
}

/// Runs the raw phase against a fresh broker in `spec.dir`.
pub(crate) async fn run(options: &Options, spec: ServerSpec) -> anyhow::Result<Raw> {
    let spec = ServerSpec {
        role: Role::Broker,
        ..spec
    };
    let devices: Vec<(String, String)> = (0..options.raw_publishers)
        .map(|n| (seed::user_name(n), "r".to_owned()))
        .collect();
    let identities = seed::seed(&spec.db(), &devices)?;
    let consumer_identity = Identity {
        user: "_bridge".into(),
        device: "bench".into(),
        token: spec.service_password.clone(),
    };
    let mut server = Server::start(spec).await?;
    let fleet_options = FleetOptions {
        inflight: 100,
        channel: 64,
        tls: None,
    };
    let consumer = Fleet::start(
        server.addr(),
        vec![Spec {
            id: consumer_identity,
            kind: Kind::Service {
                filter: "chat/+/out/+".into(),
            },
            conv: None,
        }],
        fleet_options.clone(),
    );
    let publishers = Fleet::start(
        server.addr(),
        identities
            .into_iter()
            .map(|id| Spec {
                id,
                kind: Kind::Publisher,
                conv: None,
            })
            .collect(),
        fleet_options,
    );
    consumer.wait_ready(PATIENCE).await?;
    publishers.wait_ready(PATIENCE).await?;
    let received = &consumer.shared.metrics.deliveries;

    // Paced: latency without queueing.
    let total = (options.paced_rate * options.raw_paced_secs) as u64;
    let mut pacer = Pacer::new(options.paced_rate, total);
    let mut k = 0usize;
    while let Some(due) = pacer.next_batch().await {
        for _ in 0..due {
            let device = &publishers.devices[k % publishers.devices.len()];
            // Bounded: if the broker died, rumqttc's request queue fills and never drains.
            tokio::time::timeout(
                PATIENCE,
                device
                    .client
                    .publish(device.out_topic(), QoS::AtLeastOnce, false, raw_payload()),
            )
            .await
            .context("the broker stopped taking raw messages")??;
            k += 1;
        }
    }
    drain(|| received.count() >= total, "raw paced messages").await?;
    let paced = Summary::of(received.take());
    info!(
        rate = options.paced_rate,
        p50_ms = paced.p50_ms,
        p99_ms = paced.p99_ms,
        "raw paced"
    );

    // Saturated: every publisher flat out, rumqttc's inflight window as the only brake.
    let stop = CancellationToken::new();
    let mut loops = Vec::new();
    for device in &publishers.devices {
        let client = device.client.clone();
        let topic = device.out_topic();
        let stop = stop.clone();
        let sent = publishers.shared.clone();
        loops.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    r = client.publish(&topic, QoS::AtLeastOnce, false, raw_payload()) => {
                        if r.is_err() { return; }
                        sent.metrics.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (from, start) = (received.count(), Instant::now());
    let cpu_from = (server.cpu_secs()?, cpu_secs_of("self")?);
    tokio::time::sleep(Duration::from_secs_f64(options.raw_secs)).await;
    let (to, elapsed) = (received.count(), start.elapsed());
    let cpu_to = (server.cpu_secs()?, cpu_secs_of("self")?);
    let server_cpu_us_per_msg = us_per_msg(cpu_to.0 - cpu_from.0, to.saturating_sub(from));
    let bench_cpu_us_per_msg = us_per_msg(cpu_to.1 - cpu_from.1, to.saturating_sub(from));
    stop.cancel();
    for task in loops {
        let _ = task.await;
    }
    received.take();
    let msgs_per_s = (to - from) as f64 / elapsed.as_secs_f64();
    info!(
        msgs_per_s = msgs_per_s as u64,
        published = publishers.shared.metrics.sent.load(Ordering::Relaxed),
        "raw saturated"
    );
    publishers.stop().await;
    consumer.stop().await;
    server.stop().await?;
    Ok(Raw {
        msgs_per_s,
        paced,
        server_cpu_us_per_msg,
        bench_cpu_us_per_msg,
    })
}
