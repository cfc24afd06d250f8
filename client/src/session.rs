//! The session task: owns the protocol state of one device.
//!
//! It reacts to the connection task's [`NetEvent`]s and to the [`Command`]s of
//! [`Client`](crate::Client) handles: on every connection it subscribes, says
//! `online`, syncs from the cursor and republishes pending requests; it routes
//! replies to their requests by id, applies inbox events in `useq` order, and
//! publishes batched `delivered` receipts.

mod inbound;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use messenger_protocol::topics;
use messenger_protocol::wire::{self, ReceiptStatus, Request};
use messenger_protocol::{ConvId, DeviceId, UserId};
use rumqttc::{AsyncClient, QoS, SubscribeFilter};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::connection::NetEvent;
use crate::error::ClientError;
use crate::event::ClientEvent;
use crate::inbox::Inbox;
use crate::receipts::Receipts;
use crate::requests::{new_request_id, Pending, Requests, Retry, Waiter, RETRANSMIT_EVERY};

/// How long `delivered` receipts gather before one per conversation is published.
pub(crate) const RECEIPT_DELAY: Duration = Duration::from_millis(50);
/// How often pending requests are checked (retransmission, callers that gave up).
const TICK: Duration = Duration::from_secs(1);
/// Events asked for per `sync` page.
pub(crate) const SYNC_PAGE: u32 = 100;
/// How long a graceful disconnect waits for the broker to acknowledge `offline`.
const OFFLINE_ACK_WAIT: Duration = Duration::from_secs(2);
/// How long a graceful disconnect waits for the DISCONNECT packet to go out.
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);

/// What a [`Client`](crate::Client) handle asks of the session.
#[derive(Debug)]
pub(crate) enum Command {
    /// Publish a request with an id and route its reply to `reply`.
    Request {
        /// The request id.
        id: String,
        /// The encoded request.
        payload: Vec<u8>,
        /// Its retransmission policy.
        retry: Retry,
        /// Where the reply goes.
        reply: oneshot::Sender<Result<wire::Event, ClientError>>,
    },
    /// A `read` receipt (batched like `delivered` ones).
    Read {
        /// The conversation.
        conv: ConvId,
        /// Everything up to this seq.
        seq: u64,
    },
    /// A typing indicator (dropped while disconnected).
    Typing {
        /// The conversation.
        conv: ConvId,
    },
    /// Follow (or stop following) a user's `status/<user>`.
    Status {
        /// The user.
        user: UserId,
        /// Subscribe or unsubscribe.
        follow: bool,
    },
    /// Say `offline`, disconnect cleanly and stop; `done` fires when over.
    Disconnect {
        /// Fired at the end.
        done: oneshot::Sender<()>,
    },
}

/// The session task's state.
pub(crate) struct Session {
    user: UserId,
    /// `chat/<user>/out/<device>`.
    out_topic: String,
    /// `chat/<user>/inbox`.
    inbox_topic: String,
    /// `chat/<user>/dev/<device>`.
    dev_topic: String,
    /// `presence/<user>/<device>`.
    presence_topic: String,
    /// rumqttc's request handle.
    mqtt: AsyncClient,
    /// The app's event stream.
    events: mpsc::UnboundedSender<ClientEvent>,
    /// The cursor, readable by [`Client::cursor`](crate::Client::cursor); mirrors `inbox`.
    cursor: Arc<AtomicU64>,
    /// Device tokens for the connection task.
    tokens: watch::Sender<Option<String>>,
    /// Whether to ask the bridge for a device token after a sign-in with the password.
    want_token: bool,
    inbox: Inbox,
    receipts: Receipts,
    /// When the gathered receipts are published; `None` when nothing waits.
    flush_at: Option<Instant>,
    requests: Requests,
    /// Users whose status is followed; resubscribed on every connection.
    statuses: BTreeSet<UserId>,
    /// Between a CONNACK and the loss of that connection.
    connected: bool,
    /// Packet ids of QoS 1 publishes the broker has not acknowledged yet.
    inflight: HashSet<u16>,
}

impl Session {
    /// A session for `user`'s `device`, whose inbox was applied up to `cursor`.
    #[expect(
        clippy::too_many_arguments,
        reason = "the session owns each of these channels and handles"
    )]
    pub(crate) fn new(
        user: UserId,
        device: &DeviceId,
        start_after_useq: u64,
        mqtt: AsyncClient,
        events: mpsc::UnboundedSender<ClientEvent>,
        cursor: Arc<AtomicU64>,
        tokens: watch::Sender<Option<String>>,
        want_token: bool,
    ) -> Self {
        cursor.store(start_after_useq, Ordering::Release);
        Self {
            out_topic: topics::out(&user, device),
            inbox_topic: topics::inbox(&user),
            dev_topic: topics::dev(&user, device),
            presence_topic: topics::presence(&user, device),
            user,
            mqtt,
            events,
            cursor,
            tokens,
            want_token,
            inbox: Inbox::new(start_after_useq),
            receipts: Receipts::default(),
            flush_at: None,
            requests: Requests::default(),
            statuses: BTreeSet::new(),
            connected: false,
            inflight: HashSet::new(),
        }
    }

    /// Runs until `shutdown`, a `Disconnect` command, the last handle's drop, or
    /// the connection task's end; then cancels `shutdown` so that both tasks stop.
    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut net: mpsc::UnboundedReceiver<NetEvent>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let flush_at = self.flush_at;
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = net.recv() => match event {
                    Some(event) => {
                        if !self.on_net(event).await {
                            break;
                        }
                    }
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(Command::Disconnect { done }) => {
                        self.disconnect(&mut net).await;
                        let _ = done.send(());
                        break;
                    }
                    Some(command) => self.on_command(command).await,
                    None => break,
                },
                () = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    self.flush_receipts().await;
                }
                _ = tick.tick() => self.on_tick().await,
            }
        }
        shutdown.cancel();
        self.requests.clear();
        debug!("session ended");
    }

    /// Handles a connection event; `false` when the connection task has ended for good.
    async fn on_net(&mut self, event: NetEvent) -> bool {
        match event {
            NetEvent::Connected { with_token } => self.on_connected(with_token).await,
            NetEvent::Disconnected => {
                self.connected = false;
                self.inflight.clear();
                self.emit(ClientEvent::Disconnected);
            }
            NetEvent::Publish { topic, payload } => self.on_publish(&topic, &payload).await,
            NetEvent::PublishSent(pkid) => {
                if pkid != 0 {
                    self.inflight.insert(pkid);
                }
            }
            NetEvent::PubAck(pkid) => {
                self.inflight.remove(&pkid);
            }
            NetEvent::DisconnectSent => return false,
            NetEvent::Refused(code) => {
                self.connected = false;
                self.emit(ClientEvent::Refused(code));
                return false;
            }
        }
        true
    }

    async fn on_connected(&mut self, with_token: bool) {
        self.connected = true;
        self.inflight.clear();
        self.emit(ClientEvent::Connected);
        let mut filters = vec![
            SubscribeFilter::new(self.inbox_topic.clone(), QoS::AtLeastOnce),
            SubscribeFilter::new(self.dev_topic.clone(), QoS::AtLeastOnce),
        ];
        filters.extend(
            self.statuses
                .iter()
                .map(|u| SubscribeFilter::new(topics::status(u), QoS::AtLeastOnce)),
        );
        if let Err(err) = self.mqtt.subscribe_many(filters).await {
            debug!(cause = %err, "subscribe after the connection task ended");
        }
        self.publish(&self.presence_topic, QoS::AtLeastOnce, true, wire::ONLINE)
            .await;
        // Before the new sync is registered: this drops the old sync's pages.
        let republish = self.requests.on_reconnect(std::time::Instant::now());
        let after = self.inbox.restart_sync();
        self.send_sync(after).await;
        for payload in republish {
            self.publish(&self.out_topic, QoS::AtLeastOnce, false, payload)
                .await;
        }
        if self.want_token && !with_token && !self.requests.has_token_request() {
            let id = new_request_id();
            let request = Request::Token { id: id.clone() };
            self.submit(id.to_string(), &request, Waiter::Token, Retry::Never)
                .await;
        }
        if !self.receipts.is_empty() {
            self.flush_receipts().await;
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Request {
                id,
                payload,
                retry,
                reply,
            } => {
                if self.requests.contains(&id) {
                    let _ = reply.send(Err(ClientError::InvalidRequest(format!(
                        "a request with id {id} is already waiting for its reply"
                    ))));
                    return;
                }
                self.requests.insert(
                    id.clone(),
                    Pending {
                        payload: payload.clone(),
                        waiter: Waiter::Caller(reply),
                        retry,
                        sent_at: None,
                    },
                );
                if self.connected {
                    self.publish(&self.out_topic, QoS::AtLeastOnce, false, payload)
                        .await;
                    self.requests.mark_sent(&id, std::time::Instant::now());
                }
            }
            Command::Read { conv, seq } => {
                if self.receipts.note(&conv, ReceiptStatus::Read, seq) {
                    self.arm_flush();
                }
            }
            Command::Typing { conv } => {
                if self.connected {
                    let payload = encode(&Request::Typing { conv });
                    self.publish(&self.out_topic, QoS::AtMostOnce, false, payload)
                        .await;
                }
            }
            Command::Status { user, follow } => {
                let topic = topics::status(&user);
                let changed = if follow {
                    self.statuses.insert(user)
                } else {
                    self.statuses.remove(&user)
                };
                if changed && self.connected {
                    let result = if follow {
                        self.mqtt.subscribe(topic, QoS::AtLeastOnce).await
                    } else {
                        self.mqtt.unsubscribe(topic).await
                    };
                    if let Err(err) = result {
                        debug!(cause = %err, "status subscription after the connection task ended");
                    }
                }
            }
            Command::Disconnect { done } => {
                // Handled in `run`; unreachable here, but harmless.
                let _ = done.send(());
            }
        }
    }

    async fn on_tick(&mut self) {
        let dropped = self.requests.prune();
        if dropped > 0 {
            debug!(dropped, "callers stopped waiting");
        }
        if !self.connected {
            return;
        }
        for payload in self
            .requests
            .due(std::time::Instant::now(), RETRANSMIT_EVERY)
        {
            self.publish(&self.out_topic, QoS::AtLeastOnce, false, payload)
                .await;
        }
        if self.inbox.wants_sync() {
            if let Some(after) = self.inbox.start_sync() {
                self.send_sync(after).await;
            }
        }
    }

    /// Requests a sync page (the inbox's sync state is already set).
    async fn send_sync(&mut self, after: u64) {
        let id = new_request_id();
        let request = Request::Sync {
            id: id.clone(),
            after,
            limit: Some(SYNC_PAGE),
        };
        self.submit(
            id.to_string(),
            &request,
            Waiter::Sync { after },
            Retry::Periodic,
        )
        .await;
    }

    /// Registers an internal request and publishes it if connected.
    async fn submit(&mut self, id: String, request: &Request, waiter: Waiter, retry: Retry) {
        let payload = encode(request);
        self.requests.insert(
            id.clone(),
            Pending {
                payload: payload.clone(),
                waiter,
                retry,
                sent_at: None,
            },
        );
        if self.connected {
            self.publish(&self.out_topic, QoS::AtLeastOnce, false, payload)
                .await;
            self.requests.mark_sent(&id, std::time::Instant::now());
        }
    }

    fn arm_flush(&mut self) {
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + RECEIPT_DELAY);
        }
    }

    /// Publishes the gathered receipts, one per conversation and status; while
    /// disconnected they wait for the next connection.
    async fn flush_receipts(&mut self) {
        self.flush_at = None;
        if !self.connected {
            return;
        }
        for (conv, status, seq) in self.receipts.take() {
            let payload = encode(&Request::Receipt { conv, seq, status });
            self.publish(&self.out_topic, QoS::AtLeastOnce, false, payload)
                .await;
        }
    }

    /// The graceful end: receipts out, `offline` retained (waiting briefly for
    /// its PUBACK), then DISCONNECT, which fires no last will.
    async fn disconnect(&mut self, net: &mut mpsc::UnboundedReceiver<NetEvent>) {
        if !self.connected {
            return;
        }
        self.flush_receipts().await;
        self.publish(&self.presence_topic, QoS::AtLeastOnce, true, wire::OFFLINE)
            .await;
        let deadline = Instant::now() + OFFLINE_ACK_WAIT;
        let mut sent_since = false;
        while !(sent_since && self.inflight.is_empty()) {
            tokio::select! {
                () = sleep_until(deadline) => {
                    debug!("no PUBACK for offline in time; disconnecting anyway");
                    break;
                }
                event = net.recv() => match event {
                    Some(NetEvent::PublishSent(pkid)) => {
                        sent_since = true;
                        if pkid != 0 {
                            self.inflight.insert(pkid);
                        }
                    }
                    Some(NetEvent::PubAck(pkid)) => {
                        self.inflight.remove(&pkid);
                    }
                    Some(NetEvent::Publish { topic, payload }) => {
                        self.on_publish(&topic, &payload).await;
                    }
                    // Connection lost or over: nothing more can be said.
                    _ => return,
                },
            }
        }
        if let Err(err) = self.mqtt.disconnect().await {
            debug!(cause = %err, "disconnect after the connection task ended");
            return;
        }
        let deadline = Instant::now() + DISCONNECT_WAIT;
        loop {
            tokio::select! {
                () = sleep_until(deadline) => return,
                event = net.recv() => match event {
                    Some(NetEvent::DisconnectSent) | None => return,
                    Some(_) => {}
                },
            }
        }
    }

    async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        if let Err(err) = self.mqtt.publish(topic, qos, retain, payload).await {
            debug!(topic, cause = %err, "publish after the connection task ended");
        }
    }

    fn emit(&self, event: ClientEvent) {
        // The app may have dropped its stream; events are then not wanted.
        let _ = self.events.send(event);
    }
}

/// Encodes a request; the protocol's own types always serialize.
pub(crate) fn encode(request: &Request) -> Vec<u8> {
    serde_json::to_vec(request).expect("wire requests serialize to JSON")
}
