//! The HTTP requests of the web listener: where each goes, sign-in by the
//! `Authorization` header, and the small answers.
//!
//! | request | answer |
//! |---|---|
//! | a WebSocket upgrade, any path | MQTT over WebSocket (`websocket::upgrade`) |
//! | `POST /files` | an upload (`files`) |
//! | `GET /files/<file>` | a download (`files`) |
//! | `GET /` and the page's files (`/app.js`, ...) | the web client (`web`) |
//! | anything else | `404` |

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use messenger_protocol::UserId;

use crate::auth::HttpCredentials;
use crate::files::Files;
use crate::gate::Shared;
use crate::web;
use crate::websocket::{self, Front};

/// The body of every answer: small fixed ones, or a file streamed from disk.
pub(crate) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// What the HTTP requests need besides the WebSocket front's own settings.
pub(crate) struct Routes {
    /// Sign-in and its throttle (shared with MQTT sign-ins).
    pub(crate) shared: Arc<Shared>,
    /// Uploads and downloads; `None` answers `/files` with `404`.
    pub(crate) files: Option<Files>,
}

/// Answers one request.
pub(crate) async fn route(
    request: Request<Incoming>,
    peer: SocketAddr,
    front: &Arc<Front>,
) -> Response<Body> {
    if is_websocket_upgrade(&request) {
        return websocket::upgrade(request, peer, front);
    }
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (method, path.as_str()) {
        (method, page) if web::serves(page) => web::answer(&method, page, request.headers()),
        (method, rest) if rest == "/files" || rest.starts_with("/files/") => {
            let Some(files) = &front.http.files else {
                return not_found();
            };
            let user = match sign_in(&request, peer, &front.http.shared).await {
                Ok(user) => user,
                Err(answer) => return answer,
            };
            match (method, rest.strip_prefix("/files/")) {
                (Method::POST, None) => files.upload(request, &user).await,
                (Method::GET, Some(file)) => files.download(file, &user).await,
                _ => not_found(),
            }
        }
        _ => not_found(),
    }
}

/// Whether the request asks to become a WebSocket (`Upgrade: websocket` with
/// `Connection: upgrade`).
fn is_websocket_upgrade(request: &Request<Incoming>) -> bool {
    let headers = request.headers();
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    upgrade && connection && request.method() == Method::GET
}

/// The user an HTTP request is signed in as, or the `401` to answer (held back
/// like a refused CONNECT after a wrong password).
async fn sign_in(
    request: &Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<UserId, Response<Body>> {
    let Some(credentials) = credentials(request) else {
        return Err(unauthorized());
    };
    match shared.auth.http_user(&credentials, peer.ip()) {
        Ok(user) => Ok(user),
        Err(delay) => {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            Err(unauthorized())
        }
    }
}

/// The `Authorization` header: `Bearer <device token>` or `Basic` user id and password.
fn credentials(request: &Request<Incoming>) -> Option<HttpCredentials> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(HttpCredentials::Token(rest.to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        return Some(HttpCredentials::Password {
            user: user.to_owned(),
            password: password.to_owned(),
        });
    }
    None
}

/// An empty body.
pub(crate) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A small answer with a text body.
pub(crate) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_owned()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A small answer with a JSON body.
pub(crate) fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `404`: the same for a path that does not exist, a file that does not, and
/// a file the user may not read.
pub(crate) fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// `401`, asking for credentials. The challenge names `Bearer`, not `Basic`: a
/// browser answers a `Basic` challenge to a page's request with its own password
/// dialog, and then sends what was typed there with every request to this origin,
/// other sites' form posts included.
fn unauthorized() -> Response<Body> {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "sign in: Authorization: Bearer <device token>, or Basic with your user id and password\n",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"messenger\""),
    );
    response
}
