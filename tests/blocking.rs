//! Blocking through the real binary: a blocked user's sends, edits, reactions
//! and typing in the 1-1 chat are `forbidden` (starting the chat too), their
//! subscription to the blocker's status is refused (SUBACK 0x80) and a status
//! they subscribed to before is withheld; unblocking restores both. Bad input
//! changes nothing; the CLI, `messenger export` and `messenger user remove`.
//! On both engines.

use serde_json::Value;

use crate::limits::{count, raw_device, serve_with};
use crate::util::client::{Client, GRANTED, REFUSED};
use crate::util::process::{Messenger, Server};
use crate::util::server::{on_both_engines, Backend};
use crate::util::Transport;

on_both_engines!(
    a_blocked_user_cannot_write_nor_see_presence_until_unblocked,
    bad_block_requests_get_clear_errors_and_change_nothing,
    the_cli_blocks_lists_and_unblocks,
    export_lists_blocks_and_removal_drops_them,
);

async fn ask(device: &mut Client, user: &str, request: &str) -> Value {
    device.reply(user, request.as_bytes()).await
}

fn assert_code(reply: &Value, code: &str) {
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
}

async fn blocks_of(device: &mut Client, user: &str) -> Value {
    let reply = ask(device, user, r#"{"type":"blocks","id":"list"}"#).await;
    assert_eq!(reply["type"], "blocks", "{reply}");
    reply["users"].clone()
}

/// A device `device` of `user` that follows nothing but `status/<of>`; the SUBACK code.
async fn watcher(
    server: &Server,
    user: &str,
    device: &str,
    of: &str,
) -> (Client, rumqttc::SubscribeReasonCode) {
    let mut device = server
        .device(
            Transport::Tcp,
            &format!("{user}:{device}"),
            &format!("{user}-pw"),
        )
        .connect()
        .await
        .expect("watcher signs in");
    let codes = device.subscribe(&[&format!("status/{of}")]).await;
    (device, codes[0])
}

async fn a_blocked_user_cannot_write_nor_see_presence_until_unblocked(backend: Backend) {
    let (messenger, server) = serve_with(backend, &["alice", "bob", "carol", "dave"], &[]).await;
    let mut alice = raw_device(&server, "alice").await;
    let mut bob = raw_device(&server, "bob").await;
    let send =
        |id: &str| format!(r#"{{"type":"send","id":"{id}","conv":"dm:alice:bob","body":"hi"}}"#);
    assert_eq!(ask(&mut bob, "bob", &send("b1")).await["seq"], 1);
    assert_eq!(ask(&mut alice, "alice", &send("a1")).await["seq"], 2);
    // bob follows alice's presence before the block.
    let (mut bob_watch, code) = watcher(&server, "bob", "w1", "alice").await;
    assert_eq!(code, GRANTED);

    let ack = ask(
        &mut alice,
        "alice",
        r#"{"type":"block","id":"k1","user":"bob"}"#,
    )
    .await;
    assert_eq!(ack, serde_json::json!({"type":"ack","id":"k1"}));
    let again = ask(
        &mut alice,
        "alice",
        r#"{"type":"block","id":"k2","user":"bob"}"#,
    )
    .await;
    assert_eq!(
        again["type"], "ack",
        "blocking twice changes nothing: {again}"
    );
    assert_eq!(
        blocks_of(&mut alice, "alice").await,
        serde_json::json!(["bob"])
    );

    // bob may not send, edit, react or type in the chat with alice ...
    assert_code(&ask(&mut bob, "bob", &send("b2")).await, "forbidden");
    assert_code(
        &ask(
            &mut bob,
            "bob",
            r#"{"type":"edit","id":"b3","conv":"dm:alice:bob","target":1,"body":"x"}"#,
        )
        .await,
        "forbidden",
    );
    assert_code(
        &ask(
            &mut bob,
            "bob",
            r#"{"type":"react","id":"b4","conv":"dm:alice:bob","target":2,"emoji":"👍"}"#,
        )
        .await,
        "forbidden",
    );
    let typing = ask(
        &mut bob,
        "bob",
        r#"{"type":"typing","conv":"dm:alice:bob"}"#,
    )
    .await;
    assert_code(&typing, "forbidden");
    assert_eq!(typing["id"], Value::Null, "{typing}");
    // ... but a retry of what he sent before still gets its ack; alice may still write.
    assert_eq!(ask(&mut bob, "bob", &send("b1")).await["seq"], 1);
    assert_eq!(ask(&mut alice, "alice", &send("a2")).await["seq"], 3);
    assert_eq!(count(&messenger, "events", "conv = 'dm:alice:bob'"), 3);

    // Starting a chat with a blocker is refused too, and creates nothing.
    let mut dave = raw_device(&server, "dave").await;
    assert_eq!(
        ask(
            &mut alice,
            "alice",
            r#"{"type":"block","id":"k3","user":"dave"}"#
        )
        .await["type"],
        "ack"
    );
    assert_code(
        &ask(
            &mut dave,
            "dave",
            r#"{"type":"send","id":"d1","conv":"dm:alice:dave","body":"hello?"}"#,
        )
        .await,
        "forbidden",
    );
    assert_eq!(
        count(&messenger, "conversations", "conv = 'dm:alice:dave'"),
        0
    );

    // bob's new subscription to alice's status is refused; carol's is not.
    let (_refused, code) = watcher(&server, "bob", "w2", "alice").await;
    assert_eq!(code, REFUSED);
    let (mut carol_watch, code) = watcher(&server, "carol", "w1", "alice").await;
    assert_eq!(code, GRANTED);
    // The subscription bob made before sees nothing of alice's next status.
    let mut phone = server
        .device(Transport::Tcp, "alice:phone", "alice-pw")
        .will("presence/alice/phone", "offline")
        .connect()
        .await
        .expect("alice's phone");
    phone.publish("presence/alice/phone", "online", true).await;
    let (topic, status) = carol_watch.next_publish().await;
    assert_eq!(topic, "status/alice");
    assert!(status.contains(r#""online":true"#), "{status}");
    let (topic, withheld) = bob_watch.next_publish().await;
    assert_eq!(
        (topic.as_str(), withheld.as_str()),
        ("$messenger/denied", "")
    );

    // Unblocking restores both.
    let ack = ask(
        &mut alice,
        "alice",
        r#"{"type":"unblock","id":"u1","user":"bob"}"#,
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        blocks_of(&mut alice, "alice").await,
        serde_json::json!(["dave"])
    );
    assert_eq!(ask(&mut bob, "bob", &send("b5")).await["seq"], 4);
    let (mut bob_again, code) = watcher(&server, "bob", "w3", "alice").await;
    assert_eq!(code, GRANTED);
    let (topic, status) = bob_again.next_publish().await;
    assert_eq!(topic, "status/alice", "the retained status: {status}");
}

async fn bad_block_requests_get_clear_errors_and_change_nothing(backend: Backend) {
    let (messenger, server) = serve_with(backend, &["alice", "bob"], &[]).await;
    let mut alice = raw_device(&server, "alice").await;
    assert_eq!(
        ask(
            &mut alice,
            "alice",
            r#"{"type":"block","id":"k1","user":"bob"}"#
        )
        .await["type"],
        "ack"
    );
    for (request, code) in [
        (
            r#"{"type":"block","id":"x1","user":"alice"}"#,
            "bad_request",
        ),
        (
            r#"{"type":"unblock","id":"x2","user":"alice"}"#,
            "bad_request",
        ),
        (r#"{"type":"block","id":"x3","user":"zed"}"#, "unknown_user"),
        (
            r#"{"type":"unblock","id":"x4","user":"zed"}"#,
            "unknown_user",
        ),
        (
            r#"{"type":"block","id":"x5","user":"Not Valid"}"#,
            "bad_request",
        ),
        (r#"{"type":"block","id":"x6","user":5}"#, "bad_request"),
        (r#"{"type":"block","id":"x7"}"#, "bad_request"),
        (r#"{"type":"unblock","id":"x8","user":""}"#, "bad_request"),
    ] {
        let reply = ask(&mut alice, "alice", request).await;
        assert_code(&reply, code);
        let id = &request[request.find("\"id\":\"").expect("an id") + 6..][..2];
        assert_eq!(reply["id"], id, "{reply}");
    }
    assert_eq!(
        blocks_of(&mut alice, "alice").await,
        serde_json::json!(["bob"])
    );
    assert_eq!(count(&messenger, "blocks", "TRUE"), 1);
}

/// alice blocks bob and carol with the CLI, lists her blocks, unblocks carol.
async fn cli_blocks_bob(messenger: &Messenger, server: &Server) {
    let as_alice = |args: &[&str]| {
        messenger.run_command(messenger.as_user(server.mqtt, "alice", "alice-pw", args))
    };
    assert_eq!(as_alice(&["block", "bob"]).await.ok().trim(), "blocked bob");
    assert_eq!(
        as_alice(&["block", "carol"]).await.ok().trim(),
        "blocked carol"
    );
    assert_eq!(as_alice(&["blocks"]).await.ok(), "bob\ncarol\n");
    let err = as_alice(&["block", "zed"]).await.failed();
    assert!(err.contains("unknown_user"), "{err}");
    let err = as_alice(&["block", "No Such"]).await.failed();
    assert!(err.contains("user \"No Such\""), "{err}");
    assert_eq!(
        as_alice(&["unblock", "carol"]).await.ok().trim(),
        "unblocked carol"
    );
    assert_eq!(as_alice(&["blocks"]).await.ok(), "bob\n");
    assert_eq!(count(messenger, "blocks", "TRUE"), 1);
}

/// `messenger block`, `blocks` and `unblock` through the real broker and bridge.
async fn the_cli_blocks_lists_and_unblocks(backend: Backend) {
    let (messenger, server) = serve_with(backend, &["alice", "bob", "carol"], &[]).await;
    cli_blocks_bob(&messenger, &server).await;
}

/// `export` lists a user's blocks; `user remove` drops the blocks of the user
/// removed.
async fn export_lists_blocks_and_removal_drops_them(backend: Backend) {
    let (messenger, server) = serve_with(backend, &["alice", "bob", "carol"], &[]).await;
    cli_blocks_bob(&messenger, &server).await;
    let out = messenger.dir().join("alice.json");
    messenger
        .run(&["export", "alice", "--out", &out.display().to_string()])
        .await
        .ok();
    let export: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("the export")).expect("JSON");
    assert_eq!(export["blocks"], serde_json::json!(["bob"]));

    messenger.run(&["user", "remove", "bob"]).await.ok();
    assert_eq!(
        count(&messenger, "blocks", "TRUE"),
        0,
        "blocks of a removed user go"
    );
    let as_alice = messenger.as_user(server.mqtt, "alice", "alice-pw", &["blocks"]);
    assert_eq!(messenger.run_command(as_alice).await.ok(), "");
}
