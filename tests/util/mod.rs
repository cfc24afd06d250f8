//! Fixtures shared by every integration test.
//!
//! # Layout
//!
//! - this file: [`TestBroker`], an embedded broker with its own temp directory,
//!   SQLite file and users, listening on `127.0.0.1:0` over TCP and WebSocket;
//!   [`PATIENCE`], the budget every wait gets; small id helpers.
//! - [`client`]: rumqttc devices and the bridge's service account, with waits on
//!   their events ([`Client`]).
//! - [`raw`]: hand-written MQTT packets over TCP or WebSocket, for what no
//!   well-behaved client library sends (a second CONNECT).
//! - [`process`]: the real `messenger` binary in its own temp directory.
//! - [`stock`]: `mosquitto_pub`, `mosquitto_sub` and a Mosquitto broker.
//! - [`postgres`]: one PostgreSQL server per test binary, a database per test.
//! - [`cluster`]: `messenger cluster up` (nats-server nodes, PostgreSQL, bridges)
//!   as a child process group, per test or one per test binary.
//!
//! Nothing here sleeps in place of waiting: every wait is on an event (or, for a
//! process or a port, a short poll), under [`PATIENCE`]. To show that something did *not* happen, tests use a positive
//! control (a later, allowed message on the same path arrives, the forbidden one
//! never does).

pub(crate) mod client;
pub(crate) mod cluster;
pub(crate) mod mosquitto;
pub(crate) mod postgres;
pub(crate) mod process;
pub(crate) mod proxy;
pub(crate) mod raw;
pub(crate) mod server;
pub(crate) mod stock;

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::time::Duration;

use messenger_accounts::Accounts;
use messenger_broker::{BrokerConfig, RunningBroker, ServiceAccount};
use messenger_protocol::{DeviceId, UserId};
use tempfile::TempDir;

pub(crate) use client::{refusal, Client, ClientOptions, Transport};

/// How long any single wait may take before the test fails. Generous, so a
/// loaded CI machine does not make tests flaky; passing tests never wait this long.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// The bridge's service account on every test broker.
pub(crate) const BRIDGE_USER: &str = "_bridge";
/// Its password.
pub(crate) const BRIDGE_PASSWORD: &str = "bridge-secret";

/// The test macros' one mechanism: `test_variants!([a(args), b(args)] name, ...)`
/// yields, for each `name`, `mod name { async fn a() { super::name(args) } ... }`,
/// each a multi-threaded tokio test (`Backend` and `Transport` in scope).
macro_rules! test_variants {
    ($variants:tt $($name:ident),* $(,)?) => {$(
        $crate::util::test_variants!(@one $variants $name);
    )*};
    (@one [$($variant:ident($($arg:expr),*)),* $(,)?] $name:ident) => {
        mod $name {
            #[allow(unused_imports)]
            use $crate::util::{server::Backend, Transport};
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $variant() {
                    super::$name($($arg),*).await;
                }
            )*
        }
    };
}
pub(crate) use test_variants;

/// Runs one broker test body over TCP and over WebSocket with the accounts in
/// SQLite, and over TCP with the accounts in PostgreSQL:
/// `over_transports_and_engines!(name)` next to
/// `async fn name(transport: Transport, backend: Backend)` yields `name::tcp`,
/// `name::ws` and `name::postgres`.
macro_rules! over_transports_and_engines {
    ($($name:ident),* $(,)?) => {
        $crate::util::test_variants!(
            [
                tcp(Transport::Tcp, Backend::Embedded),
                ws(Transport::Ws, Backend::Embedded),
                postgres(Transport::Tcp, Backend::Postgres),
            ]
            $($name),*
        );
    };
}
pub(crate) use over_transports_and_engines;

/// [`over_transports_and_engines`] and, over TCP, on a NATS cluster: also
/// yields `name::cluster`.
macro_rules! over_transports_engines_and_cluster {
    ($($name:ident),* $(,)?) => {
        $crate::util::test_variants!(
            [
                tcp(Transport::Tcp, Backend::Embedded),
                ws(Transport::Ws, Backend::Embedded),
                postgres(Transport::Tcp, Backend::Postgres),
                cluster(Transport::Tcp, Backend::Cluster),
            ]
            $($name),*
        );
    };
}
pub(crate) use over_transports_engines_and_cluster;

/// A user id, for tests.
pub(crate) fn uid(s: &str) -> UserId {
    UserId::parse(s).expect("valid user id in test")
}

/// A device id, for tests.
pub(crate) fn did(s: &str) -> DeviceId {
    DeviceId::parse(s).expect("valid device id in test")
}

/// Log to the test's captured output; `RUST_LOG=debug cargo test` shows the broker's logs.
pub(crate) fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    });
}

/// An embedded broker on free ports, with its own temp directory and SQLite file.
///
/// `TestBroker::start().users(&[("alice", "pw")]).await` starts one. Dropping it
/// stops the broker (closing every connection) and deletes the directory.
pub(crate) struct TestBroker {
    /// Declared first so it stops before the directory goes away.
    broker: Tier,
    accounts: Arc<Accounts>,
    /// The PostgreSQL database holding the accounts, when not the SQLite file.
    postgres: Option<String>,
    /// Holds the SQLite file.
    _dir: TempDir,
}

/// The broker tier a [`TestBroker`] runs.
enum Tier {
    /// The embedded broker.
    Embedded(Box<RunningBroker>),
    /// A NATS cluster (`messenger cluster up`, bridges included); each new
    /// device signs in on the next node.
    Cluster {
        cluster: Box<cluster::Cluster>,
        handed: std::sync::atomic::AtomicUsize,
        /// The service account's password, from the cluster's configuration.
        service_password: String,
    },
}

/// What [`TestBroker::start`] will start; `.await` it.
pub(crate) struct TestBrokerBuilder {
    users: Vec<(String, String)>,
    config: BrokerConfig,
    /// A PostgreSQL database for the accounts (see [`TestBrokerBuilder::postgres`]).
    postgres: Option<String>,
    /// A NATS cluster instead of the embedded broker ([`server::Backend::Cluster`]).
    cluster: bool,
}

impl TestBroker {
    /// A broker with test settings: both listeners on `127.0.0.1:0`, revocations
    /// polled every 50 ms, WebSocket handshakes cut after 1 s, no bound on connections per address.
    pub(crate) fn start() -> TestBrokerBuilder {
        let localhost = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        TestBrokerBuilder {
            users: Vec::new(),
            config: BrokerConfig {
                listen: Some(localhost),
                ws_listen: Some(localhost),
                ws_handshake_timeout_ms: 1_000,
                revocation_poll_ms: 50,
                // Every test device comes from 127.0.0.1 (tests/limits.rs sets one).
                max_connections_per_ip: 0,
                ..BrokerConfig::default()
            },
            postgres: None,
            cluster: false,
        }
    }

    /// [`TestBroker::start`] with the accounts where `backend` keeps them: the
    /// SQLite file, or a fresh database of the test binary's PostgreSQL.
    pub(crate) fn on(backend: server::Backend) -> TestBrokerBuilder {
        match backend {
            server::Backend::Embedded => Self::start(),
            server::Backend::Postgres => Self::start().postgres(postgres::database()),
            server::Backend::Cluster => TestBrokerBuilder {
                cluster: true,
                ..Self::start()
            },
            server::Backend::Mosquitto => panic!("a TestBroker is ours or a NATS cluster"),
        }
    }

    /// The MQTT over TCP address.
    pub(crate) fn mqtt_addr(&self) -> std::net::SocketAddr {
        match &self.broker {
            Tier::Embedded(broker) => broker.mqtt_addr(),
            Tier::Cluster {
                cluster, handed, ..
            } => {
                let nodes = cluster.description().mqtt.len();
                cluster.mqtt(handed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % nodes)
            }
        }
    }

    /// The MQTT over WebSocket address.
    pub(crate) fn ws_addr(&self) -> std::net::SocketAddr {
        match &self.broker {
            Tier::Embedded(broker) => broker
                .ws_addr()
                .expect("test brokers always listen on WebSocket"),
            Tier::Cluster { .. } => panic!("cluster bodies run over TCP"),
        }
    }

    /// A device signing in as `client_id` (`<user>:<device>`, the user part is the username).
    pub(crate) fn device(
        &self,
        transport: Transport,
        client_id: &str,
        password: &str,
    ) -> ClientOptions {
        let mqtt = self.mqtt_addr();
        let ws = match &self.broker {
            Tier::Embedded(_) => self.ws_addr(),
            Tier::Cluster { .. } => mqtt,
        };
        ClientOptions::new((mqtt, ws), transport, client_id, password)
    }

    /// The bridge's service account, over TCP.
    pub(crate) fn bridge(&self) -> ClientOptions {
        let password = match &self.broker {
            Tier::Embedded(_) => BRIDGE_PASSWORD,
            Tier::Cluster {
                service_password, ..
            } => service_password.as_str(),
        };
        self.device(Transport::Tcp, &format!("{BRIDGE_USER}:main"), password)
    }

    /// The SQLite file (the bridge of a [`server::TestServer`] shares it).
    pub(crate) fn db_path(&self) -> std::path::PathBuf {
        self._dir.path().join("messenger.db")
    }

    /// The PostgreSQL database of the accounts, if they are not in the SQLite file.
    pub(crate) fn postgres_url(&self) -> Option<&str> {
        self.postgres.as_deref()
    }

    /// What the bridge asks to reconcile presence with open connections.
    pub(crate) fn liveness(&self) -> messenger_bridge::Liveness {
        let Tier::Embedded(broker) = &self.broker else {
            panic!("a cluster's bridges reconcile presence themselves");
        };
        let liveness = broker.liveness();
        Arc::new(move |client_id: &str| liveness.is_connected(client_id))
    }

    /// Runs `f` on the broker's account store, off the async workers (SQLite and argon2 block).
    pub(crate) async fn with_accounts<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&Accounts) -> T + Send + 'static,
    {
        let accounts = self.accounts.clone();
        tokio::task::spawn_blocking(move || f(&accounts))
            .await
            .expect("account store call panicked")
    }
}

impl TestBrokerBuilder {
    /// Creates these users (name, password) before the broker starts.
    pub(crate) fn users(mut self, users: &[(&str, &str)]) -> Self {
        self.users.extend(
            users
                .iter()
                .map(|(name, password)| ((*name).to_owned(), (*password).to_owned())),
        );
        self
    }

    /// Keeps the accounts in the PostgreSQL database at `url` (its schema is
    /// migrated) instead of the SQLite file.
    pub(crate) fn postgres(mut self, url: String) -> Self {
        self.postgres = Some(url);
        self
    }

    /// Changes the broker's settings.
    pub(crate) fn config(mut self, edit: impl FnOnce(&mut BrokerConfig)) -> Self {
        edit(&mut self.config);
        self
    }

    /// Blocking: creates the store and users, then starts the broker (which
    /// builds and blocks on its own runtime, so it cannot run on an async worker).
    fn start_blocking(mut self) -> TestBroker {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = self.cluster.then(|| cluster::Cluster::start_now(3, 2));
        if let Some(cluster) = &cluster {
            self.postgres = Some(cluster.description().postgres.clone());
        }
        let accounts = Arc::new(match &self.postgres {
            Some(url) => {
                let mut client = messenger_store::postgres::connect(url).expect("connect");
                messenger_store::postgres::migrate(&mut client).expect("migrate");
                let url = url.clone();
                let reconnect =
                    move || messenger_store::postgres::connect(&url).map_err(|e| e.to_string());
                Accounts::on_postgres(client, Box::new(reconnect)).expect("account store")
            }
            None => Accounts::open(&dir.path().join("messenger.db")).expect("account store"),
        });
        for (name, password) in &self.users {
            accounts
                .add(&uid(name), password)
                .expect("adding a test user");
        }
        let broker = match cluster {
            Some(cluster) => {
                let service_password = cluster.service_password();
                Tier::Cluster {
                    cluster: Box::new(cluster),
                    handed: std::sync::atomic::AtomicUsize::new(0),
                    service_password,
                }
            }
            None => {
                let service = ServiceAccount {
                    username: BRIDGE_USER.into(),
                    password: BRIDGE_PASSWORD.into(),
                };
                Tier::Embedded(Box::new(
                    messenger_broker::start(&self.config, accounts.clone(), service)
                        .expect("broker starts"),
                ))
            }
        };
        TestBroker {
            broker,
            accounts,
            postgres: self.postgres,
            _dir: dir,
        }
    }
}

impl IntoFuture for TestBrokerBuilder {
    type Output = TestBroker;
    type IntoFuture = Pin<Box<dyn Future<Output = TestBroker> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || self.start_blocking())
                .await
                .expect("starting the test broker panicked")
        })
    }
}
