//! Push notifications to users with no device online, through APNs and FCM.
//!
//! The crate knows no storage: what to push comes in as [`Notification`]s, and
//! tokens that a push service calls dead go back out as [`DeadToken`]s for the
//! store to delete.
//!
//! # Layout
//!
//! - this file: what the writer hands over ([`Notification`]), the bounded
//!   [`Queue`] between the writer and the workers, counters, and building the service.
//! - [`config`]: the `[push]` settings.
//! - `dispatch`: the worker: coalescing per (user, conversation), one request in
//!   flight per token, retries, dropping dead tokens.
//! - `apns`: the APNs provider API (HTTP/2, ES256 provider tokens).
//! - `fcm`: the FCM HTTP v1 API (HTTP/2, OAuth2 from a service account).
//!
//! A notification travels: writer (computed in the message's transaction, handed
//! over after the commit) -> [`Queue`] (never blocks; full drops the oldest)
//! -> dispatcher (waits out the coalescing window) -> one task per token and request.

pub mod config;

mod apns;
mod dispatch;
mod fcm;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messenger_protocol::wire::Platform;
use messenger_protocol::{ConvId, UserId};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::PushConfig;

/// Failures building the push service at start.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A configured file cannot be read.
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        /// The setting that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A configured file does not hold what it should.
    #[error("{key}: {path} is not {expected}: {reason}")]
    Invalid {
        /// The setting that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What it should hold.
        expected: &'static str,
        /// Why it does not.
        reason: String,
    },
    /// The HTTP client cannot be built.
    #[error("cannot build the push HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// A token a push service called dead: to delete unless it was registered
/// again after `not_after_ms` (the service may have seen it die before that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadToken {
    /// Its push service.
    pub platform: Platform,
    /// The token.
    pub token: String,
    /// When it was seen dead, ms since the epoch.
    pub not_after_ms: u64,
}

/// The wire name of a platform.
pub(crate) fn platform_name(platform: Platform) -> &'static str {
    match platform {
        Platform::Apns => "apns",
        Platform::Fcm => "fcm",
    }
}

/// What a notification says; shared by every token it goes to.
#[derive(Debug)]
pub struct Alert {
    /// Who it is for.
    pub user: UserId,
    /// The conversation (also the collapse and thread id).
    pub conv: ConvId,
    /// The message's seq.
    pub seq: u64,
    /// The sender, or "group name: sender".
    pub title: String,
    /// A preview of the text, or "New message".
    pub body: String,
    /// The user's unread messages across conversations when the message was stored.
    pub badge: u64,
}

/// One token to push to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its push service.
    pub platform: Platform,
    /// The device's token there.
    pub token: String,
}

impl std::hash::Hash for Target {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        platform_name(self.platform).hash(state);
        self.token.hash(state);
    }
}

/// A notification for one user, to each of their tokens.
#[derive(Debug)]
pub struct Notification {
    /// What it says.
    pub alert: Arc<Alert>,
    /// The user's tokens.
    pub targets: Vec<Target>,
}

/// Counters of what became of notifications since start.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Handed over by the writer.
    pub(crate) queued: AtomicU64,
    /// Dropped unsent because the queue was full (the oldest go).
    pub(crate) dropped: AtomicU64,
    /// Replaced by a newer notification for the same user and conversation.
    pub(crate) coalesced: AtomicU64,
    /// What became of the deliveries to APNs tokens.
    pub(crate) apns: ProviderStats,
    /// What became of the deliveries to FCM tokens.
    pub(crate) fcm: ProviderStats,
}

/// Counters of one provider's deliveries (one notification to one token).
#[derive(Debug, Default)]
pub(crate) struct ProviderStats {
    /// Accepted by the push service.
    pub(crate) sent: AtomicU64,
    /// Requests repeated after 429, 5xx or no answer.
    pub(crate) retried: AtomicU64,
    /// Tokens the push service called dead, deleted.
    pub(crate) unregistered: AtomicU64,
    /// Refused by the push service for another reason; not repeated.
    pub(crate) rejected: AtomicU64,
    /// Given up after the last retry.
    pub(crate) failed: AtomicU64,
    /// APNs provider tokens signed again because APNs said they expired.
    pub(crate) reauthorized: AtomicU64,
    /// Dropped unsent with their notification (the queue was full).
    pub(crate) dropped: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// One provider's counters.
    pub(crate) fn provider(&self, platform: Platform) -> &ProviderStats {
        match platform {
            Platform::Apns => &self.apns,
            Platform::Fcm => &self.fcm,
        }
    }

    fn sum(&self, counter: impl Fn(&ProviderStats) -> &AtomicU64) -> u64 {
        Self::get(counter(&self.apns)) + Self::get(counter(&self.fcm))
    }
}

impl ProviderStats {
    fn counts(&self) -> ProviderCounts {
        ProviderCounts {
            sent: Stats::get(&self.sent),
            retried: Stats::get(&self.retried),
            unregistered: Stats::get(&self.unregistered),
            rejected: Stats::get(&self.rejected),
            failed: Stats::get(&self.failed),
            reauthorized: Stats::get(&self.reauthorized),
            dropped: Stats::get(&self.dropped),
        }
    }
}

/// What became of notifications since start: a snapshot, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Handed over by the writer.
    pub queued: u64,
    /// Dropped unsent because the queue was full.
    pub dropped: u64,
    /// Replaced by a newer notification for the same user and conversation.
    pub coalesced: u64,
    /// Notifications waiting in the queue now.
    pub pending: u64,
    /// Deliveries to APNs tokens.
    pub apns: ProviderCounts,
    /// Deliveries to FCM tokens.
    pub fcm: ProviderCounts,
}

/// What became of one provider's deliveries (one notification to one token) since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderCounts {
    /// Accepted by the push service.
    pub sent: u64,
    /// Requests repeated after 429, 5xx or no answer.
    pub retried: u64,
    /// Tokens the push service called dead (then deleted).
    pub unregistered: u64,
    /// Refused by the push service for another reason; not repeated.
    pub rejected: u64,
    /// Given up after the last retry.
    pub failed: u64,
    /// APNs provider tokens signed again because APNs said they expired.
    pub reauthorized: u64,
    /// Dropped unsent with their notification (the queue was full).
    pub dropped: u64,
}

/// The bounded queue from the writer to the dispatcher. Pushing never blocks
/// (the lock is held for a few instructions); when full, the oldest pending
/// notification is dropped, counted and logged.
#[derive(Debug)]
pub struct Queue {
    items: Mutex<VecDeque<Notification>>,
    /// At least 1.
    capacity: usize,
    ready: Notify,
    stats: Arc<Stats>,
}

impl Queue {
    fn new(capacity: usize, stats: Arc<Stats>) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            ready: Notify::new(),
            stats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Notification>> {
        // Plain data: a panic elsewhere cannot leave it half-updated.
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a notification, dropping the oldest pending one if the queue is full.
    pub fn push(&self, notification: Notification) {
        Stats::add(&self.stats.queued);
        let dropped = {
            let mut items = self.lock();
            let dropped = if items.len() >= self.capacity {
                items.pop_front()
            } else {
                None
            };
            items.push_back(notification);
            dropped
        };
        if let Some(old) = dropped {
            let total = Stats::add(&self.stats.dropped);
            for target in &old.targets {
                Stats::add(&self.stats.provider(target.platform).dropped);
            }
            warn!(
                user = %old.alert.user,
                conv = %old.alert.conv,
                dropped_total = total,
                "push queue full: dropped the oldest pending notification"
            );
        }
        self.ready.notify_one();
    }

    /// What became of notifications since start, and how many wait now.
    pub fn counts(&self) -> Counts {
        let stats = &self.stats;
        Counts {
            queued: Stats::get(&stats.queued),
            dropped: Stats::get(&stats.dropped),
            coalesced: Stats::get(&stats.coalesced),
            pending: self.lock().len() as u64,
            apns: stats.apns.counts(),
            fcm: stats.fcm.counts(),
        }
    }

    /// Takes everything pending.
    fn drain(&self) -> VecDeque<Notification> {
        std::mem::take(&mut *self.lock())
    }
}

/// Where the writer hands notifications, and how they read.
#[derive(Debug, Clone)]
pub struct Sink {
    /// Where notifications wait for the dispatcher.
    pub queue: Arc<Queue>,
    /// Whether notifications show the message's text.
    pub preview: bool,
}

/// The push service: clients for the configured providers and the dispatcher's settings.
pub struct Service {
    shared: Arc<dispatch::Shared>,
    queue: Arc<Queue>,
    preview: bool,
    coalesce: Duration,
}

impl Service {
    /// Reads the keys and builds the clients (blocking: files). Tokens a push
    /// service calls dead are sent on `dead`.
    pub fn new(
        config: &PushConfig,
        dead: mpsc::UnboundedSender<DeadToken>,
    ) -> Result<Self, PushError> {
        let http = http_client(config)?;
        let apns = config
            .apns
            .as_ref()
            .map(|c| apns::Apns::new(c, http.clone()))
            .transpose()?;
        let fcm = config
            .fcm
            .as_ref()
            .map(|c| fcm::Fcm::new(c, http.clone(), Duration::from_millis(config.timeout_ms)))
            .transpose()?;
        let stats = Arc::new(Stats::default());
        info!(
            apns = apns.is_some(),
            fcm = fcm.is_some(),
            preview = config.preview,
            coalesce_ms = config.coalesce_ms,
            "push notifications on"
        );
        Ok(Self {
            shared: Arc::new(dispatch::Shared::new(
                apns,
                fcm,
                config,
                dead,
                stats.clone(),
            )),
            queue: Arc::new(Queue::new(config.queue_size, stats)),
            preview: config.preview,
            coalesce: Duration::from_millis(config.coalesce_ms),
        })
    }

    /// Where the writer hands notifications.
    pub fn sink(&self) -> Sink {
        Sink {
            queue: self.queue.clone(),
            preview: self.preview,
        }
    }

    /// Runs the dispatcher until `shutdown`; what is pending then is dropped.
    pub async fn run(self, shutdown: CancellationToken) {
        let stats = self.shared.stats.clone();
        dispatch::run(self.shared, self.queue, self.coalesce, shutdown).await;
        info!(
            queued = Stats::get(&stats.queued),
            sent = stats.sum(|p| &p.sent),
            coalesced = Stats::get(&stats.coalesced),
            dropped = Stats::get(&stats.dropped),
            retried = stats.sum(|p| &p.retried),
            unregistered = stats.sum(|p| &p.unregistered),
            rejected = stats.sum(|p| &p.rejected),
            failed = stats.sum(|p| &p.failed),
            reauthorized = stats.sum(|p| &p.reauthorized),
            "push stopped"
        );
    }
}

/// One HTTP/2 client for both providers: TLS by rustls (public roots plus
/// `push.ca_cert_path`), and HTTP/2 without TLS for `http://` URLs.
fn http_client(config: &PushConfig) -> Result<reqwest::Client, PushError> {
    let timeout = Duration::from_millis(config.timeout_ms);
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .http2_prior_knowledge()
        .timeout(timeout)
        .connect_timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(60))
        .http2_keep_alive_while_idle(true);
    if let Some(path) = &config.ca_cert_path {
        let pem = std::fs::read(path).map_err(|source| PushError::Read {
            key: "push.ca_cert_path",
            path: path.clone(),
            source,
        })?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| PushError::Invalid {
            key: "push.ca_cert_path",
            path: path.clone(),
            expected: "a PEM certificate",
            reason: e.to_string(),
        })?;
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder.build()?)
}

/// What became of one request to a push service.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Accepted.
    Sent,
    /// The token is dead: delete it, unless it was registered after `since_ms`.
    Unregistered {
        reason: String,
        since_ms: Option<u64>,
    },
    /// Worth repeating later (429, 5xx, no answer), after `after` if the service said.
    Retry {
        status: Option<u16>,
        reason: String,
        after: Option<Duration>,
    },
    /// APNs said the provider token expired: sign a new one and repeat once.
    Reauthorize { reason: String },
    /// Refused; repeating would not help.
    Rejected { status: u16, reason: String },
}

/// Longest `apns-collapse-id` APNs accepts, in bytes.
const MAX_COLLAPSE_ID_BYTES: usize = 64;

/// The collapse id of a conversation's notifications: its id, or where that is
/// longer than APNs allows, the first 64 hex digits of its SHA-256.
fn collapse_id(conv: &ConvId) -> String {
    let id = conv.to_string();
    if id.len() <= MAX_COLLAPSE_ID_BYTES {
        return id;
    }
    let mut hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(id.as_bytes()));
    hex.truncate(MAX_COLLAPSE_ID_BYTES);
    hex
}

/// Sends one request to a push provider and reads its answer: [`Outcome::Sent`]
/// on success, a retry when the provider could not be reached, otherwise what
/// `classify` makes of the status, the provider's error body and `Retry-After`.
async fn exchange<E: serde::de::DeserializeOwned + Default>(
    request: reqwest::RequestBuilder,
    classify: impl FnOnce(u16, E, Option<Duration>) -> Outcome,
) -> Outcome {
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) => {
            return Outcome::Retry {
                status: None,
                reason: transport(&err),
                after: None,
            }
        }
    };
    if response.status().is_success() {
        return Outcome::Sent;
    }
    let status = response.status().as_u16();
    let after = retry_after(response.headers());
    let error: E = response.json().await.unwrap_or_default();
    classify(status, error, after)
}

/// The `Retry-After` header, in seconds (the form push services use).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Why a request got no answer, for logs.
fn transport(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut reason = format!("{kind}: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(n: u64) -> Notification {
        Notification {
            alert: Arc::new(Alert {
                user: UserId::parse("u").unwrap(),
                conv: ConvId::parse("dm:a:u").unwrap(),
                seq: n,
                title: "a".into(),
                body: "b".into(),
                badge: n,
            }),
            targets: Vec::new(),
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let stats = Arc::new(Stats::default());
        let queue = Queue::new(3, stats.clone());
        for n in 1..=5 {
            queue.push(notification(n));
        }
        let seqs: Vec<u64> = queue.drain().iter().map(|n| n.alert.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(Stats::get(&stats.dropped), 2);
        assert_eq!(Stats::get(&stats.queued), 5);
        assert!(queue.drain().is_empty());
    }

    #[test]
    fn collapse_ids_fit_apns() {
        let short = ConvId::parse("dm:a:b").unwrap();
        assert_eq!(collapse_id(&short), "dm:a:b");
        let long = ConvId::parse(&format!("g:{}", "x".repeat(64))).unwrap();
        let id = collapse_id(&long);
        assert_eq!(id.len(), MAX_COLLAPSE_ID_BYTES);
        assert_ne!(
            id,
            collapse_id(&ConvId::parse(&format!("g:{}", "y".repeat(64))).unwrap())
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
