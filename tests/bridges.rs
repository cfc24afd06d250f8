//! Several bridges on one PostgreSQL database: the users spread over the
//! bridges' slot leases, and every guarantee of one bridge holding under
//! concurrency (seqs and useqs gap-free, a device's requests in order, a repeat
//! stored once, receipts never backwards, presence published on change only);
//! a bridge killed with SIGKILL in the middle of a stream of sends; two bridges
//! sharing retention's pass.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use messenger_protocol::UserId;
use serde_json::Value;

use crate::util::postgres::{blocking, database};
use crate::util::process::{free_addr, free_addr_below_ephemeral, Messenger, Server};
use crate::util::server::{Backend, TestServer};
use crate::util::{Transport, PATIENCE};

const USERS: &[(&str, &str)] = &[
    ("ann", "pw"),
    ("ben", "pw"),
    ("cat", "pw"),
    ("dan", "pw"),
    ("eve", "pw"),
    ("fay", "pw"),
];

/// How the slots stand on the database at `url`: (bridges holding slots, slots free).
fn slot_spread(url: &str) -> (i64, i64) {
    let url = url.to_owned();
    blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        messenger_store::postgres::slot_spread(&mut client).expect("slots")
    })
}

/// The bridge holding `user`'s slot on the database at `url`, if any.
pub(crate) fn slot_owner(url: &str, user: &str) -> Option<String> {
    let slot = messenger_store::slots::slot_of(&UserId::parse(user).expect("user"));
    query(
        url,
        &format!("SELECT owner FROM bridge_slots WHERE slot = {slot}"),
    )[0]
    .get(0)
}

/// Waits (up to `patience`) until `bridges` bridges hold every slot between
/// them; then the bridge holding `user`'s.
pub(crate) async fn owner_once_shared(
    url: &str,
    bridges: i64,
    user: &str,
    patience: Duration,
) -> String {
    let deadline = tokio::time::Instant::now() + patience;
    while slot_spread(url) != (bridges, 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridges did not share the slots"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slot_owner(url, user).expect("a shared slot has an owner")
}

/// Runs one query on the database at `url`.
pub(crate) fn query(url: &str, sql: &str) -> Vec<postgres::Row> {
    let url = url.to_owned();
    let sql = sql.to_owned();
    blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        client.query(&sql, &[]).expect("query")
    })
}

/// Waits until `n` bridges hold every slot between them; returns each user's
/// bridge.
async fn spread(url: &str, n: i64) -> HashMap<String, String> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (owners, free) = slot_spread(url);
        if owners == n && free == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slots were not spread over {n} bridges: {owners} owners, {free} free"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owners: HashMap<i32, String> = query(url, "SELECT slot, owner FROM bridge_slots")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    USERS
        .iter()
        .map(|(user, _)| {
            let slot = messenger_store::slots::slot_of(&UserId::parse(user).expect("user"));
            let slot = i32::try_from(slot).expect("slot");
            ((*user).to_owned(), owners[&slot].clone())
        })
        .collect()
}

/// Every conversation's seqs are 1..=n and every user's useqs 1..=m.
pub(crate) fn assert_gap_free(url: &str) {
    for (what, sql) in [
        (
            "seqs",
            "SELECT conv, array_agg(seq ORDER BY seq) FROM events GROUP BY conv",
        ),
        (
            "useqs",
            "SELECT \"user\", array_agg(useq ORDER BY useq) FROM inbox GROUP BY \"user\"",
        ),
    ] {
        for row in query(url, sql) {
            let (key, numbers): (String, Vec<i64>) = (row.get(0), row.get(1));
            let expected: Vec<i64> = (1..=i64::try_from(numbers.len()).expect("len")).collect();
            assert_eq!(numbers, expected, "{what} of {key} have gaps or repeats");
        }
    }
}

/// Waits for `n` replies on the raw client's `dev` topic, by request id.
async fn replies(client: &mut crate::util::Client, n: usize) -> Vec<Value> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let (topic, body) = client.next_publish().await;
        if topic.contains("/dev/") {
            got.push(serde_json::from_str(&body).expect("JSON"));
        }
    }
    got
}

/// Three bridges share the users; sends of six users pipelined into their 1-1
/// chats and one group at once keep every guarantee of one bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_bridges_keep_every_guarantee_under_concurrency() {
    let mut server = TestServer::start(Backend::Postgres, USERS).await;
    server.add_bridge("second").await;
    server.add_bridge("third").await;
    let url = server.postgres_url().expect("postgres").to_owned();
    let owners = spread(&url, 3).await;
    let distinct: std::collections::HashSet<&String> = owners.values().collect();
    assert!(distinct.len() >= 2, "six users on one bridge: {owners:?}");

    let mut clients = Vec::new();
    for (user, _) in USERS {
        let mut client = server
            .raw(&format!("{user}:raw"), "pw")
            .connect()
            .await
            .expect("connect");
        client
            .subscribe(&[
                &format!("chat/{user}/dev/raw"),
                &format!("chat/{user}/inbox"),
            ])
            .await;
        clients.push(client);
    }
    let members: Vec<String> = USERS[1..].iter().map(|(u, _)| format!("\"{u}\"")).collect();
    let created = clients[0]
        .reply(
            "ann",
            format!(
                r#"{{"type":"group_create","id":"g","name":"all","members":[{}]}}"#,
                members.join(",")
            )
            .as_bytes(),
        )
        .await;
    let group = created["conv"].as_str().expect("group id").to_owned();

    // Each user pipelines 12 sends (no waiting): 6 into the group, 6 into the
    // 1-1 chat with the next user; and repeats one of them at once.
    const SENDS: usize = 12;
    for (i, (user, _)) in USERS.iter().enumerate() {
        let next = USERS[(i + 1) % USERS.len()].0;
        let mut pair = [*user, next];
        pair.sort_unstable();
        let dm = format!("dm:{}:{}", pair[0], pair[1]);
        for n in 0..SENDS {
            let conv = if n % 2 == 0 { &group } else { &dm };
            let body = format!(
                r#"{{"type":"send","id":"{user}-{n}","conv":"{conv}","body":"{user} {n}"}}"#
            );
            clients[i].request(user, body.as_bytes()).await;
            if n == 3 {
                clients[i].request(user, body.as_bytes()).await;
            }
        }
    }
    // The replies: an ack for each, the repeat acked with the same seq.
    for (i, (user, _)) in USERS.iter().enumerate() {
        let got = replies(&mut clients[i], SENDS + 1).await;
        let mut acked: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        for reply in &got {
            assert_eq!(reply["type"], "ack", "{user}: {reply}");
            acked
                .entry(reply["id"].as_str().expect("id").to_owned())
                .or_default()
                .push((
                    reply["conv"].as_str().expect("conv").to_owned(),
                    reply["seq"].as_i64().expect("seq"),
                ));
        }
        assert_eq!(acked.len(), SENDS, "{user}: {acked:?}");
        let repeat = &acked[&format!("{user}-3")];
        assert_eq!(repeat.len(), 2, "{user}'s repeat was answered");
        assert_eq!(repeat[0], repeat[1], "{user}'s repeat has the stored seq");
        // A device's sends keep their order in each conversation.
        let mut last: HashMap<String, i64> = HashMap::new();
        for n in 0..SENDS {
            let (conv, seq) = acked[&format!("{user}-{n}")][0].clone();
            let before = last.insert(conv.clone(), seq).unwrap_or(0);
            assert!(
                seq > before,
                "{user}-{n} ({seq}) came after {before} in {conv}"
            );
        }
    }
    let stored = query(
        &url,
        "SELECT COUNT(*), COUNT(DISTINCT (sender, req_id)) FROM events WHERE kind = 'message'",
    );
    let (rows, distinct): (i64, i64) = (stored[0].get(0), stored[0].get(1));
    assert_eq!((rows, distinct), (6 * SENDS as i64, 6 * SENDS as i64));
    assert_gap_free(&url);

    // Receipts never go backwards: a later, lower read receipt changes nothing.
    let newest = clients[0]
        .reply(
            "ann",
            format!(r#"{{"type":"send","id":"last","conv":"{group}","body":"last"}}"#).as_bytes(),
        )
        .await["seq"]
        .as_i64()
        .expect("seq");
    for seq in [newest, newest - 3] {
        clients[1]
            .request(
                "ben",
                format!(r#"{{"type":"receipt","conv":"{group}","seq":{seq},"status":"read"}}"#)
                    .as_bytes(),
            )
            .await;
    }
    let ben_reads =
        format!("SELECT read_seq FROM members WHERE conv = '{group}' AND \"user\" = 'ben'");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while query(&url, &ben_reads)[0].get::<_, i64>(0) != newest {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receipt was stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The lower receipt came after (same device, same bridge): still the
    // newest, and one receipt row per member (the newest's) in the inbox.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(query(&url, &ben_reads)[0].get::<_, i64>(0), newest);
    let receipts = query(
        &url,
        "SELECT COUNT(*) FROM inbox WHERE rstatus = 'read' AND ruser = 'ben'",
    );
    assert_eq!(
        receipts[0].get::<_, i64>(0),
        6,
        "one read receipt per member"
    );
    assert_gap_free(&url);

    // Presence: published on change only, by the one bridge that handles ann.
    let mut watcher = server
        .raw("ben:watch", "pw")
        .connect()
        .await
        .expect("connect");
    watcher.subscribe(&["status/ann"]).await;
    let mut phones = Vec::new();
    for device in ["p1", "p2"] {
        let mut options = server.raw(&format!("ann:{device}"), "pw");
        options = options.will(&format!("presence/ann/{device}"), "offline");
        let mut phone = options.connect().await.expect("connect");
        phone
            .publish(&format!("presence/ann/{device}"), "online", true)
            .await;
        phones.push(phone);
    }
    let (topic, body) = watcher.next_publish().await;
    assert_eq!(topic, "status/ann");
    assert!(body.contains("\"online\":true"), "{body}");
    for (device, phone) in ["p1", "p2"].iter().zip(phones.iter_mut()) {
        phone
            .publish(&format!("presence/ann/{device}"), "offline", true)
            .await;
    }
    let (_, body) = watcher.next_publish().await;
    assert!(
        body.contains("\"online\":false"),
        "the next status is the last device going (none for the first): {body}"
    );

    // A bridge stopping gives its slots back: the other two take every user at
    // once (no lease to wait out), and a user of the stopped bridge is answered.
    let third: Vec<&str> = owners
        .iter()
        .filter(|(_, owner)| *owner == "third")
        .map(|(user, _)| user.as_str())
        .collect();
    server.stop_added_bridge("third").await;
    let owners = spread(&url, 2).await;
    assert!(!owners.values().any(|owner| owner == "third"));
    if let Some(user) = third.first() {
        let at = USERS.iter().position(|(u, _)| u == user).expect("user");
        let reply = clients[at]
            .reply(
                user,
                format!(r#"{{"type":"send","id":"after","conv":"{group}","body":"still here"}}"#)
                    .as_bytes(),
            )
            .await;
        assert_eq!(reply["type"], "ack", "{reply}");
    }
}

/// The environment of a process on the database at `url`, with the bridges'
/// password set.
fn on_postgres(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MESSENGER_STORAGE__BACKEND", "postgres".to_owned()),
        ("MESSENGER_STORAGE__URL", url.to_owned()),
        ("MESSENGER_BRIDGE__PASSWORD", "bridge-secret".to_owned()),
    ]
}

/// `messenger broker` and the users on the database at `url`, for processes of
/// their own (`messenger bridge`) to join.
struct OnPostgres {
    messenger: Messenger,
    env: Vec<(&'static str, String)>,
    broker: Server,
}

impl OnPostgres {
    /// Adds `users` (password `pw`) to the database at `url`, then starts
    /// `messenger broker` on it once it accepts.
    async fn start(url: &str, users: &[&str]) -> Self {
        let messenger = Messenger::new();
        let env = on_postgres(url);
        for user in users {
            let mut cmd = messenger.command(&["user", "add", user, "--password", "pw"]);
            cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
            messenger.run_command(cmd).await.ok();
        }
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut broker = messenger.spawn_named(
            "broker",
            "broker",
            free_addr_below_ephemeral(),
            free_addr(),
            free_addr(),
            &vars,
        );
        broker.wait_until_accepting().await;
        Self {
            messenger,
            env,
            broker,
        }
    }

    /// `messenger bridge` with instance `name` against the broker, with `extra`
    /// settings besides.
    fn bridge(&self, name: &str, extra: &[(&'static str, String)]) -> Server {
        let instance = [("MESSENGER_BRIDGE__INSTANCE", name.to_owned())];
        let vars: Vec<(&str, &str)> = self
            .env
            .iter()
            .chain(&instance)
            .chain(extra)
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        self.messenger.spawn_named(
            name,
            "bridge",
            self.broker.mqtt,
            free_addr(),
            free_addr(),
            &vars,
        )
    }
}

/// Sends `body` as `user`'s raw device with request id `id` until it is acked,
/// again after `retry` without an answer (the same id: a repeat is stored once).
async fn send_until_acked(
    client: &mut crate::util::Client,
    user: &str,
    id: &str,
    body: &str,
    retry: Duration,
) -> i64 {
    let request =
        format!(r#"{{"type":"send","id":"{id}","conv":"dm:{user}:zed","body":"{body}"}}"#);
    for _ in 0..10 {
        client.request(user, request.as_bytes()).await;
        let answered = tokio::time::timeout(retry, async {
            loop {
                let (topic, reply) = client.next_publish().await;
                let reply: Value = serde_json::from_str(&reply).expect("JSON");
                if topic.ends_with("/dev/raw") && reply["id"] == id {
                    return reply;
                }
            }
        })
        .await;
        if let Ok(reply) = answered {
            assert_eq!(reply["type"], "ack", "{reply}");
            return reply["seq"].as_i64().expect("seq");
        }
    }
    panic!("{id} was never acked");
}

/// Sends `sends` messages as `user`'s raw device (ids `<user>-<n>`, into
/// `dm:<user>:zed`), one every `pace` whether or not the earlier ones were
/// answered, and each again after `retry` without an answer, until every one
/// is acked; their seqs, by `n`.
async fn stream_until_acked(
    client: &mut crate::util::Client,
    user: &str,
    sends: usize,
    pace: Duration,
    retry: Duration,
) -> Vec<i64> {
    let request = |n: usize| {
        format!(r#"{{"type":"send","id":"{user}-{n}","conv":"dm:{user}:zed","body":"m{n}"}}"#)
    };
    let mut last_sent: BTreeMap<usize, tokio::time::Instant> = BTreeMap::new();
    let mut acked: BTreeMap<usize, i64> = BTreeMap::new();
    let mut tick = tokio::time::interval(pace);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked.len() < sends {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user}: {} of {sends} acked",
            acked.len()
        );
        tokio::select! {
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                let next = last_sent.len();
                if next < sends {
                    client.request(user, request(next).as_bytes()).await;
                    last_sent.insert(next, now);
                }
                let due: Vec<usize> = last_sent
                    .iter()
                    .filter(|(n, at)| !acked.contains_key(n) && now - **at >= retry)
                    .map(|(n, _)| *n)
                    .collect();
                for n in due {
                    client.request(user, request(n).as_bytes()).await;
                    last_sent.insert(n, now);
                }
            }
            (topic, reply) = client.next_publish() => {
                if !topic.ends_with("/dev/raw") {
                    continue;
                }
                let reply: Value = serde_json::from_str(&reply).expect("JSON");
                let n = reply["id"]
                    .as_str()
                    .and_then(|id| id.strip_prefix(&format!("{user}-")))
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or_else(|| panic!("{user}: a reply to no send of this stream: {reply}"));
                assert_eq!(reply["type"], "ack", "{reply}");
                let seq = reply["seq"].as_i64().expect("seq");
                // A repeat is answered with the stored seq.
                assert_eq!(*acked.entry(n).or_insert(seq), seq, "{reply}");
            }
        }
    }
    acked.into_values().collect()
}

/// `user`'s raw device (`<user>:raw`) streams `sends` messages into
/// `dm:<user>:zed`, one every 50 ms, each resent after 3 s without an answer,
/// until all are acked, and checks they were stored in the order sent (one
/// conversation per sender); their seqs.
pub(crate) fn stream_in_order(
    mut client: crate::util::Client,
    user: &'static str,
    sends: usize,
) -> tokio::task::JoinHandle<Vec<i64>> {
    tokio::spawn(async move {
        client.subscribe(&[&format!("chat/{user}/dev/raw")]).await;
        let seqs = stream_until_acked(
            &mut client,
            user,
            sends,
            Duration::from_millis(50),
            Duration::from_secs(3),
        )
        .await;
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "{user}'s sends were stored out of order: {seqs:?}"
        );
        seqs
    })
}

/// `messenger broker` and three `messenger bridge` processes on one database;
/// one bridge is killed with SIGKILL in the middle of a stream of sends, each
/// device sending at a steady pace without waiting for answers. The others take
/// its users over when its leases run out, first handling what reached them in
/// the meantime; devices' retries complete; every acked message is stored
/// exactly once; seqs stay gap-free; each device's sends are stored in the
/// order they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let url = database();
    let fixture = OnPostgres::start(&url, &["ann", "ben", "cat", "dan", "zed"]).await;
    let broker = &fixture.broker;
    let mut bridges: Vec<(String, Server)> = ["b1", "b2", "b3"]
        .map(|name| (name.to_owned(), fixture.bridge(name, &[])))
        .into();
    let senders = ["ann", "ben", "cat", "dan"];
    // Wait for the three to share the slots, then pick the bridge of ann.
    let victim = owner_once_shared(&url, 3, "ann", PATIENCE * 3).await;

    // 10 s of sends: the stream goes on past the takeover, 5 to 6 s after the kill.
    const SENDS: usize = 200;
    let mut tasks = Vec::new();
    for user in senders {
        let client = broker
            .device(Transport::Tcp, &format!("{user}:raw"), "pw")
            .connect()
            .await
            .expect("connect");
        let stream = stream_in_order(client, user, SENDS);
        tasks.push(tokio::spawn(async move {
            let seqs = stream.await.expect("sender task");
            seqs.into_iter()
                .enumerate()
                .map(|(n, seq)| (format!("{user}-{n}"), seq))
                .collect::<Vec<_>>()
        }));
    }
    // Kill ann's bridge once the stream is under way.
    let progress = "SELECT COUNT(*) FROM events WHERE kind = 'message' AND sender = 'ann'";
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while query(&url, progress)[0].get::<_, i64>(0) < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at = bridges
        .iter()
        .position(|(name, _)| *name == victim)
        .expect("the victim runs");
    bridges[at].1.kill();

    let mut all_acked = Vec::new();
    for task in tasks {
        let acked = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("the stream completes")
            .expect("sender task");
        all_acked.extend(acked);
    }
    assert_eq!(all_acked.len(), senders.len() * SENDS);
    // Every acked message is stored once, at the seq its ack named.
    let stored: HashMap<String, (i64, i64)> = query(
        &url,
        "SELECT req_id, MIN(seq), COUNT(*) FROM events WHERE kind = 'message' GROUP BY req_id",
    )
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2))))
    .collect();
    for (id, seq) in &all_acked {
        assert_eq!(stored.get(id), Some(&(*seq, 1)), "{id}");
    }
    assert_eq!(
        stored.len(),
        all_acked.len(),
        "nothing stored but what was acked"
    );
    assert_gap_free(&url);
    // The survivors hold every slot.
    let rows = query(
        &url,
        "SELECT COUNT(DISTINCT owner) FROM bridge_slots WHERE owner IS NOT NULL",
    );
    assert_eq!(
        rows[0].get::<_, i64>(0),
        2,
        "the two survivors share the slots"
    );
    broker.terminate();
}

/// PostgreSQL stopped in the middle of a stream of sends: the bridge acks
/// nothing while it is away (no ack without a commit), reconnects with backoff
/// when it is back, and carries on; nothing acked is lost or stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarting_mid_stream_loses_nothing_acked() {
    let pg = crate::util::postgres::private();
    let url = blocking(|| pg.create_database("restart")).expect("database");
    let server = TestServer::start_on_postgres(url.clone(), &[("ann", "pw"), ("zed", "pw")]).await;
    let mut ann = server
        .raw("ann:raw", "pw")
        .connect()
        .await
        .expect("connect");
    ann.subscribe(&["chat/ann/dev/raw"]).await;
    let retry = Duration::from_secs(5);
    let mut acked = Vec::new();
    for n in 0..10 {
        let id = format!("before-{n}");
        acked.push((
            id.clone(),
            send_until_acked(&mut ann, "ann", &id, "m", retry).await,
        ));
    }
    blocking(|| pg.stop()).expect("stop PostgreSQL");
    // Away: a send is not acked.
    let away = r#"{"type":"send","id":"away","conv":"dm:ann:zed","body":"while away"}"#;
    ann.request("ann", away.as_bytes()).await;
    let early = tokio::time::timeout(Duration::from_millis(1500), ann.next_publish()).await;
    assert!(
        early.is_err(),
        "no reply while PostgreSQL is away: {early:?}"
    );
    blocking(|| pg.restart()).expect("restart PostgreSQL");
    // Back: the send is stored and acked (by the batch retried on a new
    // connection, or by the device's retry).
    acked.push((
        "away".to_owned(),
        send_until_acked(&mut ann, "ann", "away", "while away", retry).await,
    ));
    for n in 0..10 {
        let id = format!("after-{n}");
        acked.push((
            id.clone(),
            send_until_acked(&mut ann, "ann", &id, "m", retry).await,
        ));
    }
    let stored: HashMap<String, (i64, i64)> = query(
        &url,
        "SELECT req_id, MIN(seq), COUNT(*) FROM events WHERE kind = 'message' GROUP BY req_id",
    )
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2))))
    .collect();
    for (id, seq) in &acked {
        assert_eq!(stored.get(id), Some(&(*seq, 1)), "{id}");
    }
    assert_eq!(stored.len(), acked.len());
    assert_gap_free(&url);
    drop(server);
}

/// Two `messenger bridge` processes with retention on, on one database that
/// holds more old events than one step removes, in several 1-1 chats and a
/// group: every old event goes exactly once (the passes' logged counts add up
/// to the events aged), nothing younger goes, receipts and conversations stay,
/// and sends are acked all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_run_retention_on_one_database_without_doing_it_twice() {
    const DAY_MS: i64 = 24 * 60 * 60 * 1000;
    /// Messages each sender sends before the ageing; the first `OLD` of each chat age.
    const BEFORE: usize = 120;
    const OLD: i64 = 100;
    let url = database();
    let senders = ["ann", "ben", "cat", "dan"];
    let users: Vec<&str> = senders.iter().chain(&["zed"]).copied().collect();
    let fixture = OnPostgres::start(&url, &users).await;
    let broker = &fixture.broker;
    let start_bridges = |retention: &str| {
        ["b1", "b2"].map(|name| {
            fixture.bridge(
                name,
                &[("MESSENGER_STORAGE__RETENTION_DAYS", retention.to_owned())],
            )
        })
    };
    let wait_for_spread = |url: String| async move {
        let deadline = tokio::time::Instant::now() + PATIENCE * 3;
        while slot_spread(&url) != (2, 0) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the bridges did not share the slots"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    // The history, without retention: each sender's chat with zed, and a group
    // of all five whose creation and messages have an inbox row per member.
    let bridges = start_bridges("0");
    wait_for_spread(url.clone()).await;
    let mut clients = Vec::new();
    for user in senders {
        let mut client = broker
            .device(Transport::Tcp, &format!("{user}:raw"), "pw")
            .connect()
            .await
            .expect("connect");
        client.subscribe(&[&format!("chat/{user}/dev/raw")]).await;
        clients.push((user, client));
    }
    let (_, ann) = &mut clients[0];
    ann.request(
        "ann",
        br#"{"type":"group_create","id":"g","name":"all","members":["ben","cat","dan","zed"]}"#,
    )
    .await;
    let created = replies(ann, 1).await.remove(0);
    let group = created["conv"].as_str().expect("a group").to_owned();
    for n in 0..10 {
        let body = format!(r#"{{"type":"send","id":"g{n}","conv":"{group}","body":"to all {n}"}}"#);
        ann.request("ann", body.as_bytes()).await;
        assert_eq!(replies(ann, 1).await[0]["type"], "ack");
    }
    let mut tasks = Vec::new();
    for (user, mut client) in clients {
        tasks.push(tokio::spawn(async move {
            for n in 0..BEFORE {
                let id = format!("{user}-{n}");
                send_until_acked(&mut client, user, &id, "old", Duration::from_secs(5)).await;
            }
            (user, client)
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.expect("sender task"));
    }
    // zed reads its chat with ann: a receipt, which stays.
    let mut zed = broker
        .device(Transport::Tcp, "zed:raw", "pw")
        .connect()
        .await
        .expect("connect");
    zed.subscribe(&["chat/zed/dev/raw"]).await;
    zed.request(
        "zed",
        format!(
            r#"{{"type":"receipt","id":"r","conv":"dm:ann:zed","seq":{BEFORE},"status":"read"}}"#
        )
        .as_bytes(),
    )
    .await;
    let count = |sql: &str| query(&url, sql)[0].get::<_, i64>(0);
    let receipts = "SELECT COUNT(*) FROM inbox WHERE rstatus IS NOT NULL";
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while count(receipts) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receipt was not stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for mut bridge in bridges {
        bridge.terminate();
        assert!(bridge.exit_status(PATIENCE).await.success());
    }

    // The first OLD events of each chat, and the whole group so far, are three days old.
    let aged = query(
        &url,
        &format!(
            "WITH a AS (UPDATE events SET ts = ts - {} WHERE seq <= {OLD} OR conv LIKE 'g:%' RETURNING 1)
             SELECT COUNT(*) FROM a",
            3 * DAY_MS
        ),
    )[0]
    .get::<_, i64>(0);
    let group_events = 1 + 10;
    assert_eq!(aged, senders.len() as i64 * OLD + group_events);
    assert!(
        aged > 256,
        "more than one step's worth, so both bridges may take turns"
    );
    let receipts = count(receipts);
    let young = count("SELECT COUNT(*) FROM events WHERE seq > 100 AND conv NOT LIKE 'g:%'");

    // Both bridges with retention on; sends go on while they remove the old events.
    let bridges = start_bridges("1");
    let mut tasks = Vec::new();
    for (user, mut client) in clients {
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for n in 0..20 {
                let id = format!("{user}-later-{n}");
                seqs.push(
                    send_until_acked(&mut client, user, &id, "new", Duration::from_secs(5)).await,
                );
            }
            seqs
        }));
    }
    for task in tasks {
        let seqs = tokio::time::timeout(PATIENCE * 3, task)
            .await
            .expect("sends are acked")
            .expect("sender task");
        let first = i64::try_from(BEFORE).expect("small") + 1;
        assert_eq!(seqs, (first..first + 20).collect::<Vec<_>>());
    }
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    let old = "SELECT COUNT(*) FROM events WHERE seq <= 100 OR conv LIKE 'g:%'";
    while count(old) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "old events still there: {}\nb1:\n{}\nb2:\n{}",
            count(old),
            bridges[0].log(),
            bridges[1].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The pass is logged once it is complete, by the bridge that completed it.
    let logged = |bridges: &[Server; 2]| -> i64 {
        bridges
            .iter()
            .flat_map(|b| {
                b.log()
                    .lines()
                    .filter(|l| l.contains("retention pass removed old events"))
                    .filter_map(|l| {
                        let (_, rest) = l.split_once("removed=")?;
                        rest.split(|c: char| !c.is_ascii_digit())
                            .next()?
                            .parse::<i64>()
                            .ok()
                    })
                    .collect::<Vec<_>>()
            })
            .sum()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while logged(&bridges) < aged {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the passes logged {} of {aged} removals\nb1:\n{}\nb2:\n{}",
            logged(&bridges),
            bridges[0].log(),
            bridges[1].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(logged(&bridges), aged, "nothing removed twice");

    // What is younger stayed, with everything that hangs on it; what is older
    // went with its inbox rows and request ids; conversations and receipts stay.
    let new = i64::try_from(senders.len() * 20).expect("small");
    assert_eq!(
        count("SELECT COUNT(*) FROM events WHERE conv NOT LIKE 'g:%'"),
        young + new
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM inbox WHERE rstatus IS NULL"),
        2 * (young + new),
        "the young events' inbox rows, and only theirs"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM requests"),
        count("SELECT COUNT(*) FROM events WHERE req_id IS NOT NULL"),
        "request ids went with their events"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM inbox WHERE rstatus IS NOT NULL"),
        receipts
    );
    assert_eq!(count("SELECT COUNT(*) FROM conversations"), 5);
    assert_eq!(
        count(&format!(
            "SELECT last_seq FROM conversations WHERE conv = '{group}'"
        )),
        group_events
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM members WHERE conv LIKE 'g:%'"),
        5,
        "the group's members stay"
    );
    assert_eq!(
        count("SELECT MIN(read_seq) FROM members WHERE conv = 'dm:ann:zed' AND \"user\" = 'zed'"),
        i64::try_from(BEFORE).expect("small")
    );
    for (_, seqs) in query(
        &url,
        "SELECT conv, array_agg(seq ORDER BY seq) FROM events GROUP BY conv",
    )
    .iter()
    .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<i64>>(1)))
    {
        assert_eq!(
            seqs,
            ((OLD + 1)..=(OLD + seqs.len() as i64)).collect::<Vec<_>>()
        );
    }
    broker.terminate();
}
