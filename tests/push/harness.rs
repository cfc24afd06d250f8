//! The real embedded broker and bridge on 127.0.0.1, each in its own temp
//! directory, and devices that speak the wire protocol over plain rumqttc.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_accounts::Accounts;
use messenger_bridge::config::{BridgeConfig, Durability, PushConfig, StorageConfig};
use messenger_bridge::Bridge;
use messenger_broker::{BrokerConfig, RunningBroker, ServiceAccount};
use messenger_protocol::UserId;
use messenger_store::config::Backend as Engine;
use rumqttc::{AsyncClient, Event, Incoming, LastWill, MqttOptions, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::util::server::Backend;

/// How long any single expected thing may take before a test fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// A user's password in every test.
fn password(user: &str) -> String {
    format!("pw-{user}")
}

/// Logs to the test's captured output (`RUST_LOG` filters; warnings by default).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The broker and the bridge, with push configured as the test says.
pub(crate) struct Server {
    /// The SQLite file the bridge stores in (unless on PostgreSQL).
    pub(crate) db: PathBuf,
    /// The PostgreSQL database the bridge stores in, for [`Backend::Postgres`].
    postgres: Option<String>,
    mqtt_port: u16,
    shutdown: CancellationToken,
    bridges: Vec<JoinHandle<Result<(), messenger_bridge::BridgeError>>>,
    broker: Option<RunningBroker>,
    /// Dropped last: holds the database.
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the broker and the bridge with these users, on the storage
    /// `backend` names (SQLite, or a PostgreSQL database of the test binary's
    /// server), and waits until the bridge answers.
    pub(crate) async fn start(backend: Backend, push: PushConfig, users: &[&str]) -> Self {
        Self::start_with_bridges(backend, push, users, 1).await
    }

    /// [`Server::start`] with `bridges` bridges (more than one: PostgreSQL
    /// only), each with the same push configuration; returns once they share
    /// the users out and answer.
    pub(crate) async fn start_with_bridges(
        backend: Backend,
        push: PushConfig,
        users: &[&str],
        bridges: usize,
    ) -> Self {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("messenger.db");
        let postgres = match backend {
            Backend::Postgres => Some(crate::util::postgres::database()),
            Backend::Embedded | Backend::Mosquitto => None,
            Backend::Cluster => panic!("the push harness runs its own bridges"),
        };
        let accounts_url = postgres.clone();
        let service_password = "bridge-secret".to_owned();
        let names: Vec<String> = users
            .iter()
            .map(|u| (*u).to_owned())
            .chain(["probe".to_owned()])
            .collect();
        let (db_path, service) = (db.clone(), service_password.clone());
        // The broker runs its own runtime and blocks while starting: keep it off this one.
        let broker = tokio::task::spawn_blocking(move || {
            let accounts = Arc::new(match accounts_url {
                Some(url) => {
                    let mut client = messenger_store::postgres::connect(&url).expect("connect");
                    messenger_store::postgres::migrate(&mut client).expect("migrate");
                    let reconnect =
                        move || messenger_store::postgres::connect(&url).map_err(|e| e.to_string());
                    Accounts::on_postgres(client, Box::new(reconnect)).expect("account store")
                }
                None => Accounts::open(&db_path).expect("account store"),
            });
            for name in &names {
                let user = UserId::parse(name).expect("user id");
                accounts.add(&user, &password(name)).expect("add user");
            }
            let config = BrokerConfig {
                listen: Some("127.0.0.1:0".parse().expect("address")),
                ws_listen: None,
                ..BrokerConfig::default()
            };
            messenger_broker::start(
                &config,
                accounts,
                ServiceAccount {
                    username: "_bridge".into(),
                    password: service,
                },
            )
            .expect("broker starts")
        })
        .await
        .expect("broker task");
        let mqtt_addr = broker.mqtt_addr();
        let liveness = broker.liveness();
        let bridge = Bridge {
            config: BridgeConfig {
                password: service_password,
                keepalive_secs: 5,
                ..BridgeConfig::default()
            },
            storage: StorageConfig {
                path: db.clone(),
                durability: Durability::Os,
                backend: if postgres.is_some() {
                    Engine::Postgres
                } else {
                    Engine::Sqlite
                },
                url: postgres.clone(),
                ..StorageConfig::default()
            },
            limits: crate::util::server::unlimited(),
            push,
            nats: Default::default(),
            ready: None,
            liveness: Some(Arc::new(move |client_id: &str| {
                liveness.is_connected(client_id)
            })),
        };
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::with_capacity(bridges);
        for n in 0..bridges {
            let mut bridge = bridge.clone();
            if n > 0 {
                bridge.config.instance = format!("b{}", n + 1);
            }
            tasks.push(tokio::spawn(
                bridge.run(Some(mqtt_addr.into()), shutdown.clone()),
            ));
        }
        let server = Self {
            db,
            postgres,
            mqtt_port: mqtt_addr.port(),
            shutdown,
            bridges: tasks,
            broker: Some(broker),
            _dir: dir,
        };
        if bridges > 1 {
            server.wait_for_shares(bridges).await;
        }
        server.wait_for_bridge().await;
        server
    }

    /// Waits until `bridges` bridges hold every slot of the users between them.
    async fn wait_for_shares(&self, bridges: usize) {
        let url = self
            .postgres
            .clone()
            .expect("several bridges run on PostgreSQL");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let url = url.clone();
            let (owners, free) = crate::util::postgres::blocking(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
                messenger_store::postgres::slot_spread(&mut client).expect("slots")
            });
            if usize::try_from(owners).ok() == Some(bridges) && free == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the bridges did not share the users out"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The bridge subscribes once connected; until then requests are lost, so ask until it answers.
    async fn wait_for_bridge(&self) {
        let mut probe = self.device("probe", "p").await;
        let deadline = Instant::now() + PATIENCE;
        for n in 0.. {
            assert!(Instant::now() < deadline, "the bridge never answered");
            let id = format!("ready-{n}");
            probe
                .publish(json!({"type": "conversations", "id": id}))
                .await;
            if probe
                .next_matching(Duration::from_millis(200), |topic, v| {
                    topic.contains("/dev/") && v["id"] == id
                })
                .await
                .is_some()
            {
                break;
            }
        }
        probe.disconnect().await;
    }

    /// Connects a device (not yet announced online).
    pub(crate) async fn device(&self, user: &str, device: &str) -> Device {
        Device::connect(self.mqtt_port, user, device).await
    }

    /// The stored push tokens: (platform, token, user).
    pub(crate) fn tokens(&self) -> Vec<(String, String, String)> {
        const SQL: &str =
            "SELECT platform, token, \"user\" FROM push_tokens ORDER BY platform, token COLLATE \"C\"";
        if let Some(url) = &self.postgres {
            return crate::util::postgres::blocking(|| {
                let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
                client
                    .query(SQL, &[])
                    .expect("query tokens")
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect()
            });
        }
        let conn = rusqlite::Connection::open(&self.db).expect("open the database");
        let mut stmt = conn
            .prepare(&SQL.replace(" COLLATE \"C\"", ""))
            .expect("query tokens");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query tokens")
            .collect::<Result<_, _>>()
            .expect("read tokens")
    }

    /// Waits until `token` is no longer stored.
    pub(crate) async fn wait_token_gone(&self, token: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.tokens().iter().any(|(_, t, _)| t == token) {
            assert!(Instant::now() < deadline, "token {token} was never deleted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the bridge (it must stop promptly, whatever the push servers do) and the broker.
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        for bridge in std::mem::take(&mut self.bridges) {
            tokio::time::timeout(PATIENCE, bridge)
                .await
                .expect("the bridge stops in time")
                .expect("bridge task")
                .expect("bridge result");
        }
        if let Some(broker) = self.broker.take() {
            broker.stop();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One device of one user: requests out, replies and events in.
pub(crate) struct Device {
    pub(crate) user: String,
    device: String,
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<(String, Value)>,
    /// Events read while waiting for something else.
    backlog: VecDeque<(String, Value)>,
    next_id: u64,
    _eventloop: JoinHandle<()>,
}

impl Device {
    async fn connect(port: u16, user: &str, device: &str) -> Self {
        let presence = format!("presence/{user}/{device}");
        let mut options = MqttOptions::new(format!("{user}:{device}"), "127.0.0.1", port);
        options
            .set_credentials(user, password(user))
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(true)
            .set_last_will(LastWill::new(presence, "offline", QoS::AtLeastOnce, true));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let eventloop = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if tx.send((p.topic.clone(), value)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let filters = [
            format!("chat/{user}/dev/{device}"),
            format!("chat/{user}/inbox"),
            format!("status/{user}"),
        ];
        client
            .subscribe_many(
                filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
            )
            .await
            .expect("subscribe");
        tokio::time::timeout(PATIENCE, ready_rx)
            .await
            .expect("subscribed in time")
            .expect("connection stays up");
        Self {
            user: user.to_owned(),
            device: device.to_owned(),
            client,
            events,
            backlog: VecDeque::new(),
            next_id: 0,
            _eventloop: eventloop,
        }
    }

    /// Publishes a request without waiting for anything.
    pub(crate) async fn publish(&self, request: Value) {
        self.client
            .publish(
                format!("chat/{}/out/{}", self.user, self.device),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&request).expect("json"),
            )
            .await
            .expect("publish");
    }

    /// The next event matching `want` within `within`, keeping the others for later.
    pub(crate) async fn next_matching(
        &mut self,
        within: Duration,
        want: impl Fn(&str, &Value) -> bool,
    ) -> Option<Value> {
        if let Some(at) = self.backlog.iter().position(|(t, v)| want(t, v)) {
            return self.backlog.remove(at).map(|(_, v)| v);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (topic, value) = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .ok()??;
            if want(&topic, &value) {
                return Some(value);
            }
            self.backlog.push_back((topic, value));
        }
    }

    /// A fresh request id.
    pub(crate) fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{}-{}-{}", self.user, self.device, self.next_id)
    }

    /// The reply to the request with this id.
    pub(crate) async fn reply(&mut self, id: &str) -> Value {
        self.next_matching(PATIENCE, |topic, v| {
            topic.contains("/dev/") && v["id"] == id
        })
        .await
        .unwrap_or_else(|| panic!("no reply to {id}"))
    }

    /// Sends a request (its `id` filled in) and returns the reply.
    pub(crate) async fn request(&mut self, mut request: Value) -> Value {
        let id = self.id();
        request["id"] = json!(id);
        self.publish(request).await;
        self.reply(&id).await
    }

    /// Like [`Device::request`], requiring an `ack`.
    pub(crate) async fn ack(&mut self, request: Value) -> Value {
        let reply = self.request(request.clone()).await;
        assert_eq!(reply["type"], "ack", "{request} got {reply}");
        reply
    }

    /// Sends a message and waits for its ack.
    pub(crate) async fn send(&mut self, conv: &str, body: &str) -> Value {
        self.ack(json!({"type": "send", "conv": conv, "body": body}))
            .await
    }

    /// Registers a push token for this device.
    pub(crate) async fn register(&mut self, platform: &str, token: &str) {
        self.ack(json!({"type": "push_register", "platform": platform, "token": token}))
            .await;
    }

    /// Announces the device online or offline, and waits until the bridge's
    /// aggregate for the user says `user_online`.
    pub(crate) async fn announce(&mut self, online: bool, user_online: bool) {
        self.client
            .publish(
                format!("presence/{}/{}", self.user, self.device),
                QoS::AtLeastOnce,
                true,
                if online { "online" } else { "offline" },
            )
            .await
            .expect("publish presence");
        let status = format!("status/{}", self.user);
        self.next_matching(PATIENCE, |topic, v| {
            topic == status && v["online"] == user_online
        })
        .await
        .unwrap_or_else(|| panic!("{} never became online={user_online}", self.user));
    }

    /// Disconnects cleanly.
    pub(crate) async fn disconnect(self) {
        let _ = self.client.disconnect().await;
    }
}
