//! The service on a NATS JetStream cluster (`messenger cluster up`: three
//! nodes, two bridges, PostgreSQL), under failure and hostile clients: a node
//! killed with SIGKILL mid-stream (the leader of the nodes' MQTT stream), a
//! bridge killed mid-stream, and every rule of the topic ACL tried by a real
//! MQTT client against a node. The ordinary end-to-end bodies (messaging,
//! presence, groups) run on a cluster too, from their own files
//! (`Backend::Cluster`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use messenger_client::ClientEvent;
use messenger_protocol::ConvId;
use rumqttc::ConnectReturnCode;

use crate::bridges::{assert_gap_free, owner_once_shared, query, slot_owner, stream_in_order};
use crate::util::client::{GRANTED, REFUSED};
use crate::util::cluster::{Cluster, FAILOVER};
use crate::util::server::{Backend, TestServer};
use crate::util::{refusal, uid, PATIENCE};

const USERS: &[(&str, &str)] = &[
    ("ann", "ann-pw"),
    ("ben", "ben-pw"),
    ("cat", "cat-pw"),
    ("dan", "dan-pw"),
    ("zed", "zed-pw"),
];

fn dm(a: &str, b: &str) -> ConvId {
    ConvId::direct(&uid(a), &uid(b)).expect("two distinct users")
}

/// The node (from 0) that leads the nodes' MQTT stream, `$MQTT_msgs`, as the
/// nodes' monitoring says.
async fn stream_leader(cluster: &Cluster) -> usize {
    let names: Vec<String> = cluster
        .description()
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        for monitor in &cluster.description().monitor {
            let addr = monitor
                .trim_start_matches("http://")
                .parse()
                .expect("host:port");
            let (status, body) =
                crate::util::process::get(addr, "/jsz?accounts=true&streams=true").await;
            if status != 200 {
                continue;
            }
            let jsz: serde_json::Value = serde_json::from_str(&body)
                .or_else(|_| serde_json::from_str(&dechunk(&body)))
                .unwrap_or_else(|err| panic!("/jsz: {err}: {body}"));
            let leader = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .find(|s| s["name"] == "$MQTT_msgs")
                .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_owned));
            if let Some(at) = leader.and_then(|l| names.iter().position(|n| *n == l)) {
                return at;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no node leads $MQTT_msgs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The body of a chunked HTTP/1.1 response (the nodes' monitoring sends
/// large answers so).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// A device of `user` on node `node`, failing over to the other nodes in turn.
async fn device_on(
    server: &TestServer,
    node: usize,
    user: &str,
    device: &str,
) -> (messenger_client::Client, messenger_client::EventStream) {
    let cluster = server.cluster().expect("a cluster");
    let nodes = cluster.description().mqtt.clone();
    let password = format!("{user}-pw");
    server
        .device_with(user, &password, device, |config| {
            config.broker = nodes[node].clone();
            config.other_brokers = (1..nodes.len())
                .map(|k| nodes[(node + k) % nodes.len()].clone())
                .collect();
            // A node's death holds publishes for ~12 s: room for resends.
            config.request_timeout = FAILOVER * 3;
        })
        .await
}

/// Three devices, one per node, each sending 40 messages (one every 50 ms) to
/// a user on another node; the node leading the nodes' MQTT stream is killed
/// with SIGKILL a third of the way in (its device reconnects to another node).
/// Every send is acked in the end and stored exactly once, seqs are gap-free,
/// every recipient gets every message (live or by its sync after reconnecting),
/// `cluster up` restarts the node, which rejoins and carries sends again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_loses_no_acked_message() {
    let server = TestServer::start(Backend::Cluster, USERS).await;
    let cluster = server.cluster().expect("a cluster");
    let leader = stream_leader(cluster).await;
    // ann on node 0 writes to ben on node 1, ben to cat on node 2, cat to ann.
    let pairs = [("ann", "ben"), ("ben", "cat"), ("cat", "ann")];
    let mut devices = BTreeMap::new();
    for (node, (user, _)) in pairs.iter().enumerate() {
        devices.insert(*user, device_on(&server, node, user, "phone").await);
    }
    const N: usize = 40;
    let mut sends = tokio::task::JoinSet::new();
    let mut killed = None;
    for i in 0..N {
        for (from, to) in pairs {
            let client = devices[from].0.clone();
            let conv = dm(from, to);
            sends.spawn(async move {
                let ack = client.send(&conv, &format!("{from}-{i}")).await;
                (from, i, ack)
            });
        }
        if i == N / 3 {
            let name = format!("n{}", leader + 1);
            killed = Some((name.clone(), cluster.kill(&name)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seqs: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    while let Some(done) = sends.join_next().await {
        let (from, i, ack) = done.expect("send task");
        let ack = ack.unwrap_or_else(|e| panic!("{from}'s send {i} was never acked: {e}"));
        assert!(
            seqs.entry(from).or_default().insert(ack.seq),
            "two of {from}'s messages got seq {}",
            ack.seq
        );
    }
    for (from, got) in &seqs {
        assert_eq!(
            *got,
            (1..=N as u64).collect::<BTreeSet<_>>(),
            "{from}'s seqs"
        );
    }
    // Stored once each, in a gap-free timeline.
    let url = server.postgres_url().expect("postgres").to_owned();
    for (from, to) in pairs {
        let rows = query(
            &url,
            &format!(
                "SELECT COUNT(*), COUNT(DISTINCT body) FROM events \
                 WHERE conv = '{}' AND kind = 'message'",
                dm(from, to)
            ),
        );
        let (all, distinct): (i64, i64) = (rows[0].get(0), rows[0].get(1));
        assert_eq!((all, distinct), (N as i64, N as i64), "{from} to {to}");
    }
    assert_gap_free(&url);
    // Every recipient got every message addressed to it.
    for (from, to) in pairs {
        let events = &mut devices.get_mut(to).expect("device").1;
        let mut got = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + FAILOVER;
        while got.len() < N {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, events.next()).await {
                Ok(Some(ClientEvent::Message(m))) if m.from.as_str() == from => {
                    got.insert(m.body.clone());
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("{to}'s events ended"),
                Err(_) => panic!("{to} got {} of {from}'s {N} messages", got.len()),
            }
        }
    }
    // The node is back, healthy, and carries a send.
    let (name, old) = killed.expect("a node was killed");
    cluster.wait_restarted(&name, old).await;
    cluster.wait_healthy(leader).await;
    let (dan, _events) = device_on(&server, leader, "dan", "phone").await;
    let ack = dan
        .send(&dm("dan", "zed"), "through the rejoined node")
        .await
        .expect("a send through the rejoined node is acked");
    assert_eq!(ack.seq, 1);
}

/// Four devices stream sends (one every 50 ms, each resent after 3 s without
/// an answer). The bridge holding ann's slot freezes (SIGSTOP) until the other
/// has taken its users over, then is killed with SIGKILL (`cluster up` starts
/// it again, and it takes its share back). Every send is acked, stored once,
/// in the order sent, and seqs stay gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_bridge_hands_its_requests_on() {
    let server = TestServer::start(Backend::Cluster, USERS).await;
    let cluster = server.cluster().expect("a cluster");
    let url = server.postgres_url().expect("postgres").to_owned();
    let victim = owner_once_shared(&url, 2, "ann", FAILOVER).await;
    const SENDS: usize = 240;
    let senders = ["ann", "ben", "cat", "dan"];
    let mut tasks = Vec::new();
    for user in senders {
        let client = server
            .raw(&format!("{user}:raw"), &format!("{user}-pw"))
            .connect()
            .await
            .expect("connect");
        tasks.push(stream_in_order(client, user, SENDS));
    }
    let progress = "SELECT COUNT(*) FROM events WHERE kind = 'message' AND sender = 'ann'";
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while query(&url, progress)[0].get::<_, i64>(0) < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let old = cluster.pid(&victim);
    signal(old, "-STOP");
    let deadline = tokio::time::Instant::now() + FAILOVER;
    while slot_owner(&url, "ann").as_deref() == Some(&victim) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody took the frozen bridge's users over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.kill(&victim);
    for task in tasks {
        let acked = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("the stream completes")
            .expect("sender task");
        assert_eq!(acked.len(), SENDS);
    }
    let rows = query(
        &url,
        "SELECT COUNT(*), COUNT(DISTINCT req_id) FROM events WHERE kind = 'message'",
    );
    let (all, distinct): (i64, i64) = (rows[0].get(0), rows[0].get(1));
    let expected = (senders.len() * SENDS) as i64;
    assert_eq!(
        (all, distinct),
        (expected, expected),
        "each send stored once"
    );
    assert_gap_free(&url);
    cluster.wait_restarted(&victim, old).await;
    // Started again, it is ready again.
    let bridge = cluster
        .description()
        .bridges
        .iter()
        .find(|b| b.instance == victim)
        .expect("the victim in cluster.json");
    let admin = bridge.admin.parse().expect("host:port");
    let deadline = tokio::time::Instant::now() + FAILOVER;
    loop {
        let ready = tokio::net::TcpStream::connect(admin).await.is_ok()
            && crate::util::process::get(admin, "/readyz").await.0 == 200;
        if ready {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{victim} not ready again; its log:\n{}",
            std::fs::read_to_string(&bridge.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a signal (`-STOP`, ...) to a process.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

/// A node killed with SIGKILL publishes none of its devices' last wills; the
/// bridges, reconciling presence with the nodes' connections, mark them
/// offline: a follower on another node sees the user go offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devices_of_a_killed_node_go_offline() {
    let server = TestServer::start(Backend::Cluster, USERS).await;
    let cluster = server.cluster().expect("a cluster");
    let (ben, mut ben_events) = device_on(&server, 0, "ben", "phone").await;
    ben.subscribe_status(&uid("ann")).await.expect("subscribe");
    // Answered after the SUBSCRIBE: the subscription is in place.
    ben.blocks().await.expect("blocks");
    let node = cluster.mqtt(2);
    let mut ann = crate::util::ClientOptions::new(
        (node, node),
        crate::util::Transport::Tcp,
        "ann:phone",
        "ann-pw",
    )
    .will("presence/ann/phone", "offline");
    ann.tune(|o| {
        o.set_keep_alive(Duration::from_secs(60))
            .set_clean_session(false);
    });
    let mut ann = ann.connect().await.expect("ann connects");
    ann.publish("presence/ann/phone", "online", true).await;
    let online = |online: bool| {
        move |event| match event {
            ClientEvent::Status(s) if s.user.as_str() == "ann" && s.online == online => Some(()),
            _ => None,
        }
    };
    crate::util::server::expect(&mut ben_events, online(true)).await;
    let old = cluster.kill("n3");
    tokio::time::timeout(FAILOVER, async {
        loop {
            let event = ben_events.next().await.expect("ben's events go on");
            if online(false)(event).is_some() {
                return;
            }
        }
    })
    .await
    .expect("ann shown offline after her node died");
    cluster.wait_restarted("n3", old).await;
    drop(ann);
}

/// Every rule of the topic ACL, tried by a real MQTT client against a node:
/// refused sign-ins (always CONNACK 5 on a cluster: the callout cannot say
/// 4), refused subscriptions (0x80), and forged publishes that are PUBACKed and
/// dropped, each beside a positive control that shows the path works; and a
/// removed user's connection cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acl_rule_is_refused_on_a_cluster_node() {
    let server = TestServer::start(Backend::Cluster, USERS).await;
    let cluster = server.cluster().expect("a cluster");
    let node = cluster.mqtt(1);
    let raw = |client_id: &str, password: &str| {
        crate::util::ClientOptions::new(
            (node, node),
            crate::util::Transport::Tcp,
            client_id,
            password,
        )
    };
    // Sign-in.
    for (client_id, username, password) in [
        ("ann:phone", "ann", "wrong"),
        ("ann:phone", "ann", "ben-pw"),
        ("ann:phone", "ann", "mtk_0123"),
        ("ann:phone", "ann", ""),
        ("nobody:phone", "nobody", "nobody-pw"),
        ("ben:phone", "ann", "ann-pw"),
        ("ben:phone", "ann", "ben-pw"),
        ("_bridge:main", "ann", "ann-pw"),
        ("_bridge:main", "_bridge", "ann-pw"),
        ("ann", "ann", "ann-pw"),
        ("ann:", "ann", "ann-pw"),
    ] {
        let result = raw(client_id, password).username(username).connect().await;
        let code = refusal(result);
        assert!(
            matches!(
                code,
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadClientId
            ),
            "{client_id} as {username} with {password:?}: {code:?}"
        );
    }
    let mut ann = raw("ann:phone", "ann-pw")
        .connect()
        .await
        .expect("the right password signs in");
    let mut ben = raw("ben:phone", "ben-pw")
        .connect()
        .await
        .expect("ben signs in");
    // Subscriptions.
    assert_eq!(
        ann.subscribe(&[
            "chat/ben/inbox",
            "chat/ann/inbox",
            "chat/ben/dev/+",
            "#",
            "status/ben",
            "chat/#",
            "chat/+/out/+",
            "presence/+/+",
            "$SYS/#",
            "chat/ann/dev/+",
        ])
        .await,
        [
            REFUSED, GRANTED, REFUSED, REFUSED, GRANTED, REFUSED, REFUSED, REFUSED, REFUSED,
            GRANTED
        ]
    );
    assert_eq!(
        ben.subscribe(&["chat/ben/inbox", "chat/ben/dev/phone", "status/ann"])
            .await,
        [GRANTED, GRANTED, GRANTED]
    );
    // Forged publishes: ann as ben (a send into their chat), ann into ben's
    // inbox and dev topics, ann's own status.
    let forged = r#"{"type":"send","id":"forged-1","conv":"dm:ann:ben","body":"forged"}"#;
    ann.publish("chat/ben/out/phone", forged, false).await;
    ann.publish("presence/ben/phone", "online", false).await;
    ann.publish("chat/ben/inbox", "forged inbox", false).await;
    ann.publish("chat/ben/dev/phone", "forged reply", false)
        .await;
    ann.publish("status/ann", "forged status", true).await;
    // Positive control: ann's own send goes through, and is what ben gets.
    let real = r#"{"type":"send","id":"real-1","conv":"dm:ann:ben","body":"real"}"#;
    ann.publish("chat/ann/out/phone", real, false).await;
    loop {
        let (topic, body) = ben.next_publish().await;
        assert!(!body.contains("forged"), "{topic}: {body}");
        if topic == "chat/ben/inbox" && body.contains("\"real\"") {
            break;
        }
    }
    let url = server.postgres_url().expect("postgres").to_owned();
    let rows = query(
        &url,
        "SELECT COUNT(*) FROM events WHERE body LIKE '%forged%' OR req_id LIKE 'forged%'",
    );
    assert_eq!(rows[0].get::<_, i64>(0), 0, "nothing forged was stored");
    // A new subscriber of ann's status never sees the forged retained one.
    let mut cat = raw("cat:phone", "cat-pw").connect().await.expect("cat");
    assert_eq!(cat.subscribe(&["status/ann"]).await, [GRANTED]);
    let seen = tokio::time::timeout(Duration::from_secs(2), cat.next_publish()).await;
    if let Ok((topic, body)) = seen {
        assert!(!body.contains("forged"), "{topic}: {body}");
    }
    // Revocation reaches every node: ben, removed, is cut off on his node, and
    // his password no longer signs in.
    server.remove_user("ben").await;
    ben.disconnected().await;
    // (The node may close the first attempt while it still tears the old
    // session down; no attempt signs in.)
    let mut code = None;
    for _ in 0..5 {
        match raw("ben:phone", "ben-pw").connect().await {
            Ok(_) => panic!("a removed user signed in"),
            Err(rumqttc::ConnectionError::ConnectionRefused(c)) => {
                code = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert_eq!(code, Some(ConnectReturnCode::NotAuthorized));
}
