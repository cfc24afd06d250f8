//! The web client: the files of `web/` (the page, its JavaScript modules, its
//! stylesheet and the vendored MQTT.js), embedded in the binary at build time
//! and served on the web listener with their media types, validators and a
//! strict Content-Security-Policy.
//!
//! | header | value |
//! |---|---|
//! | `Content-Type` | by the file's extension (`text/html`, `text/javascript`, `text/css`, with `charset=utf-8`) |
//! | `Cache-Control` | `no-cache`: the browser keeps the file but asks again each time; the `ETag` (the SHA-256 of the bytes) makes that a `304` until the binary changes |
//! | `Content-Security-Policy` | scripts and styles from this origin only (no inline script, no `eval`), connections to this origin and its WebSocket, images from here or the page's own `blob:` URLs, workers from the page's own `blob:` URLs (MQTT.js runs its keepalive timer in one, which browsers do not slow down in a hidden tab) |
//! | `X-Content-Type-Options` | `nosniff` |
//! | `Referrer-Policy` | `no-referrer` |

use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::http::{self, Body};

/// One embedded file of the web client.
struct Asset {
    /// The URL path it is served at.
    path: &'static str,
    /// Its `Content-Type`.
    media_type: &'static str,
    /// Its bytes.
    bytes: &'static [u8],
}

/// Every file the page loads; anything else is `404`.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        media_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../../web/index.html"),
    },
    Asset {
        path: "/app.js",
        media_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/app.js"),
    },
    Asset {
        path: "/connection.js",
        media_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/connection.js"),
    },
    Asset {
        path: "/store.js",
        media_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/store.js"),
    },
    Asset {
        path: "/state.js",
        media_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/state.js"),
    },
    Asset {
        path: "/inbox.js",
        media_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/inbox.js"),
    },
    Asset {
        path: "/conversations.js",
        media_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/conversations.js"),
    },
    Asset {
        path: "/timeline.js",
        media_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/timeline.js"),
    },
    Asset {
        path: "/compose.js",
        media_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/compose.js"),
    },
    Asset {
        path: "/files.js",
        media_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/files.js"),
    },
    Asset {
        path: "/render.js",
        media_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/render.js"),
    },
    Asset {
        path: "/style.css",
        media_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../web/style.css"),
    },
    Asset {
        path: "/icon.svg",
        media_type: "image/svg+xml",
        bytes: include_bytes!("../../web/icon.svg"),
    },
    Asset {
        path: "/vendor/mqtt.min.js",
        media_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/vendor/mqtt.min.js"),
    },
    Asset {
        path: "/vendor/mqtt.LICENSE.md",
        media_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("../../web/vendor/mqtt.LICENSE.md"),
    },
];

/// Whether `path` is one of the web client's files.
pub(crate) fn serves(path: &str) -> bool {
    ASSETS.iter().any(|asset| asset.path == path)
}

/// The answer to `GET` or `HEAD` of one of the web client's files (`404` for
/// any other path, `405` for any other method). `headers` are the request's:
/// `If-None-Match` makes a `304`, `Host` names the WebSocket origin in the policy.
pub(crate) fn answer(method: &Method, path: &str, headers: &HeaderMap) -> Response<Body> {
    let Some((index, asset)) = ASSETS
        .iter()
        .enumerate()
        .find(|(_, asset)| asset.path == path)
    else {
        return http::not_found();
    };
    if method != Method::GET && method != Method::HEAD {
        let mut response = http::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let etag = &etags()[index];
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag.as_str()
        });
    let mut response = if fresh {
        let mut response = Response::new(http::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else if method == Method::HEAD {
        Response::new(http::empty())
    } else {
        Response::new(
            Full::new(Bytes::from_static(asset.bytes))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    };
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.media_type),
    );
    if let Ok(value) = HeaderValue::from_str(etag) {
        out.insert(header::ETAG, value);
    }
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(value) = HeaderValue::from_str(&policy(headers.get(header::HOST))) {
        out.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

/// The `ETag` of each asset (in [`ASSETS`] order): a quoted prefix of its SHA-256.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| format!("\"{}\"", &hex::encode(Sha256::digest(asset.bytes))[..32]))
            .collect()
    })
}

/// The Content-Security-Policy of every file: nothing inline, nothing from
/// elsewhere. `connect-src` names the WebSocket URL of the `Host` the page was
/// loaded from (both schemes: the page uses `wss:` when it was loaded over
/// HTTPS), when that host is a plain `host[:port]`; `'self'` covers the same
/// in browsers that follow CSP level 3.
pub(crate) fn policy(host: Option<&HeaderValue>) -> String {
    let sockets = host
        .and_then(|h| h.to_str().ok())
        .filter(|h| is_plain_host(h))
        .map(|h| format!(" ws://{h} wss://{h}"))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
         worker-src 'self' blob:; \
         connect-src 'self'{sockets}; manifest-src 'self'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    )
}

/// Whether a `Host` header is `name[:port]` or `[v6][:port]` and nothing that
/// could add a directive to the policy.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_websocket_of_a_plain_host_only() {
        let good = HeaderValue::from_static("127.0.0.1:8083");
        let p = policy(Some(&good));
        assert!(p.contains("connect-src 'self' ws://127.0.0.1:8083 wss://127.0.0.1:8083;"));
        assert!(p.contains("script-src 'self';"), "{p}");
        let evil = HeaderValue::from_static("x; script-src *");
        let p = policy(Some(&evil));
        assert!(p.contains("connect-src 'self';"), "{p}");
        assert!(!p.contains('*'), "{p}");
        assert!(policy(None).contains("connect-src 'self';"));
    }

    #[test]
    fn every_asset_has_a_distinct_path_and_bytes() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(!a.bytes.is_empty(), "{}", a.path);
            assert!(ASSETS[i + 1..].iter().all(|b| b.path != a.path));
        }
    }

    #[test]
    fn a_matching_etag_gets_304_and_others_the_file() {
        let mut headers = HeaderMap::new();
        let first = answer(&Method::GET, "/", &headers);
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        headers.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            answer(&Method::GET, "/", &headers).status(),
            StatusCode::NOT_MODIFIED
        );
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(answer(&Method::GET, "/", &headers).status(), StatusCode::OK);
        assert_eq!(
            answer(&Method::POST, "/app.js", &headers).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            answer(&Method::GET, "/nope.js", &headers).status(),
            StatusCode::NOT_FOUND
        );
    }
}
