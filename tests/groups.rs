//! Group chats end to end: membership as events in the timeline, fan-out to
//! every member's devices, the admin's powers, limits, restarts.

use messenger_bridge::config::Limits;
use messenger_client::{ClientError, ClientEvent, HistoryItem};
use messenger_protocol::wire::{ErrorCode, Event, Request, RequestId};
use messenger_protocol::ConvId;

use crate::util::server::{
    expect, next_message, on_both_engines, on_engines_and_cluster, Backend, TestServer,
};
use crate::util::uid;

on_both_engines!(a_group_lives_its_whole_life, group_limits_hold);

on_engines_and_cluster!(bursts_of_group_messages_never_stall_the_bridge);

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-a"),
    ("bob", "pw-b"),
    ("carol", "pw-c"),
    ("dave", "pw-d"),
    ("erin", "pw-e"),
];

fn rid(s: &str) -> RequestId {
    RequestId::parse(s).expect("request id")
}

async fn create(client: &messenger_client::Client, name: &str, members: &[&str]) -> ConvId {
    let reply = client
        .call(Request::GroupCreate {
            id: messenger_client::new_request_id(),
            name: name.into(),
            members: members.iter().map(|m| uid(m)).collect(),
        })
        .await
        .expect("group created");
    let Event::Ack {
        conv: Some(conv),
        seq: Some(1),
        ..
    } = reply
    else {
        panic!("unexpected reply {reply:?}");
    };
    conv
}

fn code(result: Result<Event, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

async fn member_event(
    events: &mut messenger_client::EventStream,
    action: &str,
) -> messenger_client::Member {
    expect(events, |e| match e {
        ClientEvent::Member(m) if m.action.as_str() == action => Some(m),
        _ => None,
    })
    .await
}

async fn a_group_lives_its_whole_life(backend: Backend) {
    let mut server = TestServer::build(
        backend,
        USERS,
        Limits {
            max_group_members: 4,
            ..crate::util::server::unlimited()
        },
        30,
    )
    .await;
    let (alice, mut alice_ev) = server.device("alice", "pw-a", "phone").await;
    let (bob, mut bob_ev) = server.device("bob", "pw-b", "phone").await;
    let (_bob_laptop, mut bob_laptop_ev) = server.device("bob", "pw-b", "laptop").await;
    let (carol, mut carol_ev) = server.device("carol", "pw-c", "phone").await;
    let (dave, mut dave_ev) = server.device("dave", "pw-d", "phone").await;

    let conv = create(&alice, "trip", &["bob", "carol"]).await;
    for events in [
        &mut alice_ev,
        &mut bob_ev,
        &mut bob_laptop_ev,
        &mut carol_ev,
    ] {
        let created = member_event(events, "created").await;
        assert_eq!(
            (created.conv.clone(), created.seq, created.by.as_str()),
            (conv.clone(), 1, "alice")
        );
    }

    // A member sends; every other member's devices receive.
    let ack = bob.send(&conv, "hi all").await.expect("ack");
    assert_eq!(ack.seq, 2);
    for events in [&mut alice_ev, &mut bob_laptop_ev, &mut carol_ev] {
        assert_eq!(next_message(events).await.body, "hi all");
    }
    // A non-member is refused.
    match dave.send(&conv, "let me in").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::NotMember),
        other => panic!("expected not_member, got {other:?}"),
    }
    // A non-admin cannot remove.
    let refused = bob
        .call(Request::GroupRemove {
            id: rid("r1"),
            conv: conv.clone(),
            user: uid("carol"),
        })
        .await;
    assert_eq!(code(refused), ErrorCode::Forbidden);
    // Any member may add; the added member gets new messages.
    bob.call(Request::GroupAdd {
        id: rid("a1"),
        conv: conv.clone(),
        user: uid("dave"),
    })
    .await
    .expect("dave added");
    assert_eq!(
        member_event(&mut dave_ev, "added").await.user.as_str(),
        "dave"
    );
    // Adding an existing member, an unknown user, or past the size limit changes nothing.
    let again = bob
        .call(Request::GroupAdd {
            id: rid("a2"),
            conv: conv.clone(),
            user: uid("dave"),
        })
        .await;
    assert_eq!(code(again), ErrorCode::BadRequest);
    let ghost = bob
        .call(Request::GroupAdd {
            id: rid("a3"),
            conv: conv.clone(),
            user: uid("zed"),
        })
        .await;
    assert_eq!(code(ghost), ErrorCode::UnknownUser);
    let full = bob
        .call(Request::GroupAdd {
            id: rid("a4"),
            conv: conv.clone(),
            user: uid("erin"),
        })
        .await;
    assert_eq!(code(full), ErrorCode::TooLarge);

    // The admin removes carol: she gets the removal, then nothing new, and cannot send.
    alice
        .call(Request::GroupRemove {
            id: rid("r2"),
            conv: conv.clone(),
            user: uid("carol"),
        })
        .await
        .expect("carol removed");
    assert_eq!(
        member_event(&mut carol_ev, "removed").await.user.as_str(),
        "carol"
    );
    alice.send(&conv, "after carol left").await.expect("ack");
    assert_eq!(next_message(&mut dave_ev).await.body, "after carol left");
    match carol.send(&conv, "still here?").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::NotMember),
        other => panic!("expected not_member, got {other:?}"),
    }
    // Positive control for carol's inbox: a dm from alice arrives, the group message never did.
    let dm = ConvId::direct(&uid("alice"), &uid("carol")).expect("dm");
    alice.send(&dm, "control").await.expect("ack");
    let next = next_message(&mut carol_ev).await;
    assert_eq!((next.conv, next.body.as_str()), (dm, "control"));
    // Carol's history ends at her removal.
    let carol_page = carol
        .history(&conv, None, 50)
        .await
        .expect("history up to her removal");
    assert_eq!(carol_page.events.last().map(HistoryItem::seq), Some(4));

    // History: member events and messages in one gap-free order.
    let page = alice.history(&conv, None, 50).await.expect("history");
    let story: Vec<(u64, String)> = page
        .events
        .iter()
        .map(|e| match e {
            HistoryItem::Message(m) => (m.seq, format!("message {}", m.body)),
            HistoryItem::Member(m) => (m.seq, format!("{} {}", m.action, m.user)),
            other => (other.seq(), "an action on a message".into()),
        })
        .collect();
    assert_eq!(
        story,
        [
            (1, "created alice".to_owned()),
            (2, "message hi all".to_owned()),
            (3, "added dave".to_owned()),
            (4, "removed carol".to_owned()),
            (5, "message after carol left".to_owned()),
        ]
    );
    // Dave sees history from his joining on.
    let dave_page = dave.history(&conv, None, 50).await.expect("history");
    assert_eq!(
        dave_page
            .events
            .iter()
            .map(HistoryItem::seq)
            .collect::<Vec<_>>(),
        [3, 4, 5]
    );

    // Unread counts per member; a member leaving.
    let bob_item = bob
        .conversations()
        .await
        .expect("list")
        .into_iter()
        .find(|c| c.conv == conv)
        .expect("group listed");
    assert_eq!(
        (
            bob_item.name.as_str(),
            bob_item.unread,
            bob_item.members.len()
        ),
        ("trip", 1, 3)
    );
    bob.call(Request::GroupLeave {
        id: rid("l1"),
        conv: conv.clone(),
    })
    .await
    .expect("left");
    assert_eq!(
        member_event(&mut alice_ev, "left").await.user.as_str(),
        "bob"
    );

    // A restart keeps the group and its membership.
    server.stop_bridge().await;
    server.start_bridge().await;
    let ack = dave
        .send(&conv, "still here")
        .await
        .expect("ack after restart");
    assert_eq!(ack.seq, 7);
    let members = alice
        .conversations()
        .await
        .expect("list")
        .into_iter()
        .find(|c| c.conv == conv)
        .expect("listed")
        .members;
    assert_eq!(members, [uid("alice"), uid("dave")]);
}

async fn group_limits_hold(backend: Backend) {
    let server = TestServer::build(
        backend,
        USERS,
        Limits {
            max_group_members: 3,
            max_group_name_chars: 10,
            ..crate::util::server::unlimited()
        },
        30,
    )
    .await;
    let (alice, _ev) = server.device("alice", "pw-a", "phone").await;
    let too_many = alice
        .call(Request::GroupCreate {
            id: rid("g1"),
            name: "big".into(),
            members: vec![uid("bob"), uid("carol"), uid("dave")],
        })
        .await;
    assert_eq!(code(too_many), ErrorCode::TooLarge);
    let long_name = alice
        .call(Request::GroupCreate {
            id: rid("g2"),
            name: "x".repeat(11),
            members: vec![uid("bob")],
        })
        .await;
    assert_eq!(code(long_name), ErrorCode::BadRequest);
    assert!(
        alice.conversations().await.expect("list").is_empty(),
        "nothing was created"
    );
    // A repeated create is answered with the same group.
    let first = alice
        .call(Request::GroupCreate {
            id: rid("g3"),
            name: "ok".into(),
            members: vec![uid("bob")],
        })
        .await
        .expect("created");
    let again = alice
        .call(Request::GroupCreate {
            id: rid("g3"),
            name: "ok".into(),
            members: vec![uid("bob")],
        })
        .await
        .expect("same answer");
    assert_eq!(first, again);
    assert_eq!(alice.conversations().await.expect("list").len(), 1);
    // The id of a group request cannot be reused for a message.
    let dm = ConvId::direct(&uid("alice"), &uid("bob")).expect("dm");
    match alice.send_with_id(rid("g3"), &dm, "x").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("expected bad_request, got {other:?}"),
    }
}

/// Bursts of concurrent sends into a group: every batch fans out to many
/// inboxes at once. On one MQTT connection the bridge's acks to the broker
/// would queue behind those publishes until both sides stalled for good; the
/// bridge publishes and acks on separate connections, so all are acked.
async fn bursts_of_group_messages_never_stall_the_bridge(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let (alice, _a) = server.device("alice", "pw-a", "phone").await;
    let (bob, _b) = server.device("bob", "pw-b", "phone").await;
    let (carol, mut carol_events) = server.device("carol", "pw-c", "phone").await;
    let conv = create(&alice, "burst", &["bob", "carol", "dave", "erin"]).await;
    const EACH: usize = 100;
    let mut sends = tokio::task::JoinSet::new();
    for (who, client) in [("alice", alice.clone()), ("bob", bob.clone())] {
        for i in 0..EACH {
            let (client, conv) = (client.clone(), conv.clone());
            sends.spawn(async move { client.send(&conv, &format!("{who} {i}")).await });
        }
    }
    let mut seqs = Vec::new();
    while let Some(result) = sends.join_next().await {
        seqs.push(result.expect("task").expect("acked").seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (2..2 + 2 * EACH as u64).collect::<Vec<_>>());
    // Carol's device got every one of them, in order.
    for seq in 2..2 + 2 * EACH as u64 {
        assert_eq!(next_message(&mut carol_events).await.seq, seq);
    }
    drop(carol);
}
