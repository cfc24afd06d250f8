//! The bridge: the server daemon that stores, sequences and fans out messages.
//!
//! # Layout
//!
//! - [`config`]: the `[bridge]`, `[storage]`, `[limits]` and `[push]` settings.
//! - `request`: decoding a request payload; every bad input becomes an `error` reply.
//! - `store`: the SQLite schema and the handler of each request; assigns `seq` and `useq`;
//!   `store::removal` is what removing an account takes with it.
//! - `writer`: the thread that owns the database and commits in groups.
//! - `checkpoint`: the thread that copies the WAL into the database file, off the commit path.
//! - `mqtt`: the intake (event loop) and publisher (fan-out, replies, broker acks) tasks.
//! - `outbox`: what a handled request produces.
//! - `push`: notifications to offline users through APNs and FCM, off the message path.
//!
//! A request travels: broker -> intake -> writer (batch, transaction, commit)
//! -> publisher (events to inboxes, reply to the device, PUBACK to the broker).
//! A stored message for a user with no device online also goes, after the
//! commit, writer -> push queue -> push dispatcher -> APNs / FCM.

pub mod config;

mod checkpoint;
mod mqtt;
mod outbox;
mod push;
mod request;
mod store;
mod writer;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::AsyncClient;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use push::PushError;
pub use store::StoreError;

use config::{BridgeConfig, Limits, PushConfig, StorageConfig};

/// Failures of the bridge.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The push service could not be set up.
    #[error(transparent)]
    Push(#[from] PushError),
    /// `bridge.broker` is not `host:port`.
    #[error("bridge.broker must be host:port, got {0:?}")]
    BrokerAddress(String),
    /// A task of the bridge failed.
    #[error("bridge task failed: {0}")]
    Task(String),
}

pub use writer::Liveness;

/// Removes an account and everything it owned in the conversations (its inbox,
/// devices, push registrations, mutes and memberships), in one transaction on
/// the SQLite file at `path`; safe while a bridge runs on the same file.
/// See docs/PROTOCOL.md, "Removing an account".
pub fn remove_user(
    path: &std::path::Path,
    user: &messenger_protocol::UserId,
) -> Result<(), StoreError> {
    store::remove_user(path, user)
}

/// Everything the bridge needs to run.
#[derive(Clone)]
pub struct Bridge {
    /// How to reach the broker.
    pub config: BridgeConfig,
    /// Where to store.
    pub storage: StorageConfig,
    /// Request limits.
    pub limits: Limits,
    /// Push notifications to offline users (off unless APNs or FCM is configured).
    pub push: PushConfig,
    /// Where the broker can tell which client ids are connected (the embedded
    /// broker can): devices that look online without a connection are then
    /// marked offline every keepalive period. `None` with an external broker,
    /// where last wills alone drive presence.
    pub liveness: Option<Liveness>,
    /// Notified each time the bridge has (re)subscribed to the requests: from
    /// then on nothing a device publishes is missed.
    pub ready: Option<Arc<tokio::sync::Notify>>,
}

impl Bridge {
    /// Runs until `shutdown` is cancelled, then finishes the batches in flight
    /// and disconnects. `broker` overrides `config.broker` (used by `serve`).
    pub async fn run(
        self,
        broker: Option<String>,
        shutdown: CancellationToken,
    ) -> Result<(), BridgeError> {
        let address = broker.unwrap_or_else(|| self.config.broker.clone());
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(h, p)| {
                Some((
                    h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                    p.parse::<u16>().ok()?,
                ))
            })
            .ok_or_else(|| BridgeError::BrokerAddress(address.clone()))?;
        let storage = self.storage.clone();
        let conn =
            tokio::task::spawn_blocking(move || store::open(&storage.path, storage.durability))
                .await
                .map_err(|e| BridgeError::Task(e.to_string()))??;
        let checkpointer =
            checkpoint::Checkpointer::start(self.storage.path.clone(), checkpoint::RESTART_FRAMES)?;
        let push = if self.push.enabled() {
            let config = self.push.clone();
            let db = self.storage.path.clone();
            let service = tokio::task::spawn_blocking(move || push::Service::new(&config, &db))
                .await
                .map_err(|e| BridgeError::Task(e.to_string()))??;
            Some(service)
        } else {
            info!("push notifications are off: neither [push.apns] nor [push.fcm] is configured");
            None
        };
        let sink = push.as_ref().map(push::Service::sink);

        let max_packet = self
            .limits
            .max_reply_bytes()
            .max(self.limits.max_request_bytes())
            * 2;
        let options = mqtt::options(
            &host,
            port,
            format!("{}:{}", self.config.username, self.config.instance),
            &self.config.username,
            &self.config.password,
            Duration::from_secs(u64::from(self.config.keepalive_secs.max(5))),
            max_packet,
        );
        let (producer, mut producer_loop) =
            AsyncClient::new(mqtt::producer_options(&options, max_packet), 10_000);
        producer_loop.set_network_options(mqtt::network());
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        eventloop.set_network_options(mqtt::network());
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let (batches_tx, batches_rx) = mpsc::channel(64);
        let (done_tx, done_rx) = oneshot::channel();
        let epoch = Arc::new(AtomicU64::new(0));

        let limits = self.limits.clone();
        let liveness = self.liveness.clone();
        let reconcile_every = Duration::from_secs(u64::from(self.config.keepalive_secs.max(1)));
        if liveness.is_some() {
            tokio::spawn(reconcile(
                jobs_tx.clone(),
                reconcile_every,
                shutdown.clone(),
            ));
        }
        let wal = checkpointer.wal();
        let writer = std::thread::Builder::new()
            .name("bridge-writer".into())
            .spawn(move || writer::run(conn, &wal, limits, liveness, sink, jobs_rx, batches_tx))
            .map_err(|e| BridgeError::Task(e.to_string()))?;
        let pusher = push.map(|service| tokio::spawn(service.run(shutdown.clone())));
        let producing = tokio::spawn(mqtt::produce(producer_loop, shutdown.clone()));
        let publisher = tokio::spawn(mqtt::publisher(
            producer,
            client.clone(),
            batches_rx,
            epoch.clone(),
            done_tx,
        ));
        info!(broker = %address, "bridge starting");
        mqtt::intake(
            eventloop,
            client,
            jobs_tx,
            epoch,
            done_rx,
            self.ready.clone(),
            shutdown,
        )
        .await;
        let _ = publisher.await;
        let _ = producing.await;
        let _ = tokio::task::spawn_blocking(move || {
            let _ = writer.join();
            checkpointer.stop();
        })
        .await;
        if let Some(pusher) = pusher {
            let _ = pusher.await;
        }
        info!("bridge stopped");
        Ok(())
    }
}

/// Asks the writer to reconcile presence with the broker's connections, periodically.
async fn reconcile(
    jobs: mpsc::UnboundedSender<writer::Job>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let job = writer::Job {
            work: writer::Work::Reconcile,
            ack: None,
            epoch: 0,
        };
        if jobs.send(job).is_err() {
            return;
        }
    }
}
