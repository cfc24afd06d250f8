//! The embedded broker: sign-in, the topic ACL, revocation and the WebSocket front,
//! each shown over TCP and over WebSocket, and over TCP with the accounts on
//! PostgreSQL.

use std::time::{Duration, Instant};

use rumqttc::ConnectReturnCode;
use tokio::io::AsyncReadExt;

use crate::util::client::{GRANTED, REFUSED};
use crate::util::raw::{self, RawConnection};
use crate::util::server::{on_both_engines, Backend};
use crate::util::{
    did, over_transports_and_engines, over_transports_engines_and_cluster, refusal, uid, Client,
    TestBroker, Transport, PATIENCE,
};

/// alice, bob and carol, each with password `<name>-pw`, their accounts where
/// `backend` keeps them.
async fn three_users(backend: Backend) -> TestBroker {
    TestBroker::on(backend)
        .users(&[
            ("alice", "alice-pw"),
            ("bob", "bob-pw"),
            ("carol", "carol-pw"),
        ])
        .await
}

async fn sign_in(broker: &TestBroker, transport: Transport, client_id: &str) -> Client {
    let user = client_id.split(':').next().unwrap_or_default();
    broker
        .device(transport, client_id, &format!("{user}-pw"))
        .connect()
        .await
        .unwrap_or_else(|err| panic!("{client_id} cannot sign in: {err}"))
}

// The topic ACL and sign-in rules a NATS cluster applies too, from the same
// bodies (a cluster refuses every sign-in with 5: `Backend::bad_credentials`).
over_transports_engines_and_cluster!(
    right_password_is_accepted,
    bad_credentials_are_refused_with_4,
    client_id_of_another_user_is_refused_with_5,
    forbidden_filters_get_0x80_and_leak_nothing,
    users_cannot_publish_to_inbox_dev_or_status,
    forged_retained_status_is_not_kept,
    device_token_signs_in_only_its_device,
);

// The embedded broker's own: CONNACK 2 for every malformed id and 5 for a
// forbidden will at CONNECT (a cluster accepts the CONNECT and drops the will),
// the service account's MQTT subscriptions (replies only on a cluster), MQTT
// session details of rumqttd, and revocation with the will published.
over_transports_and_engines!(
    malformed_client_ids_are_refused_with_2,
    last_will_off_own_presence_is_refused_with_5,
    publishing_as_another_user_is_acked_and_dropped,
    resumed_session_gets_retained_status_again_on_resubscribe,
    unsubscribe_of_a_filter_never_subscribed_gets_its_unsuback,
    second_connect_on_a_connection_is_refused,
    removing_a_user_cuts_their_connection,
);

/// A right password gets CONNACK 0, and the session works: a message the bridge
/// sends to the user's inbox arrives.
async fn right_password_is_accepted(transport: Transport, backend: Backend) {
    let broker = three_users(backend).await;
    let mut alice = sign_in(&broker, transport, "alice:phone").await;
    assert_eq!(
        alice
            .subscribe(&["chat/alice/inbox", "chat/alice/dev/phone"])
            .await,
        [GRANTED, GRANTED]
    );
    let mut bridge = broker.bridge().connect().await.expect("bridge signs in");
    bridge.publish("chat/alice/inbox", "hello", false).await;
    assert_eq!(
        alice.next_publish().await,
        ("chat/alice/inbox".into(), "hello".into())
    );
}

/// A wrong password and an unknown user both get CONNACK 4 (5 on a cluster), over the right
/// transport; the right password still works afterwards.
async fn bad_credentials_are_refused_with_4(transport: Transport, backend: Backend) {
    let broker = three_users(backend).await;
    for (client_id, password) in [
        ("alice:phone", "wrong"),
        ("alice:phone", "bob-pw"),
        ("alice:phone", "mtk_0123"),
        ("zed:phone", "zed-pw"),
    ] {
        let result = broker
            .device(transport, client_id, password)
            .connect()
            .await;
        assert_eq!(
            refusal(result),
            backend.bad_credentials(),
            "{client_id} with {password:?}"
        );
    }
    // A username that cannot be a user id at all.
    let result = broker
        .device(transport, "Alice:phone", "alice-pw")
        .connect()
        .await;
    assert_eq!(refusal(result), backend.bad_credentials());
    sign_in(&broker, transport, "alice:phone").await;
}

/// A client id whose user part is not the username gets CONNACK 5, even with
/// that other user's own valid password.
async fn client_id_of_another_user_is_refused_with_5(transport: Transport, backend: Backend) {
    let broker = three_users(backend).await;
    for password in ["alice-pw", "bob-pw"] {
        let result = broker
            .device(transport, "bob:phone", password)
            .username("alice")
            .connect()
            .await;
        assert_eq!(refusal(result), ConnectReturnCode::NotAuthorized);
    }
    // Nor may a user take the service account's client id.
    let result = broker
        .device(transport, "_bridge:main", "alice-pw")
        .username("alice")
        .connect()
        .await;
    assert_eq!(refusal(result), ConnectReturnCode::NotAuthorized);
}

/// Client ids that are not `<user>:<device>` get CONNACK 2.
async fn malformed_client_ids_are_refused_with_2(transport: Transport, backend: Backend) {
    let broker = three_users(backend).await;
    for client_id in [
        "",
        "alice",
        "alice:",
        ":phone",
        "alice:ph/one",
        "alice:ph.one",
        "alice:ph+",
        "alice:#",
        "alice:ph:one",
        &format!("alice:{}", "p".repeat(65)),
    ] {
        let result = broker
            .device(transport, client_id, "alice-pw")
            .username("alice")
            .connect()
            .await;
        assert_eq!(
            refusal(result),
            ConnectReturnCode::BadClientId,
            "client id {client_id:?}"
        );
    }
}

/// A last will anywhere but the device's own user's `presence` topic gets
/// CONNACK 5; on its own presence topic it is accepted.
async fn last_will_off_own_presence_is_refused_with_5(transport: Transport, backend: Backend) {
    let broker = three_users(backend).await;
    for topic in [
        "presence/bob/phone",
        "status/alice",
        "status/bob",
        "chat/alice/out/phone",
        "chat/bob/inbox",
        "anything",
    ] {
        let result = broker
            .device(transport, "alice:phone", "alice-pw")
            .will(topic, "offline")
            .connect()
            .await;
        assert_eq!(
            refusal(result),
            ConnectReturnCode::NotAuthorized,
            "will on {topic}"
        );
    }
    broker
        .device(transport, "alice:phone", "alice-pw")
        .will("presence/alice/phone", "offline")
        .connect()
        .await
        .expect("a will on the device's own presence topic is allowed");
}

/// Subscribing to another user's inbox or dev topics, or to `#` / `chat/#`, gets
/// 0x80 in the SUBACK while allowed filters of the same SUBSCRIBE are granted;
/// messages on the refused filters never reach the subscriber.
async fn forbidden_filters_get_0x80_and_leak_nothing(transport: Transport, backend: Backend) {
    let broker = three_users(backend).await;
    let mut alice = sign_in(&broker, transport, "alice:phone").await;
    let mut bob = sign_in(&broker, transport, "bob:phone").await;
    assert_eq!(
        bob.subscribe(&["chat/bob/inbox", "chat/bob/dev/+"]).await,
        [GRANTED, GRANTED]
    );
    assert_eq!(
        alice
            .subscribe(&[
                "chat/bob/inbox",
                "chat/alice/inbox",
                "chat/bob/dev/+",
                "#",
                "status/bob",
                "chat/#",
            ])
            .await,
        [REFUSED, GRANTED, REFUSED, REFUSED, GRANTED, REFUSED]
    );
    for filter in ["chat/bob/inbox", "chat/bob/dev/+", "#", "chat/#"] {
        assert_eq!(alice.subscribe(&[filter]).await, [REFUSED], "{filter}");
    }

    let mut bridge = broker.bridge().connect().await.expect("bridge signs in");
    bridge.publish("chat/bob/inbox", "secret-1", false).await;
    bridge
        .publish("chat/bob/dev/phone", "secret-2", false)
        .await;
    // Routed: bob has them, so any subscriber's copy is already on its way.
    assert_eq!(
        bob.next_publishes(2).await,
        [
            ("chat/bob/dev/phone".into(), "secret-2".into()),
            ("chat/bob/inbox".into(), "secret-1".into()),
        ]
    );
    // Positive control: alice receives what she may, and nothing before it.
    bridge.publish("chat/alice/inbox", "marker", false).await;
    assert_eq!(
        alice.next_publish().await,
        ("chat/alice/inbox".into(), "marker".into())
    );
}

/// Publishing to another user's `out` or `presence` topic still gets a PUBACK,
/// but nothing is routed: the bridge, subscribed to every `out` and `presence`
/// topic, receives alice's own later messages and never the forged ones.
async fn publishing_as_another_user_is_acked_and_dropped(transport: Transport, backend: Backend) {
    let broker = three_users(backend).await;
    let mut bridge = broker.bridge().connect().await.expect("bridge signs in");
    assert_eq!(
        bridge.subscribe(&["chat/+/out/+", "presence/+/+"]).await,
        [GRANTED, GRANTED]
    );
    let mut alice = sign_in(&broker, transport, "alice:phone").await;
    alice.publish("chat/bob/out/phone", "forged", false).await;
    alice.publish("presence/bob/phone", "online", true).await;
    alice.publish("chat/alice/out/phone", "marker", false).await;
    alice.publish("presence/alice/phone", "online", true).await;
    assert_eq!(
        bridge.next_publishes(2).await,
        [
            ("chat/alice/out/phone".into(), "marker".into()),
            ("presence/alice/phone".into(), "online".into()),
        ]
    );
    // A later subscriber finds alice's retained presence and none for bob: the
    // retained messages come first, then alice's next publish.
    let mut late = broker.bridge().connect().await.expect("bridge signs in");
    assert_eq!(late.subscribe(&["presence/+/+"]).await, [GRANTED]);
    alice
        .publish("presence/alice/phone", "online-2", true)
        .await;
    assert_eq!(
        late.next_publish().await,
        ("presence/alice/phone".into(), "online".into())
    );
    assert_eq!(
        late.next_publish().await,
        ("presence/alice/phone".into(), "online-2".into())
    );
}

/// Users may publish to no `inbox`, `dev` or `status` topic, their own included:
/// PUBACK, then nothing. The owners' first messages are the bridge's later ones.
async fn users_cannot_publish_to_inbox_dev_or_status(transport: Transport, backend: Backend) {
    let broker = three_users(backend).await;
    let mut bob = sign_in(&broker, transport, "bob:phone").await;
    bob.subscribe(&["chat/bob/inbox", "chat/bob/dev/+", "status/bob"])
        .await;
    let mut laptop = sign_in(&broker, transport, "alice:laptop").await;
    laptop
        .subscribe(&["chat/alice/inbox", "chat/alice/dev/+", "status/alice"])
        .await;

    let mut alice = sign_in(&broker, transport, "alice:phone").await;
    let forged = [
        "chat/bob/inbox",
        "chat/bob/dev/phone",
        "status/bob",
        "chat/alice/inbox",
        "chat/alice/dev/laptop",
        "status/alice",
    ];
    for topic in forged {
        alice.publish(topic, "forged", false).await;
    }
    // Every forged publish was acked, so handled; now the real ones, on the same topics.
    let mut bridge = broker.bridge().connect().await.expect("bridge signs in");
    for topic in forged {
        bridge.publish(topic, "real", false).await;
    }
    let real = |topics: &[&str]| -> Vec<(String, String)> {
        topics
            .iter()
            .map(|t| ((*t).to_owned(), "real".to_owned()))
            .collect()
    };
    assert_eq!(
        bob.next_publishes(3).await,
        real(&["chat/bob/dev/phone", "chat/bob/inbox", "status/bob"])
    );
    assert_eq!(
        laptop.next_publishes(3).await,
        real(&["chat/alice/dev/laptop", "chat/alice/inbox", "status/alice"])
    );
}

/// A user's forged *retained* `status/<user>` is not kept: a later subscriber
/// gets the bridge's retained status, which the forgery would have replaced.
async fn forged_retained_status_is_not_kept(transport: Transport, backend: Backend) {
    let broker = three_users(backend).await;
    let mut bridge = broker.bridge().connect().await.expect("bridge signs in");
    bridge
        .publish("status/bob", r#"{"user":"bob","online":false}"#, true)
        .await;
    let mut alice = sign_in(&broker, transport, "alice:phone").await;
    alice
        .publish("status/bob", r#"{"user":"bob","online":true}"#, true)
        .await;
    alice
        .publish("status/alice", r#"{"user":"alice","online":true}"#, true)
        .await;

    let mut carol = sign_in(&broker, transport, "carol:phone").await;
    assert_eq!(carol.subscribe(&["status/bob"]).await, [GRANTED]);
    assert_eq!(
        carol.next_publish().await,
        (
            "status/bob".into(),
            r#"{"user":"bob","online":false}"#.into()
        )
    );
    // Nothing retained on alice's status: the bridge's later one is the first carol sees.
    assert_eq!(carol.subscribe(&["status/alice"]).await, [GRANTED]);
    bridge.publish("status/alice", "real", false).await;
    assert_eq!(
        carol.next_publish().await,
        ("status/alice".into(), "real".into())
    );
}

/// A device with a persistent session (clean session off) subscribes to bob's
/// retained status and gets it; it disconnects, comes back with the same client id
/// (session present), subscribes again to the same filter, and gets the retained
/// status again: MQTT 3.1.1 section 3.8.4 (a repeated filter replaces the
/// subscription, and its retained messages are re-sent). Stock clients subscribe on
/// every CONNACK and rely on this for who is online (vendor/rumqttd PATCHES.md 9).
async fn resumed_session_gets_retained_status_again_on_resubscribe(
    transport: Transport,
    backend: Backend,
) {
    let broker = three_users(backend).await;
    let mut bridge = broker.bridge().connect().await.expect("bridge signs in");
    let status = r#"{"user":"bob","online":true}"#;
    bridge.publish("status/bob", status, true).await;

    for (round, session_present) in [("first", 0u8), ("resumed", 1)] {
        let mut conn = RawConnection::open(&broker, transport).await;
        conn.send(&raw::connect_packet_with(
            "alice:phone",
            "alice",
            "alice-pw",
            false,
        ))
        .await;
        assert_eq!(
            conn.recv().await.as_deref(),
            Some(&[0x20, 0x02, session_present, 0x00][..]),
            "{round} CONNACK"
        );
        conn.send(&raw::subscribe_packet(1, "status/bob", 1)).await;
        // The SUBACK and the retained status, in either order.
        let (mut subacked, mut retained) = (false, None);
        while !subacked || retained.is_none() {
            let packet = conn
                .recv()
                .await
                .unwrap_or_else(|| panic!("{round} connection closed"));
            if let Some(publish) = raw::parse_publish(&packet) {
                // Acked, so the resumed session has nothing to redeliver: what the
                // second round gets is the re-sent retained message.
                if let Some(pkid) = publish.pkid {
                    conn.send(&raw::puback_packet(pkid)).await;
                }
                retained = Some(publish);
            } else {
                assert_eq!(packet, [0x90, 0x03, 0x00, 0x01, 0x01], "{round} SUBACK");
                subacked = true;
            }
        }
        let publish = retained.expect("a publish");
        assert_eq!(publish.topic, "status/bob", "{round}");
        assert_eq!(publish.payload, status.as_bytes(), "{round}");
        assert!(publish.retain, "{round}: sent as retained");

        conn.send(&raw::DISCONNECT).await;
        assert_eq!(conn.recv().await, None, "{round}: closed after DISCONNECT");
    }
}

/// An UNSUBSCRIBE of a filter the session does not have is answered with an
/// UNSUBACK carrying its packet id: MQTT 3.1.1 section 3.10.4. Stock clients (paho,
/// MQTT.js) wait for it (vendor/rumqttd PATCHES.md 10).
async fn unsubscribe_of_a_filter_never_subscribed_gets_its_unsuback(
    transport: Transport,
    backend: Backend,
) {
    let broker = three_users(backend).await;
    let mut conn = RawConnection::open(&broker, transport).await;
    conn.send(&raw::connect_packet("alice:phone", "alice", "alice-pw"))
        .await;
    assert_eq!(
        conn.recv().await.as_deref(),
        Some(&raw::CONNACK_ACCEPTED[..])
    );
    conn.send(&raw::unsubscribe_packet(0x1234, "status/carol"))
        .await;
    assert_eq!(
        conn.recv().await.as_deref(),
        Some(&[0xB0, 0x02, 0x12, 0x34][..]),
        "UNSUBACK of packet 0x1234"
    );
}

/// A second CONNECT on a signed-in connection (here, trying to become bob)
/// closes the connection without a CONNACK.
async fn second_connect_on_a_connection_is_refused(transport: Transport, backend: Backend) {
    let broker = three_users(backend).await;
    let mut conn = RawConnection::open(&broker, transport).await;
    conn.send(&raw::connect_packet("alice:phone", "alice", "alice-pw"))
        .await;
    assert_eq!(
        conn.recv().await.as_deref(),
        Some(&raw::CONNACK_ACCEPTED[..])
    );
    conn.send(&raw::PINGREQ).await;
    assert_eq!(conn.recv().await.as_deref(), Some(&raw::PINGRESP[..]));

    conn.send(&raw::connect_packet("bob:phone", "bob", "bob-pw"))
        .await;
    assert_eq!(
        conn.recv().await,
        None,
        "the second CONNECT must end the connection"
    );

    // Before sign-in, anything but CONNECT ends the connection too.
    let mut conn = RawConnection::open(&broker, transport).await;
    conn.send(&raw::PINGREQ).await;
    assert_eq!(conn.recv().await, None);
}

/// A device token is that device's password and no other's.
async fn device_token_signs_in_only_its_device(transport: Transport, backend: Backend) {
    let broker = three_users(backend).await;
    let token = broker
        .with_accounts(|acc| acc.issue_token(&uid("alice"), &did("phone")))
        .await
        .expect("token issued");
    assert!(token.starts_with("mtk_"), "{token}");

    let mut phone = broker
        .device(transport, "alice:phone", &token)
        .connect()
        .await
        .expect("the token signs in its own device");
    assert_eq!(phone.subscribe(&["chat/alice/inbox"]).await, [GRANTED]);
    for (client_id, username) in [("alice:laptop", "alice"), ("bob:phone", "bob")] {
        let result = broker
            .device(transport, client_id, &token)
            .username(username)
            .connect()
            .await;
        assert_eq!(refusal(result), backend.bad_credentials(), "{client_id}");
    }
    // The password still works for any device.
    sign_in(&broker, transport, "alice:laptop").await;
}

/// Removing a connected, idle user cuts every connection of theirs within a few
/// poll intervals and refuses them afterwards; other users stay connected.
async fn removing_a_user_cuts_their_connection(transport: Transport, backend: Backend) {
    let broker = three_users(backend).await;
    let mut bridge = broker.bridge().connect().await.expect("bridge signs in");
    assert_eq!(bridge.subscribe(&["presence/+/+"]).await, [GRANTED]);
    let mut phone = broker
        .device(transport, "alice:phone", "alice-pw")
        .will("presence/alice/phone", "offline")
        .connect()
        .await
        .expect("alice signs in");
    let mut laptop = sign_in(&broker, Transport::Tcp, "alice:laptop").await;
    let mut bob = sign_in(&broker, transport, "bob:phone").await;

    broker
        .with_accounts(|acc| acc.remove(&uid("alice")))
        .await
        .expect("alice removed");
    phone.disconnected().await;
    laptop.disconnected().await;
    // Cut, not signed off: the device's last will goes out.
    assert_eq!(
        bridge.next_publish().await,
        ("presence/alice/phone".into(), "offline".into())
    );

    let result = broker
        .device(transport, "alice:phone", "alice-pw")
        .connect()
        .await;
    assert_eq!(refusal(result), ConnectReturnCode::BadUserNamePassword);
    assert_eq!(bob.subscribe(&["chat/bob/inbox"]).await, [GRANTED]);
}

on_both_engines!(idle_websocket_handshake_does_not_block_others);

/// An idle TCP connection to the WebSocket port that never sends its HTTP
/// upgrade does not hold up a later WebSocket client: the later one is served
/// while the idle one is still open (its handshake timeout is far away).
async fn idle_websocket_handshake_does_not_block_others(backend: Backend) {
    let broker = TestBroker::on(backend)
        .users(&[("alice", "alice-pw")])
        .config(|c| c.ws_handshake_timeout_ms = 60_000)
        .await;
    let idle = tokio::net::TcpStream::connect(broker.ws_addr())
        .await
        .expect("TCP connect");

    let mut alice = sign_in(&broker, Transport::Ws, "alice:phone").await;
    assert_eq!(alice.subscribe(&["chat/alice/inbox"]).await, [GRANTED]);
    let mut probe = [0u8; 1];
    assert!(
        matches!(idle.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the idle connection must still be open while the later client is served"
    );
}

on_both_engines!(idle_websocket_handshake_times_out);

/// A WebSocket client that does not finish its HTTP upgrade within
/// `ws_handshake_timeout_ms` is disconnected.
async fn idle_websocket_handshake_times_out(backend: Backend) {
    let timeout = Duration::from_millis(300);
    let broker = TestBroker::on(backend)
        .config(|c| c.ws_handshake_timeout_ms = 300)
        .await;
    let started = Instant::now();
    let mut idle = tokio::net::TcpStream::connect(broker.ws_addr())
        .await
        .expect("TCP connect");
    let mut probe = [0u8; 1];
    let closed = tokio::time::timeout(PATIENCE, idle.read(&mut probe))
        .await
        .expect("the idle connection was not closed by the handshake timeout");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert!(started.elapsed() >= timeout, "closed before the timeout");
}

on_both_engines!(a_password_change_spares_sign_ins_made_after_it);

/// A password change cuts the connections signed in before it, not a device
/// that signed in with the new password before the broker's next look at the
/// revocations.
async fn a_password_change_spares_sign_ins_made_after_it(backend: Backend) {
    let broker = TestBroker::on(backend)
        .users(&[("alice", "alice-pw")])
        .config(|c| c.revocation_poll_ms = 500)
        .await;
    let mut old = broker
        .device(Transport::Tcp, "alice:phone", "alice-pw")
        .connect()
        .await
        .expect("old password signs in");
    broker
        .with_accounts(|acc| acc.set_password(&uid("alice"), "new-pw"))
        .await
        .expect("password changed");
    let mut new = broker
        .device(Transport::Tcp, "alice:laptop", "new-pw")
        .connect()
        .await
        .expect("new password signs in");
    // The revocation has been acted on once the old connection is gone...
    old.disconnected().await;
    // ...and the new one still works.
    assert_eq!(new.subscribe(&["chat/alice/inbox"]).await, [GRANTED]);
}

on_both_engines!(the_last_member_of_a_shared_group_leaving_unacked_stops_nothing);

/// The bridge's account may take the request stream through a shared
/// subscription. When the last member of such a group leaves with a request it
/// has not acked, the broker goes on routing for everyone (upstream rumqttd
/// panicked in its router thread there: vendor/rumqttd/PATCHES.md, patch 11).
async fn the_last_member_of_a_shared_group_leaving_unacked_stops_nothing(backend: Backend) {
    let broker = three_users(backend).await;
    let mut options = broker.bridge();
    options.tune(|o| {
        o.set_clean_session(false).set_manual_acks(true);
    });
    let mut bridge = options.connect().await.expect("the bridge signs in");
    assert_eq!(
        bridge.subscribe(&["$share/g/chat/+/out/+"]).await,
        [GRANTED]
    );
    let mut alice = sign_in(&broker, Transport::Tcp, "alice:phone").await;
    alice.publish("chat/alice/out/phone", "{}", false).await;
    let (topic, _) = bridge.next_publish().await;
    assert_eq!(topic, "chat/alice/out/phone");
    // Gone without a DISCONNECT and without acking it.
    drop(bridge);
    let mut bob = sign_in(&broker, Transport::Tcp, "bob:phone").await;
    assert_eq!(bob.subscribe(&["chat/bob/inbox"]).await, [GRANTED]);
    let mut other = broker
        .device(
            Transport::Tcp,
            &format!("{}:other", crate::util::BRIDGE_USER),
            crate::util::BRIDGE_PASSWORD,
        )
        .connect()
        .await
        .expect("another bridge connection signs in");
    other.publish("chat/bob/inbox", "still routed", false).await;
    assert_eq!(
        bob.next_publish().await,
        ("chat/bob/inbox".to_owned(), "still routed".to_owned())
    );
    // Back with its session and subscribed again, the member gets the request it
    // had not acked (not only what is published from now on).
    let mut bridge = back_with_its_session(&broker, "{}").await;
    // Acked this time; then away again, and a request comes meanwhile: back, the
    // member gets it (the group went on from where it stood, not from the log's tail).
    let mut bob = sign_in(&broker, Transport::Tcp, "bob:laptop").await;
    bob.publish("chat/bob/out/laptop", "{\"n\":1}", false).await;
    assert_eq!(bridge.next_publish().await.0, "chat/bob/out/laptop");
    // A round trip behind the PUBACK: the broker has taken the ack before it answers.
    bridge.publish("chat/bob/inbox", "ack flushed", false).await;
    drop(bridge);
    alice
        .publish("chat/alice/out/phone", "{\"n\":2}", false)
        .await;
    back_with_its_session(&broker, "{\"n\":2}").await;
}

/// The bridge's connection back with its persistent session, subscribed to the
/// shared group again; the first publish it gets must be alice's request `payload`.
async fn back_with_its_session(broker: &TestBroker, payload: &str) -> Client {
    let mut options = broker.bridge();
    options.tune(|o| {
        o.set_clean_session(false);
    });
    let mut bridge = options.connect().await.expect("the bridge signs in again");
    assert_eq!(
        bridge.subscribe(&["$share/g/chat/+/out/+"]).await,
        [GRANTED]
    );
    let (topic, got) = bridge.next_publish().await;
    assert_eq!(
        (topic.as_str(), got.as_str()),
        ("chat/alice/out/phone", payload)
    );
    bridge
}
