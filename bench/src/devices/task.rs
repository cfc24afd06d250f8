//! One device's event loop: connects (one of at most `CONNECTING` attempts at a
//! time), subscribes and announces presence, records what arrives, reconnects with
//! jitter after any error, and disconnects cleanly when the fleet stops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use messenger_protocol::wire::Event;
use rand::Rng;
use rumqttc::{AsyncClient, ConnectionError, EventLoop, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::sender::{raw_stamp, stamp, Sender};
use super::{Kind, Shared, CONTROL};

/// One device's event loop.
pub(super) struct DeviceTask {
    pub(super) client: AsyncClient,
    /// The device's user: messages from this user are its own copies, not deliveries.
    pub(super) user: String,
    /// `chat/<user>/inbox`.
    pub(super) inbox: String,
    /// `chat/<user>/dev/<device>`.
    pub(super) dev: String,
    /// `presence/<user>/<device>`.
    pub(super) presence: String,
    pub(super) kind: Kind,
    /// Sends again on every reply while the fleet's budget lasts (closed loop).
    pub(super) sender: Option<Arc<Sender>>,
    pub(super) shared: Arc<Shared>,
}

impl DeviceTask {
    pub(super) async fn run(self, mut eventloop: EventLoop, stop: CancellationToken) {
        let mut connected = false;
        let mut ready = false;
        loop {
            let permit = if connected {
                None
            } else {
                tokio::select! {
                    () = stop.cancelled() => break,
                    permit = self.shared.connecting.acquire() => permit.ok(),
                }
            };
            let polled = tokio::select! {
                () = stop.cancelled() => break,
                polled = eventloop.poll() => polled,
            };
            drop(permit);
            match polled {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    if self.on_connect() {
                        ready = self.mark_ready(ready);
                    }
                }
                Ok(rumqttc::Event::Incoming(Packet::SubAck(_))) => ready = self.mark_ready(ready),
                Ok(rumqttc::Event::Incoming(Packet::Publish(publish))) => {
                    self.on_publish(&publish.payload);
                }
                Ok(_) => {}
                Err(err) => {
                    debug!(user = %self.user, cause = %err, "device connection error");
                    if matches!(err, ConnectionError::ConnectionRefused(_)) {
                        self.shared.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    if ready {
                        self.shared.ready.fetch_sub(1, Ordering::AcqRel);
                        ready = false;
                    }
                    connected = false;
                    let pause = Duration::from_millis(rand::thread_rng().gen_range(50..150));
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        if connected && self.client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    match eventloop.poll().await {
                        Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        if ready {
            self.shared.ready.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Subscribes and announces presence; true when the device needs no SUBACK to be ready.
    fn on_connect(&self) -> bool {
        let subscribed = match &self.kind {
            Kind::User => {
                let filters = [&self.inbox, &self.dev]
                    .map(|t| rumqttc::SubscribeFilter::new(t.to_string(), QoS::AtLeastOnce));
                let subscribed = self.client.try_subscribe_many(filters);
                let _ = self
                    .client
                    .try_publish(&self.presence, QoS::AtLeastOnce, true, "online");
                subscribed
            }
            Kind::Service { filter } => self.client.try_subscribe(filter, QoS::AtLeastOnce),
            Kind::Publisher => return true,
        };
        if subscribed.is_err() {
            self.shared.metrics.errors.fetch_add(1, Ordering::Relaxed);
        }
        false
    }

    fn mark_ready(&self, ready: bool) -> bool {
        if !ready {
            self.shared.ready.fetch_add(1, Ordering::AcqRel);
            self.shared.connects.fetch_add(1, Ordering::AcqRel);
        }
        true
    }

    fn on_publish(&self, payload: &[u8]) {
        let metrics = &self.shared.metrics;
        if matches!(self.kind, Kind::Service { .. }) {
            if let Some(sent) = raw_stamp(payload) {
                metrics.deliveries.record_since(sent);
            }
            return;
        }
        let Ok(event) = serde_json::from_slice::<Event>(payload) else {
            return;
        };
        match &event {
            Event::Message { from, id, .. } => {
                if from.as_str() != self.user {
                    if let Some(sent) = stamp(id.as_str()) {
                        metrics.deliveries.record_since(sent);
                    }
                }
            }
            Event::Ack { id, .. } if !id.as_str().starts_with(CONTROL) => {
                if let Some(sent) = stamp(id.as_str()) {
                    metrics.acks.record_since(sent);
                }
                self.next();
            }
            Event::Error { id, .. } if !id.as_deref().unwrap_or("").starts_with(CONTROL) => {
                metrics.errors.fetch_add(1, Ordering::Relaxed);
                self.next();
            }
            _ => {
                if let Some(id) = reply_id(&event) {
                    if id.starts_with(CONTROL) {
                        let mut control = self
                            .shared
                            .control
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        control.insert(id.to_owned(), event);
                    }
                }
            }
        }
    }

    /// Closed loop: one reply in, one more send out, while the budget lasts.
    fn next(&self) {
        if let Some(sender) = &self.sender {
            if self.shared.budget.fetch_sub(1, Ordering::AcqRel) > 0 {
                sender.try_send(&self.shared.metrics);
            }
        }
    }
}

/// The request id a reply echoes.
fn reply_id(event: &Event) -> Option<&str> {
    match event {
        Event::Ack { id, .. }
        | Event::Sync { id, .. }
        | Event::History { id, .. }
        | Event::Conversations { id, .. }
        | Event::Members { id, .. }
        | Event::Token { id, .. } => Some(id.as_str()),
        Event::Error { id, .. } => id.as_deref(),
        _ => None,
    }
}
