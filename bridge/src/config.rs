//! The bridge's settings: the `[bridge]` table. The `[storage]` and `[limits]`
//! tables are the store's (`messenger_store::config`), `[push]` the push
//! service's (`messenger_push::config`); they are re-exported here.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

pub use messenger_push::config::{ApnsConfig, FcmConfig, PushConfig};
pub use messenger_store::config::{ConfigError, Durability, Limits, StorageConfig};

/// How the bridge reaches the broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// The broker's MQTT address, `host:port` (ignored by `serve`, which uses its embedded broker).
    pub broker: String,
    /// The service account's MQTT username.
    pub username: String,
    /// The service account's MQTT password (`serve` generates one per run when empty).
    pub password: String,
    /// This bridge instance's name: the device part of its client id.
    pub instance: String,
    /// MQTT keepalive, in seconds.
    pub keepalive_secs: u16,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            broker: "127.0.0.1:1883".into(),
            username: "_bridge".into(),
            password: String::new(),
            instance: "main".into(),
            keepalive_secs: 30,
        }
    }
}

impl BridgeConfig {
    /// Checks values that parse but make no sense, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.broker_address()?;
        if self.username.is_empty() {
            return Err(ConfigError::invalid("bridge.username", "not be empty"));
        }
        // The bridge also connects as `<instance>-out`, which must be a device id too.
        if self.instance.is_empty()
            || messenger_protocol::DeviceId::parse(&format!("{}-out", self.instance)).is_err()
        {
            return Err(ConfigError::invalid(
                "bridge.instance",
                "be 1-60 of A-Z a-z 0-9 _ -",
            ));
        }
        if self.keepalive_secs == 0 {
            return Err(ConfigError::invalid(
                "bridge.keepalive_secs",
                "be at least 1",
            ));
        }
        Ok(())
    }

    /// `bridge.broker`, parsed.
    pub fn broker_address(&self) -> Result<BrokerAddress, ConfigError> {
        self.broker.parse().map_err(|_| {
            ConfigError::invalid(
                "bridge.broker",
                format!("be host:port, got {:?}", self.broker),
            )
        })
    }

    /// The MQTT keepalive: `keepalive_secs`, at least 5 s (the client library's floor).
    pub fn mqtt_keepalive(&self) -> Duration {
        Duration::from_secs(u64::from(self.keepalive_secs.max(5)))
    }

    /// How often presence is reconciled with the broker's connections: every
    /// `keepalive_secs`, when a device that vanished has missed its keepalive.
    pub fn reconcile_every(&self) -> Duration {
        Duration::from_secs(u64::from(self.keepalive_secs.max(1)))
    }
}

/// The `[nats]` table: the broker tier on a NATS cluster. Off while `servers`
/// is empty; then the bridge takes requests from its broker's MQTT session.
///
/// On: each bridge answers the nodes' auth callout (sign-in and per-user
/// permissions from the shared accounts), takes requests from a JetStream
/// durable consumer of its own on the nodes' MQTT stream, publishes events as an
/// MQTT client of the nodes in `mqtt`, and disconnects revoked users everywhere.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// The nodes' NATS client listeners, `host:port`, tried in turn.
    pub servers: Vec<String>,
    /// The nodes' MQTT listeners, `host:port`: where the bridge publishes events
    /// (the first that answers; the next on failure).
    pub mqtt: Vec<String>,
    /// The account nkey seed (`SA…`) that signs the auth callout's answers: the
    /// nodes' `auth_callout.issuer` is its public key.
    pub issuer_seed_file: std::path::PathBuf,
    /// The NATS account devices and the bridge are placed in.
    pub account: String,
    /// The callout account's user, whose connections answer sign-ins.
    pub auth_user: String,
    /// Its password.
    pub auth_password: String,
    /// The system account's user, whose requests disconnect revoked users.
    pub system_user: String,
    /// Its password.
    pub system_password: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            mqtt: Vec::new(),
            issuer_seed_file: "nats/issuer.seed".into(),
            account: "MSG".into(),
            auth_user: "auth".into(),
            auth_password: String::new(),
            system_user: "sys".into(),
            system_password: String::new(),
        }
    }
}

impl NatsConfig {
    /// True when the bridge runs on a NATS cluster.
    pub fn enabled(&self) -> bool {
        !self.servers.is_empty()
    }

    /// Checks the table when on, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        for (key, list) in [("nats.servers", &self.servers), ("nats.mqtt", &self.mqtt)] {
            if list.is_empty() {
                return Err(ConfigError::invalid(key, "list at least one host:port"));
            }
            for address in list {
                address.parse::<BrokerAddress>().map_err(|_| {
                    ConfigError::invalid(key, format!("list host:port addresses, got {address:?}"))
                })?;
            }
        }
        for (key, value) in [
            ("nats.account", &self.account),
            ("nats.auth_user", &self.auth_user),
            ("nats.auth_password", &self.auth_password),
            ("nats.system_user", &self.system_user),
            ("nats.system_password", &self.system_password),
        ] {
            if value.is_empty() {
                return Err(ConfigError::invalid(key, "not be empty"));
            }
        }
        Ok(())
    }

    /// `mqtt`, parsed.
    pub fn mqtt_addresses(&self) -> Vec<BrokerAddress> {
        self.mqtt.iter().filter_map(|a| a.parse().ok()).collect()
    }
}

/// A broker's MQTT address: `host:port` (IPv6 hosts in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Why a broker address does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected host:port")]
pub struct BadAddress;

impl std::str::FromStr for BrokerAddress {
    type Err = BadAddress;

    fn from_str(s: &str) -> Result<Self, BadAddress> {
        let (host, port) = s.rsplit_once(':').ok_or(BadAddress)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(BadAddress);
        }
        Ok(Self {
            host: host.to_owned(),
            port: port.parse().map_err(|_| BadAddress)?,
        })
    }
}

impl From<std::net::SocketAddr> for BrokerAddress {
    fn from(addr: std::net::SocketAddr) -> Self {
        Self {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        let a: BrokerAddress = "127.0.0.1:1883".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 1883));
        let b: BrokerAddress = "[::1]:1883".parse().unwrap();
        assert_eq!(
            (b.host.as_str(), b.to_string()),
            ("::1", "[::1]:1883".into())
        );
        for bad in ["", "localhost", ":1883", "host:port", "host:70000"] {
            assert_eq!(bad.parse::<BrokerAddress>(), Err(BadAddress), "{bad}");
        }
        let config = BridgeConfig {
            broker: "nonsense".into(),
            ..BridgeConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("bridge.broker must be host:port"), "{err}");
    }
}
