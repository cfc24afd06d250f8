//! MQTT over WebSocket: a front that finishes each client's HTTP upgrade in its
//! own task, under a timeout, then pipes the MQTT bytes into the TCP listener.
//!
//! rumqttd's own WebSocket listener runs the handshake inline in its accept loop
//! with no timeout, so one idle TCP connection would block every later client.
//! Piping into the TCP listener keeps one code path for sign-in and the ACL.

use std::net::SocketAddr;
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use async_tungstenite::tungstenite::http::HeaderValue;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use ws_stream_tungstenite::WsStream;

/// Answers the upgrade with `Sec-WebSocket-Protocol: mqtt`, as MQTT clients expect.
struct MqttSubprotocol;

impl Callback for MqttSubprotocol {
    fn on_request(
        self,
        _request: &Request,
        mut response: Response,
    ) -> Result<Response, ErrorResponse> {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        Ok(response)
    }
}

/// Accepts WebSocket clients on `listener` until `shutdown`, each piped to `mqtt`.
pub(crate) async fn run(
    listener: TcpListener,
    mqtt: SocketAddr,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(ok) => ok,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(cause = %err, "websocket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = serve(stream, peer, mqtt, handshake_timeout) => {}
            }
        });
    }
}

async fn serve(stream: TcpStream, peer: SocketAddr, mqtt: SocketAddr, handshake_timeout: Duration) {
    let _ = stream.set_nodelay(true);
    let ws = match tokio::time::timeout(
        handshake_timeout,
        async_tungstenite::tokio::accept_hdr_async(stream, MqttSubprotocol),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(err)) => {
            debug!(%peer, cause = %err, "websocket handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "websocket handshake timed out");
            return;
        }
    };
    let mut upstream = match TcpStream::connect(mqtt).await {
        Ok(s) => s,
        Err(err) => {
            warn!(cause = %err, "websocket front cannot reach the MQTT listener");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut client = WsStream::new(ws);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        debug!(%peer, cause = %err, "websocket connection ended");
    }
}
