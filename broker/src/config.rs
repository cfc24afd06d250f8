//! The broker's settings (the `[broker]` table of the configuration).

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

pub use messenger_protocol::config::ConfigError;

/// Settings of the embedded broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// MQTT over TCP; `None` (`""` in the configuration) turns plain MQTT off: the
    /// broker then listens on a loopback port of its own choosing that only the TLS
    /// and WebSocket fronts and the service account (the bridge) may sign in through.
    /// Port 0 picks a free port.
    #[serde(deserialize_with = "optional_addr")]
    pub listen: Option<SocketAddr>,
    /// MQTT over WebSocket; `None` (`""`) turns the WebSocket listener off. Port 0 picks a free port.
    #[serde(deserialize_with = "optional_addr")]
    pub ws_listen: Option<SocketAddr>,
    /// MQTT over TLS (8883 by convention); `None` (`""`, the default) turns it off.
    /// Needs the `[tls]` certificate and key.
    #[serde(deserialize_with = "optional_addr")]
    pub tls_listen: Option<SocketAddr>,
    /// MQTT over WebSocket over TLS (the web listener over HTTPS/WSS); `None` (`""`,
    /// the default) turns it off. Needs the `[tls]` certificate and key.
    #[serde(deserialize_with = "optional_addr")]
    pub wss_listen: Option<SocketAddr>,
    /// Largest MQTT packet accepted from a client, in bytes.
    pub max_packet_bytes: usize,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Most open connections from one client address (IPv6: one /64), counted from
    /// their CONNECT; the next is refused with CONNACK 3. The WebSocket front's
    /// connections count by their client's address. 0: no bound (for a node behind
    /// a proxy that hides client addresses). The service account is not counted.
    pub max_connections_per_ip: usize,
    /// Devices of one user connected at once; the next sign-in is refused with
    /// CONNACK 5. Not a `[broker]` key: the binary copies `limits.max_devices` here.
    #[serde(skip)]
    pub max_devices: usize,
    /// How long a new TCP connection may take to send CONNECT, in milliseconds.
    pub connect_timeout_ms: u16,
    /// How long a web client may take to send a request head (a WebSocket
    /// upgrade included), and the longest an upload's body may pause, in milliseconds.
    pub ws_handshake_timeout_ms: u64,
    /// Size of one segment of a subscription's in-memory log, in bytes. The log of
    /// `chat/<user>/inbox` or `chat/<user>/dev/<device>` is that device's offline queue;
    /// older events are dropped (devices fill gaps with `sync`). A message larger than
    /// a segment still fits: a segment overflows by its last message.
    pub segment_bytes: usize,
    /// Segments kept per subscription log; with `segment_bytes` this bounds its memory.
    pub segment_count: usize,
    /// Size of one segment of the logs behind the bridge's subscriptions (`chat/+/out/+`
    /// and `presence/+/+`), in bytes. Every device's requests share one such log, and the
    /// broker drops its oldest segment even when the bridge has not read it yet: this
    /// bounds how far the bridge may fall behind a burst before requests are lost.
    pub service_segment_bytes: usize,
    /// Unacknowledged publishes the broker sends the service account (the bridge)
    /// before waiting for its acks; devices get 100. The bridge acks a whole batch
    /// after its commit, so this bounds its batches.
    pub service_inflight: u16,
    /// How often to look for revoked accounts (removed users, changed passwords), in milliseconds.
    pub revocation_poll_ms: u64,
    /// Wrong passwords for one user before its password sign-ins are throttled:
    /// refused unchecked within a window that starts at `sign_in_backoff_ms` and
    /// doubles with each further wrong password, up to `sign_in_max_backoff_ms`.
    /// A successful sign-in starts the count over. Device tokens are not throttled.
    pub sign_in_free_failures: u32,
    /// Failed password sign-ins from one source address (IPv6: one /64) before
    /// that address's password sign-ins are throttled the same way (for every user).
    pub sign_in_free_failures_per_address: u32,
    /// The first throttling window, in milliseconds.
    pub sign_in_backoff_ms: u64,
    /// The longest throttling window, in milliseconds.
    pub sign_in_max_backoff_ms: u64,
    /// How long the CONNACK refusing a password sign-in is held back, in milliseconds
    /// (the connection waits; nothing else does).
    pub sign_in_failure_delay_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            ws_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8083))),
            tls_listen: None,
            wss_listen: None,
            max_packet_bytes: 128 * 1024,
            max_connections: 20_000,
            max_connections_per_ip: 256,
            max_devices: 10,
            connect_timeout_ms: 5_000,
            ws_handshake_timeout_ms: 5_000,
            segment_bytes: 32 * 1024,
            segment_count: 2,
            service_segment_bytes: 8 * 1024 * 1024,
            service_inflight: 1000,
            revocation_poll_ms: 1_000,
            sign_in_free_failures: 5,
            sign_in_free_failures_per_address: 20,
            sign_in_backoff_ms: 1_000,
            sign_in_max_backoff_ms: 60_000,
            sign_in_failure_delay_ms: 1_000,
        }
    }
}

/// A listener's address: `host:port` with an IP address, or empty for off.
fn optional_addr<'de, D: Deserializer<'de>>(de: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(de)?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "expected host:port with an IP address, or \"\" to turn the listener off (got {text:?})"
        ))
    })
}

impl BrokerConfig {
    /// Whether a listener needs the `[tls]` certificate.
    pub fn needs_tls(&self) -> bool {
        self.tls_listen.is_some() || self.wss_listen.is_some()
    }

    /// Checks values that parse but make no sense, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_packet_bytes < 1024 || self.max_packet_bytes > 16 * 1024 * 1024 {
            return Err(ConfigError::invalid(
                "broker.max_packet_bytes",
                "be between 1024 and 16777216",
            ));
        }
        if self.segment_bytes < 1024 {
            return Err(ConfigError::invalid(
                "broker.segment_bytes",
                "be at least 1024",
            ));
        }
        if self.service_segment_bytes < self.segment_bytes {
            return Err(ConfigError::invalid(
                "broker.service_segment_bytes",
                "be at least broker.segment_bytes",
            ));
        }
        if self.service_inflight == 0 {
            return Err(ConfigError::invalid(
                "broker.service_inflight",
                "be between 1 and 65535",
            ));
        }
        if self.segment_count == 0 {
            return Err(ConfigError::invalid(
                "broker.segment_count",
                "be at least 1",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "broker.max_connections",
                "be at least 1",
            ));
        }
        if self.max_devices == 0 {
            return Err(ConfigError::invalid("limits.max_devices", "be at least 1"));
        }
        if self.connect_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "broker.connect_timeout_ms",
                "be above 0",
            ));
        }
        if self.ws_handshake_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "broker.ws_handshake_timeout_ms",
                "be above 0",
            ));
        }
        if self.revocation_poll_ms == 0 {
            return Err(ConfigError::invalid(
                "broker.revocation_poll_ms",
                "be above 0",
            ));
        }
        if self.sign_in_free_failures == 0 {
            return Err(ConfigError::invalid(
                "broker.sign_in_free_failures",
                "be at least 1",
            ));
        }
        if self.sign_in_free_failures_per_address == 0 {
            return Err(ConfigError::invalid(
                "broker.sign_in_free_failures_per_address",
                "be at least 1",
            ));
        }
        if self.sign_in_backoff_ms == 0 || self.sign_in_backoff_ms > self.sign_in_max_backoff_ms {
            return Err(ConfigError::invalid(
                "broker.sign_in_backoff_ms",
                "be above 0 and at most broker.sign_in_max_backoff_ms",
            ));
        }
        if self.sign_in_max_backoff_ms > 3_600_000 {
            return Err(ConfigError::invalid(
                "broker.sign_in_max_backoff_ms",
                "be at most 3600000 (an hour)",
            ));
        }
        if self.sign_in_failure_delay_ms > 10_000 {
            return Err(ConfigError::invalid(
                "broker.sign_in_failure_delay_ms",
                "be at most 10000",
            ));
        }
        Ok(())
    }
}

/// The `[tls]` table: the certificate the TLS listeners (`broker.tls_listen`,
/// `broker.wss_listen`) present. Read at start and again on reload.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first, sent to clients as given.
    pub cert_path: Option<std::path::PathBuf>,
    /// PEM file with the leaf certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: Option<std::path::PathBuf>,
}
