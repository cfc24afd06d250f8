//! Durable 1-1 messaging end to end: real broker (embedded or Mosquitto), real
//! bridge on a real SQLite file, devices on the real client library.

use std::collections::BTreeSet;

use messenger_client::{ClientError, ClientEvent, HistoryItem};
use messenger_protocol::wire::{ErrorCode, Event, ReceiptStatus, Request, RequestId};
use messenger_protocol::ConvId;
use serde_json::Value;

use crate::util::server::{
    expect, next_message, on_both_brokers, on_both_engines, on_engines_and_cluster, Backend,
    TestServer,
};
use crate::util::{uid, PATIENCE};

const USERS: &[(&str, &str)] = &[
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("carol", "carol-pw"),
];

fn dm(a: &str, b: &str) -> ConvId {
    ConvId::direct(&uid(a), &uid(b)).expect("two distinct users")
}

on_both_brokers!(
    send_is_acked_and_reaches_every_device,
    repeated_send_stores_once,
    unread_and_read_receipts
);

on_both_engines!(
    kill_9_mid_stream_loses_nothing_and_stores_nothing_twice,
    a_websocket_device_chats_like_any_other,
    history_and_seq_continue_across_a_bridge_restart,
);

on_engines_and_cluster!(
    offline_device_catches_up_without_gaps_or_repeats,
    sync_from_a_cursor_and_history_pages,
    a_repeated_request_is_delivered_again_with_the_same_useqs,
    every_kind_of_bad_input_is_refused_and_changes_nothing,
    refusals_surface_as_typed_errors,
);

async fn send_is_acked_and_reaches_every_device(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let (alice_phone, mut alice_phone_events) = server.device("alice", "alice-pw", "phone").await;
    let (_alice_laptop, mut alice_laptop_events) =
        server.device("alice", "alice-pw", "laptop").await;
    let (_bob, mut bob_events) = server.device("bob", "bob-pw", "phone").await;
    let conv = dm("alice", "bob");

    let ack = alice_phone.send(&conv, "hello bob").await.expect("ack");
    assert_eq!(ack.seq, 1);
    assert_eq!(ack.conv, conv);
    assert!(ack.ts > 0);
    for events in [
        &mut bob_events,
        &mut alice_laptop_events,
        &mut alice_phone_events,
    ] {
        let m = next_message(events).await;
        assert_eq!(
            (m.seq, m.ts, m.body.as_str(), m.from.as_str()),
            (1, ack.ts, "hello bob", "alice")
        );
        assert_eq!(m.device, "phone");
        assert_eq!(m.useq, Some(1));
    }
    let ack2 = alice_phone.send(&conv, "second").await.expect("ack");
    assert_eq!(ack2.seq, 2);
    assert_eq!(next_message(&mut bob_events).await.seq, 2);
}

async fn repeated_send_stores_once(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let (alice, _events) = server.device("alice", "alice-pw", "phone").await;
    let (_bob, mut bob_events) = server.device("bob", "bob-pw", "phone").await;
    let conv = dm("alice", "bob");
    let id = RequestId::parse("fixed-id-1").expect("id");
    let first = alice
        .send_with_id(id.clone(), &conv, "once")
        .await
        .expect("ack");
    let again = alice
        .send_with_id(id.clone(), &conv, "once")
        .await
        .expect("ack");
    assert_eq!(first, again, "a repeated send gets the same ack");
    let next = alice.send(&conv, "after").await.expect("ack");
    assert_eq!(next.seq, 2, "the repeat took no seq");
    let page = alice.history(&conv, None, 50).await.expect("history");
    let bodies: Vec<String> = page
        .events
        .iter()
        .filter_map(|e| match e {
            HistoryItem::Message(m) => Some(m.body.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, ["once", "after"]);
    // Bob's device shows each message once, however often delivery was repeated.
    assert_eq!(next_message(&mut bob_events).await.body, "once");
    assert_eq!(next_message(&mut bob_events).await.body, "after");
}

async fn unread_and_read_receipts(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let (alice, mut alice_events) = server.device("alice", "alice-pw", "phone").await;
    let conv = dm("alice", "bob");
    for text in ["one", "two", "three"] {
        alice.send(&conv, text).await.expect("ack");
    }
    let (bob, mut bob_events) = server.device("bob", "bob-pw", "phone").await;
    let items = bob.conversations().await.expect("conversations");
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].unread, items[0].last_seq, items[0].read_seq),
        (3, 3, 0)
    );
    assert_eq!(items[0].name, "alice");
    // Bob's device receives the three (sync on connect) and confirms delivery by itself.
    for seq in 1..=3 {
        assert_eq!(next_message(&mut bob_events).await.seq, seq);
    }
    let delivered = expect(&mut alice_events, |e| match e {
        ClientEvent::Receipt(r)
            if r.user.as_str() == "bob" && r.status == ReceiptStatus::Delivered && r.seq == 3 =>
        {
            Some(r)
        }
        _ => None,
    })
    .await;
    assert_eq!(delivered.conv, conv);
    bob.mark_read(&conv, 3).await.expect("receipt");
    let read = expect(&mut alice_events, |e| match e {
        ClientEvent::Receipt(r) if r.status == ReceiptStatus::Read => Some(r),
        _ => None,
    })
    .await;
    assert_eq!((read.user.as_str(), read.seq), ("bob", 3));
    let items = bob.conversations().await.expect("conversations");
    assert_eq!((items[0].unread, items[0].read_seq), (0, 3));
    // The sender's own messages never count as unread for them.
    assert_eq!(
        alice.conversations().await.expect("conversations")[0].unread,
        0
    );
}

async fn offline_device_catches_up_without_gaps_or_repeats(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let (alice, _a) = server.device("alice", "alice-pw", "phone").await;
    let conv = dm("alice", "bob");
    alice.send(&conv, "before").await.expect("ack");
    let (bob, mut bob_events) = server.device("bob", "bob-pw", "tablet").await;
    let before = next_message(&mut bob_events).await;
    assert_eq!(before.body, "before");
    // What an app persists: the useq of the last event it handled.
    let cursor = before.useq.expect("inbox events carry useq");
    bob.disconnect().await;
    for i in 0..10 {
        alice
            .send(&conv, &format!("while away {i}"))
            .await
            .expect("ack");
    }
    // The device comes back with its persisted cursor: broker queue and sync overlap.
    let (_bob, mut bob_events) = server
        .device_with("bob", "bob-pw", "tablet", |c| c.start_after_useq = cursor)
        .await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(next_message(&mut bob_events).await.body);
    }
    let expected: Vec<String> = (0..10).map(|i| format!("while away {i}")).collect();
    assert_eq!(seen, expected);
    // Nothing more: a later message is the very next event.
    alice.send(&conv, "control").await.expect("ack");
    assert_eq!(next_message(&mut bob_events).await.body, "control");
}

async fn a_websocket_device_chats_like_any_other(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let ws = server.ws_addr().to_string();
    let (alice, mut alice_events) = server
        .device_with("alice", "alice-pw", "browser", |c| {
            c.transport = messenger_client::Transport::WebSocket;
            c.broker = ws;
        })
        .await;
    let (bob, mut bob_events) = server.device("bob", "bob-pw", "phone").await;
    let conv = dm("alice", "bob");
    assert_eq!(
        alice.send(&conv, "over websocket").await.expect("ack").seq,
        1
    );
    assert_eq!(next_message(&mut bob_events).await.body, "over websocket");
    bob.send(&conv, "over tcp").await.expect("ack");
    let m = expect(&mut alice_events, |e| match e {
        ClientEvent::Message(m) if m.from.as_str() == "bob" => Some(m),
        _ => None,
    })
    .await;
    assert_eq!((m.seq, m.body.as_str()), (2, "over tcp"));
}

async fn sync_from_a_cursor_and_history_pages(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let (alice, _a) = server.device("alice", "alice-pw", "phone").await;
    let conv = dm("alice", "bob");
    for i in 1..=5 {
        alice.send(&conv, &format!("m{i}")).await.expect("ack");
    }
    let reply = alice
        .call(Request::Sync {
            id: RequestId::parse("s1").expect("id"),
            after: 2,
            limit: Some(2),
        })
        .await
        .expect("sync");
    let Event::Sync {
        events, next, more, ..
    } = reply
    else {
        panic!("not a sync reply: {reply:?}");
    };
    let useqs: Vec<Option<u64>> = events.iter().map(Event::useq).collect();
    assert_eq!((useqs, next, more), (vec![Some(3), Some(4)], 4, true));

    let page = alice.history(&conv, None, 2).await.expect("history");
    assert_eq!(
        page.events.iter().map(HistoryItem::seq).collect::<Vec<_>>(),
        [4, 5]
    );
    assert!(page.more);
    let page = alice.history(&conv, Some(4), 2).await.expect("history");
    assert_eq!(
        page.events.iter().map(HistoryItem::seq).collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(page.more);
    let page = alice.history(&conv, Some(2), 2).await.expect("history");
    assert_eq!(
        page.events.iter().map(HistoryItem::seq).collect::<Vec<_>>(),
        [1]
    );
    assert!(!page.more);
}

async fn history_and_seq_continue_across_a_bridge_restart(backend: Backend) {
    let mut server = TestServer::start(backend, USERS).await;
    let (alice, _a) = server.device("alice", "alice-pw", "phone").await;
    let conv = dm("alice", "bob");
    alice.send(&conv, "one").await.expect("ack");
    alice.send(&conv, "two").await.expect("ack");
    server.stop_bridge().await;
    server.start_bridge().await;
    let ack = alice.send(&conv, "three").await.expect("ack after restart");
    assert_eq!(ack.seq, 3);
    let page = alice.history(&conv, None, 10).await.expect("history");
    assert_eq!(
        page.events.iter().map(HistoryItem::seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

/// Publishes `payload` as alice's raw device; returns alice's `n` publishes
/// (sorted: the `dev` reply first) and bob's one inbox event, parsed.
async fn alice_sends(
    alice: &mut crate::util::Client,
    bob: &mut crate::util::Client,
    payload: &str,
    n: usize,
) -> (Vec<Value>, Value) {
    alice.request("alice", payload.as_bytes()).await;
    let mine = alice
        .next_publishes(n)
        .await
        .into_iter()
        .map(|(_, body)| serde_json::from_str(&body).expect("json"))
        .collect();
    let (topic, body) = bob.next_publish().await;
    assert_eq!(topic, "chat/bob/inbox");
    (mine, serde_json::from_str(&body).expect("json"))
}

async fn a_repeated_request_is_delivered_again_with_the_same_useqs(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let mut alice = server
        .raw("alice:raw", "alice-pw")
        .connect()
        .await
        .expect("connect");
    alice
        .subscribe(&["chat/alice/dev/raw", "chat/alice/inbox"])
        .await;
    let mut bob = server
        .raw("bob:raw", "bob-pw")
        .connect()
        .await
        .expect("connect");
    bob.subscribe(&["chat/bob/inbox"]).await;
    // Bob's useqs run one ahead of alice's, so that a swap would show.
    let hi = br#"{"type":"send","id":"b1","conv":"dm:bob:carol","body":"hi"}"#;
    bob.request("bob", hi).await;
    let (_, first) = bob.next_publish().await;
    assert!(first.contains(r#""useq":1"#), "{first}");
    let useqs = |mine: &[Value], theirs: &Value| {
        (
            mine[0]["seq"].as_u64(),
            mine[1]["useq"].as_u64(),
            theirs["useq"].as_u64(),
            theirs["body"].clone(),
        )
    };
    let dm = r#"{"type":"send","id":"d1","conv":"dm:alice:bob","body":"one"}"#;
    let (mine, theirs) = alice_sends(&mut alice, &mut bob, dm, 2).await;
    assert_eq!(
        useqs(&mine, &theirs),
        (Some(1), Some(1), Some(2), "one".into())
    );
    let two = r#"{"type":"send","id":"d2","conv":"dm:alice:bob","body":"two"}"#;
    let (mine, theirs) = alice_sends(&mut alice, &mut bob, two, 2).await;
    assert_eq!(
        useqs(&mine, &theirs),
        (Some(2), Some(2), Some(3), "two".into())
    );
    // The repeat: the first ack again, and both inbox events with their first useqs.
    let (mine, theirs) = alice_sends(&mut alice, &mut bob, dm, 2).await;
    assert_eq!(
        useqs(&mine, &theirs),
        (Some(1), Some(1), Some(2), "one".into())
    );

    // A group's message goes the other way (its inbox rows are indexed).
    let create = r#"{"type":"group_create","id":"g1","name":"team","members":["bob"]}"#;
    let (mine, theirs) = alice_sends(&mut alice, &mut bob, create, 2).await;
    let group = mine[0]["conv"].as_str().expect("group id").to_owned();
    assert_eq!(
        (mine[1]["useq"].as_u64(), theirs["useq"].as_u64()),
        (Some(3), Some(4))
    );
    let send = format!(r#"{{"type":"send","id":"g2","conv":"{group}","body":"all"}}"#);
    let (mine, theirs) = alice_sends(&mut alice, &mut bob, &send, 2).await;
    assert_eq!(
        useqs(&mine, &theirs),
        (Some(2), Some(4), Some(5), "all".into())
    );
    let (mine, theirs) = alice_sends(&mut alice, &mut bob, &send, 2).await;
    assert_eq!(
        useqs(&mine, &theirs),
        (Some(2), Some(4), Some(5), "all".into())
    );
    // Nothing was stored twice: the next message takes the next useqs.
    let three = r#"{"type":"send","id":"d3","conv":"dm:alice:bob","body":"three"}"#;
    let (mine, theirs) = alice_sends(&mut alice, &mut bob, three, 2).await;
    assert_eq!(
        useqs(&mine, &theirs),
        (Some(3), Some(5), Some(6), "three".into())
    );
}

async fn every_kind_of_bad_input_is_refused_and_changes_nothing(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let mut raw = server
        .raw("alice:raw", "alice-pw")
        .connect()
        .await
        .expect("connect");
    raw.subscribe(&["chat/alice/dev/raw", "chat/alice/inbox"])
        .await;
    let big = "x".repeat(16 * 1024 + 1);
    let cases: Vec<(Vec<u8>, Option<&str>, &str)> = vec![
        (b"{not json".to_vec(), None, "bad_request"),
        (b"\xff\xfe\xfd".to_vec(), None, "bad_request"),
        (b"[1,2,3]".to_vec(), None, "bad_request"),
        (br#"{"id":"t1"}"#.to_vec(), Some("t1"), "bad_request"),
        (
            br#"{"type":"fly","id":"t2"}"#.to_vec(),
            Some("t2"),
            "bad_request",
        ),
        (
            br#"{"type":"send","id":"t3","conv":"dm:alice:bob","body":42}"#.to_vec(),
            Some("t3"),
            "bad_request",
        ),
        (
            br#"{"type":"send","id":"t4","conv":"dm:bob:alice","body":"x"}"#.to_vec(),
            Some("t4"),
            "bad_request",
        ),
        (
            br#"{"type":"send","id":"t5","conv":"dm:alice:bob","body":""}"#.to_vec(),
            Some("t5"),
            "bad_request",
        ),
        (
            format!(r#"{{"type":"send","id":"t6","conv":"dm:alice:bob","body":"{big}"}}"#)
                .into_bytes(),
            Some("t6"),
            "too_large",
        ),
        (
            br#"{"type":"send","id":"t7","conv":"dm:alice:zed","body":"x"}"#.to_vec(),
            Some("t7"),
            "unknown_user",
        ),
        (
            br#"{"type":"send","id":"t8","conv":"g:nosuchgroup","body":"x"}"#.to_vec(),
            Some("t8"),
            "unknown_conversation",
        ),
        (
            br#"{"type":"send","id":"t9","conv":"dm:bob:carol","body":"x"}"#.to_vec(),
            Some("t9"),
            "not_member",
        ),
        (
            br#"{"type":"sync","id":"t10","after":0,"limit":100000}"#.to_vec(),
            Some("t10"),
            "bad_request",
        ),
        (
            br#"{"type":"sync","id":"t11","after":0,"limit":0}"#.to_vec(),
            Some("t11"),
            "bad_request",
        ),
        (
            br#"{"type":"history","id":"t12","conv":"dm:bob:carol"}"#.to_vec(),
            Some("t12"),
            "not_member",
        ),
        (
            br#"{"type":"sync","id":"t13","after":-1}"#.to_vec(),
            Some("t13"),
            "bad_request",
        ),
        (
            br#"{"type":"receipt","conv":"dm:alice:bob","seq":99,"status":"read"}"#.to_vec(),
            None,
            "bad_request",
        ),
        (
            br#"{"type":"receipt","conv":"dm:alice:bob","seq":1,"status":"seen"}"#.to_vec(),
            None,
            "bad_request",
        ),
        (
            br#"{"type":"group_create","id":"t14","name":"g","members":["zed"]}"#.to_vec(),
            Some("t14"),
            "unknown_user",
        ),
        (
            br#"{"type":"group_create","id":"t15","name":"","members":["bob"]}"#.to_vec(),
            Some("t15"),
            "bad_request",
        ),
        (
            br#"{"type":"send","id":"","conv":"dm:alice:bob","body":"x"}"#.to_vec(),
            None,
            "bad_request",
        ),
    ];
    for (payload, id, code) in &cases {
        let reply = raw.reply("alice", payload).await;
        assert_eq!(
            reply["type"],
            "error",
            "{}: {reply}",
            String::from_utf8_lossy(payload)
        );
        assert_eq!(
            reply["code"],
            *code,
            "{}: {reply}",
            String::from_utf8_lossy(payload)
        );
        assert_eq!(reply["id"].as_str(), *id, "{reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Nothing changed: no conversation, no inbox event; the next good send is seq 1, useq 1.
    let list = raw
        .reply("alice", br#"{"type":"conversations","id":"c"}"#)
        .await;
    assert_eq!(list["items"], serde_json::json!([]));
    let sync = raw
        .reply("alice", br#"{"type":"sync","id":"s","after":0}"#)
        .await;
    assert_eq!(sync["events"], serde_json::json!([]));
    let fine = br#"{"type":"send","id":"ok","conv":"dm:alice:bob","body":"fine"}"#;
    raw.request("alice", fine).await;
    let mut got = raw.next_publishes(2).await;
    got.sort();
    let ack: Value = serde_json::from_str(&got[0].1).expect("json");
    let message: Value = serde_json::from_str(&got[1].1).expect("json");
    assert_eq!(
        (ack["type"].as_str(), ack["seq"].as_u64()),
        (Some("ack"), Some(1))
    );
    assert_eq!(
        (message["type"].as_str(), message["useq"].as_u64()),
        (Some("message"), Some(1))
    );
    // A receipt for a 1-1 conversation before its first message confirms nothing and
    // gets no reply; then a group request cannot reuse the id of a send.
    raw.mqtt
        .publish(
            "chat/alice/out/raw",
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"type":"receipt","conv":"dm:alice:carol","seq":0,"status":"read"}"#.to_vec(),
        )
        .await
        .expect("publish");
    let reused = raw
        .reply(
            "alice",
            br#"{"type":"group_create","id":"ok","name":"g","members":[]}"#,
        )
        .await;
    assert_eq!(
        (reused["code"].as_str(), reused["id"].as_str()),
        (Some("bad_request"), Some("ok")),
        "{reused}"
    );
}

async fn refusals_surface_as_typed_errors(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let (alice, _a) = server.device("alice", "alice-pw", "phone").await;
    match alice.send(&dm("bob", "carol"), "x").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::NotMember),
        other => panic!("expected not_member, got {other:?}"),
    }
    match alice.send(&dm("alice", "bob"), &"y".repeat(20_000)).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::TooLarge),
        Err(ClientError::TooLarge { .. }) => {}
        other => panic!("expected too_large, got {other:?}"),
    }
}

/// A device that retries its unacked sends, a server killed with SIGKILL in the
/// middle of the stream and started again: every message ends up stored exactly
/// once, with gap-free seqs.
async fn kill_9_mid_stream_loses_nothing_and_stores_nothing_twice(backend: Backend) {
    let messenger = crate::util::process::Messenger::on(backend);
    messenger
        .run(&["user", "add", "alice", "--password", "alice-pw"])
        .await
        .ok();
    messenger
        .run(&["user", "add", "bob", "--password", "bob-pw"])
        .await
        .ok();
    let mut server = messenger.serve().await;
    let addr = server.mqtt;
    let mut config = messenger_client::ClientConfig::new(
        addr.to_string(),
        uid("alice"),
        crate::util::did("phone"),
        "alice-pw",
    );
    config.keepalive = std::time::Duration::from_secs(5);
    config.request_timeout = PATIENCE * 6;
    let (alice, _events) = messenger_client::Client::connect(config)
        .await
        .expect("connect");
    let conv = dm("alice", "bob");
    const N: usize = 60;
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..N {
        let alice = alice.clone();
        let conv = conv.clone();
        sends.spawn(async move { alice.send(&conv, &format!("msg {i}")).await });
        if i == N / 3 {
            // Kill in the middle of the stream, with sends in flight.
            server.kill();
            server = messenger.serve_on(server.mqtt, server.ws).await;
        }
    }
    let mut seqs = BTreeSet::new();
    while let Some(result) = sends.join_next().await {
        let ack = result
            .expect("send task")
            .expect("every send is acked in the end");
        assert!(seqs.insert(ack.seq), "two messages got seq {}", ack.seq);
    }
    assert_eq!(
        seqs,
        (1..=N as u64).collect::<BTreeSet<_>>(),
        "gap-free seqs"
    );
    let mut bodies = Vec::new();
    let mut before = None;
    loop {
        let page = alice.history(&conv, before, 500).await.expect("history");
        for item in &page.events {
            if let HistoryItem::Message(m) = item {
                bodies.push(m.body.clone());
            }
        }
        if !page.more {
            break;
        }
        before = page.events.first().map(HistoryItem::seq);
    }
    assert_eq!(bodies.len(), N, "every message exactly once");
    let distinct: BTreeSet<_> = bodies.iter().collect();
    assert_eq!(distinct.len(), N);
    drop(server);
}
