//! The accept loop every front shares: each accepted client is served in its
//! own task (a slow handshake holds up nobody), and every task ends on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Accepts clients on `listener` until `shutdown`, each handed to `serve` in a
/// task of its own (with `TCP_NODELAY` set); `what` names the listener in logs.
pub(crate) async fn each<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(ok) => ok,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(cause = %err, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shutdown = shutdown.clone();
        let served = serve(stream, peer);
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = served => {}
            }
        });
    }
}
