//! The `[push]` settings: APNs and FCM.

use std::path::PathBuf;

use serde::Deserialize;

pub use messenger_protocol::config::ConfigError;

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
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.coalesce_ms > 60_000 {
            return Err(ConfigError::invalid("push.coalesce_ms", "be at most 60000"));
        }
        if self.queue_size == 0 {
            return Err(ConfigError::invalid("push.queue_size", "be at least 1"));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::invalid("push.concurrency", "be at least 1"));
        }
        if self.max_retries > 10 {
            return Err(ConfigError::invalid("push.max_retries", "be at most 10"));
        }
        if self.retry_base_ms == 0 || self.retry_base_ms > 60_000 {
            return Err(ConfigError::invalid(
                "push.retry_base_ms",
                "be between 1 and 60000",
            ));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::invalid("push.timeout_ms", "be at least 1"));
        }
        if let Some(apns) = &self.apns {
            check_url("push.apns.base_url", &apns.base_url)?;
            for (key, value) in [
                ("push.apns.key_id", &apns.key_id),
                ("push.apns.team_id", &apns.team_id),
                ("push.apns.topic", &apns.topic),
            ] {
                if value.is_empty() {
                    return Err(ConfigError::invalid(key, "be set when [push.apns] is"));
                }
            }
            if apns.key_path.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    "push.apns.key_path",
                    "be set when [push.apns] is",
                ));
            }
        }
        if let Some(fcm) = &self.fcm {
            check_url("push.fcm.base_url", &fcm.base_url)?;
            if fcm.service_account_path.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    "push.fcm.service_account_path",
                    "be set when [push.fcm] is",
                ));
            }
        }
        Ok(())
    }
}

fn check_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(ConfigError::invalid(
            key,
            format!("be an http:// or https:// URL, got {url:?}"),
        )),
    }
}
