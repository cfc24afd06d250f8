//! The request side of a device: `send` requests and raw payloads, each stamped
//! with the time it was made, which the receiver turns into a latency.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use rumqttc::{AsyncClient, QoS};

use super::{Device, Metrics};
use crate::stats::now_us;

/// Size of every message body and raw payload, in bytes.
pub(crate) const BODY_BYTES: usize = 100;

/// The request side of a user's device: builds and publishes `send` requests.
pub(crate) struct Sender {
    client: AsyncClient,
    /// `chat/<user>/out/<device>`.
    topic: String,
    conv: String,
    /// Unique among the senders of one user, so request ids never repeat.
    tag: String,
    next: AtomicU64,
    body: String,
}

impl Sender {
    /// A sender for `device` into `conv`; `tag` must differ from the user's other senders'.
    pub(crate) fn new(device: &Device, conv: &str, tag: &str) -> Self {
        Self {
            client: device.client.clone(),
            topic: device.out_topic(),
            conv: conv.to_owned(),
            tag: tag.to_owned(),
            next: AtomicU64::new(0),
            body: body(),
        }
    }

    /// A `send` request whose id carries the current time.
    fn payload(&self) -> Vec<u8> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}.{n}.{}", self.tag, now_us());
        let request =
            serde_json::json!({"type": "send", "id": id, "conv": self.conv, "body": self.body});
        request.to_string().into_bytes()
    }

    /// Publishes one message, waiting for room in the client's queue.
    pub(crate) async fn send(&self, metrics: &Metrics) -> anyhow::Result<()> {
        // Bounded: if the server died, rumqttc's request queue fills and never drains.
        tokio::time::timeout(
            crate::patience::PATIENCE,
            self.client
                .publish(&self.topic, QoS::AtLeastOnce, false, self.payload()),
        )
        .await
        .context("the server stopped taking messages")?
        .context("the device's client stopped")?;
        metrics.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Publishes one message if the client's queue has room.
    pub(super) fn try_send(&self, metrics: &Metrics) {
        match self
            .client
            .try_publish(&self.topic, QoS::AtLeastOnce, false, self.payload())
        {
            Ok(()) => metrics.sent.fetch_add(1, Ordering::Relaxed),
            Err(_) => metrics.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A 100-byte message body.
fn body() -> String {
    "The quick brown fox jumps over the lazy dog; "
        .chars()
        .cycle()
        .take(BODY_BYTES)
        .collect()
}

/// A raw publish: the send time in 20 digits, padded to [`BODY_BYTES`].
pub(crate) fn raw_payload() -> Vec<u8> {
    let mut payload = format!("{:020}", now_us()).into_bytes();
    payload.resize(BODY_BYTES, b'.');
    payload
}

pub(super) fn raw_stamp(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload.get(..20)?).ok()?.parse().ok()
}

/// The send time carried by a request id made by [`Sender`].
pub(super) fn stamp(id: &str) -> Option<u64> {
    id.rsplit('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let payload = raw_payload();
        assert_eq!(payload.len(), BODY_BYTES);
        assert!(raw_stamp(&payload).is_some());
        assert_eq!(stamp("p.12.3456"), Some(3456));
        assert_eq!(stamp("ctl-group"), None);
        assert_eq!(body().len(), BODY_BYTES);
    }
}
