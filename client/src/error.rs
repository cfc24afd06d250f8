//! The library's one error type.

use std::fmt;

use messenger_protocol::wire::ErrorCode;

/// Why the broker refused a sign-in (the CONNACK return code of MQTT 3.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// 1: the broker does not speak MQTT 3.1.1.
    ProtocolVersion,
    /// 2: the client id (`<user>:<device>`) was refused.
    ClientId,
    /// 3: the broker (or its account store) is unavailable; worth retrying later.
    ServiceUnavailable,
    /// 4: wrong user name or password (or an expired device token).
    BadCredentials,
    /// 5: signed in, but not allowed to connect like this (e.g. the client id names another user).
    NotAuthorized,
}

impl RefusalCode {
    /// The MQTT 3.1.1 return code.
    pub fn code(self) -> u8 {
        match self {
            Self::ProtocolVersion => 1,
            Self::ClientId => 2,
            Self::ServiceUnavailable => 3,
            Self::BadCredentials => 4,
            Self::NotAuthorized => 5,
        }
    }

    /// Whether trying again with the same credentials cannot help.
    pub(crate) fn is_final(self) -> bool {
        !matches!(self, Self::ServiceUnavailable)
    }

    /// Maps rumqttc's code; `None` for `Success`, which is no refusal.
    pub(crate) fn from_mqtt(code: rumqttc::ConnectReturnCode) -> Option<Self> {
        use rumqttc::ConnectReturnCode as C;
        match code {
            C::Success => None,
            C::RefusedProtocolVersion => Some(Self::ProtocolVersion),
            C::BadClientId => Some(Self::ClientId),
            C::ServiceUnavailable => Some(Self::ServiceUnavailable),
            C::BadUserNamePassword => Some(Self::BadCredentials),
            C::NotAuthorized => Some(Self::NotAuthorized),
        }
    }
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::ProtocolVersion => "unacceptable protocol version",
            Self::ClientId => "client id rejected",
            Self::ServiceUnavailable => "server unavailable",
            Self::BadCredentials => "bad user name or password",
            Self::NotAuthorized => "not authorized",
        };
        write!(f, "{text} (code {})", self.code())
    }
}

/// The wire name of a server error code (`bad_request`, `not_member`, ...).
pub fn error_code_name(code: ErrorCode) -> &'static str {
    code.as_str()
}

/// What can go wrong for a [`Client`](crate::Client).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The [`ClientConfig`](crate::ClientConfig) makes no sense.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The broker answered CONNECT with a refusal.
    #[error("the broker refused the connection: {0}")]
    Refused(RefusalCode),
    /// The first connection could not be made (network, protocol).
    #[error("cannot connect to the broker: {0}")]
    Mqtt(#[source] Box<rumqttc::ConnectionError>),
    /// The bridge answered the request with an `error` reply; the request changed nothing.
    #[error("the server refused the request: {message} ({})", error_code_name(*.code))]
    Server {
        /// What kind of failure.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// For `rate_limited`: how long until the request could succeed.
        retry_after: Option<std::time::Duration>,
    },
    /// No reply within the configured request timeout.
    ///
    /// For `send` the message may still have been stored: retry with
    /// [`Client::send_with_id`](crate::Client::send_with_id) and the same id to find out
    /// without storing it twice.
    #[error("no reply within the request timeout")]
    Timeout,
    /// The client was disconnected or dropped, or was signed out for good.
    #[error("the client is closed")]
    Closed,
    /// The request is larger than the largest packet the broker accepts.
    #[error("request of {size} bytes is over the {limit}-byte packet limit")]
    TooLarge {
        /// The encoded request's size.
        size: usize,
        /// The limit (`ClientConfig::max_packet_bytes`).
        limit: usize,
    },
    /// The request cannot be sent as given (no id, or an id already waiting for its reply).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The reply could not be decoded, or was not the kind the request expects.
    #[error("cannot decode the reply: {0}")]
    Decode(String),
    /// The web listener answered a file transfer with an error status.
    #[error("the server answered {status}: {message}")]
    Http {
        /// The HTTP status (401: bad credentials, 404: no such file or not yours
        /// to read, 413: over the server's file limit).
        status: u16,
        /// The answer's text.
        message: String,
    },
    /// A file transfer failed: the connection, or the local file.
    #[error("file transfer: {0}")]
    Transfer(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_well() {
        assert_eq!(
            ClientError::Refused(RefusalCode::BadCredentials).to_string(),
            "the broker refused the connection: bad user name or password (code 4)"
        );
        assert_eq!(
            ClientError::Server {
                code: ErrorCode::NotMember,
                message: "not a member".into(),
                retry_after: None,
            }
            .to_string(),
            "the server refused the request: not a member (not_member)"
        );
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::TooLarge,
            ErrorCode::UnknownUser,
            ErrorCode::UnknownConversation,
            ErrorCode::NotMember,
            ErrorCode::Forbidden,
            ErrorCode::RateLimited,
            ErrorCode::Internal,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", error_code_name(code)));
        }
    }

    #[test]
    fn refusal_codes() {
        use rumqttc::ConnectReturnCode as C;
        assert_eq!(RefusalCode::from_mqtt(C::Success), None);
        assert_eq!(
            RefusalCode::from_mqtt(C::BadUserNamePassword),
            Some(RefusalCode::BadCredentials)
        );
        assert_eq!(RefusalCode::BadCredentials.code(), 4);
        assert_eq!(RefusalCode::NotAuthorized.code(), 5);
        assert!(RefusalCode::BadCredentials.is_final());
        assert!(!RefusalCode::ServiceUnavailable.is_final());
    }
}
