//! Simulated devices: one rumqttc client and one event-loop task each.
//!
//! A [`Fleet`] connects its devices (at most [`CONNECTING`] attempts at a time),
//! keeps them connected (reconnecting with a little jitter after any error) and
//! records what they receive into shared [`Metrics`]. Senders stamp each request
//! id with the bench's clock; the receivers of the ack and of the message turn that
//! stamp into a latency. In closed-loop mode every ack makes its device send again,
//! while the fleet's budget lasts.
//!
//! # Layout
//!
//! - `sender`: `send` requests and raw payloads, stamped with the time they were made.
//! - `task`: one device's event loop: connecting, subscribing, recording, closed loop.

mod sender;
mod task;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use messenger_protocol::wire::Event;
use rumqttc::{
    AsyncClient, LastWill, MqttOptions, NetworkOptions, QoS, TlsConfiguration, Transport,
};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::seed::Identity;
use super::stats::Recorder;

pub(crate) use sender::{raw_payload, Sender};
use task::DeviceTask;

/// Most connection attempts in flight per fleet: enough to connect thousands of
/// devices a second without overflowing the server's listen backlog.
const CONNECTING: usize = 128;
/// Largest MQTT packet a device sends or accepts (a 1024-member `group_create` is ~10 KiB).
const MAX_PACKET: usize = 256 * 1024;
/// Prefix of the ids of control requests, whose replies are kept for the orchestrator.
const CONTROL: &str = "ctl-";

/// What a simulated client is.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A user's device: a last will and `online` on its presence topic,
    /// subscribed to its inbox and dev topics.
    User,
    /// A user's device that only publishes (a raw publisher): no will, no subscriptions.
    Publisher,
    /// The service account subscribed to one filter (the raw consumer).
    Service {
        /// The topic filter.
        filter: String,
    },
}

/// One device to simulate.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// Who it signs in as.
    pub(crate) id: Identity,
    /// What it does.
    pub(crate) kind: Kind,
    /// The conversation it sends to in closed-loop mode, if any.
    pub(crate) conv: Option<String>,
}

/// Client settings of a fleet.
#[derive(Debug, Clone)]
pub(crate) struct FleetOptions {
    /// rumqttc's outgoing QoS 1 window per device.
    pub(crate) inflight: u16,
    /// rumqttc's request channel capacity per device.
    pub(crate) channel: usize,
    /// MQTT over TLS with this client configuration (the address is a TLS listener).
    pub(crate) tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// What the devices of a fleet observed.
#[derive(Default)]
pub(crate) struct Metrics {
    /// Send -> ack on the sender's dev topic.
    pub(crate) acks: Recorder,
    /// Send -> message in another member's inbox (raw: publish -> the consumer).
    pub(crate) deliveries: Recorder,
    /// Requests (or raw publishes) handed to the clients.
    pub(crate) sent: AtomicU64,
    /// `error` replies, and sends the client refused.
    pub(crate) errors: AtomicU64,
}

impl Metrics {
    /// Starts a new phase: every sample and counter back to zero.
    pub(crate) fn reset(&self) {
        self.acks.take();
        self.deliveries.take();
        self.sent.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
    }

    /// The counters, for error messages.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} sent, {} acked, {} delivered, {} errors",
            self.sent.load(Ordering::Relaxed),
            self.acks.count(),
            self.deliveries.count(),
            self.errors.load(Ordering::Relaxed)
        )
    }
}

/// State shared by a fleet's device tasks and the orchestrator.
pub(crate) struct Shared {
    /// What the devices observed.
    pub(crate) metrics: Metrics,
    /// Devices connected (and subscribed, for those that subscribe) right now.
    ready: AtomicUsize,
    /// Times a device became ready, reconnections included.
    connects: AtomicU64,
    /// CONNECTs the server refused (bad credentials would otherwise retry silently).
    refused: AtomicU64,
    /// Closed-loop sends left: each ack takes one and sends again while it was positive.
    budget: AtomicI64,
    /// Connection attempts in flight, at most [`CONNECTING`].
    connecting: Semaphore,
    /// Replies to control requests (ids starting with [`CONTROL`]), by id.
    control: Mutex<HashMap<String, Event>>,
}

/// A connected (or connecting) simulated device.
pub(crate) struct Device {
    /// Its client.
    pub(crate) client: AsyncClient,
    /// Its user id (or the service account's name).
    pub(crate) user: String,
    /// Its device id.
    pub(crate) device: String,
    /// Its closed-loop sender, if it has a conversation.
    pub(crate) sender: Option<Arc<Sender>>,
}

impl Device {
    /// `chat/<user>/out/<device>`.
    pub(crate) fn out_topic(&self) -> String {
        format!("chat/{}/out/{}", self.user, self.device)
    }
}

/// A set of simulated devices sharing metrics.
pub(crate) struct Fleet {
    /// Metrics and counters.
    pub(crate) shared: Arc<Shared>,
    /// The devices, in the order of their specs.
    pub(crate) devices: Vec<Device>,
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Fleet {
    /// Creates the clients and starts connecting them to `addr`.
    pub(crate) fn start(addr: SocketAddr, specs: Vec<Spec>, options: FleetOptions) -> Self {
        Self::start_across(&[addr], specs, options)
    }

    /// Creates the clients and starts connecting them, device `n` to
    /// `addrs[n % addrs.len()]` (a cluster's nodes, in turn).
    pub(crate) fn start_across(
        addrs: &[SocketAddr],
        specs: Vec<Spec>,
        options: FleetOptions,
    ) -> Self {
        let shared = Arc::new(Shared {
            metrics: Metrics::default(),
            ready: AtomicUsize::new(0),
            connects: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            budget: AtomicI64::new(0),
            connecting: Semaphore::new(CONNECTING),
            control: Mutex::new(HashMap::new()),
        });
        let stop = CancellationToken::new();
        let mut devices = Vec::with_capacity(specs.len());
        let mut tasks = Vec::with_capacity(specs.len());
        for (n, spec) in specs.into_iter().enumerate() {
            let addr = addrs[n % addrs.len().max(1)];
            let (client, mut eventloop) =
                AsyncClient::new(mqtt_options(addr, &spec, &options), options.channel);
            // User devices send each small packet at once (TCP_NODELAY), as a chat app
            // does; the raw phase's clients let the kernel coalesce, to find the ceiling.
            let mut network = NetworkOptions::new();
            network.set_tcp_nodelay(matches!(spec.kind, Kind::User));
            eventloop.set_network_options(network);
            let mut device = Device {
                client,
                user: spec.id.user.clone(),
                device: spec.id.device.clone(),
                sender: None,
            };
            if let Some(conv) = &spec.conv {
                device.sender = Some(Arc::new(Sender::new(&device, conv, &spec.id.device)));
            }
            let task = DeviceTask {
                client: device.client.clone(),
                user: device.user.clone(),
                inbox: format!("chat/{}/inbox", device.user),
                dev: format!("chat/{}/dev/{}", device.user, device.device),
                presence: format!("presence/{}/{}", device.user, device.device),
                kind: spec.kind,
                sender: device.sender.clone(),
                shared: shared.clone(),
            };
            tasks.push(tokio::spawn(task.run(eventloop, stop.clone())));
            devices.push(device);
        }
        Self {
            shared,
            devices,
            tasks,
            stop,
        }
    }

    /// Devices connected (and subscribed) right now.
    pub(crate) fn ready(&self) -> usize {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// Times a device became ready since the fleet started.
    pub(crate) fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::Acquire)
    }

    /// Waits until `connects()` reaches `n`.
    pub(crate) async fn wait_connects(&self, n: u64, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        while self.connects() < n {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {n} connections were made within {patience:?} ({} refused by the server)",
                    self.connects(),
                    self.shared.refused.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Waits until every device is connected (and subscribed).
    pub(crate) async fn wait_ready(&self, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        while self.ready() < self.devices.len() {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} devices connected within {patience:?} ({} refused by the server)",
                    self.ready(),
                    self.devices.len(),
                    self.shared.refused.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Sends `total` messages in closed loop: `window` outstanding per sender,
    /// each ack (or error) sending the next. Returns once the first ones are out.
    pub(crate) async fn closed_loop(&self, total: u64, window: usize) -> anyhow::Result<()> {
        let senders: Vec<&Arc<Sender>> = self
            .devices
            .iter()
            .filter_map(|d| d.sender.as_ref())
            .collect();
        if senders.is_empty() {
            bail!("no device of this fleet has a conversation to send to");
        }
        let initial = (senders.len() as u64 * window as u64).min(total);
        self.shared
            .budget
            .store((total - initial) as i64, Ordering::Release);
        for k in 0..initial as usize {
            senders[k % senders.len()]
                .send(&self.shared.metrics)
                .await?;
        }
        Ok(())
    }

    /// Sends a control request (its id must start with `ctl-`) from device `index`
    /// and waits for the reply with that id.
    pub(crate) async fn control(
        &self,
        index: usize,
        request: serde_json::Value,
        patience: Duration,
    ) -> anyhow::Result<Event> {
        let id = request["id"].as_str().unwrap_or_default().to_owned();
        let device = self.devices.get(index).context("no such device")?;
        device
            .client
            .publish(
                device.out_topic(),
                QoS::AtLeastOnce,
                false,
                request.to_string(),
            )
            .await?;
        let deadline = Instant::now() + patience;
        loop {
            if let Some(event) = self.control_lock().remove(&id) {
                return Ok(event);
            }
            if Instant::now() > deadline {
                bail!("no reply to {id} within {patience:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits until the bridge answers device `index` (requests sent before the
    /// bridge subscribed are lost, so every phase waits for this first).
    pub(crate) async fn wait_bridge(&self, index: usize, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        for n in 0.. {
            let id = format!("{CONTROL}probe-{n}");
            let probe = serde_json::json!({"type": "conversations", "id": id});
            match self.control(index, probe, Duration::from_millis(300)).await {
                Ok(_) => return Ok(()),
                Err(_) if Instant::now() < deadline => continue,
                Err(err) => return Err(err.context("the bridge does not answer")),
            }
        }
        Ok(())
    }

    /// Disconnects every device (cleanly, so no last will fires) and ends their tasks.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }

    fn control_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Event>> {
        self.shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

fn mqtt_options(addr: SocketAddr, spec: &Spec, options: &FleetOptions) -> MqttOptions {
    let id = &spec.id;
    let mut mqtt = MqttOptions::new(
        format!("{}:{}", id.user, id.device),
        addr.ip().to_string(),
        addr.port(),
    );
    mqtt.set_credentials(id.user.as_str(), id.token.as_str())
        .set_keep_alive(Duration::from_secs(60))
        .set_clean_session(false)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(options.inflight);
    if let Some(tls) = &options.tls {
        mqtt.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
    }
    if matches!(spec.kind, Kind::User) {
        mqtt.set_last_will(LastWill::new(
            format!("presence/{}/{}", id.user, id.device),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    }
    mqtt
}
