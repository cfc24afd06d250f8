//! Stock software: `mosquitto_pub` and `mosquitto_sub` sign in to the embedded
//! broker and are refused exactly like rumqttc clients; the generated Mosquitto
//! ACL enforces the same topic rules on a Mosquitto broker.

use crate::util::client::GRANTED;
use crate::util::process::Messenger;
use crate::util::server::{on_both_engines, Backend};
use crate::util::stock::{self, Mosquitto, Running};
use crate::util::{TestBroker, BRIDGE_PASSWORD, BRIDGE_USER};

/// alice's phone signing in with her password.
const ALICE: (&str, &str, &str) = ("alice:phone", "alice", "alice-pw");

/// alice and bob, their accounts where `backend` keeps them.
async fn two_users(backend: Backend) -> TestBroker {
    TestBroker::on(backend)
        .users(&[("alice", "alice-pw"), ("bob", "bob-pw")])
        .await
}

on_both_engines!(mosquitto_pub_sign_in);

/// `mosquitto_pub` exits with an error when refused: wrong password, unknown
/// user, another user's client id; with the right password it publishes.
async fn mosquitto_pub_sign_in(backend: Backend) {
    let broker = two_users(backend).await;
    let publish = |client_id: &str, username: &str, password: &str| {
        let mut cmd = stock::command(
            "mosquitto_pub",
            broker.mqtt_addr(),
            (client_id, username, password),
        );
        cmd.args(["-q", "1", "-t", "chat/alice/out/phone", "-m", "hi"]);
        stock::run(cmd)
    };
    for (client_id, username, password, why) in [
        ("alice:phone", "alice", "wrong", "bad user name or password"),
        ("zed:phone", "zed", "zed-pw", "bad user name or password"),
        ("bob:phone", "alice", "alice-pw", "not authori"),
        ("alice", "alice", "alice-pw", "identifier rejected"),
    ] {
        let stderr = publish(client_id, username, password).await.failed();
        assert!(
            stderr.to_lowercase().contains(why),
            "{client_id} / {username}: expected {why:?} in {stderr:?}"
        );
    }
    publish("alice:phone", "alice", "alice-pw").await.ok();
}

on_both_engines!(mosquitto_pub_forbidden_publish_is_dropped);

/// A publish to another user's `out` topic by `mosquitto_pub` is acknowledged
/// (the client exits 0) and dropped: the bridge gets alice's next, allowed one.
async fn mosquitto_pub_forbidden_publish_is_dropped(backend: Backend) {
    let broker = two_users(backend).await;
    let mut bridge = broker.bridge().connect().await.expect("bridge signs in");
    assert_eq!(bridge.subscribe(&["chat/+/out/+"]).await, [GRANTED]);
    // Two devices, so the second run does not take over the first one's client id.
    for (client_id, topic, payload) in [
        ("alice:phone", "chat/bob/out/phone", "forged"),
        ("alice:laptop", "chat/alice/out/laptop", "marker"),
    ] {
        let mut cmd = stock::command(
            "mosquitto_pub",
            broker.mqtt_addr(),
            (client_id, "alice", "alice-pw"),
        );
        cmd.args(["-q", "1", "-t", topic, "-m", payload]);
        stock::run(cmd).await.ok();
    }
    assert_eq!(
        bridge.next_publish().await,
        ("chat/alice/out/laptop".into(), "marker".into())
    );
}

on_both_engines!(mosquitto_sub_is_refused_another_users_inbox);

/// `mosquitto_sub` asking for bob's inbox next to its own gets 128 (refused) and
/// a granted QoS 1; bob's messages never reach it, its own do.
async fn mosquitto_sub_is_refused_another_users_inbox(backend: Backend) {
    let broker = two_users(backend).await;
    let mut bob = broker
        .device(crate::util::Transport::Tcp, "bob:phone", "bob-pw")
        .connect()
        .await
        .expect("bob signs in");
    assert_eq!(bob.subscribe(&["chat/bob/inbox"]).await, [GRANTED]);

    let mut cmd = stock::command("mosquitto_sub", broker.mqtt_addr(), ALICE);
    cmd.args([
        "-d",
        "-v",
        "-q",
        "1",
        "-t",
        "chat/bob/inbox",
        "-t",
        "chat/alice/inbox",
    ]);
    let mut sub = Running::spawn(cmd);
    let suback = sub
        .line("SUBACK report", |l| l.starts_with("Subscribed"))
        .await;
    assert!(suback.ends_with(": 128, 1"), "{suback}");

    let mut bridge = broker.bridge().connect().await.expect("bridge signs in");
    bridge.publish("chat/bob/inbox", "secret", false).await;
    assert_eq!(
        bob.next_publish().await,
        ("chat/bob/inbox".into(), "secret".into())
    );
    bridge.publish("chat/alice/inbox", "marker", false).await;
    let message = sub.line("a message", |l| l.starts_with("chat/")).await;
    assert_eq!(
        message,
        "chat/alice/inbox marker",
        "output: {:#?}",
        sub.seen()
    );
}

on_both_engines!(generated_acl_holds_on_a_mosquitto_broker);

/// The ACL that `messenger acl --format mosquitto` prints holds on a real
/// Mosquitto broker: no forbidden publish is routed, no forbidden subscription
/// receives anything, allowed traffic flows.
async fn generated_acl_holds_on_a_mosquitto_broker(backend: Backend) {
    let messenger = Messenger::on(backend);
    let acl = messenger.run(&["acl", "--format", "mosquitto"]).await.ok();
    let broker = Mosquitto::start(
        messenger.dir(),
        &acl,
        &[
            ("alice", "alice-pw"),
            ("bob", "bob-pw"),
            (BRIDGE_USER, BRIDGE_PASSWORD),
        ],
    )
    .await;
    let connect = |client_id: &str, password: &str| broker.device(client_id, password).connect();
    let mut bridge = connect("_bridge:main", BRIDGE_PASSWORD)
        .await
        .expect("bridge signs in");
    assert_eq!(
        bridge.subscribe(&["chat/+/out/+", "presence/+/+"]).await,
        [GRANTED, GRANTED]
    );
    let mut bob = connect("bob:phone", "bob-pw").await.expect("bob signs in");
    assert_eq!(
        bob.subscribe(&["chat/bob/inbox", "chat/bob/dev/+"]).await,
        [GRANTED, GRANTED]
    );
    let mut alice = connect("alice:phone", "alice-pw")
        .await
        .expect("alice signs in");
    // Mosquitto grants every subscription and checks read access message by
    // message (the embedded broker refuses with 0x80): compare what arrives.
    alice
        .subscribe(&[
            "chat/bob/inbox",
            "chat/alice/inbox",
            "chat/bob/dev/+",
            "#",
            "chat/alice/out/+",
        ])
        .await;

    // Forbidden publishes: acked, dropped; the allowed ones after them arrive first.
    for topic in [
        "chat/bob/out/phone",
        "presence/bob/phone",
        "chat/bob/inbox",
        "chat/bob/dev/phone",
        "chat/alice/inbox",
    ] {
        alice.publish(topic, "forged", false).await;
    }
    alice
        .publish("chat/alice/out/phone", "request", false)
        .await;
    alice.publish("presence/alice/phone", "online", true).await;
    assert_eq!(
        bridge.next_publishes(2).await,
        [
            ("chat/alice/out/phone".into(), "request".into()),
            ("presence/alice/phone".into(), "online".into()),
        ]
    );
    bridge.publish("chat/bob/inbox", "event", false).await;
    bridge.publish("chat/bob/dev/phone", "reply", false).await;
    assert_eq!(
        bob.next_publishes(2).await,
        [
            ("chat/bob/dev/phone".into(), "reply".into()),
            ("chat/bob/inbox".into(), "event".into()),
        ]
    );
    bridge.publish("chat/alice/inbox", "marker", false).await;
    assert_eq!(
        alice.next_publish().await,
        ("chat/alice/inbox".into(), "marker".into())
    );
}
