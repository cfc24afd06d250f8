//! Why a request failed: the `error` reply's code and message.

use messenger_protocol::wire::{ErrorCode, Event};
use tracing::error;

/// The longest `message` of an `error` reply, in bytes: messages may quote bad
/// input (serde's do), and a reply must never grow with it.
pub const MAX_MESSAGE_BYTES: usize = 300;

/// Why a request failed; it changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure.
    pub code: ErrorCode,
    /// For humans; at most [`MAX_MESSAGE_BYTES`].
    pub message: String,
    /// For `rate_limited`: how long until the request could succeed, in ms.
    pub retry_after_ms: Option<u64>,
}

impl Failure {
    /// A failure whose message is cut to [`MAX_MESSAGE_BYTES`].
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_BYTES {
            let mut end = MAX_MESSAGE_BYTES - 3;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str("...");
        }
        Self {
            code,
            message,
            retry_after_ms: None,
        }
    }

    /// A `rate_limited` failure that may be retried after `retry_after_ms`.
    pub fn rate_limited(message: impl Into<String>, retry_after_ms: u64) -> Self {
        Self {
            retry_after_ms: Some(retry_after_ms),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }

    /// A `bad_request`.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// The `error` reply for a request with this id.
    pub fn reply(&self, id: Option<String>) -> Event {
        Event::Error {
            id,
            code: self.code,
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms,
        }
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(err: rusqlite::Error) -> Self {
        error!(cause = %err, "storage failure");
        Self::new(ErrorCode::Internal, "storage failure; retry later")
    }
}

impl From<postgres::Error> for Failure {
    fn from(err: postgres::Error) -> Self {
        match err.as_db_error() {
            Some(db) => error!(
                code = db.code().code(),
                cause = db.message(),
                "storage failure"
            ),
            None => error!(cause = %err, "storage failure"),
        }
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
