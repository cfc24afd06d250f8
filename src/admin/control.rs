//! The admin listener's control routes: `GET /sessions[?user=U]` lists the
//! connected devices, `POST /kick?user=U[&device=D]` cuts them. Answers are JSON:
//! `{"sessions": [...]}`, `{"kicked": [...]}`, or `{"error": "..."}` with a 4xx/5xx
//! status. `messenger admin sessions|kick` are their client (`admin_cli.rs`).
//!
//! They act on the broker, so they are answered only by a process that runs one
//! (`serve`, `broker`), and only to a caller that proves it is a local program,
//! not a web page the operator's browser opened (docs/OPERATIONS.md): the peer
//! is a loopback address, the `Host` is an IP address or `localhost` (a DNS
//! rebinding page sends its own name), and the request carries the
//! [`CALLER_HEADER`] (which a cross-origin page cannot send without a CORS
//! preflight, which this listener never grants).

use std::net::SocketAddr;

use hyper::{HeaderMap, StatusCode};
use messenger_broker::{Control, Session};
use messenger_protocol::{DeviceId, UserId};
use serde::{Deserialize, Serialize};

/// The header every control request carries (any value).
pub(crate) const CALLER_HEADER: &str = "x-messenger-admin";

/// One connected device, as the routes answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionItem {
    /// Whose.
    pub(crate) user: String,
    /// Which device.
    pub(crate) device: String,
    /// The client's address, when known.
    pub(crate) address: Option<String>,
    /// When it signed in, ms since the epoch.
    pub(crate) since_ms: i64,
}

impl From<Session> for SessionItem {
    fn from(s: Session) -> Self {
        Self {
            user: s.user,
            device: s.device,
            address: s.address.map(|a| a.to_string()),
            since_ms: s.since_ms,
        }
    }
}

/// The answer of `GET /sessions`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SessionsReply {
    /// The connected devices.
    pub(crate) sessions: Vec<SessionItem>,
}

/// The answer of `POST /kick`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KickReply {
    /// The connections cut.
    pub(crate) kicked: Vec<SessionItem>,
}

/// The answer of a refused control request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorReply {
    /// Why, as a lowercase phrase.
    pub(crate) error: String,
}

/// A control request's answer: its status and JSON body.
pub(crate) type Answer = (StatusCode, String);

fn json(status: StatusCode, value: &impl Serialize) -> Answer {
    match serde_json::to_string(value) {
        Ok(body) => (status, body),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":"cannot encode the answer"}"#.to_owned(),
        ),
    }
}

fn refuse(status: StatusCode, error: impl Into<String>) -> Answer {
    json(
        status,
        &ErrorReply {
            error: error.into(),
        },
    )
}

/// Why a caller may not use the control routes, if it may not.
pub(crate) fn refuse_caller(peer: SocketAddr, headers: &HeaderMap) -> Option<Answer> {
    if !peer.ip().is_loopback() {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "control requests are answered on loopback only",
        ));
    }
    let host = headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !host_is_local(host) {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "the Host must be an IP address or localhost",
        ));
    }
    if !headers.contains_key(CALLER_HEADER) {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            format!("control requests carry the {CALLER_HEADER} header"),
        ));
    }
    None
}

/// Whether a `Host` header names this machine by address (`127.0.0.1:9464`,
/// `[::1]:9464`) or as `localhost`, not by a domain name.
fn host_is_local(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(ip, _)| ip),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// The value of `key` in a query string (`a=1&b=2`); ids need no decoding.
fn param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(k, v)| (k == key).then_some(v))
}

/// The user named by `?user=`, checked to exist (404 if not, 400 if not an id).
async fn known_user(control: &Control, raw: &str) -> Result<UserId, Answer> {
    let user = UserId::parse(raw).map_err(|err| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("bad user id {raw:?}: {err}"),
        )
    })?;
    let lookup = control.clone();
    let asked = user.clone();
    match tokio::task::spawn_blocking(move || lookup.user_exists(&asked)).await {
        Ok(Ok(true)) => Ok(user),
        Ok(Ok(false)) => Err(refuse(
            StatusCode::NOT_FOUND,
            format!("user {user} does not exist"),
        )),
        Ok(Err(err)) => Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("account store: {err}"),
        )),
        Err(_) => Err(refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the account lookup failed",
        )),
    }
}

/// `GET /sessions[?user=U]`.
pub(crate) async fn sessions(control: &Control, query: Option<&str>) -> Answer {
    let user = match param(query, "user") {
        Some(raw) => match known_user(control, raw).await {
            Ok(user) => Some(user),
            Err(answer) => return answer,
        },
        None => None,
    };
    let sessions = control
        .sessions(user.as_ref())
        .into_iter()
        .map(SessionItem::from)
        .collect();
    json(StatusCode::OK, &SessionsReply { sessions })
}

/// `POST /kick?user=U[&device=D]`.
pub(crate) async fn kick(control: &Control, query: Option<&str>) -> Answer {
    let Some(raw) = param(query, "user") else {
        return refuse(StatusCode::BAD_REQUEST, "kick needs ?user=");
    };
    let device = match param(query, "device").map(DeviceId::parse).transpose() {
        Ok(device) => device,
        Err(err) => return refuse(StatusCode::BAD_REQUEST, format!("bad device id: {err}")),
    };
    let user = match known_user(control, raw).await {
        Ok(user) => user,
        Err(answer) => return answer,
    };
    let kicked: Vec<SessionItem> = control
        .kick(&user, device.as_ref())
        .await
        .into_iter()
        .map(SessionItem::from)
        .collect();
    if kicked.is_empty() {
        let whom = match &device {
            Some(device) => format!("{user}:{device} is not connected"),
            None => format!("{user} has no connected device"),
        };
        return refuse(StatusCode::NOT_FOUND, whom);
    }
    json(StatusCode::OK, &KickReply { kicked })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_hosts_pass() {
        for ok in [
            "127.0.0.1:9464",
            "127.0.0.1",
            "[::1]:9464",
            "localhost:9464",
            "LOCALHOST",
        ] {
            assert!(host_is_local(ok), "{ok}");
        }
        for bad in [
            "evil.example:9464",
            "evil.example",
            "",
            "127.0.0.1.evil.example:80",
        ] {
            assert!(!host_is_local(bad), "{bad}");
        }
    }

    #[test]
    fn callers_need_loopback_a_local_host_and_the_header() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(hyper::header::HOST, "127.0.0.1:9464".parse().unwrap());
        assert!(refuse_caller(local, &headers).is_some(), "no caller header");
        headers.insert(CALLER_HEADER, "1".parse().unwrap());
        assert!(refuse_caller(local, &headers).is_none());
        assert!(refuse_caller(remote, &headers).is_some(), "not loopback");
        headers.insert(hyper::header::HOST, "rebound.example:9464".parse().unwrap());
        assert!(refuse_caller(local, &headers).is_some(), "a domain name");
    }

    #[test]
    fn query_parameters() {
        assert_eq!(param(Some("user=ann&device=p"), "device"), Some("p"));
        assert_eq!(param(Some("user=ann"), "device"), None);
        assert_eq!(param(None, "user"), None);
    }
}
