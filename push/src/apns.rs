//! The APNs provider API: `POST {base_url}/3/device/{token}` over HTTP/2, with
//! token-based authentication: an ES256 JWT (`kid` = key id, `iss` = team id,
//! `iat`) signed by the `.p8` key, reused for [`JWT_REUSE`] (Apple refuses one
//! older than an hour, and signing more often than every 20 minutes).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{collapse_id, exchange, Alert, Outcome, PushError};
use crate::config::ApnsConfig;

/// How long one provider token is used before a new one is signed.
const JWT_REUSE: Duration = Duration::from_secs(50 * 60);

/// An APNs client for one app (topic) and signing key.
pub(super) struct Apns {
    http: reqwest::Client,
    /// `{base_url}/3/device/`.
    prefix: String,
    topic: String,
    key: EncodingKey,
    header: Header,
    team_id: String,
    /// The provider token in use, and when it was signed.
    jwt: Mutex<Option<(Arc<str>, Instant)>>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

/// The JSON body of an APNs error.
#[derive(Debug, Default, Deserialize)]
struct ApnsError {
    #[serde(default)]
    reason: String,
    /// For 410: when APNs learnt the token was no longer valid, ms since the epoch.
    #[serde(default)]
    timestamp: Option<u64>,
}

impl Apns {
    /// Reads the `.p8` key and signs a first provider token (blocking: a file).
    pub(super) fn new(config: &ApnsConfig, http: reqwest::Client) -> Result<Self, PushError> {
        let path = &config.key_path;
        let pem = std::fs::read(path).map_err(|source| PushError::Read {
            key: "push.apns.key_path",
            path: path.clone(),
            source,
        })?;
        let invalid = |reason: String| PushError::Invalid {
            key: "push.apns.key_path",
            path: path.clone(),
            expected: "a P-256 signing key in PKCS#8 PEM (a .p8 file)",
            reason,
        };
        let key = EncodingKey::from_ec_pem(&pem).map_err(|e| invalid(e.to_string()))?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(config.key_id.clone());
        let apns = Self {
            http,
            prefix: format!("{}/3/device/", config.base_url.trim_end_matches('/')),
            topic: config.topic.clone(),
            key,
            header,
            team_id: config.team_id.clone(),
            jwt: Mutex::new(None),
        };
        apns.bearer().map_err(|e| invalid(e.to_string()))?;
        Ok(apns)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(Arc<str>, Instant)>> {
        self.jwt.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The provider token, signed anew when the one in use is [`JWT_REUSE`] old.
    fn bearer(&self) -> Result<Arc<str>, jsonwebtoken::errors::Error> {
        let mut slot = self.slot();
        if let Some((jwt, signed)) = &*slot {
            if signed.elapsed() < JWT_REUSE {
                return Ok(jwt.clone());
            }
        }
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            iss: &self.team_id,
            iat,
        };
        let jwt: Arc<str> = jsonwebtoken::encode(&self.header, &claims, &self.key)?.into();
        *slot = Some((jwt.clone(), Instant::now()));
        Ok(jwt)
    }

    /// Forgets the provider token if it is still `used`, so the next request signs a new one.
    fn expire(&self, used: &str) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|(jwt, _)| &**jwt == used) {
            *slot = None;
        }
    }

    /// Sends one notification to one device token.
    pub(super) async fn send(&self, token: &str, alert: &Alert) -> Outcome {
        let jwt = match self.bearer() {
            Ok(jwt) => jwt,
            Err(err) => {
                return Outcome::Rejected {
                    status: 0,
                    reason: format!("cannot sign the provider token: {err}"),
                }
            }
        };
        let request = self
            .http
            .post(format!("{}{token}", self.prefix))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-collapse-id", collapse_id(&alert.conv))
            .json(&payload(alert));
        let outcome = exchange(request, |status, error: ApnsError, after| {
            classify(status, error, after)
        })
        .await;
        if matches!(outcome, Outcome::Reauthorize { .. }) {
            self.expire(&jwt);
        }
        outcome
    }
}

/// The APNs JSON payload: the alert, the badge, the thread, and the message's place.
fn payload(alert: &Alert) -> serde_json::Value {
    json!({
        "aps": {
            "alert": { "title": alert.title, "body": alert.body },
            "badge": alert.badge,
            "sound": "default",
            "thread-id": alert.conv.to_string(),
        },
        "conv": alert.conv.to_string(),
        "seq": alert.seq,
    })
}

/// What an APNs error status and reason call for.
fn classify(status: u16, error: ApnsError, after: Option<Duration>) -> Outcome {
    let reason = if error.reason.is_empty() {
        format!("status {status}")
    } else {
        error.reason
    };
    match (status, reason.as_str()) {
        (410, _) | (400, "BadDeviceToken") => Outcome::Unregistered {
            since_ms: if status == 410 { error.timestamp } else { None },
            reason,
        },
        (403, "ExpiredProviderToken") => Outcome::Reauthorize { reason },
        (429, _) | (500..=599, _) => Outcome::Retry {
            status: Some(status),
            reason,
            after,
        },
        _ => Outcome::Rejected { status, reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(reason: &str, timestamp: Option<u64>) -> ApnsError {
        ApnsError {
            reason: reason.into(),
            timestamp,
        }
    }

    #[test]
    fn outcomes_follow_apple_reasons() {
        assert!(matches!(
            classify(410, error("Unregistered", Some(7)), None),
            Outcome::Unregistered {
                since_ms: Some(7),
                ..
            }
        ));
        assert!(matches!(
            classify(400, error("BadDeviceToken", None), None),
            Outcome::Unregistered { since_ms: None, .. }
        ));
        assert!(matches!(
            classify(400, error("BadTopic", None), None),
            Outcome::Rejected { status: 400, .. }
        ));
        assert!(matches!(
            classify(403, error("ExpiredProviderToken", None), None),
            Outcome::Reauthorize { .. }
        ));
        assert!(matches!(
            classify(403, error("InvalidProviderToken", None), None),
            Outcome::Rejected { .. }
        ));
        assert!(matches!(
            classify(
                429,
                error("TooManyRequests", None),
                Some(Duration::from_secs(2))
            ),
            Outcome::Retry {
                status: Some(429),
                after: Some(_),
                ..
            }
        ));
        assert!(matches!(
            classify(503, ApnsError::default(), None),
            Outcome::Retry {
                status: Some(503),
                ..
            }
        ));
    }
}
