//! What a handled request produces: MQTT publishes to make after the commit, or a failure.

use messenger_protocol::wire::{ErrorCode, Event};
use rumqttc::QoS;
use tracing::error;

/// One publish to make once the transaction that produced it is durable.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) topic: String,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) payload: Vec<u8>,
}

impl Outgoing {
    /// A QoS 1 publish of `event`.
    pub(crate) fn event(topic: String, event: &Event) -> Self {
        Self {
            topic,
            qos: QoS::AtLeastOnce,
            retain: false,
            payload: encode(event),
        }
    }
}

/// Serializes an event; our own types always serialize.
pub(crate) fn encode(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).unwrap_or_else(|err| {
        error!(cause = %err, "cannot serialize an event");
        Vec::new()
    })
}

/// Why a request failed; it changed nothing.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

/// The longest `message` of an `error` reply, in bytes: messages may quote bad
/// input (serde's do), and a reply must never grow with it.
pub(crate) const MAX_MESSAGE_BYTES: usize = 300;

impl Failure {
    /// A failure whose message is cut to [`MAX_MESSAGE_BYTES`].
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_BYTES {
            let mut end = MAX_MESSAGE_BYTES - 3;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str("...");
        }
        Self { code, message }
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// The `error` reply for a request with this id.
    pub(crate) fn reply(&self, id: Option<String>) -> Event {
        Event::Error {
            id,
            code: self.code,
            message: self.message.clone(),
        }
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(err: rusqlite::Error) -> Self {
        error!(cause = %err, "storage failure");
        Self::new(ErrorCode::Internal, "storage failure; retry later")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        let long = format!("bad value {}", "\u{85}".repeat(50_000));
        let failure = Failure::bad(long);
        assert!(failure.message.len() <= MAX_MESSAGE_BYTES);
        assert!(failure.message.ends_with("..."));
        assert_eq!(Failure::bad("short").message, "short");
    }
}
