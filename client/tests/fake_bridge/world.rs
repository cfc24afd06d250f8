//! The fixture: the embedded broker, the account store and a fake bridge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messenger_accounts::Accounts;
use messenger_broker::{BrokerConfig, RunningBroker, ServiceAccount};
use messenger_client::ClientConfig;
use messenger_protocol::topics::{self, Topic};
use messenger_protocol::wire::{Request, Status};
use messenger_protocol::{ConvId, DeviceId, UserId};
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

const SERVICE: &str = "_bridge";
const SERVICE_PASSWORD: &str = "service-secret";
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// A user id.
pub(crate) fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

/// A device id.
pub(crate) fn device(s: &str) -> DeviceId {
    DeviceId::parse(s).unwrap()
}

/// What the fake bridge knows and did.
#[derive(Default)]
pub(crate) struct Bridge {
    conv_seq: HashMap<ConvId, u64>,
    /// Acks by (user, request id): a repeated send gets the same one.
    acks: HashMap<(UserId, String), Value>,
    /// Each user's stored inbox events; useq = index + 1.
    inboxes: HashMap<UserId, Vec<Value>>,
    history: HashMap<ConvId, Vec<Value>>,
    /// Every request, in arrival order.
    pub(crate) requests: Vec<(UserId, DeviceId, Request)>,
    /// Presence payloads, in arrival order.
    pub(crate) presence: Vec<(UserId, DeviceId, String)>,
    /// Store the next N inbox events without publishing them (to make gaps).
    pub(crate) suppress_live: usize,
    /// Ignore the next N sends (to make retransmissions necessary).
    pub(crate) ignore_sends: usize,
}

impl Bridge {
    /// How many requests match `f`.
    pub(crate) fn count(&self, f: impl Fn(&Request) -> bool) -> usize {
        self.requests.iter().filter(|(_, _, r)| f(r)).count()
    }
}

/// A publish the fake bridge makes.
struct Out {
    topic: String,
    qos: QoS,
    retain: bool,
    payload: Value,
}

fn other_member(conv: &ConvId, me: &UserId) -> Vec<UserId> {
    match conv.direct_members() {
        Some((a, b)) => [a, b].into_iter().filter(|u| *u != me).cloned().collect(),
        None => vec![],
    }
}

fn members(conv: &ConvId) -> Vec<UserId> {
    match conv.direct_members() {
        Some((a, b)) => vec![a.clone(), b.clone()],
        None => vec![],
    }
}

impl Bridge {
    /// Stores an inbox event for `to` and returns its publish (unless suppressed).
    fn store(&mut self, to: &UserId, mut event: Value, out: &mut Vec<Out>) {
        let inbox = self.inboxes.entry(to.clone()).or_default();
        event["useq"] = json!(inbox.len() as u64 + 1);
        inbox.push(event.clone());
        if self.suppress_live > 0 {
            self.suppress_live -= 1;
            return;
        }
        out.push(Out {
            topic: topics::inbox(to),
            qos: QoS::AtLeastOnce,
            retain: false,
            payload: event,
        });
    }

    fn handle(
        &mut self,
        accounts: &Accounts,
        u: UserId,
        d: DeviceId,
        request: Request,
        out: &mut Vec<Out>,
    ) {
        self.requests.push((u.clone(), d.clone(), request.clone()));
        let dev = topics::dev(&u, &d);
        let reply = |out: &mut Vec<Out>, payload: Value| {
            out.push(Out {
                topic: dev.clone(),
                qos: QoS::AtLeastOnce,
                retain: false,
                payload,
            })
        };
        match request {
            Request::Send { id, conv, body } => {
                if self.ignore_sends > 0 {
                    self.ignore_sends -= 1;
                    return;
                }
                if let Some(ack) = self.acks.get(&(u.clone(), id.to_string())) {
                    reply(out, ack.clone());
                    return;
                }
                let seq = {
                    let s = self.conv_seq.entry(conv.clone()).or_default();
                    *s += 1;
                    *s
                };
                let ts = 1_700_000_000_000 + seq;
                let ack = json!({"type":"ack","id":id,"conv":conv,"seq":seq,"ts":ts});
                self.acks.insert((u.clone(), id.to_string()), ack.clone());
                let message = json!({"type":"message","conv":conv,"seq":seq,"ts":ts,"from":u,
                    "device":d,"id":id,"body":body});
                self.history
                    .entry(conv.clone())
                    .or_default()
                    .push(message.clone());
                reply(out, ack);
                for m in members(&conv) {
                    self.store(&m, message.clone(), out);
                }
            }
            Request::Receipt { conv, seq, status } => {
                let event = json!({"type":"receipt","conv":conv,"user":u,"seq":seq,
                    "status":status,"ts":1});
                for m in members(&conv) {
                    self.store(&m, event.clone(), out);
                }
            }
            Request::Sync { id, after, limit } => {
                let inbox = self.inboxes.get(&u).cloned().unwrap_or_default();
                let limit = limit.unwrap_or(100) as usize;
                let rest: Vec<Value> = inbox.into_iter().skip(after as usize).collect();
                let more = rest.len() > limit;
                let events: Vec<Value> = rest.into_iter().take(limit).collect();
                let next = events
                    .last()
                    .and_then(|e| e["useq"].as_u64())
                    .unwrap_or(after);
                reply(
                    out,
                    json!({"type":"sync","id":id,"events":events,"next":next,"more":more}),
                );
            }
            Request::History {
                id,
                conv,
                before,
                limit,
            } => {
                let all = self.history.get(&conv).cloned().unwrap_or_default();
                let older: Vec<Value> = all
                    .into_iter()
                    .filter(|e| before.is_none_or(|b| e["seq"].as_u64().unwrap_or(0) < b))
                    .collect();
                let limit = limit.unwrap_or(50) as usize;
                let skip = older.len().saturating_sub(limit);
                let events: Vec<Value> = older.into_iter().skip(skip).collect();
                reply(
                    out,
                    json!({"type":"history","id":id,"conv":conv,"events":events,"more":skip > 0}),
                );
            }
            Request::Token { id } => {
                let token = accounts.issue_token(&u, &d).unwrap();
                reply(out, json!({"type":"token","id":id,"token":token}));
            }
            Request::Typing { conv } => {
                for m in other_member(&conv, &u) {
                    out.push(Out {
                        topic: topics::inbox(&m),
                        qos: QoS::AtMostOnce,
                        retain: false,
                        payload: json!({"type":"typing","conv":conv,"user":u}),
                    });
                }
            }
            Request::Conversations { id } => reply(
                out,
                json!({"type":"error","id":id,"code":"bad_request","message":"not in this fake"}),
            ),
            _ => {}
        }
    }
}

/// The broker, the account store and the fake bridge.
pub(crate) struct World {
    /// Owns the SQLite file.
    _dir: tempfile::TempDir,
    /// Keeps the broker running.
    _broker: RunningBroker,
    pub(crate) accounts: Arc<Accounts>,
    pub(crate) addr: String,
    bridge: Arc<Mutex<Bridge>>,
    pub(crate) runtime: tokio::runtime::Runtime,
}

impl World {
    /// Starts the broker (alice and bob have accounts) and the fake bridge.
    pub(crate) fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let accounts = Arc::new(Accounts::open(&dir.path().join("m.db")).unwrap());
        for u in ["alice", "bob"] {
            accounts.add(&user(u), &format!("{u}-pw")).unwrap();
        }
        let config = BrokerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ws_listen: None,
            ..BrokerConfig::default()
        };
        let broker = messenger_broker::start(
            &config,
            accounts.clone(),
            ServiceAccount {
                username: SERVICE.into(),
                password: SERVICE_PASSWORD.into(),
            },
        )
        .unwrap();
        let addr = broker.mqtt_addr().to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let bridge = Arc::new(Mutex::new(Bridge::default()));
        runtime.spawn(run_bridge(addr.clone(), bridge.clone(), accounts.clone()));
        World {
            _dir: dir,
            _broker: broker,
            accounts,
            addr,
            bridge,
            runtime,
        }
    }

    /// A client configuration for `u` on `d` with the right password.
    pub(crate) fn config(&self, u: &str, d: &str) -> ClientConfig {
        let mut c = ClientConfig::new(self.addr.clone(), user(u), device(d), format!("{u}-pw"));
        c.request_timeout = Duration::from_secs(5);
        c
    }

    /// Looks at or changes the fake bridge's state.
    pub(crate) fn bridge<T>(&self, f: impl FnOnce(&mut Bridge) -> T) -> T {
        f(&mut self.bridge.lock().unwrap())
    }

    /// Waits (with patience) until `f` holds for the bridge's state.
    pub(crate) async fn until(&self, what: &str, f: impl Fn(&Bridge) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !f(&self.bridge.lock().unwrap()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The fake bridge: consumes requests and presence, answers like the real one would.
async fn run_bridge(addr: String, state: Arc<Mutex<Bridge>>, accounts: Arc<Accounts>) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut options = MqttOptions::new(
        format!("{SERVICE}:main"),
        host.to_owned(),
        port.parse().unwrap(),
    );
    options
        .set_credentials(SERVICE, SERVICE_PASSWORD)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    client
        .subscribe(topics::OUT_FILTER, QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe(topics::PRESENCE_FILTER, QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, bytes::Bytes)>();
    tokio::spawn(async move {
        while let Some((topic, payload)) = rx.recv().await {
            let mut out = Vec::new();
            {
                let mut state = state.lock().unwrap();
                match Topic::parse(&topic) {
                    Some(Topic::Out(u, d)) => match serde_json::from_slice::<Request>(&payload) {
                        Ok(request) => state.handle(&accounts, u, d, request, &mut out),
                        Err(err) => panic!("the client sent an invalid request: {err}"),
                    },
                    Some(Topic::Presence(u, d)) => {
                        let text = String::from_utf8_lossy(&payload).into_owned();
                        let status = Status {
                            user: u.clone(),
                            online: text == "online",
                            last_seen: (text != "online").then_some(5),
                        };
                        state.presence.push((u.clone(), d, text));
                        out.push(Out {
                            topic: topics::status(&u),
                            qos: QoS::AtLeastOnce,
                            retain: true,
                            payload: serde_json::to_value(status).unwrap(),
                        });
                    }
                    _ => {}
                }
            }
            for o in out {
                client
                    .publish(o.topic, o.qos, o.retain, o.payload.to_string())
                    .await
                    .unwrap();
            }
        }
    });
    loop {
        match eventloop.poll().await {
            Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                let _ = tx.send((p.topic, p.payload));
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
