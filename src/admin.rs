//! The admin listener (`[admin]`, `admin.listen`): `GET /metrics` in the
//! Prometheus text format, `GET /healthz` and `GET /readyz`; where a broker runs,
//! the control routes `GET /sessions` and `POST /kick` (`control`, loopback
//! callers only); anything else 404.
//! Loopback by default; an empty `listen` turns it off. It is bound before
//! anything else listens (a busy address is bad configuration) and runs as a
//! supervised part of `serve`, `broker` and `bridge` (docs/OPERATIONS.md).

mod control;

pub(crate) use control::{ErrorReply, KickReply, SessionItem, SessionsReply, CALLER_HEADER};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use messenger_bridge::config::StorageConfig;
use messenger_bridge::BridgeMetrics;
use messenger_protocol::config::ConfigError;
use messenger_store::postgres;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The default admin address: loopback only.
const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// How long one admin connection may stay open (a slow client cannot pin a task).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `/readyz` waits for the broker's MQTT listener to accept a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The `[admin]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AdminConfig {
    /// `host:port` of the admin HTTP listener; empty turns it off.
    pub(crate) listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
        }
    }
}

impl AdminConfig {
    /// The address to listen on; `None` when turned off (`listen = ""`).
    pub(crate) fn address(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|_| {
            ConfigError::invalid(
                "admin.listen",
                format!(
                    "be host:port with an IP address, or empty to turn it off (got {listen:?})"
                ),
            )
        })
    }
}

/// Binds the admin listener, if configured (before anything else listens).
pub(crate) fn bind(config: &AdminConfig) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(addr) = config.address()? else {
        info!("admin listener off (admin.listen is empty)");
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|err| anyhow::anyhow!("admin.listen: cannot listen on {addr}: {err}"))?;
    Ok(Some(listener))
}

/// What `/readyz` checks: each part this process runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Readiness {
    /// The embedded broker's MQTT address: ready while it accepts a TCP connection.
    pub(crate) broker: Option<SocketAddr>,
    /// The bridge: ready while subscribed and its last batch committed.
    pub(crate) bridge: Option<BridgeMetrics>,
}

impl Readiness {
    /// Why the process is not ready, if it is not.
    async fn not_ready(&self) -> Option<String> {
        if let Some(addr) = self.broker {
            let probe = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr));
            match probe.await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    return Some(format!("the broker does not accept connections: {err}"))
                }
                Err(_) => return Some("the broker does not accept connections: timed out".into()),
            }
        }
        self.bridge
            .as_ref()
            .and_then(BridgeMetrics::not_ready)
            .map(str::to_owned)
    }
}

/// What the admin listener serves.
pub(crate) struct Admin {
    /// Every metric of the process.
    pub(crate) registry: Registry,
    /// What `/readyz` checks.
    pub(crate) readiness: Readiness,
    /// The broker's connections, where this process runs a broker (`/sessions`, `/kick`).
    pub(crate) control: Option<messenger_broker::Control>,
    /// The database's size, asked for before each `/metrics` on PostgreSQL.
    storage: Arc<StorageSize>,
}

impl Admin {
    /// A registry with the storage size collector for the configured storage.
    pub(crate) fn new(storage: &StorageConfig) -> Self {
        let mut registry = Registry::default();
        let size = Arc::new(match storage.postgres_url() {
            Some(url) => StorageSize::Postgres(Box::new(DatabaseSize {
                url: url.to_owned(),
                bytes: AtomicI64::new(0),
                client: std::sync::Mutex::new(None),
            })),
            None => StorageSize::Sqlite {
                database: storage.path.clone(),
            },
        });
        registry.register_collector(Box::new(StorageCollector(size.clone())));
        Self {
            registry,
            readiness: Readiness::default(),
            control: None,
            storage: size,
        }
    }

    /// The answer to one request from `peer`.
    async fn answer(
        &self,
        method: &Method,
        uri: &hyper::Uri,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let path = uri.path();
        if matches!(
            (method, path),
            (&Method::GET, "/sessions") | (&Method::POST, "/kick")
        ) {
            let (status, body) = self.control(method, uri, headers, peer).await;
            return reply(status, "application/json", body);
        }
        match (method, path) {
            (&Method::GET, "/metrics") => {
                self.storage.refresh().await;
                let mut text = String::new();
                match prometheus_client::encoding::prometheus_text::encode(
                    &mut text,
                    &self.registry,
                ) {
                    Ok(()) => reply(
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        text,
                    ),
                    Err(_) => {
                        text_reply(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n")
                    }
                }
            }
            (&Method::GET, "/healthz") => text_reply(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => match self.readiness.not_ready().await {
                None => text_reply(StatusCode::OK, "ready\n"),
                Some(reason) => text_reply(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            },
            _ => text_reply(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl Admin {
    /// A control route's answer (see `control`).
    async fn control(
        &self,
        method: &Method,
        uri: &hyper::Uri,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> control::Answer {
        if let Some(refused) = control::refuse_caller(peer, headers) {
            return refused;
        }
        let Some(broker) = &self.control else {
            return (
                StatusCode::NOT_FOUND,
                r#"{"error":"this process runs no broker (admin commands need serve or broker)"}"#
                    .to_owned(),
            );
        };
        if method == Method::GET {
            control::sessions(broker, uri.query()).await
        } else {
            control::kick(broker, uri.query()).await
        }
    }
}

fn text_reply(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.into())
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Serves HTTP/1.1 on `listener` until `shutdown`; returns an error only if
/// accepting fails for good. Must run inside a Tokio runtime.
pub(crate) async fn run(
    listener: std::net::TcpListener,
    admin: Arc<Admin>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    info!(addr = %listener.local_addr()?, "admin listener on (/metrics, /healthz, /readyz, /sessions, /kick)");
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait, then keep serving.
                    warn!(cause = %err, "admin listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let admin = admin.clone();
                async move {
                    let answer = admin
                        .answer(request.method(), request.uri(), request.headers(), peer)
                        .await;
                    Ok::<_, Infallible>(answer)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}

/// The database's size, for `messenger_storage_bytes`.
#[derive(Debug)]
enum StorageSize {
    /// The SQLite file and its WAL, read at each scrape.
    Sqlite { database: PathBuf },
    /// The PostgreSQL database, asked for before each scrape.
    Postgres(Box<DatabaseSize>),
}

/// `pg_database_size` of the configured PostgreSQL database, as last asked for.
struct DatabaseSize {
    /// `storage.url`.
    url: String,
    /// The last size read; kept while the database cannot be asked.
    bytes: AtomicI64,
    /// A connection kept between scrapes; `None` until made, and after a failure.
    client: std::sync::Mutex<Option<postgres::Client>>,
}

impl std::fmt::Debug for DatabaseSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSize")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl DatabaseSize {
    /// Reads the size on the kept connection (made first if need be), off the
    /// async workers; a failure drops the connection and keeps the last size.
    fn read(&self) {
        // A scrape still waiting on the database: this one reports the last size.
        let Ok(mut client) = self.client.try_lock() else {
            return;
        };
        if client.is_none() {
            match postgres::connect(&self.url) {
                Ok(made) => *client = Some(made),
                Err(err) => {
                    warn!(cause = %err, "cannot reach storage.url for messenger_storage_bytes");
                    return;
                }
            }
        }
        let Some(connection) = client.as_mut() else {
            return;
        };
        match connection.query_one("SELECT pg_database_size(current_database())", &[]) {
            Ok(row) => self.bytes.store(row.get(0), Ordering::Relaxed),
            Err(err) => {
                warn!(cause = %err, "cannot read the database's size for messenger_storage_bytes");
                *client = None;
            }
        }
    }
}

impl StorageSize {
    /// Brings the PostgreSQL size up to date, waiting at most [`PROBE_TIMEOUT`].
    async fn refresh(self: &Arc<Self>) {
        if let Self::Postgres(_) = **self {
            let size = self.clone();
            let read = tokio::task::spawn_blocking(move || {
                if let Self::Postgres(database) = &*size {
                    database.read();
                }
            });
            let _ = tokio::time::timeout(PROBE_TIMEOUT, read).await;
        }
    }
}

/// `messenger_storage_bytes`, rendered from the [`StorageSize`] the admin listener shares.
#[derive(Debug)]
struct StorageCollector(Arc<StorageSize>);

impl Collector for StorageCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let files = match &*self.0 {
            StorageSize::Sqlite { database } => {
                let mut wal = database.as_os_str().to_owned();
                wal.push("-wal");
                let size = |path: &std::path::Path| {
                    std::fs::metadata(path)
                        .map_or(0, |m| i64::try_from(m.len()).unwrap_or(i64::MAX))
                };
                vec![
                    ("db", size(database)),
                    ("wal", size(std::path::Path::new(&wal))),
                ]
            }
            StorageSize::Postgres(database) => {
                vec![("db", database.bytes.load(Ordering::Relaxed))]
            }
        };
        let mut family = encoder.encode_descriptor(
            "messenger_storage_bytes",
            "Size of the storage: the SQLite database file and its write-ahead log, or the \
             PostgreSQL database (file=\"db\")",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (file, bytes) in files {
            let labels = [("file", file)];
            ConstGauge::new(bytes).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_is_an_address_or_empty() {
        let config = |listen: &str| AdminConfig {
            listen: listen.to_owned(),
        };
        assert_eq!(
            AdminConfig::default().address().unwrap(),
            Some(DEFAULT_LISTEN.parse().unwrap())
        );
        assert_eq!(config("").address().unwrap(), None);
        assert_eq!(config("  ").address().unwrap(), None);
        let err = config("localhost").address().unwrap_err().to_string();
        assert!(err.contains("admin.listen"), "{err}");
    }
}
