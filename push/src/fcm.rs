//! FCM HTTP v1: `POST {base_url}/v1/projects/{project_id}/messages:send` over
//! HTTP/2 with an OAuth2 access token. The token comes from the service
//! account's JSON key (a JWT-bearer grant at the key's `token_uri`); one
//! long-lived `CustomServiceAccount` caches it until shortly before it expires.

use std::time::Duration;

use gcp_auth::{CustomServiceAccount, TokenProvider};
use serde::Deserialize;
use serde_json::json;

use super::{collapse_id, exchange, Alert, Outcome, PushError};
use crate::config::FcmConfig;

/// The OAuth2 scope that lets a service account send messages.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// An FCM client for one Firebase project.
pub(super) struct Fcm {
    http: reqwest::Client,
    /// `{base_url}/v1/projects/{project_id}/messages:send`.
    url: String,
    auth: CustomServiceAccount,
    /// One token request at a time: gcp_auth caches the token but does not merge
    /// concurrent fetches, so a burst to several devices would fetch it several times.
    fetching: tokio::sync::Mutex<()>,
    /// Bounds fetching an access token (gcp_auth's client has no timeout of its own).
    timeout: Duration,
}

/// The JSON body of an FCM error (Google's `google.rpc.Status`).
#[derive(Debug, Default, Deserialize)]
struct FcmErrorBody {
    #[serde(default)]
    error: FcmError,
}

#[derive(Debug, Default, Deserialize)]
struct FcmError {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<FcmErrorDetail>,
}

#[derive(Debug, Default, Deserialize)]
struct FcmErrorDetail {
    #[serde(default, rename = "errorCode")]
    error_code: Option<String>,
}

impl FcmError {
    /// FCM's own error code (`UNREGISTERED`, ...) if given, else the RPC status.
    fn code(&self) -> &str {
        self.details
            .iter()
            .find_map(|d| d.error_code.as_deref())
            .unwrap_or(&self.status)
    }
}

impl Fcm {
    /// Reads the service account's key (blocking: a file).
    pub(super) fn new(
        config: &FcmConfig,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<Self, PushError> {
        let path = &config.service_account_path;
        let invalid = |reason: String| PushError::Invalid {
            key: "push.fcm.service_account_path",
            path: path.clone(),
            expected: "a service account's JSON key",
            reason,
        };
        if let Err(source) = std::fs::metadata(path) {
            return Err(PushError::Read {
                key: "push.fcm.service_account_path",
                path: path.clone(),
                source,
            });
        }
        let auth = CustomServiceAccount::from_file(path).map_err(|e| invalid(e.to_string()))?;
        let project = auth
            .project_id()
            .ok_or_else(|| invalid("it has no project_id".into()))?;
        if project.is_empty()
            || !project
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'))
        {
            return Err(invalid(format!(
                "project_id {project:?} is not a project id"
            )));
        }
        Ok(Self {
            http,
            url: format!(
                "{}/v1/projects/{project}/messages:send",
                config.base_url.trim_end_matches('/')
            ),
            auth,
            fetching: tokio::sync::Mutex::new(()),
            timeout,
        })
    }

    /// Sends one notification to one registration token.
    pub(super) async fn send(&self, token: &str, alert: &Alert) -> Outcome {
        let fetched = tokio::time::timeout(self.timeout, async {
            let _one_at_a_time = self.fetching.lock().await;
            self.auth.token(&[SCOPE]).await
        })
        .await;
        let access = match fetched {
            Ok(Ok(access)) => access,
            Ok(Err(err)) => {
                return Outcome::Retry {
                    status: None,
                    reason: format!("cannot get an OAuth2 access token: {err}"),
                    after: None,
                }
            }
            Err(_) => {
                return Outcome::Retry {
                    status: None,
                    reason: "the OAuth2 token endpoint did not answer in time".into(),
                    after: None,
                }
            }
        };
        let request = self
            .http
            .post(&self.url)
            .bearer_auth(access.as_str())
            .json(&message(token, alert));
        exchange(request, |status, body: FcmErrorBody, after| {
            classify(status, &body.error, after)
        })
        .await
    }
}

/// The `messages:send` body: a notification, with the collapse and thread ids
/// and the badge spelt for Android and for Apple devices.
fn message(token: &str, alert: &Alert) -> serde_json::Value {
    let conv = alert.conv.to_string();
    json!({
        "message": {
            "token": token,
            "notification": { "title": alert.title, "body": alert.body },
            "data": { "conv": conv, "seq": alert.seq.to_string() },
            "android": {
                "collapse_key": conv,
                "priority": "high",
                "notification": {
                    "tag": conv,
                    "notification_count": alert.badge.min(i32::MAX as u64),
                },
            },
            "apns": {
                "headers": { "apns-collapse-id": collapse_id(&alert.conv) },
                "payload": { "aps": { "badge": alert.badge, "thread-id": conv } },
            },
        }
    })
}

/// What an FCM error status and code call for.
fn classify(status: u16, error: &FcmError, after: Option<Duration>) -> Outcome {
    let code = error.code();
    let reason = match (code.is_empty(), error.message.is_empty()) {
        (true, _) => format!("status {status}"),
        (false, true) => code.to_owned(),
        (false, false) => format!("{code}: {}", error.message),
    };
    match (status, code) {
        (404, "UNREGISTERED" | "NOT_FOUND") | (403, "SENDER_ID_MISMATCH") => {
            Outcome::Unregistered {
                reason,
                since_ms: None,
            }
        }
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

    fn error(body: &str) -> FcmError {
        serde_json::from_str::<FcmErrorBody>(body).unwrap().error
    }

    #[test]
    fn outcomes_follow_fcm_error_codes() {
        let unregistered = error(
            r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND",
                "details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#,
        );
        assert_eq!(unregistered.code(), "UNREGISTERED");
        assert!(matches!(
            classify(404, &unregistered, None),
            Outcome::Unregistered { .. }
        ));
        let mismatch = error(
            r#"{"error":{"code":403,"status":"PERMISSION_DENIED","details":[{"errorCode":"SENDER_ID_MISMATCH"}]}}"#,
        );
        assert!(matches!(
            classify(403, &mismatch, None),
            Outcome::Unregistered { .. }
        ));
        let denied = error(r#"{"error":{"code":403,"status":"PERMISSION_DENIED"}}"#);
        assert!(matches!(
            classify(403, &denied, None),
            Outcome::Rejected { status: 403, .. }
        ));
        let quota = error(
            r#"{"error":{"status":"RESOURCE_EXHAUSTED","details":[{"errorCode":"QUOTA_EXCEEDED"}]}}"#,
        );
        assert!(matches!(
            classify(429, &quota, Some(Duration::from_secs(1))),
            Outcome::Retry {
                status: Some(429),
                after: Some(_),
                ..
            }
        ));
        assert!(matches!(
            classify(503, &FcmError::default(), None),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(
                400,
                &error(r#"{"error":{"status":"INVALID_ARGUMENT"}}"#),
                None
            ),
            Outcome::Rejected { status: 400, .. }
        ));
    }
}
