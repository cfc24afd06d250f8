//! The connection task: drives rumqttc's event loop, reconnects with backoff,
//! and switches the credentials between the password and the device token.
//!
//! It never waits on the session task (what it forwards goes through an
//! unbounded channel), so the session may block on publishing into rumqttc's
//! request channel without a deadlock: this task keeps draining it.

use bytes::Bytes;
use rumqttc::{ConnectionError, Event, EventLoop, Outgoing, Packet};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::error::RefusalCode;

/// What the connection task tells the session task.
#[derive(Debug)]
pub(crate) enum NetEvent {
    /// A CONNACK: signed in (again).
    Connected {
        /// Whether the device token (not the password) signed in.
        with_token: bool,
    },
    /// The connection was lost; reconnecting.
    Disconnected,
    /// A message from the broker.
    Publish {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Bytes,
    },
    /// A publish went out with this packet id (0 for QoS 0).
    PublishSent(u16),
    /// The broker acknowledged the QoS 1 publish with this packet id.
    PubAck(u16),
    /// The DISCONNECT packet went out; the task has ended.
    DisconnectSent,
    /// The broker refused the password for good; the task has ended.
    Refused(RefusalCode),
}

/// The credentials to sign in with.
#[derive(Debug)]
struct Credentials {
    user: String,
    password: String,
    /// The device token, once the bridge issued one and until the broker refuses it.
    token: Option<String>,
}

/// The connection task's state.
pub(crate) struct Connection {
    /// rumqttc's event loop, connected once already (by `Client::connect`).
    pub(crate) eventloop: EventLoop,
    /// Where everything the session needs goes.
    pub(crate) events: mpsc::UnboundedSender<NetEvent>,
    /// Device tokens from the session (the `token` reply).
    pub(crate) tokens: watch::Receiver<Option<String>>,
    /// The user id (MQTT username).
    pub(crate) user: String,
    /// The password from the configuration.
    pub(crate) password: String,
    /// The options for each of the service's addresses (one but on a cluster).
    pub(crate) brokers: Vec<rumqttc::MqttOptions>,
    /// The one tried after the next lost connection.
    pub(crate) next_broker: usize,
}

impl Connection {
    /// Polls until `shutdown`, a sent DISCONNECT, a final refusal, or the session's end.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut creds = Credentials {
            user: self.user.clone(),
            password: self.password.clone(),
            token: None,
        };
        let mut backoff = Backoff::default();
        let mut connected = true;
        loop {
            if self.tokens.has_changed().unwrap_or(false) {
                let token = self.tokens.borrow_and_update().clone();
                if let Some(token) = token {
                    debug!("device token received; reconnects use it");
                    creds.token = Some(token);
                    self.apply(&creds);
                }
            }
            let polled = tokio::select! {
                () = shutdown.cancelled() => return,
                polled = self.eventloop.poll() => polled,
            };
            let forward = match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    backoff.reset();
                    info!("reconnected");
                    NetEvent::Connected {
                        with_token: self.using_token(&creds),
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => NetEvent::Publish {
                    topic: p.topic,
                    payload: p.payload,
                },
                Ok(Event::Incoming(Packet::PubAck(a))) => NetEvent::PubAck(a.pkid),
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => NetEvent::PublishSent(pkid),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    let _ = self.events.send(NetEvent::DisconnectSent);
                    return;
                }
                Ok(_) => continue,
                Err(err) => {
                    if connected {
                        connected = false;
                        warn!(cause = %err, "connection lost");
                        if self.events.send(NetEvent::Disconnected).is_err() {
                            return;
                        }
                    } else {
                        debug!(cause = %err, "reconnect failed");
                    }
                    match &err {
                        ConnectionError::ConnectionRefused(code) => {
                            if let Some(code) = RefusalCode::from_mqtt(*code) {
                                if code.is_final() {
                                    if self.using_token(&creds) {
                                        warn!(%code, "device token refused; signing in with the password");
                                        creds.token = None;
                                        self.apply(&creds);
                                        continue;
                                    }
                                    warn!(%code, "sign-in refused; giving up");
                                    let _ = self.events.send(NetEvent::Refused(code));
                                    return;
                                }
                            }
                        }
                        ConnectionError::RequestsDone => return,
                        _ => {}
                    }
                    if self.brokers.len() > 1 {
                        // A cluster: the next node (the session lives in the cluster).
                        if let Some(options) = self.brokers.get(self.next_broker) {
                            self.eventloop.mqtt_options = options.clone();
                            self.apply(&creds);
                        }
                        self.next_broker = (self.next_broker + 1) % self.brokers.len();
                    }
                    let delay = backoff.next_delay(&mut rand::thread_rng());
                    debug!(?delay, "waiting before reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            if self.events.send(forward).is_err() {
                return;
            }
        }
    }

    fn using_token(&self, creds: &Credentials) -> bool {
        creds.token.is_some()
    }

    /// Sets the credentials for the next connection attempt.
    fn apply(&mut self, creds: &Credentials) {
        let secret = creds.token.as_deref().unwrap_or(&creds.password);
        self.eventloop
            .mqtt_options
            .set_credentials(creds.user.as_str(), secret);
    }
}
