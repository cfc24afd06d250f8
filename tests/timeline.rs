//! Timeline actions and search end to end (issue 13): replies, edits, deletions
//! for everyone and reactions as timeline events with their own seq, in every
//! member's inbox, `history` and `sync`; every refusal of the contract changing
//! nothing; repeats by request id; search over trigrams (CJK text without
//! spaces, any case) within each user's readable window.

use std::collections::BTreeMap;
use std::time::Duration;

use messenger_bridge::config::Limits;
use messenger_client::{Client, ClientError, ClientEvent, EventStream, HistoryItem, Message};
use messenger_protocol::wire::{ErrorCode, Event, Request};
use messenger_protocol::ConvId;
use serde_json::{json, Value};

use crate::util::server::{expect, next_message, on_both_engines, Backend, TestServer};
use crate::util::uid;

on_both_engines!(
    replies_edits_deletions_and_reactions_are_timeline_events,
    repeats_with_the_same_id_are_idempotent,
    two_devices_see_the_same_state_after_sync_and_a_bridge_restart,
    search_finds_words_inside_text_without_spaces_and_in_any_case,
    a_former_group_members_search_stops_at_their_leaving,
);

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-a"),
    ("bob", "pw-b"),
    ("carol", "pw-c"),
    ("dave", "pw-d"),
];

fn dm(a: &str, b: &str) -> ConvId {
    ConvId::direct(&uid(a), &uid(b)).expect("dm")
}

/// The server's refusal code of a failed call.
fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The message `seq` of a history page.
fn message(page: &[HistoryItem], seq: u64) -> Message {
    page.iter()
        .find_map(|item| match item {
            HistoryItem::Message(m) if m.seq == seq => Some(m.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no message {seq} in {page:?}"))
}

async fn history(client: &Client, conv: &ConvId) -> Vec<HistoryItem> {
    client
        .history(conv, None, 100)
        .await
        .expect("history")
        .events
}

async fn create_group(client: &Client, members: &[&str]) -> ConvId {
    let reply = client
        .call(Request::GroupCreate {
            id: messenger_client::new_request_id(),
            name: "team".into(),
            members: members.iter().map(|m| uid(m)).collect(),
        })
        .await
        .expect("group created");
    match reply {
        Event::Ack {
            conv: Some(conv), ..
        } => conv,
        other => panic!("unexpected reply {other:?}"),
    }
}

/// Search results as (seq, body).
async fn found(client: &Client, query: &str, conv: Option<&ConvId>) -> Vec<(u64, String)> {
    let page = client
        .search(query, conv, None, 50)
        .await
        .unwrap_or_else(|err| panic!("search {query:?}: {err}"));
    page.results.into_iter().map(|m| (m.seq, m.body)).collect()
}

async fn replies_edits_deletions_and_reactions_are_timeline_events(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let (alice, mut alice_events) = server.device("alice", "pw-a", "phone").await;
    let (bob, mut bob_events) = server.device("bob", "pw-b", "phone").await;
    let conv = dm("alice", "bob");

    let first = alice.send(&conv, "see you at 5").await.expect("send");
    assert_eq!(first.seq, 1);
    next_message(&mut bob_events).await;
    let reply = bob.reply(&conv, 1, "ok!").await.expect("reply");
    assert_eq!(reply.seq, 2);
    let live = expect(&mut alice_events, |e| match e {
        ClientEvent::Message(m) if m.seq == 2 => Some(m),
        _ => None,
    })
    .await;
    assert_eq!((live.body.as_str(), live.reply_to), ("ok!", Some(1)));

    // An edit: its own seq, to both users' inboxes.
    let edit = alice.edit(&conv, 1, "see you at 6").await.expect("edit");
    assert_eq!(edit.seq, 3);
    let seen = expect(&mut bob_events, |e| match e {
        ClientEvent::Edit(e) => Some(e),
        _ => None,
    })
    .await;
    assert_eq!(
        (
            seen.seq,
            seen.target,
            seen.body.as_deref(),
            seen.from.as_str()
        ),
        (3, 1, Some("see you at 6"), "alice")
    );
    assert!(seen.useq.is_some());

    // Reactions: one per user, replaceable, removable.
    assert_eq!(bob.react(&conv, 1, "👍").await.expect("react").seq, 4);
    assert_eq!(alice.react(&conv, 1, "🎉").await.expect("react").seq, 5);
    assert_eq!(bob.react(&conv, 1, "❤️").await.expect("react").seq, 6);
    assert_eq!(alice.react(&conv, 1, "").await.expect("take back").seq, 7);
    let reaction = expect(&mut alice_events, |e| match e {
        ClientEvent::Reaction(r) if r.seq == 6 => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(
        (reaction.from.as_str(), reaction.emoji.as_str()),
        ("bob", "❤️")
    );

    // History: messages in their current state, the actions at their own seq.
    let page = history(&bob, &conv).await;
    assert_eq!(
        page.iter().map(HistoryItem::seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    let m1 = message(&page, 1);
    assert_eq!(m1.body, "see you at 6");
    assert!(m1.edited.is_some() && !m1.deleted);
    assert_eq!(
        m1.reactions,
        BTreeMap::from([("❤️".to_owned(), vec![uid("bob")])])
    );
    assert_eq!(message(&page, 2).reply_to, Some(1));
    assert!(matches!(&page[2], HistoryItem::Edit(e) if e.target == 1));
    assert!(matches!(&page[6], HistoryItem::Reaction(r) if r.emoji.is_empty()));

    // Delete for everyone: the text is erased from storage, edits' text included.
    let deleted = alice.delete(&conv, 1).await.expect("delete");
    assert_eq!(deleted.seq, 8);
    let seen = expect(&mut bob_events, |e| match e {
        ClientEvent::Delete(d) => Some(d),
        _ => None,
    })
    .await;
    assert_eq!((seen.seq, seen.target), (8, 1));
    let page = history(&alice, &conv).await;
    let m1 = message(&page, 1);
    assert!(m1.deleted && m1.body.is_empty() && m1.reactions.is_empty());
    assert!(matches!(&page[2], HistoryItem::Edit(e) if e.body.is_none()));
    let left = server
        .count("SELECT count(*) FROM events WHERE body LIKE '%see you%'")
        .await;
    assert_eq!(left, 0, "the text of a deleted message stays nowhere");
    assert!(found(&bob, "see you", None).await.is_empty());

    // In a group an admin may delete anyone's message; another member may not.
    let group = create_group(&alice, &["bob", "carol"]).await;
    let (carol, _carol_events) = server.device("carol", "pw-c", "phone").await;
    let by_bob = bob.send(&group, "spam").await.expect("send");
    assert_eq!(
        code(carol.delete(&group, by_bob.seq).await),
        ErrorCode::Forbidden
    );
    alice
        .delete(&group, by_bob.seq)
        .await
        .expect("an admin deletes");
    assert!(message(&history(&carol, &group).await, by_bob.seq).deleted);
}

on_both_engines!(every_refusal_of_the_contract_changes_nothing);
async fn every_refusal_of_the_contract_changes_nothing(backend: Backend) {
    let limits = Limits {
        edit_window_secs: 1,
        ..crate::util::server::unlimited()
    };
    let server = TestServer::build(backend, USERS, limits, 30).await;
    let (alice, _alice_events) = server.device("alice", "pw-a", "phone").await;
    let (bob, _bob_events) = server.device("bob", "pw-b", "phone").await;
    let conv = dm("alice", "bob");
    let group = create_group(&alice, &["bob"]).await;
    alice.send(&conv, "mine").await.expect("send");
    bob.send(&conv, "yours").await.expect("send");
    alice.send(&conv, "gone").await.expect("send");
    alice.delete(&conv, 3).await.expect("delete");
    let before = history(&alice, &conv).await;
    let group_before = history(&alice, &group).await;

    // A target that is not a message of that conversation.
    for target in [0, 4, 99] {
        assert_eq!(
            code(alice.edit(&conv, target, "x").await),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(alice.delete(&conv, target).await),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(alice.react(&conv, target, "👍").await),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(alice.reply(&conv, target, "re").await),
            ErrorCode::BadRequest
        );
    }
    // The group's seq 1 is its `created` member event, not a message.
    assert_eq!(
        code(alice.react(&group, 1, "👍").await),
        ErrorCode::BadRequest
    );
    // Someone else's message.
    assert_eq!(code(alice.edit(&conv, 2, "x").await), ErrorCode::Forbidden);
    assert_eq!(code(alice.delete(&conv, 2).await), ErrorCode::Forbidden);
    // A deleted message cannot be edited or reacted to.
    assert_eq!(code(alice.edit(&conv, 3, "x").await), ErrorCode::BadRequest);
    assert_eq!(code(bob.react(&conv, 3, "👍").await), ErrorCode::BadRequest);
    // A reaction over 16 bytes.
    assert_eq!(
        code(bob.react(&conv, 1, "👍👍👍👍👍").await),
        ErrorCode::BadRequest
    );
    // A non-member.
    let (carol, _carol_events) = server.device("carol", "pw-c", "phone").await;
    assert_eq!(
        code(carol.react(&group, 2, "👍").await),
        ErrorCode::NotMember
    );
    // Searches: empty, over 256 characters, a conversation the user is not in.
    assert_eq!(
        code(alice.search("", None, None, 10).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(alice.search(&"x".repeat(257), None, None, 10).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(carol.search("mine", Some(&conv), None, 10).await),
        ErrorCode::NotMember
    );
    assert_eq!(
        code(alice.search("mine", None, Some("nonsense"), 10).await),
        ErrorCode::BadRequest
    );
    // An edit after the window (1 s here): the window has to pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        code(alice.edit(&conv, 1, "late").await),
        ErrorCode::Forbidden
    );

    assert_eq!(history(&alice, &conv).await, before, "nothing changed");
    assert_eq!(history(&alice, &group).await, group_before);
    // A message in the window can still be deleted, and reacted to.
    alice.delete(&conv, 1).await.expect("delete any time");
}

async fn repeats_with_the_same_id_are_idempotent(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let mut raw = server
        .raw("alice:raw", "pw-a")
        .connect()
        .await
        .expect("connect");
    raw.subscribe(&["chat/alice/dev/raw"]).await;
    let (bob, _bob_events) = server.device("bob", "pw-b", "phone").await;
    let conv = dm("alice", "bob");
    let send = json!({"type": "send", "id": "m1", "conv": conv, "body": "hello"});
    assert_eq!(
        raw.reply("alice", send.to_string().as_bytes()).await["seq"],
        1
    );
    bob.send(&conv, "hi").await.expect("send");

    let requests = [
        json!({"type": "edit", "id": "e1", "conv": conv, "target": 1, "body": "hello!"}),
        json!({"type": "react", "id": "r1", "conv": conv, "target": 2, "emoji": "👋"}),
        json!({"type": "delete", "id": "d1", "conv": conv, "target": 1}),
    ];
    for (request, seq) in requests.iter().zip(3..) {
        let payload = request.to_string();
        let first: Value = raw.reply("alice", payload.as_bytes()).await;
        assert_eq!(
            (first["type"].as_str(), first["seq"].as_u64()),
            (Some("ack"), Some(seq)),
            "{first}"
        );
        let again: Value = raw.reply("alice", payload.as_bytes()).await;
        assert_eq!(again, first, "the same ack");
    }
    // The edit's id again, after the message was deleted: still the stored ack.
    let again = raw.reply("alice", requests[0].to_string().as_bytes()).await;
    assert_eq!(again["seq"], 3);
    // An id used by another kind of request is refused.
    let reused = json!({"type": "react", "id": "m1", "conv": conv, "target": 2, "emoji": "x"});
    let refused = raw.reply("alice", reused.to_string().as_bytes()).await;
    assert_eq!(refused["code"], "bad_request", "{refused}");

    let page = history(&bob, &conv).await;
    assert_eq!(
        page.iter().map(HistoryItem::seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5],
        "each action stored once"
    );
    assert_eq!(
        message(&page, 2).reactions,
        BTreeMap::from([("👋".to_owned(), vec![uid("alice")])])
    );
}

/// Every stored event of a stream until the one with `useq`, as its debug text
/// without `useq` (which differs between users, not between devices).
async fn events_until(events: &mut EventStream, useq: u64) -> Vec<ClientEvent> {
    let mut seen = Vec::new();
    expect(events, |e| {
        let u = e.useq()?;
        seen.push(e);
        (u >= useq).then_some(())
    })
    .await;
    seen
}

async fn two_devices_see_the_same_state_after_sync_and_a_bridge_restart(backend: Backend) {
    let mut server = TestServer::start(backend, USERS).await;
    let (phone, mut phone_events) = server.device("alice", "pw-a", "phone").await;
    let (bob, _bob_events) = server.device("bob", "pw-b", "phone").await;
    let conv = dm("alice", "bob");
    bob.send(&conv, "one").await.expect("send");
    bob.send(&conv, "two").await.expect("send");
    phone.send(&conv, "three").await.expect("send");
    bob.edit(&conv, 1, "one, edited").await.expect("edit");
    phone.react(&conv, 1, "👍").await.expect("react");

    // The bridge goes away; actions wait for it and are stored once it is back.
    server.stop_bridge().await;
    let pending = {
        let phone = phone.clone();
        let conv = conv.clone();
        tokio::spawn(async move { phone.delete(&conv, 3).await.expect("delete") })
    };
    let bob_react = {
        let bob = bob.clone();
        let conv = conv.clone();
        tokio::spawn(async move { bob.react(&conv, 2, "😀").await.expect("react") })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.start_bridge().await;
    let deleted = pending.await.expect("delete task");
    bob_react.await.expect("react task");
    assert!(deleted.seq >= 6);

    // A second device of alice's, new: everything comes by sync.
    let (laptop, mut laptop_events) = server.device("alice", "pw-a", "laptop").await;
    let last = phone_events_last_useq(&phone).await;
    let on_phone = events_until(&mut phone_events, last).await;
    let on_laptop = events_until(&mut laptop_events, last).await;
    let stored = |events: &[ClientEvent]| -> Vec<(u64, String)> {
        events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Message(m) => Some((m.seq, format!("message from {}", m.from))),
                ClientEvent::Edit(e) => Some((e.seq, format!("edit {}", e.target))),
                ClientEvent::Delete(d) => Some((d.seq, format!("delete {}", d.target))),
                ClientEvent::Reaction(r) => {
                    Some((r.seq, format!("react {} {}", r.target, r.emoji)))
                }
                _ => None,
            })
            .collect()
    };
    let laptop_story = stored(&on_laptop);
    assert_eq!(
        laptop_story.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>(),
        "{laptop_story:?}"
    );
    // A message comes by sync in its current state (its reactions come as events).
    let synced_first = on_laptop.iter().find_map(|e| match e {
        ClientEvent::Message(m) if m.seq == 1 => Some(m.clone()),
        _ => None,
    });
    assert!(synced_first.is_some_and(|m| m.body == "one, edited" && m.edited.is_some()));
    // The phone saw the same events live (and by sync around the restart).
    let phone_story = stored(&on_phone);
    for event in &phone_story {
        assert!(laptop_story.contains(event), "{event:?} not on the laptop");
    }
    let state_phone = history(&phone, &conv).await;
    let state_laptop = history(&laptop, &conv).await;
    assert_eq!(state_phone, state_laptop);
    let m1 = message(&state_laptop, 1);
    assert_eq!(m1.body, "one, edited");
    assert_eq!(
        m1.reactions,
        BTreeMap::from([("👍".to_owned(), vec![uid("alice")])])
    );
    assert_eq!(
        message(&state_laptop, 2).reactions,
        BTreeMap::from([("😀".to_owned(), vec![uid("bob")])])
    );
    assert!(message(&state_laptop, 3).deleted);
}

/// The newest useq in alice's inbox, read through a sync from 0.
async fn phone_events_last_useq(client: &Client) -> u64 {
    let mut after = 0;
    loop {
        let reply = client
            .call(Request::Sync {
                id: messenger_client::new_request_id(),
                after,
                limit: Some(500),
            })
            .await
            .expect("sync");
        let Event::Sync { next, more, .. } = reply else {
            panic!("unexpected reply {reply:?}");
        };
        after = next;
        if !more {
            return after;
        }
    }
}

async fn search_finds_words_inside_text_without_spaces_and_in_any_case(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let (alice, _alice_events) = server.device("alice", "pw-a", "phone").await;
    let (bob, _bob_events) = server.device("bob", "pw-b", "phone").await;
    let (carol, _carol_events) = server.device("carol", "pw-c", "phone").await;
    let conv = dm("alice", "bob");
    alice
        .send(&conv, "東京タワーに行きました")
        .await
        .expect("send");
    alice.send(&conv, "Hello World").await.expect("send");
    bob.send(&conv, "hello there, WORLDWIDE")
        .await
        .expect("send");
    alice
        .send(&conv, "typo in this mesage")
        .await
        .expect("send");
    carol
        .send(&dm("alice", "carol"), "hello alice")
        .await
        .expect("send");

    assert_eq!(
        found(&bob, "タワー", None).await,
        [(1, "東京タワーに行きました".to_owned())]
    );
    // A two-character word matches inside text too.
    assert_eq!(found(&bob, "東京", None).await.len(), 1);
    assert_eq!(
        found(&bob, "WORLD hello", None).await,
        [
            (3, "hello there, WORLDWIDE".to_owned()),
            (2, "Hello World".to_owned())
        ],
        "every word, any case, newest first"
    );
    assert_eq!(found(&bob, "world he", None).await.len(), 2);
    assert!(found(&bob, "world tokyo", None).await.is_empty());
    // Every trigram of a word is not the word.
    bob.send(&conv, "abca cab").await.expect("send");
    assert!(found(&bob, "abcab", None).await.is_empty());
    assert_eq!(found(&bob, "ABCA", None).await.len(), 1);
    // Only readable conversations: bob does not see alice's chat with carol.
    assert_eq!(found(&alice, "hello", None).await.len(), 3);
    assert_eq!(found(&bob, "hello", None).await.len(), 2);
    assert_eq!(
        found(&alice, "hello", Some(&dm("alice", "carol")))
            .await
            .len(),
        1
    );
    // Pages, newest first, with a cursor.
    let first = alice.search("hello", None, None, 2).await.expect("page");
    assert_eq!(first.results.len(), 2);
    assert!(first.more);
    let rest = alice
        .search("hello", None, first.next.as_deref(), 2)
        .await
        .expect("page");
    assert_eq!(
        rest.results
            .iter()
            .map(|m| m.body.as_str())
            .collect::<Vec<_>>(),
        ["Hello World"]
    );
    // Edits are searched in their latest text, deletions never match.
    alice
        .edit(&conv, 4, "typo in this message")
        .await
        .expect("edit");
    assert!(found(&bob, "mesage", None).await.is_empty());
    let edited = bob.search("message", None, None, 10).await.expect("search");
    assert_eq!(edited.results.len(), 1);
    assert!(edited.results[0].edited.is_some());
    alice.delete(&conv, 2).await.expect("delete");
    assert_eq!(found(&bob, "world", None).await.len(), 1);
}

async fn a_former_group_members_search_stops_at_their_leaving(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let (alice, _alice_events) = server.device("alice", "pw-a", "phone").await;
    let (carol, _carol_events) = server.device("carol", "pw-c", "phone").await;
    let (dave, _dave_events) = server.device("dave", "pw-d", "phone").await;
    let group = create_group(&alice, &["carol"]).await;
    alice.send(&group, "plan before").await.expect("send");
    carol
        .call(Request::GroupLeave {
            id: messenger_client::new_request_id(),
            conv: group.clone(),
        })
        .await
        .expect("leave");
    alice.send(&group, "plan after").await.expect("send");
    alice
        .call(Request::GroupAdd {
            id: messenger_client::new_request_id(),
            conv: group.clone(),
            user: uid("dave"),
        })
        .await
        .expect("add");
    alice.send(&group, "plan later").await.expect("send");

    let bodies = |results: Vec<(u64, String)>| results.into_iter().map(|r| r.1).collect::<Vec<_>>();
    assert_eq!(bodies(found(&carol, "plan", None).await), ["plan before"]);
    assert_eq!(
        bodies(found(&carol, "plan", Some(&group)).await),
        ["plan before"]
    );
    assert_eq!(bodies(found(&dave, "plan", None).await), ["plan later"]);
    assert_eq!(
        bodies(found(&alice, "plan", None).await),
        ["plan later", "plan after", "plan before"]
    );
}
