//! The web listener: HTTP/1.1 in front of the broker. A WebSocket upgrade on any
//! path is MQTT over WebSocket; `http` routes every other request (`/files`).
//! Each connection is served in its own task; its request head (the upgrade
//! included) must arrive within the handshake timeout, and each further
//! request's head too. After an upgrade, the MQTT bytes are piped into the TCP
//! listener.
//!
//! rumqttd's own WebSocket listener runs the handshake inline in its accept loop
//! with no timeout, so one idle TCP connection would block every later client.
//! Piping into the TCP listener keeps one code path for sign-in and the ACL.
//!
//! What a client may make the front hold is bounded: a WebSocket frame or
//! message (fragments reassembled) larger than one MQTT packet (plus
//! [`WS_SLACK_BYTES`]) ends the connection, and so does sending more than that
//! before the broker has answered (its CONNACK), so unauthenticated clients can
//! park at most one packet's worth of bytes each.
//!
//! With a certificate (`broker.wss_listen`) the front first finishes the TLS
//! handshake, under the same timeout, then serves the decrypted stream alike.
//!
//! The broker sees the front's loopback address as the peer of every piped
//! connection; [`Peers`] tells it which client each one carries (the sign-in
//! throttle counts failures per client address).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::WebSocketStream;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use ws_stream_tungstenite::WsStream;

use crate::addresses::Addresses;
use crate::http::{self, Body};

/// How much a WebSocket connection reads at once (tungstenite's read buffer).
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// The MQTT over WebSocket subprotocol (MQTT 3.1.1, section 6).
const SUBPROTOCOL: &str = "mqtt";

/// Allowance over `max_packet_bytes` for a WebSocket message or the bytes before
/// the CONNACK: a message may hold several packets (MQTT 3.1.1, section 6), and
/// rumqttc's writer (tokio-util's `Framed`) flushes once its buffer passes 8 KiB,
/// so one of its messages holds up to 8 KiB of small packets plus one large one.
pub(crate) const WS_SLACK_BYTES: usize = 16 * 1024;

/// The largest copy buffer of each direction (held only while bytes flow).
const COPY_BUFFER_BYTES: usize = 8 * 1024;

/// The client-to-broker buffer of an idle connection: it grows to
/// [`COPY_BUFFER_BYTES`] while reads fill it and shrinks back when they do not.
const IDLE_BUFFER_BYTES: usize = 512;

/// The most bytes of a request head (request line and headers) the front holds.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The upstream connections of the front (by their local address, which is the
/// peer address the broker sees) and the client each one carries.
#[derive(Default)]
pub(crate) struct Peers(Mutex<HashMap<SocketAddr, SocketAddr>>);

impl Peers {
    /// The client behind the upstream connection the broker sees from `peer`, if it is one of ours.
    pub(crate) fn client_of(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.lock().get(&peer).copied()
    }

    /// Records that `upstream` carries `client` until the guard is dropped.
    pub(crate) fn register(
        self: &Arc<Self>,
        upstream: SocketAddr,
        client: SocketAddr,
    ) -> PeerGuard {
        self.lock().insert(upstream, client);
        PeerGuard {
            peers: self.clone(),
            upstream,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, SocketAddr>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes its entry from [`Peers`] when the piped connection ends: the map
/// holds one entry per open WebSocket connection.
pub(crate) struct PeerGuard {
    peers: Arc<Peers>,
    upstream: SocketAddr,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        self.peers.lock().remove(&self.upstream);
    }
}

/// What every piped connection needs.
pub(crate) struct Front {
    /// The broker's MQTT over TCP listener.
    pub(crate) mqtt: SocketAddr,
    /// How long the HTTP upgrade may take.
    pub(crate) handshake_timeout: Duration,
    /// The broker's largest MQTT packet; bounds frames, messages and the bytes before the CONNACK.
    pub(crate) max_packet_bytes: usize,
    /// Where the broker finds each piped connection's client.
    pub(crate) peers: Arc<Peers>,
    /// What the HTTP requests need: sign-in, uploads.
    pub(crate) http: http::Routes,
    /// Ends upgraded connections too.
    pub(crate) shutdown: CancellationToken,
    /// Set for WSS: the TLS handshake comes first.
    pub(crate) tls: Option<TlsAcceptor>,
    /// Open HTTP connections per client address (`broker.max_connections_per_ip`,
    /// counted apart from MQTT connections): each holds a task, a socket and
    /// buffers until its request head times out, so one address may not open
    /// unboundedly many. An upgraded connection counts as MQTT from its CONNECT.
    pub(crate) connections: Arc<Addresses>,
}

impl Front {
    /// The most bytes a client may have in flight at once: one frame, one message,
    /// or everything before the broker's first answer.
    fn limit(&self) -> usize {
        self.max_packet_bytes.saturating_add(WS_SLACK_BYTES)
    }
}

/// Accepts clients on `listener` until `shutdown`, each served by [`serve`].
pub(crate) async fn run(listener: TcpListener, front: Front, shutdown: CancellationToken) {
    let front = Arc::new(front);
    crate::accept::each(listener, "web", shutdown, |stream, peer| {
        accept(stream, peer, front.clone())
    })
    .await;
}

/// Finishes the TLS handshake first if the front has a certificate (WSS), then
/// serves the connection.
async fn accept(stream: TcpStream, peer: SocketAddr, front: Arc<Front>) {
    // Held while the connection is served as HTTP (the upgrade hands the stream on).
    let _counted = match front.connections.open(peer.ip()) {
        Ok(counted) => counted,
        Err(open) => {
            debug!(%peer, open, "web connection refused: too many connections from one address");
            return;
        }
    };
    let Some(acceptor) = front.tls.clone() else {
        return serve(stream, peer, front).await;
    };
    match tokio::time::timeout(front.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve(tls, peer, front).await,
        Ok(Err(err)) => debug!(%peer, cause = %err, "wss tls handshake failed"),
        Err(_) => debug!(%peer, "wss tls handshake timed out"),
    }
}

/// Serves one client connection (TCP, or a TLS stream over it) as HTTP/1.1:
/// requests go to [`http::route`], which hands WebSocket upgrades back to [`upgrade`].
pub(crate) async fn serve<S>(stream: S, peer: SocketAddr, front: Arc<Front>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = front.handshake_timeout;
    let service = hyper::service::service_fn(move |request| {
        let front = front.clone();
        async move { Ok::<_, std::convert::Infallible>(http::route(request, peer, &front).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(err) = connection.await {
        debug!(%peer, cause = %err, "web connection ended");
    }
}

/// Answers a WebSocket upgrade request: `101` with `Sec-WebSocket-Protocol: mqtt`
/// when the client offers `mqtt` (RFC 6455: the server picks one of the offered
/// values), with no subprotocol when the client offers none; `400` to a client
/// that offers only others or whose upgrade is malformed. On `101`, a task
/// takes the upgraded connection and pipes it to the broker.
pub(crate) fn upgrade(
    mut request: Request<Incoming>,
    peer: SocketAddr,
    front: &Arc<Front>,
) -> Response<Body> {
    let headers = request.headers();
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| version_ok)
    else {
        return http::text(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key\n",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let subprotocol = match offered_subprotocol(headers) {
        Ok(chosen) => chosen,
        Err(()) => {
            return http::text(
                StatusCode::BAD_REQUEST,
                &format!("unsupported WebSocket subprotocol; this server speaks {SUBPROTOCOL:?}\n"),
            )
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let front = front.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                debug!(%peer, cause = %err, "websocket upgrade failed");
                return;
            }
        };
        let shutdown = front.shutdown.clone();
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = carry(TokioIo::new(upgraded), peer, &front) => {}
        }
    });
    let mut response = Response::new(http::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = subprotocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

/// The subprotocol to answer: none when none is offered, `mqtt` when offered;
/// `Err` when only others are.
fn offered_subprotocol(headers: &HeaderMap) -> Result<Option<HeaderValue>, ()> {
    let offered = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL);
    if offered.iter().next().is_none() {
        return Ok(None);
    }
    let mqtt_offered = offered.iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|p| p.trim() == SUBPROTOCOL))
    });
    if mqtt_offered {
        Ok(Some(HeaderValue::from_static(SUBPROTOCOL)))
    } else {
        Err(())
    }
}

/// Pipes an upgraded connection's MQTT bytes to the broker's TCP listener, its
/// frames and messages capped (see [`Front::limit`]).
async fn carry<S>(upgraded: S, peer: SocketAddr, front: &Front)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // tungstenite reads in chunks of read_buffer_size, allocated per connection
    // (128 KiB by default; its docs suggest a few KiB for many mostly idle clients).
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_CHUNK_BYTES)
        .max_frame_size(Some(front.limit()))
        .max_message_size(Some(front.limit()));
    let ws =
        WebSocketStream::from_raw_socket(TokioAdapter::new(upgraded), Role::Server, Some(config))
            .await;
    let upstream = match TcpStream::connect(front.mqtt).await {
        Ok(s) => s,
        Err(err) => {
            warn!(cause = %err, "websocket front cannot reach the MQTT listener");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _registered = match upstream.local_addr() {
        Ok(local) => front.peers.register(local, peer),
        Err(err) => {
            warn!(cause = %err, "websocket front cannot name its upstream connection");
            return;
        }
    };
    if let Err(err) = pipe(WsStream::new(ws), upstream, front.limit()).await {
        debug!(%peer, cause = %err, "websocket connection ended");
    }
}

/// Copies bytes both ways until either side closes or fails. Until the broker
/// has sent anything (its CONNACK), at most `before_answer` bytes go upstream;
/// a client that sends more is cut off.
pub(crate) async fn pipe<C>(client: C, upstream: TcpStream, before_answer: usize) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (upstream_rd, mut upstream_wr) = upstream.into_split();
    let answered = AtomicBool::new(false);
    let up = async {
        // A generic stream has no readiness to wait on: the buffer stays small
        // while the connection idles, and grows while reads fill it.
        let mut buf = vec![0; IDLE_BUFFER_BYTES];
        let mut unanswered = 0usize;
        loop {
            let n = client_rd.read(&mut buf).await?;
            if n == 0 {
                return upstream_wr.shutdown().await;
            }
            if !answered.load(Ordering::Acquire) {
                unanswered += n;
                if unanswered > before_answer {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "more than one packet before the broker's answer",
                    ));
                }
            }
            upstream_wr.write_all(&buf[..n]).await?;
            if n == buf.len() && buf.len() < COPY_BUFFER_BYTES {
                buf = vec![0; COPY_BUFFER_BYTES];
            } else if n <= IDLE_BUFFER_BYTES && buf.len() > IDLE_BUFFER_BYTES {
                buf = vec![0; IDLE_BUFFER_BYTES];
            }
        }
    };
    let down = async {
        // The broker's socket says when it has bytes: a buffer is held only
        // while they are copied, none while the connection idles.
        loop {
            upstream_rd.readable().await?;
            let mut buf = vec![0; COPY_BUFFER_BYTES];
            loop {
                let n = match upstream_rd.try_read(&mut buf) {
                    Ok(n) => n,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) => return Err(err),
                };
                if n == 0 {
                    return client_wr.shutdown().await;
                }
                answered.store(true, Ordering::Release);
                client_wr.write_all(&buf[..n]).await?;
                client_wr.flush().await?;
            }
        }
    };
    tokio::select! {
        result = up => result,
        result = down => result,
    }
}
