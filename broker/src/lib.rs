//! The embedded MQTT broker: rumqttd with sign-in against the account store and
//! the protocol's topic ACL, over TCP, WebSocket, TLS and WebSocket over TLS.
//!
//! # Layout
//!
//! - [`config`]: the `[broker]` settings.
//! - `auth`: CONNECT checks (client id, credentials, last will).
//! - `throttle`: failed password sign-ins per user and per source address.
//! - `addresses`: open connections per client address.
//! - `accept`: the accept loop the fronts share.
//! - `gate`: the codec wrapper through which every packet passes; the ACL seam.
//! - `metrics`: connected devices and sign-ins, for the admin listener's `/metrics`.
//! - `sessions`: live connections per user, cut (by a session takeover) when the account is
//!   revoked or an operator kicks them; [`Control`] lists and kicks them for the admin listener.
//! - `websocket`: the web listener: HTTP/1.1 per connection, handshake timeout;
//!   WebSocket upgrades (subprotocol, size limits) piped to the MQTT listener; WSS too.
//! - `http`: the web listener's other requests: routes, sign-in by `Authorization`.
//! - [`files`]: `POST /files` and `GET /files/<file>`, streamed to and from disk.
//! - `mqtts`: the MQTT over TLS front, piping into the TCP listener like the WebSocket front.
//! - [`tls`]: the `[tls]` certificate, checked at start and reloadable.
//! - `web`: the web client's files (`web/` at the repository's root, embedded), served at
//!   `GET /` with a Content-Security-Policy.
//!
//! The broker runs on its own multi-threaded Tokio runtime: rumqttd spawns a
//! task per connection that nothing else can cancel, so stopping the broker
//! shuts that runtime down, which closes every connection.

pub mod config;
pub mod files;

pub mod tls;

mod accept;
mod addresses;
mod auth;
mod gate;
mod http;
mod metrics;
mod mqtts;
mod sessions;
mod web;
mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use messenger_accounts::{Accounts, AccountsError};
use messenger_protocol::{topics, DeviceId, UserId};
use rumqttd::local::LinkBuilder;
use rumqttd::{
    ConnectionSettings, LinkType, Router, RouterConfig, SegmentConfig, Server, ServerSettings,
    WideInflight,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use auth::ServiceAccount;
pub use config::{BrokerConfig, TlsConfig};
pub use files::{CatalogError, FileCatalog, Files, StoredFile, UploadLimit};
pub use metrics::BrokerMetrics;
pub use sessions::Session;
pub use tls::{Certificates, TlsError};

use gate::{Gate, Shared};

/// Failures to start the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The broker's runtime could not be built.
    #[error("cannot start the broker runtime: {0}")]
    Runtime(std::io::Error),
    /// The MQTT listener did not come up.
    #[error("the MQTT listener on {0} did not come up")]
    NotListening(SocketAddr),
    /// A TLS listener is configured without a certificate, or its acceptor cannot be built.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// A listener stopped while the broker was running.
    #[error("the {listener} listener stopped: {cause}")]
    Stopped {
        /// Which (`mqtt`, `websocket`, `mqtt-tls`, `websocket-tls`).
        listener: &'static str,
        /// Why.
        cause: String,
    },
}

/// A running broker. Dropping it (or calling [`RunningBroker::stop`]) closes every connection.
pub struct RunningBroker {
    mqtt_addr: SocketAddr,
    shared: Arc<Shared>,
    /// Lists and cuts connections (the admin listener's `/sessions` and `/kick`).
    control: Control,
    ws_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    wss_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    /// Owns every broker task; shut down on stop.
    runtime: Option<tokio::runtime::Runtime>,
    /// A listener that stops on its own reports here.
    stopped: tokio::sync::mpsc::UnboundedReceiver<BrokerError>,
}

impl RunningBroker {
    /// The address of the MQTT over TCP listener: with `broker.listen = ""`, the
    /// loopback listener only the fronts and the service account may sign in through.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// Whether a signed-in connection with this client id (`<user>:<device>`) is open:
    /// lets the bridge correct a device that looks online but whose connection is gone.
    pub fn is_connected(&self, client_id: &str) -> bool {
        self.shared.sessions.is_connected(client_id)
    }

    /// Connected devices and sign-ins, to register with the admin listener.
    pub fn metrics(&self) -> BrokerMetrics {
        self.shared.metrics.clone()
    }

    /// Lists and cuts device connections; cheap to clone.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// A cheap, shareable handle to [`RunningBroker::is_connected`].
    pub fn liveness(&self) -> Liveness {
        Liveness(self.shared.clone())
    }

    /// The address of the MQTT over WebSocket listener, if enabled.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// The address of the MQTT over TLS listener, if enabled.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The address of the MQTT over WebSocket over TLS listener, if enabled.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss_addr
    }

    /// Resolves if a listener stops while the broker runs (it should not):
    /// which one and why. Never resolves otherwise.
    pub async fn failed(&mut self) -> BrokerError {
        match self.stopped.recv().await {
            Some(err) => err,
            None => std::future::pending().await,
        }
    }

    /// Stops accepting, closes every connection (without firing their wills'
    /// replacements: the broker's in-memory state is gone) and returns.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        self.shutdown.cancel();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Answers whether a client id has an open connection, after the broker is gone too (then: no).
#[derive(Clone)]
pub struct Liveness(Arc<Shared>);

impl Liveness {
    /// Whether a signed-in connection with this client id is open.
    pub fn is_connected(&self, client_id: &str) -> bool {
        self.0.sessions.is_connected(client_id)
    }
}

/// The operator's hold on the broker's connections: list them, cut them.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
    links: sessions::Links,
    accounts: Arc<Accounts>,
}

impl Control {
    /// The open device connections, of `user` only if given.
    pub fn sessions(&self, user: Option<&UserId>) -> Vec<Session> {
        self.shared.sessions.list(user.map(UserId::as_str))
    }

    /// Whether `user` has an account. Blocking (SQLite): call it off the async workers.
    pub fn user_exists(&self, user: &UserId) -> Result<bool, AccountsError> {
        self.accounts.exists(user)
    }

    /// Cuts the open connections of `user` (of one `device`, if given) now, by a
    /// session takeover as a revocation does, but records nothing: the devices may
    /// sign in again at once. Returns the sessions cut. Must run on a
    /// multi-threaded runtime (the takeover waits for the router).
    pub async fn kick(&self, user: &UserId, device: Option<&DeviceId>) -> Vec<Session> {
        let live = self
            .shared
            .sessions
            .kick(user.as_str(), device.map(DeviceId::as_str));
        let mut cut = Vec::with_capacity(live.len());
        for conn in &live {
            if let Err(err) = sessions::cut(&self.links, conn).await {
                warn!(cause = %err, client_id = %conn.client_id, "cannot cut a kicked connection; it ends at its next packet");
            }
            cut.push(conn.session(user.as_str()));
        }
        if !cut.is_empty() {
            info!(%user, connections = cut.len(), "kicked");
        }
        cut
    }
}

/// Bigger logs for the bridge's subscriptions, which carry every device's traffic
/// (rumqttd picks a log's segment size by matching its filter against these).
fn service_segments(config: &BrokerConfig) -> HashMap<String, SegmentConfig> {
    [topics::OUT_FILTER, topics::PRESENCE_FILTER]
        .into_iter()
        .map(|filter| {
            let segments = SegmentConfig {
                max_segment_size: config.service_segment_bytes,
                max_segment_count: config.segment_count,
            };
            (filter.to_owned(), segments)
        })
        .collect()
}

/// Binds a listener's address up front so a bad or busy address is reported
/// before anything starts, and resolves port 0 to a free port.
fn reserve(addr: SocketAddr) -> Result<SocketAddr, BrokerError> {
    let probe =
        std::net::TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
    probe
        .local_addr()
        .map_err(|source| BrokerError::Bind { addr, source })
}

/// Starts the broker without TLS listeners or file routes (see [`start_with`]).
pub fn start(
    config: &BrokerConfig,
    accounts: Arc<Accounts>,
    service: ServiceAccount,
) -> Result<RunningBroker, BrokerError> {
    start_with(config, Extras::default(), accounts, service)
}

/// What the broker serves besides MQTT over TCP and WebSocket.
#[derive(Default)]
pub struct Extras<'a> {
    /// The `[tls]` certificate for `broker.tls_listen` and `broker.wss_listen`
    /// (required when either is set).
    pub certificates: Option<&'a Certificates>,
    /// Uploads and downloads on the web listeners; without it `/files` is `404`.
    pub files: Option<Files>,
}

/// Starts the broker on its own runtime and returns once its listeners accept
/// connections.
pub fn start_with(
    config: &BrokerConfig,
    extras: Extras<'_>,
    accounts: Arc<Accounts>,
    service: ServiceAccount,
) -> Result<RunningBroker, BrokerError> {
    let Extras {
        certificates,
        files,
    } = extras;
    let acceptor = match (config.needs_tls(), certificates) {
        (false, _) => None,
        (true, Some(certificates)) => Some(certificates.acceptor()?),
        (true, None) => {
            return Err(TlsError::Missing {
                key: "tls.cert_path",
            }
            .into())
        }
    };
    // Plain MQTT off: the fronts and the bridge still need the TCP listener; it
    // goes on a loopback port where the gate admits only them.
    let fronts_only = config.listen.is_none();
    let mqtt_addr = reserve(
        config
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("broker")
        .enable_all()
        .build()
        .map_err(BrokerError::Runtime)?;
    let shutdown = CancellationToken::new();
    let (stopped_tx, stopped) = tokio::sync::mpsc::unbounded_channel();

    let router = Router::new(0, router_config(config));
    let router_tx = router.spawn();
    let takeover_tx = router_tx.clone();
    let links = sessions::links(move |client_id| LinkBuilder::new(client_id, takeover_tx.clone()));
    let shared = shared_state(config, accounts.clone(), service.clone(), fronts_only);
    let mut server = Server::new(
        server_settings(config, mqtt_addr, &service),
        router_tx,
        Gate::new(shared.clone()),
    );
    let mqtt_task = {
        let stopped = stopped_tx.clone();
        runtime.spawn(async move {
            let cause = match server.start(LinkType::Remote).await {
                Ok(()) => "it returned".to_owned(),
                Err(err) => err.to_string(),
            };
            let _ = stopped.send(BrokerError::Stopped {
                listener: "mqtt",
                cause: cause.clone(),
            });
            cause
        })
    };
    if !runtime.block_on(accepting(mqtt_addr, &mqtt_task)) {
        runtime.shutdown_background();
        return Err(BrokerError::NotListening(mqtt_addr));
    }
    // One count for the plain and the TLS web listeners alike.
    let web_connections = Arc::new(addresses::Addresses::new(config.max_connections_per_ip));
    let web_front = |tls: Option<tokio_rustls::TlsAcceptor>| websocket::Front {
        mqtt: mqtt_addr,
        handshake_timeout: Duration::from_millis(config.ws_handshake_timeout_ms),
        max_packet_bytes: config.max_packet_bytes,
        peers: shared.peers.clone(),
        http: http::Routes {
            shared: shared.clone(),
            files: files.clone(),
        },
        shutdown: shutdown.clone(),
        tls,
        connections: web_connections.clone(),
    };
    let ws_addr = match config.ws_listen {
        Some(addr) => Some(start_websocket(
            &runtime,
            addr,
            web_front(None),
            shutdown.clone(),
            stopped_tx.clone(),
        )?),
        None => None,
    };
    let (tls_addr, wss_addr) = match acceptor {
        Some(acceptor) => {
            let tls_addr = match config.tls_listen {
                Some(addr) => {
                    let front = mqtts::Front {
                        mqtt: mqtt_addr,
                        acceptor: acceptor.clone(),
                        handshake_timeout: Duration::from_millis(config.connect_timeout_ms.into()),
                        before_answer: config
                            .max_packet_bytes
                            .saturating_add(websocket::WS_SLACK_BYTES),
                        peers: shared.peers.clone(),
                    };
                    let (listener, bound) = bind(&runtime, addr)?;
                    let run = mqtts::run(listener, front, shutdown.clone());
                    spawn_front(
                        &runtime,
                        "mqtt-tls",
                        shutdown.clone(),
                        stopped_tx.clone(),
                        run,
                    );
                    Some(bound)
                }
                None => None,
            };
            let wss_addr = match config.wss_listen {
                Some(addr) => Some(start_websocket(
                    &runtime,
                    addr,
                    web_front(Some(acceptor)),
                    shutdown.clone(),
                    stopped_tx,
                )?),
                None => None,
            };
            (tls_addr, wss_addr)
        }
        None => (None, None),
    };
    let control = Control {
        shared: shared.clone(),
        links: links.clone(),
        accounts: accounts.clone(),
    };
    runtime.spawn(watch_revocations(
        accounts,
        shared.clone(),
        links,
        Duration::from_millis(config.revocation_poll_ms),
        shutdown.clone(),
    ));

    if fronts_only {
        info!(internal = %mqtt_addr, websocket = ?ws_addr, mqtt_tls = ?tls_addr, websocket_tls = ?wss_addr,
            "broker listening; plain MQTT off (broker.listen is empty): the loopback listener admits only the fronts and the bridge");
    } else {
        info!(mqtt = %mqtt_addr, websocket = ?ws_addr, mqtt_tls = ?tls_addr, websocket_tls = ?wss_addr, "broker listening");
    }
    Ok(RunningBroker {
        mqtt_addr,
        shared,
        control,
        ws_addr,
        tls_addr,
        wss_addr,
        shutdown,
        runtime: Some(runtime),
        stopped,
    })
}

/// The router's settings: connection limit, per-subscription logs.
fn router_config(config: &BrokerConfig) -> RouterConfig {
    RouterConfig {
        max_connections: config.max_connections,
        max_outgoing_packet_count: 200,
        max_segment_size: config.segment_bytes,
        max_segment_count: config.segment_count,
        custom_segment: Some(service_segments(config)),
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    }
}

/// What every connection's gate shares: sign-in (with its throttle), sessions, peers.
fn shared_state(
    config: &BrokerConfig,
    accounts: Arc<Accounts>,
    service: ServiceAccount,
    fronts_only: bool,
) -> Arc<Shared> {
    let policy = messenger_accounts::throttle::Policy {
        free_per_user: config.sign_in_free_failures,
        free_per_address: config.sign_in_free_failures_per_address,
        first_backoff: Duration::from_millis(config.sign_in_backoff_ms),
        max_backoff: Duration::from_millis(config.sign_in_max_backoff_ms),
    };
    let metrics = BrokerMetrics::default();
    Arc::new(Shared {
        auth: auth::Authenticator::new(
            accounts.clone(),
            service,
            policy,
            Duration::from_millis(config.sign_in_failure_delay_ms),
        ),
        sessions: Arc::new(sessions::Sessions::new(metrics.connected.clone())),
        metrics,
        peers: Arc::new(websocket::Peers::default()),
        fronts_only,
        addresses: Arc::new(addresses::Addresses::new(config.max_connections_per_ip)),
        max_devices: config.max_devices,
        accounts,
    })
}

/// The MQTT listener's settings; only the service account may use client ids
/// `<service>:...` (the gate checks), and it gets the wide inflight window.
fn server_settings(
    config: &BrokerConfig,
    mqtt_addr: SocketAddr,
    service: &ServiceAccount,
) -> ServerSettings {
    ServerSettings {
        name: "mqtt".into(),
        listen: mqtt_addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: config.connect_timeout_ms,
            max_payload_size: config.max_packet_bytes,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
            wide_inflight: Some(WideInflight {
                client_id_prefix: format!("{}:", service.username),
                count: config.service_inflight,
            }),
        },
    }
}

/// Waits until rumqttd's listener accepts (it binds inside `start` and reports nothing).
async fn accepting(addr: SocketAddr, task: &tokio::task::JoinHandle<String>) -> bool {
    for _ in 0..500 {
        if task.is_finished() {
            return false;
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Binds a front's listener; returns it and its address.
fn bind(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), BrokerError> {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|source| BrokerError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| BrokerError::Bind { addr, source })?;
    Ok((listener, bound))
}

/// Runs a front's accept loop; reports it if it returns before `shutdown`.
fn spawn_front(
    runtime: &tokio::runtime::Runtime,
    name: &'static str,
    shutdown: CancellationToken,
    stopped: tokio::sync::mpsc::UnboundedSender<BrokerError>,
    front: impl std::future::Future<Output = ()> + Send + 'static,
) {
    runtime.spawn(async move {
        front.await;
        if !shutdown.is_cancelled() {
            let _ = stopped.send(BrokerError::Stopped {
                listener: name,
                cause: "it returned".into(),
            });
        }
    });
}

/// Binds the WebSocket front (WSS with a certificate) and starts it; returns its address.
fn start_websocket(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    front: websocket::Front,
    shutdown: CancellationToken,
    stopped: tokio::sync::mpsc::UnboundedSender<BrokerError>,
) -> Result<SocketAddr, BrokerError> {
    let (listener, bound) = bind(runtime, addr)?;
    let name = if front.tls.is_some() {
        "websocket-tls"
    } else {
        "websocket"
    };
    let run = websocket::run(listener, front, shutdown.clone());
    spawn_front(runtime, name, shutdown, stopped, run);
    Ok(bound)
}

/// Cuts the connections of users who were removed or changed their password,
/// possibly by another process (`messenger user ...`) sharing the SQLite file.
async fn watch_revocations(
    accounts: Arc<Accounts>,
    shared: Arc<Shared>,
    links: sessions::Links,
    every: Duration,
    shutdown: CancellationToken,
) {
    let acc = accounts.clone();
    let mut last = match tokio::task::spawn_blocking(move || acc.latest_revocation()).await {
        Ok(Ok(n)) => n,
        Ok(Err(err)) => {
            warn!(cause = %err, "cannot read revocations; removed users stay connected until they reconnect");
            return;
        }
        Err(_) => return,
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let acc = accounts.clone();
        match tokio::task::spawn_blocking(move || acc.revocations_after(last)).await {
            Ok(Ok((users, newest))) => {
                last = newest;
                for (user, at_ms) in users {
                    let live = shared.sessions.revoke(&user, at_ms);
                    for conn in &live {
                        if let Err(err) = sessions::cut(&links, conn).await {
                            warn!(cause = %err, client_id = %conn.client_id, "cannot cut a revoked connection; it ends at its next packet");
                        }
                    }
                    if !live.is_empty() {
                        info!(%user, connections = live.len(), "account revoked");
                    }
                }
            }
            Ok(Err(err)) => warn!(cause = %err, "cannot read revocations"),
            Err(_) => return,
        }
    }
}
