//! The bridge: the server daemon that stores, sequences and fans out messages.
//!
//! # Layout
//!
//! - [`config`]: the `[bridge]`, `[storage]` and `[limits]` settings.
//! - `request`: decoding a request payload; every bad input becomes an `error` reply.
//! - `store`: the SQLite schema and the handler of each request; assigns `seq` and `useq`.
//! - `writer`: the thread that owns the database and commits in groups.
//! - `mqtt`: the intake (event loop) and publisher (fan-out, replies, broker acks) tasks.
//! - `outbox`: what a handled request produces.
//!
//! A request travels: broker -> intake -> writer (batch, transaction, commit)
//! -> publisher (events to inboxes, reply to the device, PUBACK to the broker).

pub mod config;

mod mqtt;
mod outbox;
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

pub use store::StoreError;

use config::{BridgeConfig, Limits, StorageConfig};

/// Failures of the bridge.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `bridge.broker` is not `host:port`.
    #[error("bridge.broker must be host:port, got {0:?}")]
    BrokerAddress(String),
    /// A task of the bridge failed.
    #[error("bridge task failed: {0}")]
    Task(String),
}

pub use writer::Liveness;

/// Everything the bridge needs to run.
#[derive(Clone)]
pub struct Bridge {
    /// How to reach the broker.
    pub config: BridgeConfig,
    /// Where to store.
    pub storage: StorageConfig,
    /// Request limits.
    pub limits: Limits,
    /// Where the broker can tell which client ids are connected (the embedded
    /// broker can): devices that look online without a connection are then
    /// marked offline every keepalive period. `None` with an external broker,
    /// where last wills alone drive presence.
    pub liveness: Option<Liveness>,
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
        let writer = std::thread::Builder::new()
            .name("bridge-writer".into())
            .spawn(move || writer::run(conn, limits, liveness, jobs_rx, batches_tx))
            .map_err(|e| BridgeError::Task(e.to_string()))?;
        let publisher = tokio::spawn(mqtt::publisher(
            client.clone(),
            batches_rx,
            epoch.clone(),
            done_tx,
        ));
        info!(broker = %address, "bridge starting");
        mqtt::intake(eventloop, client, jobs_tx, epoch, done_rx, shutdown).await;
        let _ = publisher.await;
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
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
