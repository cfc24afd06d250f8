//! What the bridge counts for the admin listener's `/metrics`, and what its
//! readiness is made of. Clones share the same values; recording is an atomic
//! add per request and two histogram observations per batch.

use std::sync::Arc;

use messenger_protocol::wire::{ErrorCode, Request};
use messenger_push::{Counts, ProviderCounts, Queue};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The labels of `messenger_requests_total`: `type` and `outcome`.
type RequestLabels = [(&'static str, &'static str); 2];

/// The `type` label of a request that did not decode.
pub(crate) const INVALID: &str = "invalid";

/// The `outcome` label of a request that succeeded (whatever its reply).
pub(crate) const ACK: &str = "ack";

/// The bridge's metrics and readiness signals.
#[derive(Debug, Clone)]
pub struct BridgeMetrics {
    requests: Family<RequestLabels, Counter>,
    messages_stored: Counter,
    batch_size: Histogram,
    commit_seconds: Histogram,
    /// Jobs waiting for the writer, sampled as it takes each batch.
    pub(crate) queue_depth: Gauge,
    /// 1 while the consumer connection is subscribed to the requests.
    pub(crate) subscribed: Gauge,
    /// 1 once the store is open and while the last batch committed.
    pub(crate) storage_ok: Gauge,
}

impl Default for BridgeMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            messages_stored: Counter::default(),
            // 1, 2, 4, ... 1024 requests: the writer takes at most 1024 jobs.
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            // 100 µs to ~3.3 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            queue_depth: Gauge::default(),
            subscribed: Gauge::default(),
            storage_ok: Gauge::default(),
        }
    }
}

impl BridgeMetrics {
    /// Adds the bridge's metrics to `registry`; with `push`, the push queue's too.
    pub(crate) fn register(&self, registry: &mut Registry, push: Option<Arc<Queue>>) {
        registry.register(
            "messenger_requests",
            "Device requests handled, by type and outcome (ack or the error code)",
            self.requests.clone(),
        );
        registry.register(
            "messenger_messages_stored",
            "Send requests acknowledged (a message stored, or a repeat of one)",
            self.messages_stored.clone(),
        );
        registry.register(
            "messenger_commit_batch_size",
            "Jobs per writer transaction",
            self.batch_size.clone(),
        );
        registry.register(
            "messenger_commit_seconds",
            "Time the store took for one batch, its commit (fsync) included",
            self.commit_seconds.clone(),
        );
        registry.register(
            "messenger_writer_queue_depth",
            "Jobs waiting for the writer thread, sampled at each batch",
            self.queue_depth.clone(),
        );
        registry.register(
            "messenger_bridge_subscribed",
            "1 while the bridge is connected to the broker and subscribed to the requests",
            self.subscribed.clone(),
        );
        registry.register(
            "messenger_storage_ok",
            "1 once the store is open and while the writer's last batch committed",
            self.storage_ok.clone(),
        );
        if let Some(queue) = push {
            registry.register_collector(Box::new(PushCollector(queue)));
        }
    }

    /// Why the bridge is not ready (connected, subscribed, storage writable), if it is not.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.subscribed.get() != 1 {
            Some("the bridge is not subscribed to the broker")
        } else if self.storage_ok.get() != 1 {
            Some("storage is not writable: the last batch did not commit")
        } else {
            None
        }
    }

    /// Counts one request's outcome.
    pub(crate) fn request(&self, kind: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&[("type", kind), ("outcome", outcome)])
            .inc();
        if kind == "send" && outcome == ACK {
            self.messages_stored.inc();
        }
    }

    /// Records one batch: its size, how long the store took, whether it committed.
    pub(crate) fn batch(&self, size: usize, took: std::time::Duration, committed: bool) {
        self.batch_size.observe(size as f64);
        self.commit_seconds.observe(took.as_secs_f64());
        self.storage_ok.set(i64::from(committed));
    }
}

/// The `type` label of a request.
pub(crate) fn kind(request: &Request) -> &'static str {
    match request {
        Request::Send { .. } => "send",
        Request::Receipt { .. } => "receipt",
        Request::Sync { .. } => "sync",
        Request::History { .. } => "history",
        Request::Conversations { .. } => "conversations",
        Request::Members { .. } => "members",
        Request::GroupCreate { .. } => "group_create",
        Request::GroupAdd { .. } => "group_add",
        Request::GroupRemove { .. } => "group_remove",
        Request::GroupLeave { .. } => "group_leave",
        Request::PushRegister { .. } => "push_register",
        Request::PushUnregister { .. } => "push_unregister",
        Request::Mute { .. } => "mute",
        Request::Typing { .. } => "typing",
        Request::Token { .. } => "token",
        Request::Edit { .. } => "edit",
        Request::Delete { .. } => "delete",
        Request::React { .. } => "react",
        Request::Search { .. } => "search",
        Request::Block { .. } => "block",
        Request::Unblock { .. } => "unblock",
        Request::Blocks { .. } => "blocks",
    }
}

/// The `outcome` label of an error code.
pub(crate) fn code(code: ErrorCode) -> &'static str {
    code.as_str()
}

/// The `outcome` label of a reply payload: an `error` reply's code, else [`ACK`].
/// Only a payload that starts as an error reply is parsed.
pub(crate) fn outcome_of(reply: &[u8]) -> &'static str {
    #[derive(serde::Deserialize)]
    struct ErrorReply {
        code: ErrorCode,
    }
    if !reply.starts_with(br#"{"type":"error""#) {
        return ACK;
    }
    match serde_json::from_slice::<ErrorReply>(reply) {
        Ok(reply) => code(reply.code),
        Err(_) => "unknown",
    }
}

/// The push service's counters, read at each scrape.
#[derive(Debug)]
struct PushCollector(Arc<Queue>);

impl Collector for PushCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts: Counts = self.0.counts();
        counter(
            &mut encoder,
            "messenger_push_queued",
            "Notifications handed to the push queue",
            counts.queued,
        )?;
        counter(
            &mut encoder,
            "messenger_push_coalesced",
            "Notifications replaced by a newer one for the same user and conversation",
            counts.coalesced,
        )?;
        let depth = ConstGauge::new(counts.pending as i64);
        let metric = encoder.encode_descriptor(
            "messenger_push_queue_depth",
            "Notifications waiting in the push queue",
            None,
            depth.metric_type(),
        )?;
        depth.encode(metric)?;
        let providers = [("apns", counts.apns), ("fcm", counts.fcm)];
        let results: [(&str, Read); 5] = [
            ("sent", |c| c.sent),
            ("failed", |c| c.failed),
            ("rejected", |c| c.rejected),
            ("unregistered", |c| c.unregistered),
            ("dropped", |c| c.dropped),
        ];
        let mut family = encoder.encode_descriptor(
            "messenger_push_deliveries",
            "Deliveries (one notification to one token) by provider and how they ended",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (provider, c) in &providers {
            for (result, value) in &results {
                let labels = [("provider", *provider), ("result", *result)];
                ConstCounter::new(value(c)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "messenger_push_retries",
            "Push requests repeated after 429, 5xx or no answer, by provider",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (provider, c) in &providers {
            let labels = [("provider", *provider)];
            ConstCounter::new(c.retried).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Reads one counter of a provider's.
type Read = fn(&ProviderCounts) -> u64;

/// Encodes one counter without labels.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
    counter.encode(metric)
}
