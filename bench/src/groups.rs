//! The big group: one device per member connected, one member sending; each
//! message fans out to every other member's inbox. Messages go one at a time
//! (the next once the last was delivered everywhere), so the figure is the
//! fan-out latency of one message, not a queue.

use std::time::Duration;

use anyhow::bail;
use messenger_protocol::wire::Event;
use tracing::info;

use super::devices::{Fleet, FleetOptions, Kind, Sender, Spec};
use super::options::Options;
use super::patience::{drain, PATIENCE};
use super::seed::Identity;
use super::server::Server;
use super::stats::Summary;

/// What the group phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Group {
    /// Members (and connected devices).
    pub(crate) members: usize,
    /// Messages sent.
    pub(crate) messages: usize,
    /// Send -> ack.
    pub(crate) ack: Summary,
    /// Send -> each other member's inbox.
    pub(crate) delivery: Summary,
}

/// Creates a group of every identity's user and measures its fan-out.
pub(crate) async fn run(
    server: &Server,
    identities: Vec<Identity>,
    options: &Options,
) -> anyhow::Result<Group> {
    let members = identities.len();
    if members < 2 {
        bail!("a group needs at least 2 members");
    }
    let fleet = Fleet::start(
        server.addr(),
        identities
            .into_iter()
            .map(|id| Spec {
                id,
                kind: Kind::User,
                conv: None,
            })
            .collect(),
        FleetOptions {
            inflight: 16,
            channel: 64,
            tls: None,
        },
    );
    fleet.wait_ready(PATIENCE).await?;
    fleet.wait_bridge(0, PATIENCE).await?;
    let others: Vec<&str> = fleet.devices[1..].iter().map(|d| d.user.as_str()).collect();
    let create = serde_json::json!({
        "type": "group_create", "id": "ctl-group", "name": "bench", "members": others,
    });
    let conv = match fleet.control(0, create, PATIENCE).await? {
        Event::Ack {
            conv: Some(conv), ..
        } => conv.to_string(),
        other => bail!("group_create failed: {other:?}"),
    };
    // Let the `member` events reach every inbox before timing anything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = &fleet.shared.metrics;
    metrics.reset();
    let sender = Sender::new(&fleet.devices[0], &conv, "gsend");
    let fanout = (members - 1) as u64;
    for n in 1..=options.group_messages as u64 {
        sender.send(metrics).await?;
        drain(
            || metrics.deliveries.count() >= n * fanout,
            "group deliveries",
        )
        .await?;
    }
    let group = Group {
        members,
        messages: options.group_messages,
        ack: Summary::of(metrics.acks.take()),
        delivery: Summary::of(metrics.deliveries.take()),
    };
    info!(
        members,
        delivery_p50_ms = group.delivery.p50_ms,
        delivery_p99_ms = group.delivery.p99_ms,
        "group"
    );
    fleet.stop().await;
    Ok(group)
}
