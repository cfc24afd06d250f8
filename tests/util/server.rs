//! A whole server for end-to-end tests: a broker (the embedded one, or a real
//! Mosquitto) and the real bridge on the test's own SQLite file, plus devices
//! running the real client library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use messenger_accounts::Accounts;
use messenger_bridge::config::{BridgeConfig, Durability, Limits, StorageConfig};
use messenger_bridge::Bridge;
use messenger_client::{ClientConfig, ClientEvent, EventStream};
use messenger_store::config::Backend as Engine;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::cluster::Cluster;
use super::mosquitto::Mosquitto;
use super::{
    did, uid, ClientOptions, TestBroker, Transport, BRIDGE_PASSWORD, BRIDGE_USER, PATIENCE,
};

/// Which broker the bridge and devices meet on, and where the bridge stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The embedded rumqttd broker with our sign-in and ACL; SQLite.
    Embedded,
    /// Mosquitto with a password file and the generated pattern ACL; SQLite.
    Mosquitto,
    /// The embedded broker; accounts and storage on PostgreSQL (a database of
    /// the test binary's shared server).
    Postgres,
    /// A NATS cluster of the test's own (`messenger cluster up`: three nodes,
    /// two bridges, its PostgreSQL); each new device signs in on the next node.
    Cluster,
}

enum Broker {
    /// The embedded broker (its accounts on PostgreSQL for [`Backend::Postgres`]).
    Embedded(Box<TestBroker>),
    Mosquitto {
        broker: Mosquitto,
        _dir: TempDir,
    },
    Cluster {
        cluster: Box<Cluster>,
        /// How many addresses were handed out (devices go round the nodes).
        handed: AtomicUsize,
    },
}

impl Backend {
    /// The CONNACK code of a refused password or token: 4 (bad user name or
    /// password), but 5 on a cluster, whose auth callout can only refuse.
    pub(crate) fn bad_credentials(self) -> rumqttc::ConnectReturnCode {
        match self {
            Backend::Cluster => rumqttc::ConnectReturnCode::NotAuthorized,
            _ => rumqttc::ConnectReturnCode::BadUserNamePassword,
        }
    }
}

/// Runs one test body against every broker tier and both engines:
/// `on_both_brokers!(name)` next to `async fn name(backend: Backend)` yields
/// `name::embedded`, `name::mosquitto`, `name::postgres` and `name::cluster`.
macro_rules! on_both_brokers {
    ($($name:ident),* $(,)?) => {
        $crate::util::test_variants!(
            [
                embedded(Backend::Embedded),
                mosquitto(Backend::Mosquitto),
                postgres(Backend::Postgres),
                cluster(Backend::Cluster),
            ]
            $($name),*
        );
    };
}
pub(crate) use on_both_brokers;

/// Runs one test body on both storage engines (the embedded broker) and on a
/// NATS cluster: `on_engines_and_cluster!(name)` next to
/// `async fn name(backend: Backend)` yields `name::sqlite`, `name::postgres`
/// and `name::cluster`.
macro_rules! on_engines_and_cluster {
    ($($name:ident),* $(,)?) => {
        $crate::util::test_variants!(
            [
                sqlite(Backend::Embedded),
                postgres(Backend::Postgres),
                cluster(Backend::Cluster),
            ]
            $($name),*
        );
    };
}
pub(crate) use on_engines_and_cluster;

/// Runs one test body on both storage engines (the embedded broker):
/// `on_both_engines!(name)` next to `async fn name(backend: Backend)` yields
/// `name::sqlite` and `name::postgres`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        $crate::util::test_variants!(
            [
                sqlite(Backend::Embedded),
                postgres(Backend::Postgres),
            ]
            $($name),*
        );
    };
}
pub(crate) use on_both_engines;

/// The default limits with the per-user rate limits off: tests send far faster
/// than a person (tests/limits.rs turns them on).
pub(crate) fn unlimited() -> Limits {
    Limits {
        sends_per_sec: 0,
        group_creates_per_hour: 0,
        token_requests_per_min: 0,
        ..Limits::default()
    }
}

/// A broker and a bridge. Dropping it stops both.
pub(crate) struct TestServer {
    broker: Broker,
    db: PathBuf,
    bridge: Option<(CancellationToken, JoinHandle<()>)>,
    /// More bridges on the same database ([`TestServer::add_bridge`]), by instance.
    more_bridges: Vec<(String, CancellationToken, JoinHandle<()>)>,
    /// The bridge's settings, kept for restarts.
    pub(crate) limits: Limits,
    pub(crate) keepalive_secs: u16,
}

impl TestServer {
    /// Starts a broker with these users and a bridge in front of it.
    pub(crate) async fn start(backend: Backend, users: &[(&str, &str)]) -> Self {
        Self::build(backend, users, unlimited(), 30).await
    }

    /// A broker and a bridge on the PostgreSQL database at `url` (a test's own
    /// server, e.g. one it restarts).
    pub(crate) async fn start_on_postgres(url: String, users: &[(&str, &str)]) -> Self {
        let broker = TestBroker::start().postgres(url).users(users).await;
        let db = broker.db_path();
        let mut server = Self {
            broker: Broker::Embedded(Box::new(broker)),
            db,
            bridge: None,
            more_bridges: Vec::new(),
            limits: unlimited(),
            keepalive_secs: 30,
        };
        server.start_bridge().await;
        server
    }

    /// Like [`TestServer::start`], with the bridge's limits and keepalive (which
    /// is also how often presence is reconciled with the embedded broker).
    pub(crate) async fn build(
        backend: Backend,
        users: &[(&str, &str)],
        limits: Limits,
        keepalive_secs: u16,
    ) -> Self {
        let (broker, db) = match backend {
            Backend::Embedded => {
                let broker = TestBroker::start().users(users).await;
                let db = broker.db_path();
                (Broker::Embedded(Box::new(broker)), db)
            }
            Backend::Postgres => {
                let url = super::postgres::database();
                let broker = TestBroker::start().postgres(url).users(users).await;
                let db = broker.db_path();
                (Broker::Embedded(Box::new(broker)), db)
            }
            Backend::Cluster => {
                let cluster = Cluster::start(3, 2).await;
                let db = cluster.dir().join("unused.db");
                let broker = Broker::Cluster {
                    cluster: Box::new(cluster),
                    handed: AtomicUsize::new(0),
                };
                let server = Self {
                    broker,
                    db,
                    bridge: None,
                    more_bridges: Vec::new(),
                    limits,
                    keepalive_secs,
                };
                for (user, password) in users {
                    server.add_user(user, password).await;
                }
                // Its bridges run already (cluster.json is written once they are ready).
                return server;
            }
            Backend::Mosquitto => {
                let users: Vec<(String, String)> = users
                    .iter()
                    .map(|(u, p)| ((*u).into(), (*p).into()))
                    .collect();
                tokio::task::spawn_blocking(move || {
                    let refs: Vec<(&str, &str)> = users
                        .iter()
                        .map(|(u, p)| (u.as_str(), p.as_str()))
                        .collect();
                    let broker = Mosquitto::start(&refs);
                    let dir = tempfile::tempdir().expect("temp dir");
                    let db = dir.path().join("messenger.db");
                    // The bridge checks users against the account store; Mosquitto has its own password file.
                    let accounts = Accounts::open(&db).expect("account store");
                    for (user, password) in &refs {
                        accounts.add(&uid(user), password).expect("add user");
                    }
                    (Broker::Mosquitto { broker, _dir: dir }, db)
                })
                .await
                .expect("starting mosquitto panicked")
            }
        };
        let mut server = Self {
            broker,
            db,
            bridge: None,
            more_bridges: Vec::new(),
            limits,
            keepalive_secs,
        };
        server.start_bridge().await;
        server
    }

    /// The broker's MQTT address (on a cluster, the next node's, round the nodes).
    pub(crate) fn addr(&self) -> SocketAddr {
        match &self.broker {
            Broker::Embedded(b) => b.mqtt_addr(),
            Broker::Mosquitto { broker, .. } => broker.addr(),
            Broker::Cluster { cluster, handed } => {
                let nodes = cluster.description().mqtt.len();
                cluster.mqtt(handed.fetch_add(1, Ordering::Relaxed) % nodes)
            }
        }
    }

    /// The cluster, for [`Backend::Cluster`].
    pub(crate) fn cluster(&self) -> Option<&Cluster> {
        match &self.broker {
            Broker::Cluster { cluster, .. } => Some(cluster),
            _ => None,
        }
    }

    /// The embedded broker's MQTT over WebSocket address.
    pub(crate) fn ws_addr(&self) -> SocketAddr {
        match &self.broker {
            Broker::Embedded(b) => b.ws_addr(),
            Broker::Mosquitto { .. } => {
                panic!("the Mosquitto test broker has no WebSocket listener")
            }
            Broker::Cluster { .. } => panic!("use the cluster's websocket URLs"),
        }
    }

    /// The PostgreSQL database, for [`Backend::Postgres`].
    pub(crate) fn postgres_url(&self) -> Option<&str> {
        match &self.broker {
            Broker::Embedded(b) => b.postgres_url(),
            Broker::Mosquitto { .. } => None,
            Broker::Cluster { cluster, .. } => Some(&cluster.description().postgres),
        }
    }

    /// Runs `sql` (statements without parameters, written for both engines:
    /// `"user"` quoted, `TRUE`/`FALSE` for flags) on the bridge's database.
    pub(crate) async fn execute(&self, sql: &str) {
        let sql = sql.to_owned();
        match self.postgres_url().map(str::to_owned) {
            Some(url) => super::postgres::blocking(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
                client.batch_execute(&sql).expect("statements run");
            }),
            None => {
                let db = self.db.clone();
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(db).expect("open the database");
                    conn.execute_batch(&sql).expect("statements run");
                })
                .await
                .expect("join");
            }
        }
    }

    /// The number the query `sql` (written for both engines) returns, from the
    /// bridge's database.
    pub(crate) async fn count(&self, sql: &str) -> i64 {
        let sql = sql.to_owned();
        match self.postgres_url().map(str::to_owned) {
            Some(url) => super::postgres::blocking(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
                client.query_one(&sql, &[]).expect("query").get(0)
            }),
            None => {
                let db = self.db.clone();
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(db).expect("open the database");
                    conn.query_row(&sql, [], |r| r.get(0)).expect("query")
                })
                .await
                .expect("join")
            }
        }
    }

    /// Removes `user` as `messenger user remove` does, on the bridge's database.
    pub(crate) async fn remove_user(&self, user: &str) {
        let user = uid(user);
        match self.postgres_url().map(str::to_owned) {
            Some(url) => super::postgres::blocking(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
                messenger_store::postgres::remove_user(&mut client, &user).expect("remove");
            }),
            None => {
                let db = self.db.clone();
                tokio::task::spawn_blocking(move || messenger_store::remove_user(&db, &user))
                    .await
                    .expect("join")
                    .expect("remove");
            }
        }
    }

    /// Adds the account `user` with `password` to the bridge's database.
    pub(crate) async fn add_user(&self, user: &str, password: &str) {
        let (user, password) = (uid(user), password.to_owned());
        match self.postgres_url().map(str::to_owned) {
            Some(url) => super::postgres::blocking(move || {
                let client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
                let reconnect = move || {
                    postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())
                };
                Accounts::on_postgres(client, Box::new(reconnect))
                    .expect("account store")
                    .add(&user, &password)
                    .expect("add");
            }),
            None => {
                let db = self.db.clone();
                tokio::task::spawn_blocking(move || {
                    Accounts::open(&db).expect("accounts").add(&user, &password)
                })
                .await
                .expect("join")
                .expect("add");
            }
        }
    }

    /// Whether the bridge's devices table has `user`'s `device` online (None: no row).
    pub(crate) async fn device_online(&self, user: &str, device: &str) -> Option<bool> {
        let (user, device) = (user.to_owned(), device.to_owned());
        const SQL: &str = "SELECT online FROM devices WHERE \"user\" = $1 AND device = $2";
        match self.postgres_url().map(str::to_owned) {
            Some(url) => super::postgres::blocking(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).ok()?;
                let row = client.query_opt(SQL, &[&user, &device]).ok()??;
                row.try_get(0).ok()
            }),
            None => {
                let db = self.db.clone();
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(db).ok()?;
                    conn.query_row(&SQL.replace('$', "?"), [user, device], |r| r.get(0))
                        .ok()
                })
                .await
                .expect("join")
            }
        }
    }

    /// The bridge's storage: the SQLite file, or the PostgreSQL database.
    fn storage(&self) -> StorageConfig {
        StorageConfig {
            path: self.db.clone(),
            durability: Durability::Fsync,
            backend: match self.postgres_url() {
                Some(_) => Engine::Postgres,
                None => Engine::Sqlite,
            },
            url: self.postgres_url().map(str::to_owned),
            ..StorageConfig::default()
        }
    }

    /// Starts the bridge (again) on the same storage; returns once it consumes requests.
    pub(crate) async fn start_bridge(&mut self) {
        assert!(self.bridge.is_none(), "the bridge is already running");
        self.bridge = Some(self.spawn_bridge("main").await);
    }

    /// Starts one more bridge, `instance`, on the same broker and database
    /// (PostgreSQL: the bridges share the users); returns once it consumes requests.
    pub(crate) async fn add_bridge(&mut self, instance: &str) {
        let (shutdown, task) = self.spawn_bridge(instance).await;
        self.more_bridges
            .push((instance.to_owned(), shutdown, task));
    }

    /// Stops the bridge `instance` that [`TestServer::add_bridge`] started.
    pub(crate) async fn stop_added_bridge(&mut self, instance: &str) {
        let at = self
            .more_bridges
            .iter()
            .position(|(name, _, _)| name == instance)
            .expect("a bridge of that name");
        let (_, shutdown, task) = self.more_bridges.remove(at);
        shutdown.cancel();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("bridge stops in time")
            .expect("bridge task");
    }

    /// Starts a bridge `instance`; returns once it consumes requests.
    async fn spawn_bridge(&self, instance: &str) -> (CancellationToken, JoinHandle<()>) {
        let ready = Arc::new(tokio::sync::Notify::new());
        let liveness = match &self.broker {
            Broker::Embedded(b) => Some(b.liveness()),
            Broker::Mosquitto { .. } => None,
            Broker::Cluster { .. } => panic!("a cluster's bridges are its own processes"),
        };
        let bridge = Bridge {
            config: BridgeConfig {
                broker: self.addr().to_string(),
                username: BRIDGE_USER.into(),
                password: BRIDGE_PASSWORD.into(),
                instance: instance.into(),
                keepalive_secs: self.keepalive_secs,
            },
            storage: self.storage(),
            limits: self.limits.clone(),
            liveness,
            ready: Some(ready.clone()),
            push: Default::default(),
            nats: Default::default(),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                bridge.run(None, shutdown).await.expect("bridge runs");
            }
        });
        tokio::time::timeout(PATIENCE, ready.notified())
            .await
            .expect("the bridge subscribes in time");
        (shutdown, task)
    }

    /// Stops the bridge cleanly and waits for it.
    pub(crate) async fn stop_bridge(&mut self) {
        if let Some((shutdown, task)) = self.bridge.take() {
            shutdown.cancel();
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("bridge stops in time")
                .expect("bridge task");
        }
    }

    /// A device on the real client library, connected.
    pub(crate) async fn device(
        &self,
        user: &str,
        password: &str,
        device: &str,
    ) -> (messenger_client::Client, EventStream) {
        self.device_with(user, password, device, |_| {}).await
    }

    /// A device with adjusted settings, connected.
    pub(crate) async fn device_with(
        &self,
        user: &str,
        password: &str,
        device: &str,
        edit: impl FnOnce(&mut ClientConfig),
    ) -> (messenger_client::Client, EventStream) {
        let mut config =
            ClientConfig::new(self.addr().to_string(), uid(user), did(device), password);
        config.keepalive = Duration::from_secs(5);
        config.request_timeout = match self.broker {
            // Under a burst the nodes redeliver some replies after their
            // ack_wait (docs/BENCHMARKS.md, round 9); nothing is lost.
            Broker::Cluster { .. } => PATIENCE * 3,
            _ => PATIENCE,
        };
        edit(&mut config);
        tokio::time::timeout(PATIENCE, messenger_client::Client::connect(config))
            .await
            .expect("device connects in time")
            .expect("device connects")
    }

    /// A plain MQTT client (no client library) signing in as `<user>:<device>`.
    pub(crate) fn raw(&self, client_id: &str, password: &str) -> ClientOptions {
        let addr = self.addr();
        ClientOptions::new((addr, addr), Transport::Tcp, client_id, password)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some((shutdown, _)) = &self.bridge {
            shutdown.cancel();
        }
        for (_, shutdown, _) in &self.more_bridges {
            shutdown.cancel();
        }
    }
}

/// Waits for the first event that `pick` accepts, skipping the others.
pub(crate) async fn expect<T>(
    events: &mut EventStream,
    mut pick: impl FnMut(ClientEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let event = events.next().await.expect("event stream ended");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    })
    .await
    .expect("the expected event did not come in time")
}

/// Waits for the next chat message.
pub(crate) async fn next_message(events: &mut EventStream) -> messenger_client::Message {
    expect(events, |e| match e {
        ClientEvent::Message(m) => Some(m),
        _ => None,
    })
    .await
}
