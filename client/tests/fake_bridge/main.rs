//! The client against the real embedded broker and a small fake bridge.
//!
//! The fake bridge implements just enough of shared/PROTOCOL.md (1-1 chats:
//! send, receipt, sync, history, token, typing, presence) to exercise the
//! client's connection handling, request correlation, cursor, gap filling,
//! receipt batching and credential switching. The real bridge's end-to-end
//! tests live in the workspace's `tests/`.

// Fixtures outside `#[test]` functions: a failed setup step should panic too.
#![allow(clippy::unwrap_used)]

mod world;

use std::time::Duration;

use messenger_client::{Client, ClientError, ClientEvent, RefusalCode};
use messenger_protocol::wire::{ErrorCode, ReceiptStatus, Request, RequestId};
use messenger_protocol::ConvId;
use rumqttc::{AsyncClient, MqttOptions, Packet};

use world::{device, user, World, PATIENCE};

/// The next event matching `pred`, skipping others.
async fn next_matching(
    events: &mut messenger_client::EventStream,
    what: &str,
    pred: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            match events.next().await {
                Some(e) if pred(&e) => return e,
                Some(_) => {}
                None => panic!("event stream ended while waiting for {what}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("gave up waiting for {what}"))
}

/// Messages (conv seq) received on a stream until `last` arrives.
async fn messages_until(events: &mut messenger_client::EventStream, last: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(e) = events.next().await {
            if let ClientEvent::Message(m) = e {
                seqs.push(m.seq);
                if m.seq == last {
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("gave up waiting for message {last}; got {seqs:?}"));
    seqs
}

/// Replaces `alice:phone`'s connection with another one and drops that, so the
/// client reconnects.
async fn kick(world: &World, u: &str, d: &str, password: &str) {
    let (host, port) = world.addr.rsplit_once(':').unwrap();
    let mut options = MqttOptions::new(format!("{u}:{d}"), host.to_owned(), port.parse().unwrap());
    options
        .set_credentials(u, password)
        .set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    loop {
        match eventloop.poll().await {
            Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(err) => panic!("kicker cannot connect: {err}"),
        }
    }
    client.disconnect().await.unwrap();
    for _ in 0..5 {
        if eventloop.poll().await.is_err() {
            break;
        }
    }
}

fn dm() -> ConvId {
    ConvId::direct(&user("alice"), &user("bob")).unwrap()
}

#[test]
fn a_bad_password_is_refused_with_its_code() {
    let world = World::start();
    world.runtime.block_on(async {
        let mut config = world.config("alice", "phone");
        config.password = "wrong".into();
        match Client::connect(config).await {
            Err(ClientError::Refused(code)) => assert_eq!(code, RefusalCode::BadCredentials),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
    });
}

#[test]
fn messages_are_acked_delivered_in_order_and_receipted_in_batches() {
    let world = World::start();
    world.runtime.block_on(async {
        let (alice, mut alice_events) = Client::connect(world.config("alice", "phone")).await.unwrap();
        let (bob, mut bob_events) = Client::connect(world.config("bob", "laptop")).await.unwrap();
        let conv = dm();

        let ack = alice.send(&conv, "hello").await.unwrap();
        assert_eq!((ack.conv.clone(), ack.seq), (conv.clone(), 1));
        assert_eq!(messages_until(&mut bob_events, 1).await, vec![1]);

        // A burst: 30 sends in flight at once.
        let mut sends = tokio::task::JoinSet::new();
        for i in 0..30 {
            let alice = alice.clone();
            let conv = conv.clone();
            sends.spawn(async move { alice.send(&conv, &format!("m{i}")).await });
        }
        let mut seqs = Vec::new();
        while let Some(r) = sends.join_next().await {
            seqs.push(r.unwrap().unwrap().seq);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (2..=31).collect::<Vec<_>>());

        // Bob gets each once, in seq order; his cursor follows.
        assert_eq!(messages_until(&mut bob_events, 31).await, (2..=31).collect::<Vec<_>>());
        // Alice's own messages reach her inbox too.
        messages_until(&mut alice_events, 31).await;

        // Bob's device acknowledges delivery cumulatively, far fewer times than 31.
        let r = next_matching(&mut alice_events, "delivered up to 31", |e| {
            matches!(e, ClientEvent::Receipt(r) if r.seq == 31 && r.status == ReceiptStatus::Delivered)
        })
        .await;
        assert!(matches!(r, ClientEvent::Receipt(r) if r.user == user("bob")));
        let delivered = world.bridge(|b| {
            b.count(|r| matches!(r, Request::Receipt { status: ReceiptStatus::Delivered, .. }))
        });
        assert!(delivered <= 8, "{delivered} delivered receipts for 31 messages");
        // Alice never receipts her own messages.
        assert!(world.bridge(|b| b
            .requests
            .iter()
            .all(|(u, _, r)| !(u == &user("alice") && matches!(r, Request::Receipt { .. })))));

        // Read receipts are batched too.
        for seq in 1..=31 {
            bob.mark_read(&conv, seq).await.unwrap();
        }
        next_matching(&mut alice_events, "read up to 31", |e| {
            matches!(e, ClientEvent::Receipt(r) if r.seq == 31 && r.status == ReceiptStatus::Read)
        })
        .await;
        let read = world.bridge(|b| b.count(|r| matches!(r, Request::Receipt { status: ReceiptStatus::Read, .. })));
        assert!(read <= 3, "{read} read receipts");

        // Typing passes straight through.
        alice.typing(&conv).await.unwrap();
        next_matching(&mut bob_events, "typing", |e| {
            matches!(e, ClientEvent::Typing { user: u, .. } if *u == user("alice"))
        })
        .await;

        assert!(bob.cursor() >= 32);
        let page = bob.history(&conv, None, 5).await.unwrap();
        assert_eq!(page.events.iter().map(|e| e.seq()).collect::<Vec<_>>(), vec![27, 28, 29, 30, 31]);
        assert!(page.more);
        let page = bob.history(&conv, Some(3), 5).await.unwrap();
        assert_eq!(page.events.len(), 2);
        assert!(!page.more);

        match bob.conversations().await {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::BadRequest),
            other => panic!("expected a server error, got {other:?}"),
        }
        alice.disconnect().await;
        bob.disconnect().await;
    });
}

#[test]
fn a_gap_is_filled_by_sync_and_repeats_are_dropped() {
    let world = World::start();
    world.runtime.block_on(async {
        let (alice, _alice_events) = Client::connect(world.config("alice", "phone"))
            .await
            .unwrap();
        let (bob, mut bob_events) = Client::connect(world.config("bob", "laptop"))
            .await
            .unwrap();
        let conv = dm();
        // Bob's first two events are stored but never published live.
        world.bridge(|b| b.suppress_live = 4); // two for alice's inbox, two for bob's
        for text in ["one", "two", "three"] {
            alice.send(&conv, text).await.unwrap();
        }
        // Bob sees #3 live (useq 3 > cursor + 1), syncs, and gets 1, 2, 3 once each.
        assert_eq!(messages_until(&mut bob_events, 3).await, vec![1, 2, 3]);
        alice.send(&conv, "four").await.unwrap();
        assert_eq!(messages_until(&mut bob_events, 4).await, vec![4]);
        alice.disconnect().await;
        bob.disconnect().await;

        // A device that starts from a persisted cursor gets only what came after it.
        let mut config = world.config("bob", "tablet");
        config.start_after_useq = 2;
        let (tablet, mut tablet_events) = Client::connect(config).await.unwrap();
        let first =
            next_matching(&mut tablet_events, "a stored event", |e| e.useq().is_some()).await;
        assert_eq!(first.useq(), Some(3));
        tablet.disconnect().await;
    });
}

#[test]
fn a_send_survives_a_lost_connection_and_reconnects_use_the_device_token() {
    let world = World::start();
    world.runtime.block_on(async {
        let mut config = world.config("alice", "phone");
        // The broker cuts a revoked connection at its next packet: ping often.
        config.keepalive = Duration::from_secs(1);
        let (alice, mut events) = Client::connect(config).await.unwrap();
        next_matching(&mut events, "connected", |e| {
            matches!(e, ClientEvent::Connected)
        })
        .await;
        world
            .until("a token request", |b| {
                b.count(|r| matches!(r, Request::Token { .. })) == 1
            })
            .await;
        // Give the token reply a moment to reach the client.
        tokio::time::sleep(Duration::from_millis(200)).await;

        // The bridge misses the first copy of the send; the connection is then lost.
        world.bridge(|b| b.ignore_sends = 1);
        let conv = dm();
        let id = messenger_client::new_request_id();
        let pending = {
            let alice = alice.clone();
            let conv = conv.clone();
            let id = id.clone();
            tokio::spawn(async move { alice.send_with_id(id, &conv, "persistent").await })
        };
        world
            .until("the first copy", |b| {
                b.count(|r| matches!(r, Request::Send { .. })) == 1
            })
            .await;
        kick(&world, "alice", "phone", "alice-pw").await;
        next_matching(&mut events, "disconnected", |e| {
            matches!(e, ClientEvent::Disconnected)
        })
        .await;
        next_matching(&mut events, "reconnected", |e| {
            matches!(e, ClientEvent::Connected)
        })
        .await;

        // The same id again, acked once; signed in with the token (no new token asked).
        let ack = pending.await.unwrap().unwrap();
        assert_eq!(ack.id, id);
        assert_eq!(ack.seq, 1);
        assert_eq!(
            world.bridge(|b| b.count(|r| matches!(r, Request::Token { .. }))),
            1
        );
        let again = alice
            .send_with_id(id.clone(), &conv, "persistent")
            .await
            .unwrap();
        assert_eq!(again.seq, 1);

        // The token is replaced behind the client's back: the broker refuses it,
        // the client falls back to the password and asks for a new token.
        world
            .accounts
            .issue_token(&user("alice"), &device("phone"))
            .unwrap();
        kick(&world, "alice", "phone", "alice-pw").await;
        next_matching(&mut events, "disconnected", |e| {
            matches!(e, ClientEvent::Disconnected)
        })
        .await;
        next_matching(&mut events, "reconnected", |e| {
            matches!(e, ClientEvent::Connected)
        })
        .await;
        world
            .until("a second token request", |b| {
                b.count(|r| matches!(r, Request::Token { .. })) == 2
            })
            .await;
        assert_eq!(alice.send(&conv, "still here").await.unwrap().seq, 2);

        // A password change signs the device out for good.
        world
            .accounts
            .set_password(&user("alice"), "new-pw")
            .unwrap();
        let refused = next_matching(&mut events, "refused", |e| {
            matches!(e, ClientEvent::Refused(_))
        })
        .await;
        assert_eq!(refused, ClientEvent::Refused(RefusalCode::BadCredentials));
        assert!(tokio::time::timeout(PATIENCE, events.next())
            .await
            .unwrap()
            .is_none());
        assert!(matches!(
            alice.send(&conv, "x").await,
            Err(ClientError::Closed)
        ));
    });
}

#[test]
fn presence_goes_online_then_offline_and_status_is_followed() {
    let world = World::start();
    world.runtime.block_on(async {
        let (bob, _bob_events) = Client::connect(world.config("bob", "laptop"))
            .await
            .unwrap();
        let (alice, mut events) = Client::connect(world.config("alice", "phone"))
            .await
            .unwrap();
        alice.subscribe_status(&user("bob")).await.unwrap();
        let status = next_matching(&mut events, "bob's status", |e| {
            matches!(e, ClientEvent::Status(_))
        })
        .await;
        assert!(matches!(status, ClientEvent::Status(s) if s.online && s.user == user("bob")));

        bob.disconnect().await;
        let status = next_matching(
            &mut events,
            "bob offline",
            |e| matches!(e, ClientEvent::Status(s) if !s.online),
        )
        .await;
        assert!(matches!(status, ClientEvent::Status(s) if s.last_seen.is_some()));
        let last = world.bridge(|b| {
            b.presence
                .iter()
                .rev()
                .find(|(u, _, _)| *u == user("bob"))
                .map(|(_, _, p)| p.clone())
        });
        assert_eq!(last.as_deref(), Some("offline"));

        alice.disconnect().await;
        assert!(
            tokio::time::timeout(PATIENCE, async { while events.next().await.is_some() {} })
                .await
                .is_ok()
        );
    });
}

#[test]
fn requests_time_out_and_oversized_ones_are_refused_locally() {
    let world = World::start();
    world.runtime.block_on(async {
        let mut config = world.config("alice", "phone");
        config.request_timeout = Duration::from_millis(300);
        config.max_packet_bytes = 4096;
        let (alice, _events) = Client::connect(config).await.unwrap();
        world.bridge(|b| b.ignore_sends = usize::MAX);
        assert!(matches!(
            alice.send(&dm(), "lost").await,
            Err(ClientError::Timeout)
        ));
        assert!(matches!(
            alice.send(&dm(), &"x".repeat(5000)).await,
            Err(ClientError::TooLarge { .. })
        ));
        let id = RequestId::parse("dup").unwrap();
        let first = {
            let alice = alice.clone();
            tokio::spawn(async move { alice.send_with_id(id, &dm(), "a").await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = alice
            .send_with_id(RequestId::parse("dup").unwrap(), &dm(), "a")
            .await;
        assert!(
            matches!(second, Err(ClientError::InvalidRequest(_))),
            "{second:?}"
        );
        assert!(matches!(first.await.unwrap(), Err(ClientError::Timeout)));
        alice.disconnect().await;
    });
}
