//! How to reach the broker and who signs in.

use std::time::Duration;

use messenger_protocol::{topics, wire, DeviceId, UserId};
use rumqttc::{LastWill, MqttOptions, QoS};

use crate::error::ClientError;

/// How the bytes travel to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// MQTT over TCP (the broker's `listen` address).
    #[default]
    Tcp,
    /// MQTT over WebSocket (the broker's `ws_listen` address), at `ws://<broker>/mqtt`.
    WebSocket,
}

/// Everything [`Client::connect`](crate::Client::connect) needs.
///
/// Build it with [`ClientConfig::new`] and adjust the public fields.
#[derive(Clone)]
pub struct ClientConfig {
    /// The broker's address, `host:port` (for either transport).
    pub broker: String,
    /// TCP or WebSocket.
    pub transport: Transport,
    /// Who signs in; the MQTT username.
    pub user: UserId,
    /// This device; the MQTT client id is `<user>:<device>`, so two connections
    /// with the same pair take each other's place.
    pub device: DeviceId,
    /// The user's password, or a device token issued for this device. With the
    /// password the client asks the bridge for a device token after signing in and
    /// reconnects with it (cheaper to check); a token given here (`mtk_...`) is used as is.
    pub password: String,
    /// MQTT keep-alive: zero (off) or at least one second.
    pub keepalive: Duration,
    /// How long a request may wait for its reply, connection losses included.
    pub request_timeout: Duration,
    /// The last inbox `useq` this device applied (the app's persisted cursor; 0
    /// for a new device). On every connection the client syncs everything after it.
    pub start_after_useq: u64,
    /// The largest packet to publish; must not exceed the broker's limit
    /// (`broker.max_packet_bytes`), since a broker drops a connection that sends
    /// more. Requests over it fail with [`ClientError::TooLarge`] instead.
    pub max_packet_bytes: usize,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("broker", &self.broker)
            .field("transport", &self.transport)
            .field("user", &self.user)
            .field("device", &self.device)
            .field("keepalive", &self.keepalive)
            .field("request_timeout", &self.request_timeout)
            .field("start_after_useq", &self.start_after_useq)
            .field("max_packet_bytes", &self.max_packet_bytes)
            .finish_non_exhaustive()
    }
}

/// The largest packet accepted from the broker: the largest `broker.max_packet_bytes`
/// a broker of this project can be configured with.
pub(crate) const MAX_INCOMING_PACKET: usize = 16 * 1024 * 1024;

/// Capacity of rumqttc's request channel.
pub(crate) const MQTT_CHANNEL_CAPACITY: usize = 1024;

/// The prefix of a device token (the `token` reply's value).
pub(crate) const TOKEN_PREFIX: &str = "mtk_";

impl ClientConfig {
    /// A configuration with the defaults: TCP, keep-alive 30 s, request timeout
    /// 20 s, cursor 0, 128 KiB packets (the broker's default limit).
    pub fn new(
        broker: impl Into<String>,
        user: UserId,
        device: DeviceId,
        password: impl Into<String>,
    ) -> Self {
        Self {
            broker: broker.into(),
            transport: Transport::Tcp,
            user,
            device,
            password: password.into(),
            keepalive: Duration::from_secs(30),
            request_timeout: Duration::from_secs(20),
            start_after_useq: 0,
            max_packet_bytes: 128 * 1024,
        }
    }

    /// The MQTT client id, `<user>:<device>`.
    pub fn client_id(&self) -> String {
        format!("{}:{}", self.user, self.device)
    }

    /// Whether the password is already a device token (then no other is requested).
    pub(crate) fn password_is_token(&self) -> bool {
        self.password.starts_with(TOKEN_PREFIX)
    }

    /// Checks the values and builds rumqttc's options: persistent session,
    /// credentials, the `offline` last will, packet limits.
    pub(crate) fn mqtt_options(&self) -> Result<MqttOptions, ClientError> {
        let (host, port) = split_host_port(&self.broker)?;
        if !self.keepalive.is_zero() && self.keepalive < Duration::from_secs(1) {
            return Err(ClientError::Config(
                "keepalive must be zero or at least one second".into(),
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(ClientError::Config(
                "request_timeout must be above zero".into(),
            ));
        }
        if self.max_packet_bytes < 1024 {
            return Err(ClientError::Config(
                "max_packet_bytes must be at least 1024".into(),
            ));
        }
        let mut options = match self.transport {
            Transport::Tcp => MqttOptions::new(self.client_id(), host, port),
            Transport::WebSocket => {
                let mut o =
                    MqttOptions::new(self.client_id(), format!("ws://{}/mqtt", self.broker), port);
                o.set_transport(rumqttc::Transport::Ws);
                o
            }
        };
        options
            .set_clean_session(false)
            .set_credentials(self.user.as_str(), self.password.as_str())
            .set_keep_alive(self.keepalive)
            .set_max_packet_size(MAX_INCOMING_PACKET, self.max_packet_bytes)
            .set_request_channel_capacity(MQTT_CHANNEL_CAPACITY)
            .set_last_will(LastWill::new(
                topics::presence(&self.user, &self.device),
                wire::OFFLINE,
                QoS::AtLeastOnce,
                true,
            ));
        Ok(options)
    }
}

/// Splits `host:port` (`[v6]:port` too) at the last colon.
fn split_host_port(addr: &str) -> Result<(String, u16), ClientError> {
    let bad = || ClientError::Config(format!("broker {addr:?} is not host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClientConfig {
        ClientConfig::new(
            "127.0.0.1:1883",
            UserId::parse("alice").unwrap(),
            DeviceId::parse("phone").unwrap(),
            "secret",
        )
    }

    #[test]
    fn options_follow_the_protocol() {
        let o = config().mqtt_options().unwrap();
        assert_eq!(o.client_id(), "alice:phone");
        assert!(!o.clean_session());
        assert_eq!(o.broker_address(), ("127.0.0.1".to_owned(), 1883));
        let login = o.credentials().unwrap();
        assert_eq!(login.username, "alice");
        assert_eq!(login.password, "secret");
        let will = o.last_will().unwrap();
        assert_eq!(will.topic, "presence/alice/phone");
        assert_eq!(&will.message[..], b"offline");
        assert_eq!(will.qos, QoS::AtLeastOnce);
        assert!(will.retain);
        assert_eq!(o.max_packet_size(), MAX_INCOMING_PACKET);
    }

    #[test]
    fn websocket_url() {
        let mut c = config();
        c.transport = Transport::WebSocket;
        let o = c.mqtt_options().unwrap();
        assert_eq!(o.broker_address().0, "ws://127.0.0.1:1883/mqtt");
        assert!(matches!(o.transport(), rumqttc::Transport::Ws));
    }

    #[test]
    fn bad_values_are_refused() {
        for broker in ["", "localhost", ":1883", "host:", "host:99999", "host:x"] {
            let mut c = config();
            c.broker = broker.into();
            assert!(
                matches!(c.mqtt_options(), Err(ClientError::Config(_))),
                "{broker}"
            );
        }
        assert_eq!(split_host_port("[::1]:1883").unwrap().0, "[::1]");
        let mut c = config();
        c.keepalive = Duration::from_millis(500);
        assert!(c.mqtt_options().is_err());
        let mut c = config();
        c.request_timeout = Duration::ZERO;
        assert!(c.mqtt_options().is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        assert!(!format!("{:?}", config()).contains("secret"));
        assert!(!config().password_is_token());
    }
}
