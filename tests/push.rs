//! Push notifications end to end: the real broker and bridge over MQTT, and
//! fake APNs, FCM and OAuth servers speaking HTTP/2 on 127.0.0.1.
//!
//! Proving that a push did *not* happen takes a positive control: a later
//! push that must come after it, and then the check that it never came.

mod fake;
mod harness;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::Version;
use messenger_bridge::config::{ApnsConfig, FcmConfig, PushConfig};
use serde_json::json;

use fake::{ApnsKey, FakeServer, Recorded, Reply};
use harness::{Server, PATIENCE};

use crate::util::server::{on_both_engines, Backend};

on_both_engines!(
    offline_user_gets_one_apns_push_per_token_over_tls,
    no_push_to_online_users_or_muted_conversations,
    push_requests_are_checked_and_idempotent,
    a_burst_is_coalesced_into_one_push,
    apns_410_deletes_the_token,
    fcm_push_with_oauth_and_404_deletes_the_token,
    a_429_is_retried_once_after_retry_after,
    an_expired_provider_token_is_signed_again_once,
    a_push_server_that_never_answers_delays_no_ack,
);

const TOPIC: &str = "com.example.messenger";
const KEY_ID: &str = "TESTKEY123";
const TEAM_ID: &str = "TEAMID4567";

fn apns(server: &FakeServer, key: &ApnsKey) -> ApnsConfig {
    ApnsConfig {
        base_url: server.url(),
        key_path: key.path.clone(),
        key_id: KEY_ID.into(),
        team_id: TEAM_ID.into(),
        topic: TOPIC.into(),
    }
}

/// Push with a short coalescing window, APNs at `server`.
fn apns_push(server: &FakeServer, key: &ApnsKey) -> PushConfig {
    PushConfig {
        coalesce_ms: 50,
        apns: Some(apns(server, key)),
        ..PushConfig::default()
    }
}

/// A 64-digit APNs device token.
fn apns_token(tag: &str) -> String {
    format!("{tag:0>64}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn body(request: &Recorded) -> String {
    request.json()["aps"]["alert"]["body"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

async fn offline_user_gets_one_apns_push_per_token_over_tls(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = ApnsKey::generate(dir.path());
    let (tls, ca) = fake::self_signed_tls(dir.path());
    let mut apple = FakeServer::start(Some(tls), |_| Reply::ok()).await;
    assert!(apple.url().starts_with("https://"));
    let push = PushConfig {
        ca_cert_path: Some(ca),
        ..apns_push(&apple, &key)
    };
    let server = Server::start(backend, push, &["alice", "bob"]).await;
    let (phone_token, tablet_token) = (apns_token("a1"), apns_token("b2"));
    let mut phone = server.device("bob", "phone").await;
    let mut tablet = server.device("bob", "tablet").await;
    phone.register("apns", &phone_token).await;
    tablet.register("apns", &tablet_token).await;
    phone.announce(true, true).await;
    phone.announce(false, false).await;
    phone.disconnect().await;
    tablet.disconnect().await;

    let mut alice = server.device("alice", "laptop").await;
    let ack = alice.send("dm:alice:bob", "hello bob").await;
    let mut first = [apple.next(PATIENCE).await, apple.next(PATIENCE).await];
    first.sort_by(|a, b| a.path.cmp(&b.path));
    let mut jwt = String::new();
    for (request, token) in first.iter().zip([&phone_token, &tablet_token]) {
        assert_eq!(request.version, Version::HTTP_2);
        assert_eq!(request.path, format!("/3/device/{token}"));
        assert_eq!(request.header("apns-topic"), TOPIC);
        assert_eq!(request.header("apns-push-type"), "alert");
        assert_eq!(request.header("apns-collapse-id"), "dm:alice:bob");
        jwt = key.verify(request.header("authorization"), KEY_ID, TEAM_ID);
        assert_eq!(
            request.json(),
            json!({
                "aps": {
                    "alert": {"title": "alice", "body": "hello bob"},
                    "badge": 1,
                    "sound": "default",
                    "thread-id": "dm:alice:bob",
                },
                "conv": "dm:alice:bob",
                "seq": ack["seq"],
            })
        );
    }

    // The control: the next pushes are the next message's, with the badge up by one.
    alice.send("dm:alice:bob", "again").await;
    let mut second = [apple.next(PATIENCE).await, apple.next(PATIENCE).await];
    second.sort_by(|a, b| a.path.cmp(&b.path));
    for (request, token) in second.iter().zip([&phone_token, &tablet_token]) {
        assert_eq!(request.apns_token(), token.as_str());
        assert_eq!(body(request), "again");
        assert_eq!(request.json()["aps"]["badge"], 2);
        // One provider token, reused.
        assert_eq!(
            key.verify(request.header("authorization"), KEY_ID, TEAM_ID),
            jwt
        );
    }
    server.stop().await;
}

async fn no_push_to_online_users_or_muted_conversations(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = ApnsKey::generate(dir.path());
    let mut apple = FakeServer::start(None, |_| Reply::ok()).await;
    let server = Server::start(
        backend,
        apns_push(&apple, &key),
        &["alice", "bob", "carol", "dave"],
    )
    .await;
    let (b, c, d) = (apns_token("b"), apns_token("c"), apns_token("d"));
    let mut bob = server.device("bob", "phone").await;
    bob.register("apns", &b).await;
    bob.announce(true, true).await;
    let mut carol = server.device("carol", "phone").await;
    carol.register("apns", &c).await;
    let mut dave = server.device("dave", "phone").await;
    dave.register("apns", &d).await;

    let mut alice = server.device("alice", "laptop").await;
    let created = alice
        .ack(json!({"type": "group_create", "name": "team", "members": ["bob", "carol", "dave"]}))
        .await;
    let group = created["conv"].as_str().expect("group id").to_owned();
    let muted = carol.ack(json!({"type": "mute", "conv": group})).await;
    assert_eq!(muted.as_object().map(|o| o.len()), Some(2), "{muted}");

    // Bob is online and Carol muted the group for ever: only Dave is told.
    alice.send(&group, "one").await;
    let seen = apple.until(PATIENCE, |r| body(r) == "one").await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].apns_token(), d);
    assert_eq!(seen[0].json()["aps"]["alert"]["title"], "team: alice");
    assert_eq!(seen[0].json()["aps"]["thread-id"], group.as_str());

    // Muted until an hour from now: still only Dave.
    let hour = now_ms() + 3_600_000;
    carol
        .ack(json!({"type": "mute", "conv": group, "until": hour}))
        .await;
    alice.send(&group, "two").await;
    let seen = apple.until(PATIENCE, |r| body(r) == "two").await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].apns_token(), d);

    // Unmuted (until 0): Carol and Dave, never Bob.
    carol
        .ack(json!({"type": "mute", "conv": group, "until": 0}))
        .await;
    alice.send(&group, "three").await;
    let mut seen = [apple.next(PATIENCE).await, apple.next(PATIENCE).await];
    seen.sort_by(|x, y| x.path.cmp(&y.path));
    assert_eq!(
        seen.iter()
            .map(|r| (r.apns_token(), body(r)))
            .collect::<Vec<_>>(),
        [
            (c.as_str(), "three".to_owned()),
            (d.as_str(), "three".to_owned())
        ]
    );
    // Carol has read nothing: three unread messages.
    assert_eq!(seen[0].json()["aps"]["badge"], 3);
    assert!(apple.pending().iter().all(|r| r.apns_token() != b));
    server.stop().await;
}

async fn push_requests_are_checked_and_idempotent(backend: Backend) {
    let server = Server::start(backend, PushConfig::default(), &["alice", "bob", "carol"]).await;
    let mut alice = server.device("alice", "phone").await;
    let token = apns_token("ab");
    for _ in 0..2 {
        alice.register("apns", &token).await;
    }
    alice.register("fcm", "fcm-token:1").await;
    assert_eq!(
        server.tokens(),
        [
            ("apns".into(), token.clone(), "alice".into()),
            ("fcm".into(), "fcm-token:1".into(), "alice".into()),
        ]
    );
    // A new token for the same device and platform replaces the old one.
    alice.register("fcm", "fcm-token:2").await;
    // The same token from another user's device moves there.
    let mut bob = server.device("bob", "tablet").await;
    bob.register("apns", &token).await;
    assert_eq!(
        server.tokens(),
        [
            ("apns".into(), token.clone(), "bob".into()),
            ("fcm".into(), "fcm-token:2".into(), "alice".into()),
        ]
    );

    let cases = [
        (
            json!({"type": "push_register", "platform": "webpush", "token": "x"}),
            "bad_request",
        ),
        (
            json!({"type": "push_register", "platform": "apns", "token": ""}),
            "bad_request",
        ),
        (
            json!({"type": "push_register", "platform": "apns", "token": "../../x"}),
            "bad_request",
        ),
        (
            json!({"type": "push_register", "platform": "fcm", "token": "a".repeat(4097)}),
            "too_large",
        ),
        (
            json!({"type": "push_unregister", "platform": "fcm", "token": ""}),
            "bad_request",
        ),
        (
            json!({"type": "mute", "conv": "g:nothing"}),
            "unknown_conversation",
        ),
        (
            json!({"type": "mute", "conv": "dm:bob:carol"}),
            "not_member",
        ),
        (
            json!({"type": "mute", "conv": "dm:alice:zed"}),
            "unknown_user",
        ),
    ];
    for (request, code) in cases {
        let reply = alice.request(request.clone()).await;
        assert_eq!(reply["type"], "error", "{request}: {reply}");
        assert_eq!(reply["code"], code, "{request}: {reply}");
    }
    alice.register("fcm", &"a".repeat(4096)).await;
    for _ in 0..2 {
        alice
            .ack(json!({"type": "push_unregister", "platform": "fcm", "token": "a".repeat(4096)}))
            .await;
    }
    // Alice cannot drop Bob's token.
    alice
        .ack(json!({"type": "push_unregister", "platform": "apns", "token": token}))
        .await;
    assert_eq!(
        server.tokens(),
        [("apns".into(), token.clone(), "bob".into())]
    );
    for until in [None, Some(now_ms() + 1000), Some(0), Some(0)] {
        let mut request = json!({"type": "mute", "conv": "dm:alice:bob"});
        if let Some(until) = until {
            request["until"] = json!(until);
        }
        alice.ack(request).await;
    }
    server.stop().await;
}

async fn a_burst_is_coalesced_into_one_push(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = ApnsKey::generate(dir.path());
    let mut apple = FakeServer::start(None, |_| Reply::ok()).await;
    // The default window; the burst below takes tens of milliseconds.
    let push = PushConfig {
        coalesce_ms: 1000,
        ..apns_push(&apple, &key)
    };
    let server = Server::start(backend, push, &["alice", "bob"]).await;
    let token = apns_token("c0");
    server
        .device("bob", "phone")
        .await
        .register("apns", &token)
        .await;

    let mut alice = server.device("alice", "laptop").await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for n in 1..=20 {
        let id = alice.id();
        alice
            .publish(json!({"type": "send", "id": id, "conv": "dm:alice:bob", "body": format!("burst {n}")}))
            .await;
        ids.push(id);
    }
    for id in &ids {
        assert_eq!(alice.reply(id).await["type"], "ack");
    }
    assert!(
        started.elapsed() < Duration::from_millis(750),
        "the burst took {:?}",
        started.elapsed()
    );
    let push = apple.next(PATIENCE).await;
    assert_eq!(body(&push), "burst 20");
    assert_eq!(push.json()["aps"]["badge"], 20);

    // The control: the next push is the next message's, not more of the burst.
    alice.send("dm:alice:bob", "after").await;
    let next = apple.next(PATIENCE).await;
    assert_eq!(body(&next), "after");
    assert_eq!(next.json()["aps"]["badge"], 21);
    server.stop().await;
}

async fn apns_410_deletes_the_token(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = ApnsKey::generate(dir.path());
    let dead = apns_token("dead");
    let live = apns_token("11fe");
    let gone = dead.clone();
    let mut apple = FakeServer::start(None, move |r| {
        if r.apns_token() == gone {
            Reply::json(
                410,
                &format!(r#"{{"reason":"Unregistered","timestamp":{}}}"#, now_ms()),
            )
        } else {
            Reply::ok()
        }
    })
    .await;
    let server = Server::start(backend, apns_push(&apple, &key), &["alice", "bob"]).await;
    server
        .device("bob", "old")
        .await
        .register("apns", &dead)
        .await;
    server
        .device("bob", "new")
        .await
        .register("apns", &live)
        .await;

    let mut alice = server.device("alice", "laptop").await;
    alice.send("dm:alice:bob", "one").await;
    let mut seen = [apple.next(PATIENCE).await, apple.next(PATIENCE).await];
    seen.sort_by(|x, y| x.path.cmp(&y.path));
    assert_eq!(seen[0].apns_token(), live);
    assert_eq!(seen[1].apns_token(), dead);
    server.wait_token_gone(&dead).await;

    alice.send("dm:alice:bob", "two").await;
    alice.send("dm:alice:bob", "three").await;
    let seen = apple.until(PATIENCE, |r| body(r) == "three").await;
    assert!(seen.iter().all(|r| r.apns_token() == live), "{seen:#?}");
    server.stop().await;
}

async fn fcm_push_with_oauth_and_404_deletes_the_token(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut google = FakeServer::start(None, |r| {
        if r.header("authorization") != format!("Bearer {}", fake::ACCESS_TOKEN) {
            return Reply::json(401, r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#);
        }
        if r.fcm_token() == "dead:token" {
            Reply::json(
                404,
                r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND",
                   "details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#,
            )
        } else {
            Reply::json(200, r#"{"name":"projects/test-project/messages/1"}"#)
        }
    })
    .await;
    // The token endpoint speaks HTTP/1.1 here (gcp_auth's own client), the FCM API HTTP/2.
    let mut oauth = FakeServer::start(None, fake::oauth).await;
    let uri = format!("{}/token", oauth.url());
    let push = PushConfig {
        coalesce_ms: 50,
        preview: false,
        fcm: Some(FcmConfig {
            base_url: google.url(),
            service_account_path: fake::service_account(dir.path(), &uri),
        }),
        ..PushConfig::default()
    };
    let server = Server::start(backend, push, &["alice", "bob"]).await;
    server
        .device("bob", "old")
        .await
        .register("fcm", "dead:token")
        .await;
    server
        .device("bob", "new")
        .await
        .register("fcm", "live:token")
        .await;

    let mut alice = server.device("alice", "laptop").await;
    let ack = alice.send("dm:alice:bob", "secret text").await;
    let mut seen = [google.next(PATIENCE).await, google.next(PATIENCE).await];
    seen.sort_by_key(Recorded::fcm_token);
    let live = &seen[1];
    assert_eq!(live.fcm_token(), "live:token");
    assert_eq!(live.version, Version::HTTP_2);
    assert_eq!(live.path, "/v1/projects/test-project/messages:send");
    let message = &live.json()["message"];
    assert_eq!(
        message["notification"],
        json!({"title": "alice", "body": "New message"})
    );
    assert_eq!(
        message["data"],
        json!({"conv": "dm:alice:bob", "seq": ack["seq"].to_string()})
    );
    assert_eq!(message["android"]["collapse_key"], "dm:alice:bob");
    assert_eq!(message["android"]["notification"]["notification_count"], 1);
    assert_eq!(message["apns"]["payload"]["aps"]["badge"], 1);
    assert_eq!(
        message["apns"]["payload"]["aps"]["thread-id"],
        "dm:alice:bob"
    );
    assert_eq!(
        message["apns"]["headers"]["apns-collapse-id"],
        "dm:alice:bob"
    );
    server.wait_token_gone("dead:token").await;

    alice.send("dm:alice:bob", "two").await;
    alice.send("dm:alice:bob", "three").await;
    let seen = google
        .until(PATIENCE, |r| r.json()["message"]["data"]["seq"] == "3")
        .await;
    assert!(
        seen.iter().all(|r| r.fcm_token() == "live:token"),
        "{seen:#?}"
    );
    // One access token, fetched once with a valid grant and cached since.
    let grants = oauth.pending();
    assert_eq!(grants.len(), 1, "{grants:#?}");
    assert!(String::from_utf8_lossy(&grants[0].body).contains("assertion="));
    server.stop().await;
}

async fn a_429_is_retried_once_after_retry_after(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = ApnsKey::generate(dir.path());
    let calls = AtomicUsize::new(0);
    let mut apple = FakeServer::start(None, move |_| {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Respond(
                429,
                vec![("retry-after", "1".into())],
                r#"{"reason":"TooManyRequests"}"#.into(),
            )
        } else {
            Reply::ok()
        }
    })
    .await;
    // Without Retry-After the first retry would wait 5 s or more.
    let push = PushConfig {
        retry_base_ms: 10_000,
        ..apns_push(&apple, &key)
    };
    let server = Server::start(backend, push, &["alice", "bob"]).await;
    let token = apns_token("29");
    server
        .device("bob", "phone")
        .await
        .register("apns", &token)
        .await;
    let mut alice = server.device("alice", "laptop").await;
    alice.send("dm:alice:bob", "one").await;
    let first = apple.next(PATIENCE).await;
    let retry = apple.next(PATIENCE).await;
    assert_eq!((body(&first), body(&retry)), ("one".into(), "one".into()));
    let waited = retry.at - first.at;
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_millis(4000),
        "retried after {waited:?}"
    );
    alice.send("dm:alice:bob", "two").await;
    assert_eq!(body(&apple.next(PATIENCE).await), "two");
    server.stop().await;
}

async fn an_expired_provider_token_is_signed_again_once(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = ApnsKey::generate(dir.path());
    let calls = AtomicUsize::new(0);
    let mut apple = FakeServer::start(None, move |_| {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::json(403, r#"{"reason":"ExpiredProviderToken"}"#)
        } else {
            Reply::ok()
        }
    })
    .await;
    let server = Server::start(backend, apns_push(&apple, &key), &["alice", "bob"]).await;
    server
        .device("bob", "phone")
        .await
        .register("apns", &apns_token("e1"))
        .await;
    let mut alice = server.device("alice", "laptop").await;
    alice.send("dm:alice:bob", "one").await;
    let refused = apple.next(PATIENCE).await;
    let retried = apple.next(PATIENCE).await;
    let old = key.verify(refused.header("authorization"), KEY_ID, TEAM_ID);
    let new = key.verify(retried.header("authorization"), KEY_ID, TEAM_ID);
    assert_ne!(old, new, "a new provider token after ExpiredProviderToken");
    assert!(retried.at - refused.at < Duration::from_millis(1000));
    alice.send("dm:alice:bob", "two").await;
    let next = apple.next(PATIENCE).await;
    assert_eq!(body(&next), "two");
    assert_eq!(
        key.verify(next.header("authorization"), KEY_ID, TEAM_ID),
        new
    );
    server.stop().await;
}

async fn a_push_server_that_never_answers_delays_no_ack(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = ApnsKey::generate(dir.path());
    let stuck = apns_token("5c");
    let hang = stuck.clone();
    let mut apple = FakeServer::start(None, move |r| {
        if r.apns_token() == hang {
            Reply::Hang
        } else {
            Reply::ok()
        }
    })
    .await;
    let push = PushConfig {
        timeout_ms: 60_000,
        ..apns_push(&apple, &key)
    };
    let server = Server::start(backend, push, &["alice", "bob", "carol"]).await;
    server
        .device("bob", "phone")
        .await
        .register("apns", &stuck)
        .await;
    let fine = apns_token("ca");
    server
        .device("carol", "phone")
        .await
        .register("apns", &fine)
        .await;

    let mut alice = server.device("alice", "laptop").await;
    alice.send("dm:alice:bob", "one").await;
    let hanging = apple.next(PATIENCE).await;
    assert_eq!(hanging.apns_token(), stuck);
    for n in 2..=6 {
        let started = Instant::now();
        alice.send("dm:alice:bob", &format!("message {n}")).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "ack {n} took {:?}",
            started.elapsed()
        );
    }
    // The control: Carol's push goes out; Bob's token never had a second request in flight.
    alice.send("dm:alice:carol", "ping").await;
    let seen = apple.until(PATIENCE, |r| r.apns_token() == fine).await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    // Stopping does not wait for the push server.
    server.stop().await;
}

/// Three bridges share the users (PostgreSQL): a message to an offline user is
/// pushed once per token, by the one bridge that handles the sender, not once
/// per bridge. The control: the push after it is the next message's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_bridges_push_each_message_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = ApnsKey::generate(dir.path());
    let mut apple = FakeServer::start(None, |_| Reply::ok()).await;
    let push = apns_push(&apple, &key);
    let server = Server::start_with_bridges(Backend::Postgres, push, &["alice", "bob"], 3).await;
    let token = apns_token("c3");
    let mut phone = server.device("bob", "phone").await;
    phone.register("apns", &token).await;
    phone.announce(true, true).await;
    phone.announce(false, false).await;
    phone.disconnect().await;
    let mut alice = server.device("alice", "laptop").await;
    for text in ["one", "two", "three"] {
        alice.send("dm:alice:bob", text).await;
        let pushed = apple.next(PATIENCE).await;
        assert_eq!(pushed.apns_token(), token.as_str());
        assert_eq!(body(&pushed), text, "one push per message, in order");
    }
    server.stop().await;
}
