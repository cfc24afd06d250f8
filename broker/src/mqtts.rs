//! MQTT over TLS: a front that finishes each client's TLS handshake in its own
//! task, under a timeout, then pipes the decrypted MQTT bytes into the TCP
//! listener, as the WebSocket front does.
//!
//! Piping (rather than rumqttd's own TLS listener) keeps one code path for
//! sign-in, the ACL and the per-address sign-in throttle (the front registers
//! each upstream connection in [`Peers`]), lets the certificate be swapped
//! while running ([`crate::tls::Certificates`]), and keeps a slow handshake
//! from holding up the accept loop (rumqttd runs it inline in its accept loop).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::websocket::{self, Peers};

/// What every piped connection needs.
pub(crate) struct Front {
    /// The broker's MQTT over TCP listener.
    pub(crate) mqtt: SocketAddr,
    /// Presents the current certificate.
    pub(crate) acceptor: TlsAcceptor,
    /// How long the TLS handshake may take.
    pub(crate) handshake_timeout: Duration,
    /// The most bytes a client may send before the broker's first answer.
    pub(crate) before_answer: usize,
    /// Where the broker finds each piped connection's client.
    pub(crate) peers: Arc<Peers>,
}

/// Accepts TLS clients on `listener` until `shutdown`, each piped to `front.mqtt`.
pub(crate) async fn run(listener: TcpListener, front: Front, shutdown: CancellationToken) {
    let front = Arc::new(front);
    crate::accept::each(listener, "mqtt-tls", shutdown, |stream, peer| {
        let front = front.clone();
        async move { serve(stream, peer, &front).await }
    })
    .await;
}

async fn serve(stream: TcpStream, peer: SocketAddr, front: &Front) {
    let tls =
        match tokio::time::timeout(front.handshake_timeout, front.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                debug!(%peer, cause = %err, "tls handshake failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "tls handshake timed out");
                return;
            }
        };
    let upstream = match TcpStream::connect(front.mqtt).await {
        Ok(s) => s,
        Err(err) => {
            warn!(cause = %err, "mqtt tls front cannot reach the MQTT listener");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _registered = match upstream.local_addr() {
        Ok(local) => front.peers.register(local, peer),
        Err(err) => {
            warn!(cause = %err, "mqtt tls front cannot name its upstream connection");
            return;
        }
    };
    if let Err(err) = websocket::pipe(tls, upstream, front.before_answer).await {
        debug!(%peer, cause = %err, "mqtt tls connection ended");
    }
}
