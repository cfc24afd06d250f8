//! The bridge's settings: the `[bridge]`, `[storage]`, `[limits]` and `[push]` tables.

use std::path::PathBuf;

use serde::Deserialize;

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

/// When a commit counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every commit is fsynced before its acks go out (`synchronous = FULL`):
    /// nothing acked is lost even if the machine loses power.
    Fsync,
    /// Commits reach the OS but are not fsynced (`synchronous = NORMAL` in WAL
    /// mode): survives a crash of the process, not of the machine.
    Os,
}

/// Where and how conversations are stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The SQLite file (shared with the account store).
    pub path: PathBuf,
    /// The durability policy.
    pub durability: Durability,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("data/messenger.db"),
            durability: Durability::Fsync,
        }
    }
}

/// Limits on requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message body, in bytes.
    pub max_body_bytes: usize,
    /// Largest page of `sync` and `history`.
    pub max_page: u32,
    /// Largest group.
    pub max_group_members: usize,
    /// Longest group name, in characters.
    pub max_group_name_chars: usize,
    /// Most devices (distinct device ids with presence or a device token) per user.
    pub max_devices_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024,
            max_page: 500,
            max_group_members: 1024,
            max_group_name_chars: 100,
            max_devices_per_user: 50,
        }
    }
}

impl Limits {
    /// The largest request payload the bridge accepts: a body at its limit,
    /// JSON-escaped in the worst case (`\u00XX`, 6 bytes a byte), plus the envelope.
    pub fn max_request_bytes(&self) -> usize {
        self.max_body_bytes * 6 + 4096
    }

    /// The largest reply the bridge publishes (a page of `sync` or `history` is cut to fit):
    /// room for the largest single event plus its envelope.
    pub fn max_reply_bytes(&self) -> usize {
        self.max_request_bytes() + 8 * 1024
    }

    /// Checks values that parse but make no sense, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes == 0 || self.max_body_bytes > 1024 * 1024 {
            return Err("limits.max_body_bytes must be between 1 and 1048576".into());
        }
        if self.max_page == 0 || self.max_page > 10_000 {
            return Err("limits.max_page must be between 1 and 10000".into());
        }
        if self.max_group_members < 2 || self.max_group_members > 100_000 {
            return Err("limits.max_group_members must be between 2 and 100000".into());
        }
        if self.max_group_name_chars == 0 {
            return Err("limits.max_group_name_chars must be at least 1".into());
        }
        if self.max_devices_per_user == 0 || self.max_devices_per_user > 10_000 {
            return Err("limits.max_devices_per_user must be between 1 and 10000".into());
        }
        Ok(())
    }
}

/// Push notifications to offline users: the `[push]` table. Off unless
/// `[push.apns]` or `[push.fcm]` is configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Show the message's text in the notification; `false` sends "New message".
    pub preview: bool,
    /// Messages to one user in one conversation within this window become one push, in ms.
    pub coalesce_ms: u64,
    /// Most notifications waiting for a worker; past it the oldest is dropped.
    pub queue_size: usize,
    /// Most requests in flight to the push services at once (one per token at most).
    pub concurrency: usize,
    /// Retries of a request that got 429, 5xx or no answer, with exponential backoff.
    pub max_retries: u32,
    /// The first retry's delay, in ms (doubled each time, with jitter), unless `Retry-After` says.
    pub retry_base_ms: u64,
    /// How long one request to a push service (or fetching an FCM access token) may take, in ms.
    pub timeout_ms: u64,
    /// A PEM certificate to trust besides the public roots (a private relay; tests).
    pub ca_cert_path: Option<PathBuf>,
    /// Apple Push Notification service; absent: no APNs pushes.
    pub apns: Option<ApnsConfig>,
    /// Firebase Cloud Messaging (HTTP v1); absent: no FCM pushes.
    pub fcm: Option<FcmConfig>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            preview: true,
            coalesce_ms: 1000,
            queue_size: 10_000,
            concurrency: 64,
            max_retries: 3,
            retry_base_ms: 500,
            timeout_ms: 10_000,
            ca_cert_path: None,
            apns: None,
            fcm: None,
        }
    }
}

/// APNs with token-based authentication (a `.p8` signing key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApnsConfig {
    /// `https://api.push.apple.com`, or `https://api.sandbox.push.apple.com` for
    /// development builds; an `http://` URL speaks HTTP/2 without TLS (tests).
    pub base_url: String,
    /// The `.p8` signing key (PKCS#8 PEM, P-256) from Apple's developer account.
    pub key_path: PathBuf,
    /// The key's 10-character id (the JWT's `kid`).
    pub key_id: String,
    /// The developer team id (the JWT's `iss`).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.push.apple.com".into(),
            key_path: PathBuf::new(),
            key_id: String::new(),
            team_id: String::new(),
            topic: String::new(),
        }
    }
}

/// FCM HTTP v1 with a service account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FcmConfig {
    /// `https://fcm.googleapis.com`; an `http://` URL speaks HTTP/2 without TLS (tests).
    pub base_url: String,
    /// The service account's JSON key file: the project id and the OAuth token URL come from it.
    pub service_account_path: PathBuf,
}

impl Default for FcmConfig {
    fn default() -> Self {
        Self {
            base_url: "https://fcm.googleapis.com".into(),
            service_account_path: PathBuf::new(),
        }
    }
}

impl PushConfig {
    /// Whether any push service is configured.
    pub fn enabled(&self) -> bool {
        self.apns.is_some() || self.fcm.is_some()
    }

    /// Checks values that parse but make no sense, naming the key (files are read at start).
    pub fn validate(&self) -> Result<(), String> {
        if self.coalesce_ms > 60_000 {
            return Err("push.coalesce_ms must be at most 60000".into());
        }
        if self.queue_size == 0 {
            return Err("push.queue_size must be at least 1".into());
        }
        if self.concurrency == 0 {
            return Err("push.concurrency must be at least 1".into());
        }
        if self.max_retries > 10 {
            return Err("push.max_retries must be at most 10".into());
        }
        if self.retry_base_ms == 0 || self.retry_base_ms > 60_000 {
            return Err("push.retry_base_ms must be between 1 and 60000".into());
        }
        if self.timeout_ms == 0 {
            return Err("push.timeout_ms must be at least 1".into());
        }
        if let Some(apns) = &self.apns {
            check_url("push.apns.base_url", &apns.base_url)?;
            for (key, value) in [
                ("push.apns.key_id", &apns.key_id),
                ("push.apns.team_id", &apns.team_id),
                ("push.apns.topic", &apns.topic),
            ] {
                if value.is_empty() {
                    return Err(format!("{key} must be set when [push.apns] is"));
                }
            }
            if apns.key_path.as_os_str().is_empty() {
                return Err("push.apns.key_path must be set when [push.apns] is".into());
            }
        }
        if let Some(fcm) = &self.fcm {
            check_url("push.fcm.base_url", &fcm.base_url)?;
            if fcm.service_account_path.as_os_str().is_empty() {
                return Err("push.fcm.service_account_path must be set when [push.fcm] is".into());
            }
        }
        Ok(())
    }
}

fn check_url(key: &str, url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(format!(
            "{key} must be an http:// or https:// URL, got {url:?}"
        )),
    }
}
