//! How to reach the broker and who signs in.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use messenger_protocol::{topics, wire, DeviceId, UserId};
use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::error::ClientError;

/// How the bytes travel to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// MQTT over TCP (the broker's `listen` address).
    #[default]
    Tcp,
    /// MQTT over WebSocket (the broker's `ws_listen` address), at `ws://<broker>/mqtt`
    /// (`wss://` with [`ClientConfig::tls`]).
    WebSocket,
}

/// Which certificates a TLS connection trusts to sign the broker's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The operating system's trusted CAs.
    SystemRoots,
    /// Only the CA certificates in this PEM file (a private CA).
    CaFile(PathBuf),
}

/// Everything [`Client::connect`](crate::Client::connect) needs.
///
/// Build it with [`ClientConfig::new`] and adjust the public fields.
#[derive(Clone)]
pub struct ClientConfig {
    /// The broker's address, `host:port` (for either transport).
    pub broker: String,
    /// More addresses of the same service (a cluster's other nodes), tried in
    /// turn, after `broker`, each time the connection is lost; empty by default.
    pub other_brokers: Vec<String>,
    /// TCP or WebSocket.
    pub transport: Transport,
    /// TLS over either transport (the broker's `tls_listen` or `wss_listen`
    /// address), trusting these CAs; `None` for plain TCP or WebSocket.
    pub tls: Option<Trust>,
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
            .field("tls", &self.tls)
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
            other_brokers: Vec::new(),
            transport: Transport::Tcp,
            tls: None,
            user,
            device,
            password: password.into(),
            keepalive: Duration::from_secs(30),
            request_timeout: Duration::from_secs(20),
            start_after_useq: 0,
            max_packet_bytes: 128 * 1024,
        }
    }

    /// The options for `broker` and then for each of `other_brokers`, in turn.
    pub(crate) fn every_broker(&self) -> Result<Vec<MqttOptions>, ClientError> {
        std::iter::once(&self.broker)
            .chain(&self.other_brokers)
            .map(|broker| {
                let mut one = self.clone();
                one.broker = broker.clone();
                one.mqtt_options()
            })
            .collect()
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
        let tls = match &self.tls {
            Some(trust) => Some(TlsConfiguration::Rustls(tls_config(trust)?)),
            None => None,
        };
        let mut options = match (self.transport, tls) {
            (Transport::Tcp, None) => MqttOptions::new(self.client_id(), host, port),
            (Transport::Tcp, Some(tls)) => {
                let mut o = MqttOptions::new(self.client_id(), host, port);
                o.set_transport(rumqttc::Transport::Tls(tls));
                o
            }
            (Transport::WebSocket, None) => {
                let mut o =
                    MqttOptions::new(self.client_id(), format!("ws://{}/mqtt", self.broker), port);
                o.set_transport(rumqttc::Transport::Ws);
                o
            }
            (Transport::WebSocket, Some(tls)) => {
                let mut o = MqttOptions::new(
                    self.client_id(),
                    format!("wss://{}/mqtt", self.broker),
                    port,
                );
                o.set_transport(rumqttc::Transport::Wss(tls));
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

/// A rustls client configuration (ring provider) trusting `trust`.
pub(crate) fn tls_config(trust: &Trust) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    match trust {
        Trust::SystemRoots => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(ClientError::Config(
                    "no trusted CA certificates found on this system; give a CA file".into(),
                ));
            }
        }
        Trust::CaFile(path) => {
            let bad =
                |why: String| ClientError::Config(format!("CA file {}: {why}", path.display()));
            let pem = std::fs::read(path).map_err(|err| bad(format!("cannot read it: {err}")))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| bad(format!("not a valid PEM file: {err}")))?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad("no CA certificate in it".into()));
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| ClientError::Config(format!("TLS: {err}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Splits `host:port` (`[v6]:port` too) at the last colon.
pub(crate) fn split_host_port(addr: &str) -> Result<(String, u16), ClientError> {
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
    fn tls_transports() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let mut c = config();
        c.tls = Some(Trust::CaFile(ca.clone()));
        let o = c.mqtt_options().unwrap();
        assert!(matches!(o.transport(), rumqttc::Transport::Tls(_)));
        assert_eq!(o.broker_address().0, "127.0.0.1");
        c.transport = Transport::WebSocket;
        let o = c.mqtt_options().unwrap();
        assert!(matches!(o.transport(), rumqttc::Transport::Wss(_)));
        assert_eq!(o.broker_address().0, "wss://127.0.0.1:1883/mqtt");

        for (file, content) in [("missing.pem", None), ("empty.pem", Some("no pem here\n"))] {
            let path = dir.path().join(file);
            if let Some(content) = content {
                std::fs::write(&path, content).unwrap();
            }
            let mut c = config();
            c.tls = Some(Trust::CaFile(path));
            let err = c.mqtt_options().unwrap_err().to_string();
            assert!(err.contains(file), "{err}");
        }
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
