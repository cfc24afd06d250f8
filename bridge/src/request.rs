//! Decoding a request payload: every malformed input becomes a [`Failure`] with
//! the request's id where one could be read.

use messenger_protocol::wire::{ErrorCode, Request};
use serde_json::Value;

use messenger_store::Failure;

/// A payload that failed to decode: the id to answer to, and why.
#[derive(Debug)]
pub(crate) struct Rejected {
    pub(crate) id: Option<String>,
    pub(crate) failure: Failure,
}

/// Decodes a request of at most `max_bytes`.
pub(crate) fn decode(payload: &[u8], max_bytes: usize) -> Result<Request, Rejected> {
    if payload.len() > max_bytes {
        return Err(Rejected {
            id: None,
            failure: Failure::new(
                ErrorCode::TooLarge,
                format!(
                    "request of {} bytes is over the limit of {max_bytes}",
                    payload.len()
                ),
            ),
        });
    }
    let text = std::str::from_utf8(payload).map_err(|e| Rejected {
        id: None,
        failure: Failure::bad(format!("payload is not UTF-8: {e}")),
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| Rejected {
        id: None,
        failure: Failure::bad(format!("payload is not JSON: {e}")),
    })?;
    let Value::Object(ref object) = value else {
        return Err(Rejected {
            id: None,
            failure: Failure::bad("payload must be a JSON object"),
        });
    };
    // Echo the id when it is a string of the right length, even if the rest is wrong.
    let id = object
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| (1..=64).contains(&s.chars().count()))
        .map(str::to_owned);
    match object.get("type") {
        None => {
            return Err(Rejected {
                id,
                failure: Failure::bad("missing field `type`"),
            })
        }
        Some(Value::String(_)) => {}
        Some(_) => {
            return Err(Rejected {
                id,
                failure: Failure::bad("field `type` must be a string"),
            })
        }
    }
    let request: Request = serde_json::from_value(value).map_err(|e| Rejected {
        id: id.clone(),
        failure: Failure::bad(e.to_string()),
    })?;
    request.check_numbers().map_err(|e| Rejected {
        id,
        failure: Failure::bad(e.to_string()),
    })?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(payload: &[u8]) -> Rejected {
        decode(payload, 1000).unwrap_err()
    }

    #[test]
    fn classes_of_bad_input() {
        assert_eq!(
            decode(&[b' '; 1001], 1000).unwrap_err().failure.code,
            ErrorCode::TooLarge
        );
        assert!(reject(b"\xff\xfe").failure.message.contains("UTF-8"));
        assert!(reject(b"{nope").failure.message.contains("JSON"));
        assert!(reject(b"[1,2]").failure.message.contains("object"));
        let r = reject(br#"{"id":"r1"}"#);
        assert_eq!(r.id.as_deref(), Some("r1"));
        assert!(r.failure.message.contains("type"));
        let r = reject(br#"{"type":"fly","id":"r2"}"#);
        assert_eq!(r.id.as_deref(), Some("r2"));
        assert!(
            r.failure.message.contains("unknown variant"),
            "{}",
            r.failure.message
        );
        let r = reject(br#"{"type":"send","id":"r3","conv":"dm:a:b","body":7}"#);
        assert_eq!(r.failure.code, ErrorCode::BadRequest);
        assert_eq!(r.id.as_deref(), Some("r3"));
        let r = reject(br#"{"type":"send","id":"r4","conv":"dm:b:a","body":"x"}"#);
        assert!(
            r.failure.message.contains("conversation"),
            "{}",
            r.failure.message
        );
        assert_eq!(reject(br#"{"type":"send","id":5}"#).id, None);
        let r = reject(br#"{"type":"sync","id":"r5","after":18446744073709551615}"#);
        assert_eq!(r.failure.code, ErrorCode::BadRequest);
        assert!(
            r.failure.message.contains("`after`"),
            "{}",
            r.failure.message
        );
        let r = reject(br#"{"type":"sync","id":"r6","after":18446744073709551616}"#);
        assert_eq!(r.failure.code, ErrorCode::BadRequest);
        assert!(decode(
            br#"{"type":"send","id":"x","conv":"dm:a:b","body":"hi","extra":1}"#,
            1000
        )
        .is_ok());
    }
}
