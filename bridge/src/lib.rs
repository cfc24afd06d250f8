//! The bridge: the server daemon between the broker and the store. It takes
//! devices' requests from MQTT, has the store handle them in batches, and
//! publishes what the store decided: replies, inbox events, statuses; and it
//! hands push notifications to the push service.
//!
//! # Layout
//!
//! - [`config`]: the `[bridge]` settings (and the store's and push service's, re-exported).
//! - `request`: decoding a request payload; every bad input becomes an `error` reply.
//! - `writer`: the thread that owns the store and hands it batches.
//! - `mqtt`: the intake (event loop) and publisher (fan-out, replies, broker acks) tasks.
//! - `outbox`: where each of the store's effects is published.
//! - `passed`: other bridges' users' requests, kept a while in case their slot
//!   is taken over (several bridges on one database).
//! - `metrics`: requests by type and outcome, batches, commit latency, queue
//!   depth, push counters, and the readiness signals (subscribed, storage writable).
//!
//! A request travels: broker -> intake -> writer (batch, store, commit)
//! -> publisher (events to inboxes, reply to the device, PUBACK to the broker).
//! A stored message for a user with no device online also goes, after the
//! commit, writer -> push queue -> push dispatcher -> APNs / FCM; a token the
//! push service calls dead comes back to the writer as a job.

pub mod config;

mod metrics;
mod mqtt;
pub mod nats;
mod outbox;
mod passed;
mod request;
mod writer;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use messenger_push::DeadToken;
use messenger_store::slots::Ownership;
use messenger_store::{postgres, Input, Notify, SqliteStore, Store, StoreError};
use rumqttc::AsyncClient;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use messenger_push::PushError;
pub use messenger_store::Liveness;
pub use metrics::BridgeMetrics;

use config::{BridgeConfig, BrokerAddress, Limits, NatsConfig, PushConfig, StorageConfig};

/// Failures of the bridge.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The PostgreSQL database at `storage.url` could not be used.
    #[error("storage.url: {0}")]
    Database(#[from] postgres::PostgresError),
    /// The push service could not be set up.
    #[error(transparent)]
    Push(#[from] PushError),
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The NATS cluster (`[nats]`) could not be used.
    #[error("nats: {0}")]
    Nats(String),
    /// A part of the bridge failed or panicked.
    #[error("the bridge's {part} failed: {cause}")]
    Part {
        /// Which part (`writer`, `publisher`, ...).
        part: &'static str,
        /// Why.
        cause: String,
    },
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
    /// The broker tier on a NATS cluster (off unless `nats.servers` is set).
    pub nats: NatsConfig,
    /// Where the broker can tell which client ids are connected (the embedded
    /// broker can): devices that look online without a connection are then
    /// marked offline every keepalive period. `None` with an external broker,
    /// where last wills alone drive presence.
    pub liveness: Option<Liveness>,
    /// Notified each time the bridge has (re)subscribed to the requests: from
    /// then on nothing a device publishes is missed.
    pub ready: Option<Arc<tokio::sync::Notify>>,
}

/// The bridge's parts that run beside the intake.
struct Parts {
    writer: std::thread::JoinHandle<()>,
    publisher: JoinHandle<()>,
    producer: JoinHandle<()>,
    pusher: Option<JoinHandle<()>>,
}

impl Bridge {
    /// [`Bridge::prepare`], then [`Prepared::run`].
    pub async fn run(
        self,
        broker: Option<BrokerAddress>,
        shutdown: CancellationToken,
    ) -> Result<(), BridgeError> {
        self.prepare()?.run(broker, shutdown).await
    }

    /// Everything that can fail on bad configuration, before anything runs:
    /// checks the `[bridge]` settings and reads the push services' key files.
    /// Blocking (files).
    pub fn prepare(self) -> Result<Prepared, BridgeError> {
        self.config.validate()?;
        self.nats.validate()?;
        let callout = if self.nats.enabled() {
            let issuer = nats::Issuer::from_file(&self.nats.issuer_seed_file)
                .map_err(|e| BridgeError::Nats(format!("nats.issuer_seed_file: {e}")))?;
            Some((Arc::new(issuer), None))
        } else {
            None
        };
        let push = self.start_push()?;
        Ok(Prepared {
            bridge: self,
            push,
            metrics: BridgeMetrics::default(),
            callout,
        })
    }
}

/// A bridge whose configuration was checked and whose push keys were read.
pub struct Prepared {
    bridge: Bridge,
    push: Option<(messenger_push::Service, mpsc::UnboundedReceiver<DeadToken>)>,
    metrics: BridgeMetrics,
    /// On a NATS cluster: the issuer key and what sign-ins are checked against.
    callout: Option<(Arc<nats::Issuer>, Option<Arc<nats::SignIn>>)>,
}

impl Prepared {
    /// Adds the bridge's metrics (and the push service's, when on) to `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let queue = self.push.as_ref().map(|(service, _)| service.sink().queue);
        self.metrics.register(registry, queue);
    }

    /// The bridge's metrics, which also say whether it is ready.
    pub fn metrics(&self) -> BridgeMetrics {
        self.metrics.clone()
    }

    /// Whether the bridge runs on a NATS cluster (and so answers its sign-ins:
    /// see [`Prepared::with_sign_in`]).
    pub fn on_nats(&self) -> bool {
        self.callout.is_some()
    }

    /// The account store and sign-in policy the auth callout checks devices
    /// against (on a NATS cluster; ignored otherwise).
    pub fn with_sign_in(mut self, sign_in: nats::SignIn) -> Self {
        if let Some((_, slot)) = &mut self.callout {
            *slot = Some(Arc::new(sign_in));
        }
        self
    }

    /// Lets the bridge ask the broker which client ids are connected (see [`Bridge::liveness`]).
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.bridge.liveness = Some(liveness);
        self
    }

    /// Runs until `shutdown` is cancelled, then finishes the batches in flight
    /// and disconnects. `broker` overrides `bridge.broker` (used by `serve`).
    /// Returns an error naming the part if one fails or panics (the others are
    /// stopped first).
    pub async fn run(
        self,
        broker: Option<BrokerAddress>,
        shutdown: CancellationToken,
    ) -> Result<(), BridgeError> {
        let Prepared {
            mut bridge,
            push,
            metrics,
            callout,
        } = self;
        // On a cluster, presence is reconciled with the nodes' connections.
        let connected = Arc::new(nats::liveness::Connected::default());
        if callout.is_some() {
            bridge.liveness = Some(connected.liveness());
        }
        let nats_addresses = bridge.nats.mqtt_addresses();
        let address = match (broker, nats_addresses.first()) {
            (Some(address), _) => address,
            (None, Some(first)) if callout.is_some() => first.clone(),
            (None, _) => bridge.config.broker_address()?,
        };
        // Parts stop on `shutdown`, or when one of them fails.
        let shutdown = shutdown.child_token();
        let ownership = Arc::new(Ownership::all());
        let store = bridge
            .open_store(push.as_ref().map(|(s, _)| s.sink()), ownership.clone())
            .await?;
        metrics.storage_ok.set(1);
        let cluster = match &callout {
            Some((issuer, sign_in)) => {
                let sign_in = sign_in.clone().ok_or_else(|| {
                    BridgeError::Nats("no account store for the auth callout".into())
                })?;
                Some(
                    nats::connect(
                        &bridge.nats,
                        &bridge.config,
                        issuer.clone(),
                        sign_in,
                        connected.clone(),
                    )
                    .await?,
                )
            }
            None => None,
        };
        let (consumer, producer) = bridge.connections(&address);
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let (batches_tx, batches_rx) = mpsc::channel(64);
        let (done_tx, done_rx) = oneshot::channel();
        let epoch = Arc::new(AtomicU64::new(0));
        // Uploads no message has carried for `unreferenced_ms` go: checked at
        // start and every quarter of that (at least every hour).
        let unreferenced_ms = bridge.storage.unreferenced_file_ms();
        tokio::spawn(periodically(
            jobs_tx.clone(),
            Duration::from_millis(unreferenced_ms / 4)
                .clamp(Duration::from_millis(250), Duration::from_secs(3600)),
            Start::Now,
            move || writer::Work::Store(Input::SweepFiles { unreferenced_ms }),
            shutdown.clone(),
        ));
        if bridge.liveness.is_some() {
            // Presence reconciled with the broker's connections.
            tokio::spawn(periodically(
                jobs_tx.clone(),
                bridge.config.reconcile_every(),
                Start::AfterOnePeriod,
                || writer::Work::Store(Input::Reconcile),
                shutdown.clone(),
            ));
        }
        if bridge.storage.retention_days > 0 {
            // Retention runs on an idle server too (a busy one runs it between batches).
            tokio::spawn(periodically(
                jobs_tx.clone(),
                HOUSEKEEPING_EVERY,
                Start::AfterOnePeriod,
                || writer::Work::Housekeeping,
                shutdown.clone(),
            ));
        }
        let sink = push.as_ref().map(|(service, _)| service.sink());
        let pusher = push.map(|(service, dead)| {
            tokio::spawn(forget_dead_tokens(dead, jobs_tx.clone(), shutdown.clone()));
            tokio::spawn(service.run(shutdown.clone()))
        });
        let writer = spawn_writer(
            store,
            bridge.limits.clone(),
            sink,
            jobs_rx,
            batches_tx,
            metrics.clone(),
        )?;
        let (client, eventloop) = consumer;
        let (producer, producer_loop) = producer;
        let failover = cluster.as_ref().map(|_| mqtt::Failover {
            options: nats_addresses
                .iter()
                .map(|a| bridge.producer_options(a))
                .collect(),
            next: 1,
            jobs: jobs_tx.downgrade(),
        });
        let parts = Parts {
            writer,
            producer: tokio::spawn(mqtt::produce(producer_loop, failover, shutdown.clone())),
            publisher: tokio::spawn(mqtt::publisher(
                producer,
                cluster.is_none().then(|| client.clone()),
                batches_rx,
                epoch.clone(),
                done_tx,
            )),
            pusher,
        };
        info!(broker = %address, nats = cluster.is_some(), "bridge starting");
        let passed = Arc::new(std::sync::Mutex::new(passed::Passed::new(ownership.mask())));
        if bridge.storage.postgres_url().is_some() {
            tokio::spawn(mqtt::hand_on_taken_slots(
                passed.clone(),
                ownership.clone(),
                jobs_tx.clone(),
                epoch.clone(),
                shutdown.clone(),
            ));
        }
        match cluster {
            Some(cluster) => {
                let intake = nats::intake::Intake {
                    js: cluster.jetstream(),
                    durable: format!("bridge-{}", bridge.config.instance),
                    max_ack_pending: i64::from(nats::MAX_ACK_PENDING),
                    connects: cluster.connects.clone(),
                    jobs: jobs_tx,
                    passed,
                    ownership,
                    subscribed: metrics.subscribed.clone(),
                    ready: bridge.ready.clone(),
                };
                let others = cluster.spawn(shutdown.clone());
                intake.run(shutdown.clone()).await;
                shutdown.cancel();
                for task in others {
                    let _ = task.await;
                }
            }
            None => {
                let intake = mqtt::Intake {
                    client,
                    jobs: Some(jobs_tx),
                    epoch,
                    ready: bridge.ready.clone(),
                    subscribed: metrics.subscribed.clone(),
                    passed,
                    ownership,
                };
                intake.run(eventloop, done_rx, shutdown.clone()).await;
            }
        }
        // The intake ends on shutdown, or when the writer is gone (it failed).
        shutdown.cancel();
        let result = parts.join().await;
        match &result {
            Ok(()) => info!("bridge stopped"),
            Err(err) => tracing::error!(cause = %err, "bridge failed"),
        }
        result
    }
}

/// Starts the writer thread.
fn spawn_writer(
    store: Box<dyn Store>,
    limits: Limits,
    sink: Option<messenger_push::Sink>,
    jobs: mpsc::UnboundedReceiver<writer::Job>,
    batches: mpsc::Sender<writer::Batch>,
    metrics: BridgeMetrics,
) -> Result<std::thread::JoinHandle<()>, BridgeError> {
    std::thread::Builder::new()
        .name("bridge-writer".into())
        .spawn(move || writer::run(store, &limits, sink, jobs, batches, &metrics))
        .map_err(|e| BridgeError::Part {
            part: "writer",
            cause: format!("cannot start its thread: {e}"),
        })
}

/// An MQTT client and its event loop.
type Connection = (AsyncClient, rumqttc::EventLoop);

impl Bridge {
    /// The two connections to the broker: the consumer (`<username>:<instance>`,
    /// a persistent session that takes requests and acks them) and the producer
    /// (`<instance>-out`, which publishes); see `mqtt`.
    fn connections(&self, address: &BrokerAddress) -> (Connection, Connection) {
        let (producer, mut producer_loop) =
            AsyncClient::new(self.producer_options(address), 10_000);
        producer_loop.set_network_options(mqtt::network());
        let (client, mut eventloop) = AsyncClient::new(self.consumer_options(address), 10_000);
        eventloop.set_network_options(mqtt::network());
        ((client, eventloop), (producer, producer_loop))
    }

    /// The consumer's options for `address`.
    fn consumer_options(&self, address: &BrokerAddress) -> rumqttc::MqttOptions {
        mqtt::options(
            address,
            format!("{}:{}", self.config.username, self.config.instance),
            &self.config.username,
            &self.config.password,
            self.config.mqtt_keepalive(),
            self.max_packet(),
        )
    }

    /// The producer's options for `address` (on a NATS cluster, one per node:
    /// the producer fails over between them).
    fn producer_options(&self, address: &BrokerAddress) -> rumqttc::MqttOptions {
        let mut options =
            mqtt::producer_options(&self.consumer_options(address), self.max_packet());
        if self.nats.enabled() {
            // Events in flight survive a node's loss: the session (and the
            // producer's unacknowledged publishes) lives in the cluster.
            options.set_clean_session(false);
        }
        options
    }

    /// Twice the larger of the largest request and reply.
    fn max_packet(&self) -> usize {
        self.limits
            .max_reply_bytes()
            .max(self.limits.max_request_bytes())
            * 2
    }

    /// Builds the push service if APNs or FCM is configured (reads key files).
    fn start_push(
        &self,
    ) -> Result<Option<(messenger_push::Service, mpsc::UnboundedReceiver<DeadToken>)>, BridgeError>
    {
        if !self.push.enabled() {
            info!("push notifications are off: neither [push.apns] nor [push.fcm] is configured");
            return Ok(None);
        }
        let (dead_tx, dead_rx) = mpsc::unbounded_channel();
        let service = messenger_push::Service::new(&self.push, dead_tx)?;
        Ok(Some((service, dead_rx)))
    }

    /// Opens the configured store (SQLite, or PostgreSQL at `storage.url`, its
    /// schema migrated) off the async workers. On PostgreSQL the bridge shares
    /// the users with the other bridges: `ownership` follows its share.
    async fn open_store(
        &self,
        push: Option<messenger_push::Sink>,
        ownership: Arc<Ownership>,
    ) -> Result<Box<dyn Store>, BridgeError> {
        let instance = self.config.instance.clone();
        let storage = self.storage.clone();
        let limits = self.limits.clone();
        let liveness = self.liveness.clone();
        let notify = match push {
            Some(sink) => Notify::On {
                preview: sink.preview,
            },
            None => Notify::Off,
        };
        tokio::task::spawn_blocking(move || -> Result<Box<dyn Store>, BridgeError> {
            let store: Box<dyn Store> = match storage.postgres_url() {
                Some(url) => {
                    let mut client = postgres::connect(url)?;
                    postgres::migrate(&mut client)?;
                    let client = bounded_transactions(client)?;
                    let url = url.to_owned();
                    let connect: postgres::Connector = Arc::new(move || {
                        postgres::connect(&url)
                            .and_then(bounded_transactions)
                            .map_err(|e| e.to_string())
                    });
                    ownership.set_none();
                    let sharing = postgres::Sharing {
                        instance,
                        ownership,
                    };
                    Box::new(
                        postgres::PostgresStore::new(
                            client,
                            connect,
                            limits,
                            notify,
                            liveness,
                            sharing,
                            storage.files_dir(),
                        )?
                        .with_retention(storage.retention_days),
                    )
                }
                None => Box::new(SqliteStore::open(&storage, limits, notify, liveness)?),
            };
            // Here, off the async workers: a PostgreSQL store it replaces is
            // dropped, and its client must not close on an async worker.
            Ok(fault::wrap(store, &storage.path))
        })
        .await
        .map_err(|e| BridgeError::Part {
            part: "store",
            cause: e.to_string(),
        })?
    }
}

/// How long the database lets one of the bridge's transactions sit idle
/// before it ends the session: a bridge paused in the middle of a batch (a
/// frozen process, a suspended machine) would otherwise hold its slots' locks,
/// and no other bridge could take its users over, until its connection died.
const IDLE_IN_TRANSACTION: &str = "5s";

/// `client`, with the bridge's bound on idle transactions.
fn bounded_transactions(
    mut client: postgres::Client,
) -> Result<postgres::Client, postgres::PostgresError> {
    client
        .batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}'"
        ))
        .map_err(postgres::PostgresError::from)?;
    Ok(client)
}

impl Parts {
    /// Waits for every part; the first failure, by part.
    async fn join(self) -> Result<(), BridgeError> {
        let mut first = None;
        let mut note = |part: &'static str, failed: Option<String>| {
            if let (Some(cause), None) = (failed, &first) {
                first = Some(BridgeError::Part { part, cause });
            }
        };
        note(
            "publisher",
            self.publisher.await.err().map(|e| e.to_string()),
        );
        note("producer", self.producer.await.err().map(|e| e.to_string()));
        let writer = self.writer;
        let joined = tokio::task::spawn_blocking(move || writer.join()).await;
        note(
            "writer",
            match joined {
                Ok(Ok(())) => None,
                Ok(Err(panic)) => Some(panic_message(&*panic)),
                Err(e) => Some(e.to_string()),
            },
        );
        if let Some(pusher) = self.pusher {
            note("push dispatcher", pusher.await.err().map(|e| e.to_string()));
        }
        match first {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

/// What a panic said, if it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("panicked: {text}")
}

/// When a periodic job is first handed to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// At once, then every period.
    Now,
    /// After the first period.
    AfterOnePeriod,
}

/// How often an idle writer is woken for the store's housekeeping (retention
/// decides itself whether a step is due; waking costs a channel message).
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

/// Hands the writer the job `work` makes every `every`, until `shutdown` or
/// the writer is gone.
async fn periodically(
    jobs: mpsc::UnboundedSender<writer::Job>,
    every: Duration,
    start: Start,
    work: impl Fn() -> writer::Work,
    shutdown: CancellationToken,
) {
    let mut wait = start == Start::AfterOnePeriod;
    loop {
        if wait {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
        wait = true;
        let job = writer::Job {
            work: work(),
            ack: None,
            epoch: 0,
        };
        if jobs.send(job).is_err() {
            return;
        }
    }
}

/// Hands the tokens the push service calls dead to the writer, to delete.
async fn forget_dead_tokens(
    mut dead: mpsc::UnboundedReceiver<DeadToken>,
    jobs: mpsc::UnboundedSender<writer::Job>,
    shutdown: CancellationToken,
) {
    loop {
        let token = tokio::select! {
            () = shutdown.cancelled() => return,
            token = dead.recv() => token,
        };
        let Some(token) = token else { return };
        let job = writer::Job {
            work: writer::Work::Store(Input::ForgetToken {
                platform: token.platform,
                token: token.token,
                not_after_ms: token.not_after_ms,
            }),
            ack: None,
            epoch: 0,
        };
        if jobs.send(job).is_err() {
            return;
        }
    }
}

/// A fault a test can inject into a debug build, to see the process notice a
/// failing part: a file `<storage.path>.fail-writer` (beside the SQLite file; the
/// path is set on PostgreSQL too) makes the writer panic at its first batch.
/// Release builds have no such hook.
mod fault {
    use messenger_store::Store;

    /// The store, or (debug builds, marker file present) one that panics.
    pub(crate) fn wrap(store: Box<dyn Store>, database: &std::path::Path) -> Box<dyn Store> {
        #[cfg(debug_assertions)]
        {
            let mut marker = database.as_os_str().to_owned();
            marker.push(".fail-writer");
            if std::path::Path::new(&marker).exists() {
                return Box::new(Failing);
            }
        }
        let _ = database;
        store
    }

    #[cfg(debug_assertions)]
    struct Failing;

    #[cfg(debug_assertions)]
    impl Store for Failing {
        fn process(
            &mut self,
            _: Vec<messenger_store::Input>,
            _: u64,
        ) -> Result<Vec<messenger_store::Outcome>, messenger_store::StoreError> {
            panic!("injected fault: <database>.fail-writer exists (test hook)");
        }

        fn between_batches(&mut self) -> messenger_store::Housekeeping {
            messenger_store::Housekeeping::Done
        }
    }
}
