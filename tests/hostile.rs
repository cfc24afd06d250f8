//! Hostile input to the bridge (issue 17): replies that would not fit a packet,
//! unbounded lists, numbers out of range, unbounded device ids, and a re-used
//! user name after an account was removed. Each test fails on the code before
//! its fix.

use messenger_bridge::config::Limits;
use messenger_protocol::ConvId;
use serde_json::{json, Value};

use crate::util::server::{next_message, on_both_engines, Backend, TestServer};
use crate::util::{uid, Client};

on_both_engines!(
    conversations_and_members_are_paged_and_fit_a_packet,
    device_ids_per_user_are_capped,
    a_request_whose_error_would_be_huge_does_not_stop_delivery,
    numbers_out_of_range_are_bad_requests_naming_the_field,
    a_new_account_with_a_removed_users_name_starts_empty,
);

const USERS: &[(&str, &str)] = &[("alice", "alice-pw"), ("bob", "bob-pw")];

async fn raw(server: &TestServer, user: &str, password: &str) -> Client {
    let mut client = server
        .raw(&format!("{user}:raw"), password)
        .connect()
        .await
        .expect("connect");
    let dev = format!("chat/{user}/dev/raw");
    let inbox = format!("chat/{user}/inbox");
    client.subscribe(&[&dev, &inbox]).await;
    client
}

/// The next publish on `topic`, parsed (others are skipped).
async fn next_on(client: &mut Client, topic: &str) -> Value {
    next_where(client, topic, |_| true).await
}

/// The next publish on `topic` that `pick` accepts, parsed (others are skipped).
async fn next_where(client: &mut Client, topic: &str, pick: impl Fn(&Value) -> bool) -> Value {
    loop {
        let (t, body) = client.next_publish().await;
        if t == topic {
            let value = serde_json::from_str(&body).expect("JSON");
            if pick(&value) {
                return value;
            }
        }
    }
}

/// Defect 1: an error reply echoing a huge bad `conv` (21,000 x U+0085, escaped to
/// ~147 KB by the old code) was over the broker's packet limit, and the broker
/// dropped the bridge's producer: every user's acks and live events were lost.
/// Now the echo is short, and a stream of normal sends beside such requests gets
/// every ack and every live event.
async fn a_request_whose_error_would_be_huge_does_not_stop_delivery(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let mut mallory = raw(&server, "alice", "alice-pw").await;
    let (bob, _bob_events) = server.device("bob", "bob-pw", "phone").await;
    let (_alice, mut alice_events) = server.device("alice", "alice-pw", "phone").await;
    let conv = ConvId::direct(&uid("alice"), &uid("bob")).expect("dm");

    for (n, chars) in [(0, 21_000), (1, 50_000)] {
        let bad = "\u{85}".repeat(chars);
        let payload = json!({"type": "send", "id": format!("h{n}"), "conv": bad, "body": "x"});
        let reply = mallory.reply("alice", payload.to_string().as_bytes()).await;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{reply}"
        );
        assert_eq!(reply["id"], format!("h{n}"));
        assert!(
            reply.to_string().len() < 1024,
            "{} bytes",
            reply.to_string().len()
        );
    }

    // The stream: 60 sends, with a hostile request after every third.
    let hostile = json!({"type": "send", "id": "h", "conv": "\u{85}".repeat(21_000), "body": "x"})
        .to_string();
    for i in 0..60u64 {
        if i % 3 == 0 {
            mallory.request("alice", hostile.as_bytes()).await;
        }
        let ack = bob
            .send(&conv, &format!("m{i}"))
            .await
            .unwrap_or_else(|err| panic!("send {i} got no ack: {err}"));
        assert_eq!(ack.seq, i + 1);
        let live = next_message(&mut alice_events).await;
        assert_eq!((live.seq, live.body), (i + 1, format!("m{i}")));
    }
}

/// Defect 2: `conversations` had no bound (a user in many large groups got no
/// reply at all). Now it is paged by count and by bytes with a cursor, each item
/// names at most 10 members with the count, and `members` pages through a group.
async fn conversations_and_members_are_paged_and_fit_a_packet(backend: Backend) {
    // Long user ids make big member lists; a small body limit makes a small reply limit.
    let names: Vec<String> = (0..12)
        .map(|i| format!("{i:02}{}", "m".repeat(30)))
        .collect();
    let mut users: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "pw")).collect();
    users.extend_from_slice(USERS);
    let limits = Limits {
        max_body_bytes: 1,
        ..crate::util::server::unlimited()
    };
    let max_reply = limits.max_reply_bytes();
    let server = TestServer::build(backend, &users, limits, 30).await;
    let mut bob = raw(&server, "bob", "bob-pw").await;
    let mut alice = raw(&server, "alice", "alice-pw").await;
    // Bob puts alice into 40 groups of 14 with long names.
    let long_name = "g".repeat(100);
    let mut members: Vec<&str> = names.iter().map(String::as_str).collect();
    members.push("alice");
    for i in 0..40 {
        let create = json!({"type": "group_create", "id": format!("c{i}"), "name": long_name, "members": members});
        let ack = bob.reply("bob", create.to_string().as_bytes()).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }

    // Unpaged, the reply would be ~40 x 600 bytes: more than max_reply (12 KB).
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut request = json!({"type": "conversations", "id": format!("p{pages}")});
        if let Some(c) = &cursor {
            request["cursor"] = json!(c);
        }
        let (topic, body) = {
            alice.request("alice", request.to_string().as_bytes()).await;
            next_reply(&mut alice).await
        };
        assert_eq!(topic, "chat/alice/dev/raw");
        assert!(body.len() <= max_reply, "{} > {max_reply}", body.len());
        let page: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(page["type"], "conversations", "{page}");
        pages += 1;
        for item in page["items"].as_array().expect("items") {
            assert_eq!(item["member_count"], 14, "{item}");
            assert_eq!(item["members"].as_array().map(Vec::len), Some(10), "{item}");
            seen.push(item["conv"].as_str().expect("conv").to_owned());
        }
        if page["more"] == true {
            cursor = Some(page["next"].as_str().expect("next while more").to_owned());
        } else {
            assert!(page.get("next").is_none(), "{page}");
            break;
        }
        assert!(pages < 40, "paging does not end");
    }
    assert!(pages >= 2, "the byte budget cut the list into pages");
    let distinct: std::collections::BTreeSet<&String> = seen.iter().collect();
    assert_eq!((seen.len(), distinct.len()), (40, 40), "every group once");

    // A page by count.
    let two = alice
        .reply("alice", br#"{"type":"conversations","id":"l2","limit":2}"#)
        .await;
    assert_eq!(two["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(two["more"], true);
    let bad = alice
        .reply(
            "alice",
            br#"{"type":"conversations","id":"bad","cursor":"nope"}"#,
        )
        .await;
    assert_eq!(
        (bad["code"].as_str(), bad["id"].as_str()),
        (Some("bad_request"), Some("bad"))
    );

    // `members` pages through one group by user id, with roles.
    let group = seen[0].clone();
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut request = json!({"type": "members", "id": "m", "conv": group, "limit": 5});
        if let Some(a) = &after {
            request["after"] = json!(a);
        }
        let page = alice.reply("alice", request.to_string().as_bytes()).await;
        assert_eq!(page["type"], "members", "{page}");
        for m in page["members"].as_array().expect("members") {
            listed.push((
                m["user"].as_str().expect("user").to_owned(),
                m["role"].as_str().expect("role").to_owned(),
            ));
        }
        if page["more"] == true {
            after = Some(page["next"].as_str().expect("next").to_owned());
        } else {
            break;
        }
    }
    assert_eq!(listed.len(), 14);
    assert!(
        listed.windows(2).all(|w| w[0].0 < w[1].0),
        "sorted by user id"
    );
    let admins: Vec<&str> = listed
        .iter()
        .filter(|(_, role)| role == "admin")
        .map(|(u, _)| u.as_str())
        .collect();
    assert_eq!(admins, ["bob"]);
    let stranger = json!({"type": "members", "id": "x", "conv": "g:nosuchgroup"});
    let refused = alice.reply("alice", stranger.to_string().as_bytes()).await;
    assert_eq!(refused["code"], "unknown_conversation", "{refused}");
}

/// The next publish on the raw device's `dev` topic, unparsed.
async fn next_reply(client: &mut Client) -> (String, String) {
    loop {
        let (topic, body) = client.next_publish().await;
        if topic.contains("/dev/") {
            return (topic, body);
        }
    }
}

/// Defect 5: numbers above 2^63 - 1 were `internal` ("retry later") with an
/// ERROR logged. Now they are `bad_request` naming the field, and change nothing.
async fn numbers_out_of_range_are_bad_requests_naming_the_field(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let mut alice = raw(&server, "alice", "alice-pw").await;
    let first = alice
        .reply(
            "alice",
            br#"{"type":"send","id":"s1","conv":"dm:alice:bob","body":"hi"}"#,
        )
        .await;
    assert_eq!(first["seq"], 1, "{first}");
    let max = u64::MAX;
    let edge = 1u64 << 63;
    let cases = [
        (
            format!(r#"{{"type":"sync","id":"n1","after":{max}}}"#),
            Some("n1"),
            "after",
        ),
        (
            format!(r#"{{"type":"sync","id":"n2","after":{edge}}}"#),
            Some("n2"),
            "after",
        ),
        (
            format!(r#"{{"type":"mute","id":"n3","conv":"dm:alice:bob","until":{max}}}"#),
            Some("n3"),
            "until",
        ),
        (
            format!(r#"{{"type":"history","id":"n4","conv":"dm:alice:bob","before":{edge}}}"#),
            Some("n4"),
            "before",
        ),
        (
            format!(r#"{{"type":"receipt","conv":"dm:alice:bob","seq":{max},"status":"read"}}"#),
            None,
            "seq",
        ),
    ];
    for (payload, id, field) in &cases {
        let reply = alice.reply("alice", payload.as_bytes()).await;
        assert_eq!(reply["code"], "bad_request", "{payload}: {reply}");
        assert_eq!(reply["id"].as_str(), *id, "{reply}");
        let message = reply["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("`{field}`")), "{message}");
    }
    // Nothing changed: no mute stored, and the in-range forms still work.
    let muted = server.count("SELECT COUNT(*) FROM mutes").await;
    assert_eq!(muted, 0);
    let ok = format!(r#"{{"type":"sync","id":"ok","after":{}}}"#, i64::MAX);
    let reply = alice.reply("alice", ok.as_bytes()).await;
    assert_eq!(
        (reply["type"].as_str(), reply["more"].as_bool()),
        (Some("sync"), Some(false))
    );
}

/// Defect 6: any number of device ids made presence rows (20,000 made 20,001).
/// Now a user has at most `limits.max_devices_per_user`; presence from one more
/// device id is refused, and so is a device token for it.
async fn device_ids_per_user_are_capped(backend: Backend) {
    let limits = Limits {
        max_devices_per_user: 3,
        ..crate::util::server::unlimited()
    };
    let server = TestServer::build(backend, USERS, limits, 30).await;
    let mut mallory = raw(&server, "alice", "alice-pw").await;
    mallory.subscribe(&["status/alice"]).await;
    for i in 0..10 {
        mallory
            .publish(&format!("presence/alice/d{i}"), "online", true)
            .await;
    }
    // Presence is handled in order: once d0-d2 (the ones stored) are offline again,
    // the status goes offline, and d3-d9 were handled before.
    for i in 0..3 {
        mallory
            .publish(&format!("presence/alice/d{i}"), "offline", true)
            .await;
    }
    loop {
        let status = next_on(&mut mallory, "status/alice").await;
        if status["online"] == false {
            break;
        }
    }
    let devices = server
        .count("SELECT COUNT(*) FROM devices WHERE \"user\" = 'alice'")
        .await;
    assert_eq!(devices, 3, "only the first three device ids are stored");
    for device in ["d0", "d1", "d2"] {
        assert_eq!(server.device_online("alice", device).await, Some(false));
    }
    // The broker keeps no retained presence of the refused ids either: the bridge
    // cleared each. A service client sees the retained ones, then a fresh publish
    // of d0 (the positive control that the retained ones came first).
    let mut probe = server
        .raw("_bridge:probe", crate::util::BRIDGE_PASSWORD)
        .connect()
        .await
        .expect("service client");
    probe.subscribe(&["presence/+/+"]).await;
    mallory.publish("presence/alice/d0", "online", true).await;
    let mut retained = Vec::new();
    loop {
        let (topic, body) = probe.next_publish().await;
        if topic == "presence/alice/d0" && body == "online" {
            break;
        }
        if topic.starts_with("presence/alice/") {
            retained.push(topic);
        }
    }
    retained.sort();
    assert_eq!(
        retained,
        [
            "presence/alice/d0",
            "presence/alice/d1",
            "presence/alice/d2"
        ]
    );
    // The `raw` device is a fourth: no token for it; a known device still gets one.
    let refused = mallory
        .reply("alice", br#"{"type":"token","id":"t1"}"#)
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let mut known = server
        .raw("alice:d1", "alice-pw")
        .connect()
        .await
        .expect("connect");
    known.subscribe(&["chat/alice/dev/d1"]).await;
    known
        .mqtt
        .publish(
            "chat/alice/out/d1",
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"type":"token","id":"t2"}"#.to_vec(),
        )
        .await
        .expect("publish");
    let token = next_on(&mut known, "chat/alice/dev/d1").await;
    assert_eq!(token["type"], "token", "{token}");
}

/// Defect 4: after `user remove victim` and `user add victim`, the new account's
/// `sync` returned the old owner's messages and conversations, and bob could
/// still send into the old 1-1 chat. Now removal takes the account's inbox,
/// devices, tokens and memberships with it; the 1-1 chat refuses new messages
/// with `unknown_user`; a new account of that name starts empty, cannot read the
/// old chats, and a request id of the old account's is no repeat for it.
async fn a_new_account_with_a_removed_users_name_starts_empty(backend: Backend) {
    let users = [
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
        ("victim", "old-pw"),
    ];
    let server = TestServer::start(backend, &users).await;
    let mut bob = raw(&server, "bob", "bob-pw").await;
    let mut old = raw(&server, "victim", "old-pw").await;
    let said = old
        .reply(
            "victim",
            br#"{"type":"send","id":"v1","conv":"dm:bob:victim","body":"secret"}"#,
        )
        .await;
    assert_eq!(said["seq"], 1, "{said}");
    let group = bob
        .reply(
            "bob",
            br#"{"type":"group_create","id":"g","name":"team","members":["victim","alice"]}"#,
        )
        .await;
    let group = group["conv"].as_str().expect("group").to_owned();
    let in_group = json!({"type": "send", "id": "v2", "conv": group, "body": "group secret"});
    let said = old.reply("victim", in_group.to_string().as_bytes()).await;
    assert_eq!(said["type"], "ack", "{said}");
    let token = old.reply("victim", br#"{"type":"token","id":"t"}"#).await;
    assert_eq!(token["type"], "token");

    server.remove_user("victim").await;
    old.disconnected().await;

    // The first half: the chat with a removed user takes no new messages, and
    // bob still reads it; the group lost the member.
    let refused = bob
        .reply(
            "bob",
            br#"{"type":"send","id":"b1","conv":"dm:bob:victim","body":"still there?"}"#,
        )
        .await;
    assert_eq!(refused["code"], "unknown_user", "{refused}");
    let history = bob
        .reply(
            "bob",
            br#"{"type":"history","id":"h","conv":"dm:bob:victim"}"#,
        )
        .await;
    assert_eq!(history["events"][0]["body"], "secret", "{history}");
    let members = json!({"type": "members", "id": "m", "conv": group});
    let members = bob.reply("bob", members.to_string().as_bytes()).await;
    let names: Vec<&str> = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["user"].as_str())
        .collect();
    assert_eq!(names, ["alice", "bob"]);

    // The second half: a new account of that name starts empty.
    server.add_user("victim", "new-pw").await;
    let mut new = raw(&server, "victim", "new-pw").await;
    let sync = new
        .reply("victim", br#"{"type":"sync","id":"s","after":0}"#)
        .await;
    assert_eq!(sync["events"], json!([]), "{sync}");
    let list = new
        .reply("victim", br#"{"type":"conversations","id":"c"}"#)
        .await;
    assert_eq!(list["items"], json!([]), "{list}");
    for conv in ["dm:bob:victim", group.as_str()] {
        let read = json!({"type": "history", "id": "h", "conv": conv});
        let read = new.reply("victim", read.to_string().as_bytes()).await;
        assert_eq!(read["code"], "not_member", "{conv}: {read}");
    }
    // The old account's request id is no repeat: a new message, after the old ones.
    let fresh = new
        .reply(
            "victim",
            br#"{"type":"send","id":"v1","conv":"dm:bob:victim","body":"hello again"}"#,
        )
        .await;
    assert_eq!(
        (fresh["type"].as_str(), fresh["seq"].as_u64()),
        (Some("ack"), Some(2)),
        "{fresh}"
    );
    let seen = next_where(&mut bob, "chat/bob/inbox", |e| e["body"] == "hello again").await;
    assert_eq!(
        (seen["from"].as_str(), seen["seq"].as_u64()),
        (Some("victim"), Some(2))
    );
    let read = new
        .reply(
            "victim",
            br#"{"type":"history","id":"h2","conv":"dm:bob:victim"}"#,
        )
        .await;
    let bodies: Vec<&str> = read["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["body"].as_str())
        .collect();
    assert_eq!(bodies, ["hello again"], "{read}");
    // And bob can write to the new account.
    let answer = bob
        .reply(
            "bob",
            br#"{"type":"send","id":"b2","conv":"dm:bob:victim","body":"welcome"}"#,
        )
        .await;
    assert_eq!(answer["seq"], 3, "{answer}");
    // The old device token is gone with the account.
    let tokens = server
        .count("SELECT COUNT(*) FROM device_tokens WHERE \"user\" = 'victim'")
        .await;
    assert_eq!(tokens, 0);
}
