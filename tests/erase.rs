//! `messenger user remove --erase` while `messenger serve` runs: the account goes
//! and the text of every message it sent is erased, as a deletion erases it.

use messenger_client::HistoryItem;
use messenger_protocol::wire::Request;
use messenger_protocol::ConvId;

use crate::limits::count;
use crate::users::devices_of;
use crate::util::process::Messenger;
use crate::util::server::{on_both_engines, Backend};
use crate::util::{uid, PATIENCE};

on_both_engines!(an_erased_user_leaves_deletions_where_their_messages_were);

async fn an_erased_user_leaves_deletions_where_their_messages_were(backend: Backend) {
    let messenger = Messenger::on(backend);
    for user in ["alice", "bob"] {
        messenger
            .run(&["user", "add", user, "--password", "pw"])
            .await
            .ok();
    }
    let server = messenger.serve().await;
    let alice = server.library("alice", "phone").await.0;
    let bob = server.library("bob", "phone").await.0;
    let ab = ConvId::direct(&uid("alice"), &uid("bob")).expect("dm");
    alice.send(&ab, "sensitive one").await.expect("ack");
    bob.send(&ab, "bob keeps this").await.expect("ack");
    alice.send(&ab, "sensitive two").await.expect("ack");
    alice.edit(&ab, 3, "sensitive three").await.expect("edited");
    bob.react(&ab, 1, "👍").await.expect("reacted");
    let reply = alice
        .call(Request::GroupCreate {
            id: messenger_client::new_request_id(),
            name: "team".into(),
            members: vec![uid("bob")],
        })
        .await
        .expect("created");
    let messenger_protocol::wire::Event::Ack {
        conv: Some(team), ..
    } = reply
    else {
        panic!("unexpected reply {reply:?}");
    };
    alice
        .send(&team, "sensitive in a group")
        .await
        .expect("ack");

    // `user list` counts alice's phone, online (as the bridge recorded it).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let list = messenger.run(&["user", "list"]).await.ok();
        if devices_of(&list, "alice") == (1, 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's phone is not listed online: {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let out = messenger
        .run(&["user", "remove", "alice", "--erase"])
        .await
        .ok();
    assert_eq!(out, "removed alice; erased the text of 3 messages\n");

    let page = bob.history(&ab, None, 100).await.expect("history");
    let messages: Vec<_> = page
        .events
        .iter()
        .filter_map(|e| match e {
            HistoryItem::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    let shown: Vec<(&str, bool, &str)> = messages
        .iter()
        .map(|m| (m.from.as_str(), m.deleted, m.body.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("alice", true, ""),
            ("bob", false, "bob keeps this"),
            ("alice", true, "")
        ]
    );
    assert!(
        messages[0].reactions.is_empty(),
        "reactions go with the text"
    );
    let group = bob.history(&team, None, 100).await.expect("history");
    assert!(group.events.iter().all(|e| match e {
        HistoryItem::Message(m) => m.deleted && m.body.is_empty(),
        _ => true,
    }));
    let found = bob
        .search("sensitive", None, None, 20)
        .await
        .expect("search");
    assert!(found.results.is_empty(), "{:?}", found.results);
    let kept = bob.search("keeps", None, None, 20).await.expect("search");
    assert_eq!(kept.results.len(), 1);

    // In the database: nothing of alice's is left but her erased messages.
    for (what, table, filter) in [
        (
            "text",
            "events",
            "sender = 'alice' AND kind IN ('message', 'edit') AND body IS NOT NULL",
        ),
        (
            "live messages",
            "events",
            "sender = 'alice' AND kind = 'message' AND COALESCE(deleted, FALSE) = FALSE",
        ),
        (
            "request ids",
            "events",
            "sender = 'alice' AND req_id IS NOT NULL",
        ),
        ("memberships", "members", "\"user\" = 'alice'"),
        ("inbox", "inbox", "\"user\" = 'alice'"),
        ("devices", "devices", "\"user\" = 'alice'"),
        ("reactions", "reactions", "seq = 1"),
        ("account", "users", "name = 'alice'"),
    ] {
        assert_eq!(count(&messenger, table, filter), 0, "{what}");
    }
    assert_eq!(
        count(&messenger, "conversations", "kind = 'dm' AND closed = TRUE"),
        1,
        "the 1-1 chat is closed"
    );

    let err = messenger
        .run(&["user", "remove", "nobody", "--erase"])
        .await
        .failed();
    assert!(err.contains("user nobody does not exist"), "{err}");
}
