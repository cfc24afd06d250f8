//! The bridge on a NATS cluster (the `[nats]` table): the broker tier is
//! nats-server nodes with JetStream and an MQTT listener each.
//!
//! - [`keys`]: the issuer account key and the JWTs it signs.
//! - `callout`: answers the nodes' auth callout (sign-in, per-user permissions)
//!   and disconnects revoked users on every node.
//! - `intake`: requests from a JetStream durable consumer of the bridge's own
//!   on the nodes' MQTT stream, acknowledged after commit.
//! - `liveness`: which devices are connected to some node, for presence
//!   reconciliation (a dead node publishes none of its devices' wills).
//!
//! Events still go out as MQTT publishes at QoS 1 (the producer, on a
//! persistent session that fails over between the nodes): that is how the
//! nodes queue them for devices' persistent sessions and keep `status/<user>`
//! retained.

mod callout;
pub(crate) mod intake;
pub mod keys;
pub(crate) mod liveness;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use callout::SignIn;
pub use keys::{Issuer, KeyError};

use crate::config::{BridgeConfig, NatsConfig};
use crate::BridgeError;

/// Most requests delivered to a bridge and not yet acknowledged.
pub(crate) const MAX_ACK_PENDING: u16 = 1000;

/// The bridge's NATS connections, made before anything runs.
pub(crate) struct Cluster {
    /// As the service account: JetStream.
    service: async_nats::Client,
    /// As the callout account's user, subscribed to sign-ins.
    auth: async_nats::Client,
    requests: async_nats::Subscriber,
    /// As the system account's user: revocations.
    system: async_nats::Client,
    /// Counts the service connection's (re)connections.
    pub(crate) connects: watch::Receiver<u64>,
    callout: callout::Callout,
    /// Where the nodes' connections are kept, and how often they are polled.
    connected: (Arc<liveness::Connected>, std::time::Duration),
}

/// Connects to the nodes three times (service, callout, system account) and
/// subscribes to sign-ins.
pub(crate) async fn connect(
    nats: &NatsConfig,
    bridge: &BridgeConfig,
    issuer: Arc<Issuer>,
    sign_in: Arc<SignIn>,
    connected: Arc<liveness::Connected>,
) -> Result<Cluster, BridgeError> {
    let servers: Vec<async_nats::ServerAddr> = nats
        .servers
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| BridgeError::Nats(format!("nats.servers: {e}")))?;
    let (connected_tx, connects) = watch::channel(0u64);
    let name = format!("{}:{}", bridge.username, bridge.instance);
    let service = async_nats::ConnectOptions::with_user_and_password(
        bridge.username.clone(),
        bridge.password.clone(),
    )
    .name(&name)
    .max_reconnects(None)
    .event_callback(move |event| {
        let connected_tx = connected_tx.clone();
        async move {
            match event {
                async_nats::Event::Connected => {
                    connected_tx.send_modify(|n| *n += 1);
                }
                async_nats::Event::Disconnected => warn!("bridge lost its NATS node"),
                other => info!(event = %other, "NATS"),
            }
        }
    })
    .connect(servers.clone())
    .await
    .map_err(|e| BridgeError::Nats(format!("connecting as bridge.username: {e}")))?;
    let auth = async_nats::ConnectOptions::with_user_and_password(
        nats.auth_user.clone(),
        nats.auth_password.clone(),
    )
    .name(format!("{name}:auth"))
    .max_reconnects(None)
    .connect(servers.clone())
    .await
    .map_err(|e| BridgeError::Nats(format!("connecting as nats.auth_user: {e}")))?;
    let system = async_nats::ConnectOptions::with_user_and_password(
        nats.system_user.clone(),
        nats.system_password.clone(),
    )
    .name(format!("{name}:system"))
    .max_reconnects(None)
    .connect(servers)
    .await
    .map_err(|e| BridgeError::Nats(format!("connecting as nats.system_user: {e}")))?;
    let requests = callout::Callout::subscribe(&auth)
        .await
        .map_err(BridgeError::Nats)?;
    Ok(Cluster {
        service,
        auth,
        requests,
        system,
        connects,
        callout: callout::Callout {
            issuer,
            sign_in,
            account: nats.account.clone(),
            service: bridge.username.clone(),
        },
        connected: (connected, bridge.reconcile_every()),
    })
}

impl Cluster {
    /// JetStream, as the service account.
    pub(crate) fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.service.clone())
    }

    /// Starts answering sign-ins and cutting revoked users, until `shutdown`.
    pub(crate) fn spawn(self, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        let accounts = self.callout.sign_in.accounts.clone();
        let every = self.callout.sign_in.revocation_poll;
        let (connected, poll) = self.connected;
        vec![
            tokio::spawn(self.callout.run(self.auth, self.requests, shutdown.clone())),
            tokio::spawn(liveness::watch(
                self.system.clone(),
                connected,
                poll,
                shutdown.clone(),
            )),
            tokio::spawn(callout::cut_revoked(self.system, accounts, every, shutdown)),
        ]
    }
}
