//! Requests from the nodes' MQTT stream. The nodes keep every QoS 1 publish
//! in the JetStream stream `$MQTT_msgs` (subjects `$MQTT.msgs.<topic with
//! dots>`, replicated). Each bridge reads it through a durable pull consumer of
//! its own, `bridge-<instance>`, filtered to requests and presence, and
//! acknowledges each message once the batch that handled it is durable. As with
//! the embedded broker, every bridge reads everything and hands on only its
//! slots' users' work (the others' is kept a while, see `passed`).
//!
//! Order: JetStream delivers a consumer's messages in stream order, and
//! redelivers unacknowledged ones after `ack_wait`, out of order. So at start,
//! after every reconnection and on any gap in the delivery sequence, the
//! consumer is reset: what it had delivered and not yet had acknowledged comes
//! again, in stream order, before anything newer. Whatever comes twice is
//! answered as a repeat (requests carry ids; presence is idempotent).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use futures_util::StreamExt;
use messenger_store::slots::Ownership;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::mqtt::{route, work_of_topic};
use crate::passed::Passed;
use crate::writer::{Ack, Job, Work};

/// The nodes' stream of MQTT messages (nats-server's internal name; pinned
/// to the server version the tests run).
pub(crate) const STREAM: &str = "$MQTT_msgs";
/// The prefix of its subjects.
const PREFIX: &str = "$MQTT.msgs.";
/// How long a delivered message may stay unacknowledged before it comes again.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long a durable consumer of a bridge that is gone outlives it (its
/// unacknowledged messages stay in the stream meanwhile).
const INACTIVE_THRESHOLD: Duration = Duration::from_secs(3600);

/// The JetStream intake's state.
pub(crate) struct Intake {
    pub(crate) js: jetstream::Context,
    /// `bridge-<instance>`.
    pub(crate) durable: String,
    /// Most messages delivered and not yet acknowledged.
    pub(crate) max_ack_pending: i64,
    /// Counts the NATS connection's (re)connections.
    pub(crate) connects: watch::Receiver<u64>,
    /// Where requests go.
    pub(crate) jobs: mpsc::UnboundedSender<Job>,
    pub(crate) passed: Arc<Mutex<Passed>>,
    pub(crate) ownership: Arc<Ownership>,
    /// 1 while the consumer delivers (readiness).
    pub(crate) subscribed: prometheus_client::metrics::gauge::Gauge,
    /// Notified each time the consumer delivers again.
    pub(crate) ready: Option<Arc<Notify>>,
}

/// Why reading stopped.
enum Stopped {
    /// Shutdown, or the writer is gone: for good.
    ForGood,
    /// A reconnection or a gap: reset and go on.
    Reset,
}

impl Intake {
    /// Reads until `shutdown` or the writer is gone; reconnects with backoff.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let result = self.consume(&shutdown).await;
            self.subscribed.set(0);
            match result {
                Ok(Stopped::ForGood) => return,
                Ok(Stopped::Reset) => failures = 0,
                Err(cause) => {
                    failures = failures.saturating_add(1);
                    let delay = crate::mqtt::backoff(failures);
                    warn!(%cause, retry_in_ms = delay.as_millis() as u64, "bridge cannot read the requests stream");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// The consumer (created if missing), reset, then its messages to the writer.
    async fn consume(&mut self, shutdown: &CancellationToken) -> Result<Stopped, String> {
        self.connects.borrow_and_update();
        let stream = self
            .js
            .get_stream(STREAM)
            .await
            .map_err(|e| format!("stream {STREAM}: {e}"))?;
        let config = pull::Config {
            durable_name: Some(self.durable.clone()),
            filter_subjects: vec![
                format!("{PREFIX}chat.*.out.*"),
                format!("{PREFIX}presence.*.*"),
            ],
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: self.max_ack_pending,
            inactive_threshold: INACTIVE_THRESHOLD,
            ..Default::default()
        };
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(&self.durable, config)
            .await
            .map_err(|e| format!("consumer {}: {e}", self.durable))?;
        // Nothing delivered and unacknowledged (a consumer just made, say,
        // whose replicas may still be electing a leader): nothing to reset.
        if consumer.cached_info().num_ack_pending > 0 {
            consumer
                .reset(None)
                .await
                .map_err(|e| format!("resetting consumer {}: {e}", self.durable))?;
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("consumer {}: {e}", self.durable))?;
        info!(consumer = %self.durable, "bridge reads the requests stream");
        self.subscribed.set(1);
        if let Some(ready) = &self.ready {
            ready.notify_one();
        }
        let mut expected: Option<u64> = None;
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return Ok(Stopped::ForGood),
                changed = self.connects.changed() => {
                    if changed.is_err() {
                        return Ok(Stopped::ForGood);
                    }
                    info!("bridge reconnected to NATS: resetting its consumer");
                    return Ok(Stopped::Reset);
                }
                next = messages.next() => next,
            };
            let message = match next {
                None => return Err("the consumer's messages ended".into()),
                Some(Err(err)) => return Err(err.to_string()),
                Some(Ok(message)) => message,
            };
            let (sequence, topic) = match message.info() {
                Ok(info) => (info.consumer_sequence, topic_of(message.subject.as_str())),
                Err(err) => return Err(format!("a message without its JetStream info: {err}")),
            };
            if expected.is_some_and(|e| e != sequence) {
                warn!(
                    expected = expected.unwrap_or_default(),
                    got = sequence,
                    "a gap in the consumer's deliveries: resetting it"
                );
                return Ok(Stopped::Reset);
            }
            expected = Some(sequence + 1);
            debug!(subject = %message.subject, sequence, "from the requests stream");
            let work = match topic {
                Some(topic) => work_of_topic(&topic, &message.payload),
                None => Work::Skip,
            };
            if !route(
                &self.passed,
                &self.ownership,
                &self.jobs,
                work,
                Ack::JetStream(Box::new(message)),
                0,
            ) {
                return Ok(Stopped::ForGood);
            }
        }
    }
}

/// The MQTT topic of a stream subject: `$MQTT.msgs.chat.alice.out.phone` is
/// `chat/alice/out/phone`. `None` for a subject no topic of ours maps to (a
/// `.` inside a level becomes `//`; ids never hold one).
fn topic_of(subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(PREFIX)?;
    if rest.contains("//") {
        return None;
    }
    Some(rest.replace('.', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_map_back_to_topics() {
        assert_eq!(
            topic_of("$MQTT.msgs.chat.alice.out.phone").as_deref(),
            Some("chat/alice/out/phone")
        );
        assert_eq!(
            topic_of("$MQTT.msgs.presence.bob.laptop").as_deref(),
            Some("presence/bob/laptop")
        );
        assert_eq!(topic_of("$MQTT.msgs.chat.a//b.out.x"), None);
        assert_eq!(topic_of("chat.alice.out.phone"), None);
    }
}
