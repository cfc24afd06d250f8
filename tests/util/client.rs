//! rumqttc clients against a [`TestBroker`], and waits on what they receive.

use std::collections::VecDeque;
use std::net::SocketAddr;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Outgoing,
    Packet, Publish, QoS, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::PATIENCE;

/// How a client reaches the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over WebSocket (`ws://host:port/mqtt`).
    Ws,
}

/// What a client will connect with; see `TestBroker::device` and `TestBroker::bridge`.
pub(crate) struct ClientOptions {
    options: MqttOptions,
    username: String,
    password: String,
}

impl ClientOptions {
    /// A device signing in as client id `client_id` (`<user>:<device>`) to the
    /// broker listening on `mqtt` (TCP) and `ws` (WebSocket), with the user part
    /// as username (see [`ClientOptions::username`]).
    pub(crate) fn new(
        (mqtt, ws): (SocketAddr, SocketAddr),
        transport: Transport,
        client_id: &str,
        password: &str,
    ) -> Self {
        let mut options = match transport {
            Transport::Tcp => MqttOptions::new(client_id, mqtt.ip().to_string(), mqtt.port()),
            Transport::Ws => {
                let mut options = MqttOptions::new(client_id, format!("ws://{ws}/mqtt"), ws.port());
                options.set_transport(rumqttc::Transport::Ws);
                options
            }
        };
        options.set_max_packet_size(128 * 1024, 128 * 1024);
        let username = client_id.split(':').next().unwrap_or_default().to_owned();
        Self {
            options,
            username,
            password: password.to_owned(),
        }
    }

    /// Signs in with this MQTT username instead of the client id's user part.
    pub(crate) fn username(mut self, username: &str) -> Self {
        username.clone_into(&mut self.username);
        self
    }

    /// Leaves a last will: `payload` on `topic`, QoS 1, retained.
    pub(crate) fn will(mut self, topic: &str, payload: &str) -> Self {
        self.options.set_last_will(LastWill::new(
            topic,
            payload.as_bytes().to_vec(),
            QoS::AtLeastOnce,
            true,
        ));
        self
    }

    /// Adjusts the MQTT options (keepalive, clean session, ...).
    pub(crate) fn tune(&mut self, edit: impl FnOnce(&mut MqttOptions)) {
        edit(&mut self.options);
    }

    /// Connects and waits for the CONNACK: the connected client, or why it failed
    /// (a refusal is `ConnectionError::ConnectionRefused(code)`, see [`refusal`]).
    pub(crate) async fn connect(mut self) -> Result<Client, ConnectionError> {
        self.options.set_credentials(self.username, self.password);
        let (mqtt, mut eventloop) = AsyncClient::new(self.options, 64);
        let first = timeout(PATIENCE, eventloop.poll())
            .await
            .expect("no CONNACK (nor a connection error) within patience")?;
        match first {
            Event::Incoming(Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, ConnectReturnCode::Success);
            }
            other => panic!("expected a CONNACK first, got {other:?}"),
        }
        let (tx, events) = mpsc::unbounded_channel();
        // rumqttc reconnects when polled after an error; a test wants to see the
        // error instead, so forwarding stops at the first one.
        let pump = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let end = event.is_err();
                if tx.send(event).is_err() || end {
                    return;
                }
            }
        });
        Ok(Client {
            mqtt,
            events,
            received: VecDeque::new(),
            pump,
        })
    }
}

/// The CONNACK refusal code of a failed [`ClientOptions::connect`]; panics on anything else.
pub(crate) fn refusal(result: Result<Client, ConnectionError>) -> ConnectReturnCode {
    match result {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(other) => panic!("expected a CONNACK refusal, got the error {other}"),
        Ok(_) => panic!("expected a CONNACK refusal, the connection was accepted"),
    }
}

/// A connected client. Dropping it closes the connection.
pub(crate) struct Client {
    /// The client's request handle, for anything the helpers below do not cover.
    pub(crate) mqtt: AsyncClient,
    /// Every event of the connection, in order; ends after the first error.
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    /// Publishes that arrived while a helper waited for something else, oldest first.
    received: VecDeque<Publish>,
    /// Polls the event loop into `events`.
    pump: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl Client {
    /// Waits for the next event that `pick` takes, keeping publishes it passes over
    /// for [`Client::next_publish`]. Panics if the connection ends or patience runs out.
    async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => panic!("no {what} within {PATIENCE:?}"),
                Ok(None) => panic!("connection gone while waiting for {what}"),
                Ok(Some(Err(err))) => panic!("connection failed while waiting for {what}: {err}"),
                Ok(Some(Ok(event))) => event,
            };
            if let Some(found) = pick(&event) {
                return found;
            }
            if let Event::Incoming(Packet::Publish(publish)) = event {
                self.received.push_back(publish);
            }
        }
    }

    /// Subscribes to `filters` at QoS 1 in one SUBSCRIBE and returns the SUBACK's codes.
    pub(crate) async fn subscribe(&mut self, filters: &[&str]) -> Vec<SubscribeReasonCode> {
        self.mqtt
            .subscribe_many(
                filters
                    .iter()
                    .map(|f| SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce)),
            )
            .await
            .expect("queueing SUBSCRIBE");
        let pkid = self
            .wait_for("outgoing SUBSCRIBE", |e| match e {
                Event::Outgoing(Outgoing::Subscribe(pkid)) => Some(*pkid),
                _ => None,
            })
            .await;
        self.wait_for("SUBACK", |e| match e {
            Event::Incoming(Packet::SubAck(ack)) if ack.pkid == pkid => {
                Some(ack.return_codes.clone())
            }
            _ => None,
        })
        .await
    }

    /// Publishes at QoS 1 and waits for the PUBACK (sent by the broker once it has
    /// handled the publish, routed or not).
    pub(crate) async fn publish(&mut self, topic: &str, payload: &str, retain: bool) {
        self.mqtt
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .expect("queueing PUBLISH");
        let pkid = self
            .wait_for("outgoing PUBLISH", |e| match e {
                Event::Outgoing(Outgoing::Publish(pkid)) => Some(*pkid),
                _ => None,
            })
            .await;
        self.wait_for(&format!("PUBACK for {topic}"), |e| match e {
            Event::Incoming(Packet::PubAck(ack)) if ack.pkid == pkid => Some(()),
            _ => None,
        })
        .await;
    }

    /// Publishes a request as `user`'s raw device (client id `<user>:raw`), at QoS 1.
    pub(crate) async fn request(&self, user: &str, payload: &[u8]) {
        self.mqtt
            .publish(
                format!("chat/{user}/out/raw"),
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            )
            .await
            .expect("publish");
    }

    /// Publishes a request as `user`'s raw device and returns the bridge's reply
    /// (the next publish, which must be on `chat/<user>/dev/raw`).
    /// Publishes on other topics that come first stay queued, in order.
    pub(crate) async fn reply(&mut self, user: &str, payload: &[u8]) -> serde_json::Value {
        self.request(user, payload).await;
        let dev = format!("chat/{user}/dev/raw");
        let mut others = Vec::new();
        let body = loop {
            let (topic, body) = self.next_publish().await;
            if topic == dev {
                break body;
            }
            others.push((topic, body));
        };
        for (topic, body) in others.into_iter().rev() {
            self.received
                .push_front(Publish::new(topic, QoS::AtLeastOnce, body.into_bytes()));
        }
        serde_json::from_str(&body).expect("replies are JSON")
    }

    /// The next message received, as `(topic, payload)`.
    pub(crate) async fn next_publish(&mut self) -> (String, String) {
        let publish = match self.received.pop_front() {
            Some(p) => p,
            None => {
                self.wait_for("PUBLISH", |e| match e {
                    Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
                    _ => None,
                })
                .await
            }
        };
        (
            publish.topic,
            String::from_utf8_lossy(&publish.payload).into_owned(),
        )
    }

    /// The next `n` messages received, as `(topic, payload)`, sorted (for
    /// messages on several topics, whose relative order MQTT does not fix).
    pub(crate) async fn next_publishes(&mut self, n: usize) -> Vec<(String, String)> {
        let mut got = Vec::with_capacity(n);
        for _ in 0..n {
            got.push(self.next_publish().await);
        }
        got.sort();
        got
    }

    /// Waits until the broker ends the connection; returns why it ended.
    pub(crate) async fn disconnected(&mut self) -> ConnectionError {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => panic!("the connection was still open after {PATIENCE:?}"),
                Ok(None) => panic!("event pump gone without an error"),
                Ok(Some(Err(err))) => return err,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// The SUBACK code of a granted QoS 1 subscription.
pub(crate) const GRANTED: SubscribeReasonCode = SubscribeReasonCode::Success(QoS::AtLeastOnce);
/// The SUBACK code of a refused subscription (0x80).
pub(crate) const REFUSED: SubscribeReasonCode = SubscribeReasonCode::Failure;
