//! The bridge's MQTT side: consuming requests and publishing results.
//!
//! Two tasks share one rumqttc client. The *intake* drives the event loop:
//! it resubscribes on every (re)connect and hands each inbound publish to the
//! writer, never blocking (the broker lets at most ~100 publishes be unacked,
//! which bounds the queue). The *publisher* takes committed batches in order,
//! publishes their events and replies, then acks the batch's inbound publishes
//! to the broker, in receive order (rumqttd drops a client that acks out of order).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use messenger_protocol::topics::{self, Topic};
use messenger_store::Input;
use rand::Rng;
use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, NetworkOptions, Outgoing, Publish, QoS,
};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::passed::Passed;
use crate::writer::{Ack, Batch, Job, Work};
use messenger_store::slots::{holds, Ownership, RENEW_EVERY};

/// The intake's state across (re)connections.
pub(crate) struct Intake {
    pub(crate) client: AsyncClient,
    /// Where requests go; `None` once shutting down (unacked requests stay with the broker).
    pub(crate) jobs: Option<mpsc::UnboundedSender<Job>>,
    /// Counts the consumer's connections; a job carries the one it arrived on.
    pub(crate) epoch: Arc<AtomicU64>,
    /// Notified on each successful (re)subscription.
    pub(crate) ready: Option<Arc<Notify>>,
    /// 1 from a successful subscription until the connection is lost (readiness).
    pub(crate) subscribed: prometheus_client::metrics::gauge::Gauge,
    /// The users this bridge handles (all of them unless several bridges share
    /// a database); the others' publishes are acked and passed over.
    pub(crate) ownership: Arc<Ownership>,
    /// What was passed over lately, handled if its slot is taken over; shared
    /// with [`hand_on_taken_slots`], which looks while no publish comes.
    pub(crate) passed: Arc<Mutex<Passed>>,
}

/// What to do after an event of the consumer connection.
enum Next {
    Continue,
    Stop,
}

impl Intake {
    /// Drives the event loop until shutdown, then until the publisher is done.
    pub(crate) async fn run(
        mut self,
        mut eventloop: EventLoop,
        mut publisher_done: oneshot::Receiver<()>,
        shutdown: CancellationToken,
    ) {
        let mut draining = false;
        let mut failures: u32 = 0;
        loop {
            let polled = tokio::select! {
                () = shutdown.cancelled(), if self.jobs.is_some() => {
                    info!("bridge stopping: finishing the batches in flight");
                    self.jobs = None;
                    continue;
                }
                _ = &mut publisher_done, if !draining => {
                    draining = true;
                    if self.client.try_disconnect().is_err() {
                        return;
                    }
                    continue;
                }
                polled = eventloop.poll() => polled,
            };
            let next = match polled {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    failures = 0;
                    self.connected(ack.session_present)
                }
                Ok(Event::Incoming(Incoming::SubAck(ack))) => self.subscribed(&ack),
                Ok(Event::Incoming(Incoming::Publish(publish))) => self.received(publish),
                Ok(Event::Outgoing(Outgoing::Disconnect)) if draining => Next::Stop,
                Ok(_) => Next::Continue,
                Err(_) if draining => Next::Stop,
                Err(err) => {
                    self.subscribed.set(0);
                    failures = failures.saturating_add(1);
                    let delay = backoff(failures);
                    warn!(cause = %err, retry_in_ms = delay.as_millis() as u64, "bridge lost the broker");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled(), if self.jobs.is_some() => { self.jobs = None; }
                    }
                    Next::Continue
                }
            };
            if let Next::Stop = next {
                return;
            }
        }
    }

    /// A new connection: a new epoch, statuses again if the broker lost its
    /// session (and so its retained messages), and the subscriptions.
    fn connected(&mut self, session_present: bool) -> Next {
        self.subscribed.set(0);
        let n = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        info!(session_present, epoch = n, "bridge connected to the broker");
        if !session_present {
            self.queue(Work::Store(Input::Republish), None);
        }
        for filter in [topics::OUT_FILTER, topics::PRESENCE_FILTER] {
            if let Err(err) = self.client.try_subscribe(filter, QoS::AtLeastOnce) {
                warn!(cause = %err, "cannot subscribe");
            }
        }
        Next::Continue
    }

    fn subscribed(&self, ack: &rumqttc::SubAck) -> Next {
        if ack
            .return_codes
            .iter()
            .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
        {
            warn!("the broker refused the bridge's subscription: check its ACL for the service account");
            return Next::Continue;
        }
        self.subscribed.set(1);
        if let Some(ready) = &self.ready {
            ready.notify_one();
        }
        Next::Continue
    }

    /// A request or a presence change: to the writer, with the publish to ack;
    /// one of a user another bridge handles is kept (see `passed`) and acked.
    fn received(&mut self, publish: Publish) -> Next {
        let Some(jobs) = &self.jobs else {
            return Next::Continue;
        };
        let epoch = self.epoch.load(Ordering::Acquire);
        let work = work_of(&publish);
        if route(
            &self.passed,
            &self.ownership,
            jobs,
            work,
            Ack::Mqtt(publish),
            epoch,
        ) {
            Next::Continue
        } else {
            Next::Stop
        }
    }

    /// Hands a job to the writer; false once the writer is gone.
    fn queue(&mut self, work: Work, ack: Option<Ack>) -> bool {
        let Some(jobs) = &self.jobs else { return true };
        let job = Job {
            work,
            ack,
            epoch: self.epoch.load(Ordering::Acquire),
        };
        jobs.send(job).is_ok()
    }
}

/// Hands `work` to the writer with its `ack`, unless it is for a user another
/// bridge handles: that is kept (see `passed`) and only acked. Kept work of
/// slots taken over goes first. False once the writer is gone.
pub(crate) fn route(
    passed: &Mutex<Passed>,
    ownership: &Ownership,
    jobs: &mpsc::UnboundedSender<Job>,
    work: Work,
    ack: Ack,
    epoch: u64,
) -> bool {
    // Held while queueing, so that work handed on after a handover goes
    // before this one, whichever task hands it on.
    let mut passed = passed.lock().unwrap_or_else(PoisonError::into_inner);
    // One reading of the slots held, for the handover and for this work.
    let held = ownership.mask();
    if !hand_on(&mut passed, held, jobs, epoch) {
        return false;
    }
    let passed_over = match &work {
        Work::Request { user, .. } | Work::Store(Input::Presence { user, .. }) => {
            !holds(held, user)
        }
        _ => false,
    };
    let work = if passed_over {
        passed.keep(work, Instant::now());
        Work::Skip
    } else {
        work
    };
    let job = Job {
        work,
        ack: Some(ack),
        epoch,
    };
    jobs.send(job).is_ok()
}

/// Hands the writer the kept work of the slots gained since the last look
/// (nothing to ack: it was acked when passed over); false once the writer is gone.
fn hand_on(passed: &mut Passed, held: u64, jobs: &mpsc::UnboundedSender<Job>, epoch: u64) -> bool {
    let gained = passed.gained(held, Instant::now());
    if !gained.is_empty() {
        info!(
            requests = gained.len(),
            "slots taken over: handling what was passed over lately for their users"
        );
    }
    gained.into_iter().all(|work| {
        jobs.send(Job {
            work,
            ack: None,
            epoch,
        })
        .is_ok()
    })
}

/// Several bridges: hands on the kept work of a slot taken over while no publish
/// comes (the intake does when one does), looking twice per lease round until
/// `shutdown` or the writer is gone. A task of its own: a timer in the intake's
/// `select!` would drop its `EventLoop::poll` in the middle (of a reconnection,
/// say), which rumqttc does not survive.
pub(crate) async fn hand_on_taken_slots(
    passed: Arc<Mutex<Passed>>,
    ownership: Arc<Ownership>,
    jobs: mpsc::UnboundedSender<Job>,
    epoch: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(RENEW_EVERY / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut passed = passed.lock().unwrap_or_else(PoisonError::into_inner);
        if !hand_on(
            &mut passed,
            ownership.mask(),
            &jobs,
            epoch.load(Ordering::Acquire),
        ) {
            return;
        }
    }
}

/// What a publish on one of the bridge's subscriptions asks for.
fn work_of(publish: &Publish) -> Work {
    work_of_topic(&publish.topic, &publish.payload)
}

/// What a publish on `topic` with `payload` asks for.
pub(crate) fn work_of_topic(topic: &str, payload: &bytes::Bytes) -> Work {
    match Topic::parse(topic) {
        Some(Topic::Out(user, device)) => Work::Request {
            user,
            device,
            payload: payload.clone(),
        },
        Some(Topic::Presence(user, device)) => {
            let online = match &payload[..] {
                b"online" => true,
                b"offline" => false,
                // The bridge's own clearing of a refused device's retained presence.
                b"" => return Work::Skip,
                other => {
                    warn!(%user, %device, payload = %String::from_utf8_lossy(other), "presence payload is neither online nor offline");
                    return Work::Skip;
                }
            };
            Work::Store(Input::Presence {
                user,
                device,
                online,
            })
        }
        _ => Work::Skip,
    }
}

/// Exponential backoff with jitter: 100 ms doubling to 10 s, each within ±50%.
pub(crate) fn backoff(failures: u32) -> Duration {
    let base = 100u64
        .saturating_mul(1 << failures.min(7).saturating_sub(1))
        .min(10_000);
    let jitter = rand::thread_rng().gen_range(base / 2..=base + base / 2);
    Duration::from_millis(jitter)
}

/// Publishes committed batches on the producer connection, then acks their
/// inbound publishes on the consumer connection, in receive order. Once the
/// writer is done, disconnects the producer and reports.
pub(crate) async fn publisher(
    producer: AsyncClient,
    consumer: Option<AsyncClient>,
    mut batches: mpsc::Receiver<Batch>,
    epoch: Arc<AtomicU64>,
    done: oneshot::Sender<()>,
) {
    while let Some(batch) = batches.recv().await {
        for out in batch.publishes {
            if let Err(err) = producer
                .publish(out.topic, out.qos, out.retain, out.payload)
                .await
            {
                warn!(cause = %err, "cannot publish");
            }
        }
        let current = epoch.load(Ordering::Acquire);
        for (ack, from) in batch.acks {
            match ack {
                // An ack for an earlier connection would confuse the broker; it redelivers those.
                Ack::Mqtt(publish) => {
                    if let (Some(consumer), true) = (&consumer, from == current) {
                        if let Err(err) = consumer.ack(&publish).await {
                            warn!(cause = %err, "cannot ack");
                        }
                    }
                }
                // A lost ack means a redelivery, answered as a repeat.
                Ack::JetStream(message) => {
                    if let Err(err) = message.ack().await {
                        warn!(cause = %err, "cannot ack");
                    }
                }
            }
        }
    }
    let _ = producer.disconnect().await;
    let _ = done.send(());
}

/// On a NATS cluster: the producer's options for every node, tried in turn,
/// and where to ask for statuses again when the session is new.
pub(crate) struct Failover {
    /// One per node (the same client id and persistent session).
    pub(crate) options: Vec<MqttOptions>,
    /// The node tried after the next failure.
    pub(crate) next: usize,
    /// The writer's jobs (weak: the writer ends once the intake lets go).
    pub(crate) jobs: mpsc::WeakUnboundedSender<Job>,
}

/// Drives the producer connection's event loop (it only publishes) until it has
/// sent its DISCONNECT, reconnecting with backoff meanwhile (on a cluster, to
/// the next node).
pub(crate) async fn produce(
    mut eventloop: EventLoop,
    mut failover: Option<Failover>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                failures = 0;
                if let Some(failover) = &failover {
                    let (host, port) = eventloop.mqtt_options.broker_address();
                    info!(node = %format!("{host}:{port}"), session_present = ack.session_present, "bridge's producer connected");
                    // A new session on the cluster: its retained statuses may be
                    // missing too (a cluster started afresh).
                    if !ack.session_present {
                        let job = Job {
                            work: Work::Store(Input::Republish),
                            ack: None,
                            epoch: 0,
                        };
                        if let Some(jobs) = failover.jobs.upgrade() {
                            let _ = jobs.send(job);
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(err) => {
                if shutdown.is_cancelled() {
                    return;
                }
                failures = failures.saturating_add(1);
                let delay = backoff(failures);
                warn!(cause = %err, retry_in_ms = delay.as_millis() as u64, "bridge's producer lost the broker");
                if let Some(failover) = &mut failover {
                    if let Some(options) = failover.options.get(failover.next) {
                        eventloop.mqtt_options = options.clone();
                    }
                    failover.next = (failover.next + 1) % failover.options.len().max(1);
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The producer's window of unacknowledged outgoing QoS 1 publishes: the most rumqttc allows.
///
/// The bridge publishes and acks on two connections. rumqttd (0.20) parks a
/// connection whose 100 slots of unacked publishes *to* it are full and then sends
/// it nothing, PUBACKs included, until it acks something. Were the bridge's acks
/// queued behind its publishes on one connection (rumqttc has one request channel,
/// and takes no request while its outgoing window is full), a large batch would
/// fill both windows and neither side would ever move again. The producer
/// subscribes to nothing, so the broker never parks it, and the consumer's acks
/// never wait behind publishes.
const OUTGOING_INFLIGHT: u16 = u16::MAX;

/// The bridge's socket options: TCP_NODELAY. rumqttc writes every packet on its
/// own; with Nagle's algorithm, a packet written while the previous one is unacked
/// waits for the broker's delayed ACK (40 ms on Linux) whenever the broker has
/// nothing to send back at once — the bridge's acks to the broker, mostly.
pub(crate) fn network() -> NetworkOptions {
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network
}

/// The options of the consumer connection (`<username>:<instance>`): a persistent
/// session with manual acks, so that requests the bridge has not handled stay
/// with the broker across reconnects and restarts.
pub(crate) fn options(
    broker: &crate::config::BrokerAddress,
    client_id: String,
    username: &str,
    password: &str,
    keepalive: Duration,
    max_packet: usize,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    options
        .set_credentials(username, password)
        .set_keep_alive(keepalive)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_inflight(OUTGOING_INFLIGHT)
        .set_max_packet_size(max_packet, max_packet);
    options
}

/// The options of the producer connection (`<username>:<instance>-out`): it
/// only publishes, so it needs no session.
pub(crate) fn producer_options(consumer: &MqttOptions, max_packet: usize) -> MqttOptions {
    let (host, port) = consumer.broker_address();
    let mut options = MqttOptions::new(format!("{}-out", consumer.client_id()), host, port);
    if let Some(login) = consumer.credentials() {
        options.set_credentials(login.username, login.password);
    }
    options
        .set_keep_alive(consumer.keep_alive())
        .set_clean_session(true)
        .set_inflight(OUTGOING_INFLIGHT)
        .set_max_packet_size(max_packet, max_packet);
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        for n in 0..100 {
            let d = backoff(n);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(15_000),
                "{n}: {d:?}"
            );
        }
    }
}
