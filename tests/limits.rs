//! Abuse limits of the real binary: per-user rates of sends, group creations and
//! token requests (`rate_limited` with `retry_after_ms`, nothing stored, service
//! resumes), connected devices per user (CONNACK 5), connections per address
//! (CONNACK 3, WebSocket clients included), the sign-in lockout that spares a
//! user's known address, and bad limit settings (exit 64). On both engines.

use std::time::Duration;

use rumqttc::ConnectReturnCode;
use serde_json::Value;

use crate::admin::wait_for_status;
use crate::util::client::{Client, GRANTED};
use crate::util::process::{free_addr, free_addr_below_ephemeral, Messenger, Server};
use crate::util::server::{on_both_engines, Backend};
use crate::util::{refusal, Transport, PATIENCE};

on_both_engines!(
    sends_over_the_rate_are_refused_with_a_wait_then_resume,
    the_client_library_waits_out_the_rate_and_sends_each_message_once,
    group_creations_and_token_requests_are_limited_then_resume,
    a_user_has_at_most_max_devices_connected,
    an_address_has_at_most_max_connections_per_ip,
    web_connections_per_address_are_bounded_too,
    guessing_a_password_locks_the_user_out_briefly_but_not_at_their_own_address,
    bad_limit_settings_exit_64_naming_the_key,
    uploads_are_limited_then_resume,
);

/// How often a poll for service to resume looks again.
const POLL: Duration = Duration::from_millis(50);

/// A server on `backend`'s engine with these users (password `<user>-pw`) and
/// settings, ready for requests.
pub(crate) async fn serve_with(
    backend: Backend,
    users: &[&str],
    env: &[(&str, &str)],
) -> (Messenger, Server) {
    let messenger = Messenger::on(backend);
    for user in users {
        messenger
            .run(&["user", "add", user, "--password", &format!("{user}-pw")])
            .await
            .ok();
    }
    let mut server = messenger.spawn_role(
        "serve",
        free_addr_below_ephemeral(),
        free_addr(),
        free_addr(),
        env,
    );
    server.wait_until_accepting().await;
    wait_for_status(&server, "/readyz", 200).await;
    (messenger, server)
}

/// `user`'s raw device (client id `<user>:raw`), subscribed to its replies.
pub(crate) async fn raw_device(server: &Server, user: &str) -> Client {
    let mut device = server
        .device(
            Transport::Tcp,
            &format!("{user}:raw"),
            &format!("{user}-pw"),
        )
        .connect()
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", server.log()));
    assert_eq!(
        device.subscribe(&[&format!("chat/{user}/dev/raw")]).await,
        [GRANTED]
    );
    device
}

/// Publishes `request` as `user` until its reply is not `rate_limited` (each
/// refusal must carry `retry_after_ms`, waited out before the next try), within
/// [`PATIENCE`]; returns that reply.
async fn until_admitted(device: &mut Client, user: &str, request: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let reply = device.reply(user, request.as_bytes()).await;
        if reply["code"] != "rate_limited" {
            return reply;
        }
        let wait = reply["retry_after_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("rate_limited without retry_after_ms: {reply}"));
        assert!(
            tokio::time::Instant::now() < deadline,
            "still rate_limited after {PATIENCE:?}: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(wait).max(POLL)).await;
    }
}

/// Asserts a `rate_limited` error for `id` whose wait is within `(0, max_ms]`.
fn assert_limited(reply: &Value, id: &str, max_ms: u64) {
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "rate_limited", "{reply}");
    assert_eq!(reply["id"], id, "{reply}");
    let wait = reply["retry_after_ms"].as_u64().unwrap_or(0);
    assert!(
        (1..=max_ms).contains(&wait),
        "retry_after_ms {wait}: {reply}"
    );
}

/// Rows of `table` matching `filter` in the installation's database (its
/// PostgreSQL database, or its SQLite file): SQL both take (`"user"` quoted,
/// `TRUE`/`FALSE`).
pub(crate) fn count(messenger: &Messenger, table: &str, filter: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE {filter}");
    match messenger.postgres_url() {
        Some(url) => crate::util::postgres::blocking(|| {
            postgres::Client::connect(url, postgres::NoTls)
                .expect("connect to PostgreSQL")
                .query_one(&sql, &[])
                .and_then(|row| row.try_get(0))
                .expect("count")
        }),
        None => rusqlite::Connection::open(messenger.db())
            .expect("open the database")
            .query_row(&sql, [], |r| r.get(0))
            .expect("count"),
    }
}

fn send(id: &str, body: &str) -> String {
    format!(r#"{{"type":"send","id":"{id}","conv":"dm:alice:bob","body":"{body}"}}"#)
}

async fn sends_over_the_rate_are_refused_with_a_wait_then_resume(backend: Backend) {
    let (messenger, server) = serve_with(
        backend,
        &["alice", "bob"],
        &[
            ("MESSENGER_LIMITS__SENDS_PER_SEC", "1"),
            ("MESSENGER_LIMITS__SENDS_BURST", "3"),
        ],
    )
    .await;
    let mut alice = raw_device(&server, "alice").await;
    for i in 1..=3 {
        let ack = alice
            .reply("alice", send(&format!("m{i}"), "hi").as_bytes())
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["seq"], i, "{ack}");
    }
    let refused = alice.reply("alice", send("m4", "over").as_bytes()).await;
    assert_limited(&refused, "m4", 1000);
    // An edit and a reaction store timeline events too: they count as sends.
    let edit = alice
        .reply(
            "alice",
            br#"{"type":"edit","id":"e1","conv":"dm:alice:bob","target":1,"body":"hey"}"#,
        )
        .await;
    assert_limited(&edit, "e1", 1000);
    // A device's retry of a stored send still gets its ack, limited or not.
    let repeat = alice.reply("alice", send("m2", "hi").as_bytes()).await;
    assert_eq!(
        (repeat["type"].as_str(), repeat["seq"].as_u64()),
        (Some("ack"), Some(2)),
        "{repeat}"
    );
    // Nothing of the refused requests was stored.
    assert_eq!(count(&messenger, "events", "conv = 'dm:alice:bob'"), 3);
    assert_eq!(
        count(&messenger, "events", "body = 'over' OR kind = 'edit'"),
        0
    );
    // Other users have their own allowance.
    let mut bob = raw_device(&server, "bob").await;
    let ack = bob
        .reply(
            "bob",
            br#"{"type":"send","id":"b1","conv":"dm:alice:bob","body":"yo"}"#,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    // Once the allowance refills, the same request goes through, stored once.
    let ack = until_admitted(&mut alice, "alice", &send("m4", "over")).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["seq"], 5, "{ack}");
    assert_eq!(count(&messenger, "events", "body = 'over'"), 1);
}

async fn the_client_library_waits_out_the_rate_and_sends_each_message_once(backend: Backend) {
    let (messenger, server) = serve_with(
        backend,
        &["alice", "bob"],
        &[
            ("MESSENGER_LIMITS__SENDS_PER_SEC", "4"),
            ("MESSENGER_LIMITS__SENDS_BURST", "1"),
        ],
    )
    .await;
    let config = messenger_client::ClientConfig::new(
        server.mqtt.to_string(),
        crate::util::uid("alice"),
        crate::util::did("phone"),
        "alice-pw",
    );
    let (client, _events) = messenger_client::Client::connect(config)
        .await
        .expect("alice signs in");
    let conv = messenger_protocol::ConvId::parse("dm:alice:bob").expect("conv");
    // One at once, then one every 250 ms: each send after the first is refused
    // once or more, and the library retries it after the server's wait.
    for i in 1..=4u64 {
        let ack = client.send(&conv, &format!("m{i}")).await.expect("sent");
        assert_eq!(ack.seq, i);
    }
    client.disconnect().await;
    assert_eq!(count(&messenger, "events", "conv = 'dm:alice:bob'"), 4);
}

async fn group_creations_and_token_requests_are_limited_then_resume(backend: Backend) {
    let (messenger, server) = serve_with(
        backend,
        &["alice", "bob"],
        &[
            // One a second (3600 an hour, 60 a minute), two at once.
            ("MESSENGER_LIMITS__GROUP_CREATES_PER_HOUR", "3600"),
            ("MESSENGER_LIMITS__GROUP_CREATES_BURST", "2"),
            ("MESSENGER_LIMITS__TOKEN_REQUESTS_PER_MIN", "60"),
            ("MESSENGER_LIMITS__TOKEN_REQUESTS_BURST", "2"),
        ],
    )
    .await;
    let mut alice = raw_device(&server, "alice").await;
    let create =
        |id: &str| format!(r#"{{"type":"group_create","id":"{id}","name":"g","members":["bob"]}}"#);
    for id in ["g1", "g2"] {
        let ack = alice.reply("alice", create(id).as_bytes()).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let refused = alice.reply("alice", create("g3").as_bytes()).await;
    assert_limited(&refused, "g3", 1000);
    assert_eq!(count(&messenger, "conversations", "kind = 'group'"), 2);
    let repeat = alice.reply("alice", create("g1").as_bytes()).await;
    assert_eq!(repeat["type"], "ack", "a repeat is answered: {repeat}");
    let ack = until_admitted(&mut alice, "alice", &create("g3")).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(count(&messenger, "conversations", "kind = 'group'"), 3);

    let token = |id: &str| format!(r#"{{"type":"token","id":"{id}"}}"#);
    for id in ["t1", "t2"] {
        let reply = alice.reply("alice", token(id).as_bytes()).await;
        assert_eq!(reply["type"], "token", "{reply}");
    }
    let refused = alice.reply("alice", token("t3").as_bytes()).await;
    assert_limited(&refused, "t3", 1000);
    let reply = until_admitted(&mut alice, "alice", &token("t4")).await;
    assert_eq!(reply["type"], "token", "{reply}");
    // The token issued last is the device's password now.
    let issued = reply["token"].as_str().expect("a token").to_owned();
    drop(alice);
    server
        .device(Transport::Tcp, "alice:raw", &issued)
        .connect()
        .await
        .unwrap_or_else(|err| panic!("the new token signs in: {err}"));
}

/// Connects `client_id` with `password`, retrying a refusal with `code` until
/// accepted, within [`PATIENCE`].
async fn connect_once_room(
    server: &Server,
    transport: Transport,
    client_id: &str,
    password: &str,
    code: ConnectReturnCode,
) -> Client {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match server
            .device(transport, client_id, password)
            .connect()
            .await
        {
            Ok(client) => return client,
            Err(rumqttc::ConnectionError::ConnectionRefused(got)) if got == code => {}
            Err(err) => panic!("{client_id}: {err}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{client_id} still refused after {PATIENCE:?}:\n{}",
            server.log()
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn a_user_has_at_most_max_devices_connected(backend: Backend) {
    let (_messenger, server) = serve_with(
        backend,
        &["alice", "bob"],
        &[("MESSENGER_LIMITS__MAX_DEVICES", "2")],
    )
    .await;
    let device = |id: &str| server.device(Transport::Tcp, &format!("alice:{id}"), "alice-pw");
    let phone = device("phone").connect().await.expect("first device");
    let _laptop = device("laptop").connect().await.expect("second device");
    let refused = refusal(device("tablet").connect().await);
    assert_eq!(refused, ConnectReturnCode::NotAuthorized);
    assert!(
        server.log().contains("too many devices connected"),
        "{}",
        server.log()
    );
    // The same device reconnecting takes its own place; other users are not affected.
    let phone_again = device("phone")
        .connect()
        .await
        .expect("a device replaces its own connection");
    server
        .device(Transport::Ws, "bob:phone", "bob-pw")
        .connect()
        .await
        .expect("bob has his own count");
    drop(phone);
    drop(phone_again);
    // A place comes free when a device leaves.
    connect_once_room(
        &server,
        Transport::Ws,
        "alice:tablet",
        "alice-pw",
        ConnectReturnCode::NotAuthorized,
    )
    .await;
}

async fn an_address_has_at_most_max_connections_per_ip(backend: Backend) {
    let (_messenger, server) = serve_with(
        backend,
        &["alice", "bob", "carol"],
        &[("MESSENGER_BROKER__MAX_CONNECTIONS_PER_IP", "2")],
    )
    .await;
    // The bridge's own two connections are not counted.
    let alice = server
        .device(Transport::Tcp, "alice:phone", "alice-pw")
        .connect()
        .await
        .expect("first connection");
    let _bob = server
        .device(Transport::Ws, "bob:phone", "bob-pw")
        .connect()
        .await
        .expect("second connection, through the WebSocket front");
    for transport in [Transport::Tcp, Transport::Ws] {
        let refused = refusal(
            server
                .device(transport, "carol:phone", "carol-pw")
                .connect()
                .await,
        );
        assert_eq!(
            refused,
            ConnectReturnCode::ServiceUnavailable,
            "{transport:?}"
        );
    }
    assert!(
        server
            .log()
            .contains("too many connections from one address"),
        "{}",
        server.log()
    );
    drop(alice);
    connect_once_room(
        &server,
        Transport::Ws,
        "carol:phone",
        "carol-pw",
        ConnectReturnCode::ServiceUnavailable,
    )
    .await;
}

/// The web listener's HTTP connections count against the same bound, apart from
/// MQTT: one over it is closed at once (not after the head timeout), and once one
/// closes a new one is served.
async fn web_connections_per_address_are_bounded_too(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let (_messenger, server) = serve_with(
        backend,
        &[],
        &[
            ("MESSENGER_BROKER__MAX_CONNECTIONS_PER_IP", "2"),
            ("MESSENGER_BROKER__WS_HANDSHAKE_TIMEOUT_MS", "60000"),
        ],
    )
    .await;
    // The count is taken in each connection's own task: which of three is
    // refused is not fixed, so wait for whichever closes.
    let started = std::time::Instant::now();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(TcpStream::connect(server.ws).await.expect("connect"));
    }
    let refused = closed_one(&mut open).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "at once, not by the head timeout"
    );
    open.remove(refused);
    // Two are still counted: a fourth is refused too.
    let mut fourth = vec![TcpStream::connect(server.ws).await.expect("connect")];
    closed_one(&mut fourth).await;
    let first = open.remove(0);
    drop(first);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut tcp = TcpStream::connect(server.ws).await.expect("connect");
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.ws
        );
        let _ = tcp.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer)).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (within patience) until the server closes one of `connections`; its index.
async fn closed_one(connections: &mut [tokio::net::TcpStream]) -> usize {
    use tokio::io::AsyncReadExt;
    let reads = connections.iter_mut().enumerate().map(|(i, tcp)| {
        let read: ReadFuture<'_> = Box::pin(async move {
            let mut byte = [0u8; 1];
            match tcp.read(&mut byte).await {
                Ok(0) | Err(_) => i,
                Ok(_) => panic!("the server sent bytes unasked"),
            }
        });
        read
    });
    tokio::time::timeout(PATIENCE, futures_select_all(reads.collect()))
        .await
        .expect("one connection closed within patience")
}

/// A read that ends with its connection's index.
type ReadFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send + 'a>>;

/// The index of the first of `futures` to finish.
async fn futures_select_all(futures: Vec<ReadFuture<'_>>) -> usize {
    let mut set = futures;
    std::future::poll_fn(move |cx| {
        for future in &mut set {
            if let std::task::Poll::Ready(i) = future.as_mut().poll(cx) {
                return std::task::Poll::Ready(i);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

async fn guessing_a_password_locks_the_user_out_briefly_but_not_at_their_own_address(
    backend: Backend,
) {
    let (_messenger, server) = serve_with(
        backend,
        &["alice", "carol"],
        &[
            ("MESSENGER_BROKER__SIGN_IN_FREE_FAILURES", "2"),
            ("MESSENGER_BROKER__SIGN_IN_BACKOFF_MS", "2000"),
            ("MESSENGER_BROKER__SIGN_IN_MAX_BACKOFF_MS", "2000"),
            ("MESSENGER_BROKER__SIGN_IN_FAILURE_DELAY_MS", "0"),
        ],
    )
    .await;
    // alice signed in from this address before; carol never did.
    drop(
        server
            .device(Transport::Tcp, "alice:phone", "alice-pw")
            .connect()
            .await
            .expect("alice signs in"),
    );
    for user in ["alice", "carol"] {
        for _ in 0..2 {
            let refused = refusal(
                server
                    .device(Transport::Tcp, &format!("{user}:x"), "guess")
                    .connect()
                    .await,
            );
            assert_eq!(refused, ConnectReturnCode::BadUserNamePassword);
        }
    }
    // carol is locked out for the window, even with her password ...
    let refused = refusal(
        server
            .device(Transport::Tcp, "carol:phone", "carol-pw")
            .connect()
            .await,
    );
    assert_eq!(refused, ConnectReturnCode::BadUserNamePassword);
    assert!(
        server.log().contains("too many failed sign-ins"),
        "{}",
        server.log()
    );
    // ... alice, at the address she used, is not.
    server
        .device(Transport::Tcp, "alice:phone", "alice-pw")
        .connect()
        .await
        .expect("alice's own address is spared her lockout");
    // The lockout ends with its window.
    connect_once_room(
        &server,
        Transport::Tcp,
        "carol:phone",
        "carol-pw",
        ConnectReturnCode::BadUserNamePassword,
    )
    .await;
}

async fn bad_limit_settings_exit_64_naming_the_key(backend: Backend) {
    let messenger = Messenger::on(backend);
    for (env, named) in [
        (
            &[("MESSENGER_LIMITS__MAX_DEVICES", "51")][..],
            "limits.max_devices",
        ),
        (
            &[("MESSENGER_LIMITS__MAX_DEVICES", "0")][..],
            "limits.max_devices",
        ),
        (
            &[
                ("MESSENGER_LIMITS__SENDS_PER_SEC", "5"),
                ("MESSENGER_LIMITS__SENDS_BURST", "0"),
            ][..],
            "limits.sends_burst",
        ),
        (
            &[("MESSENGER_LIMITS__GROUP_CREATES_BURST", "0")][..],
            "limits.group_creates_burst",
        ),
        (
            &[("MESSENGER_LIMITS__TOKEN_REQUESTS_PER_MIN", "-1")][..],
            "token_requests_per_min",
        ),
        (
            &[("MESSENGER_BROKER__MAX_CONNECTIONS_PER_IP", "many")][..],
            "max_connections_per_ip",
        ),
    ] {
        // A bad setting stops the process before it listens; one that is wrongly
        // accepted leaves it running, and the wait below fails (the drop kills it).
        let mut server = messenger.spawn_role("serve", free_addr(), free_addr(), free_addr(), env);
        let status = server.exit_status(PATIENCE).await;
        assert_eq!(status.code(), Some(64), "{env:?}: {}", server.log());
        assert!(server.log().contains(named), "{env:?}: {}", server.log());
    }
}

/// `limits.uploads_per_min`: over it `POST /files` is `429` with
/// `retry_after_ms` and nothing is stored; after the wait uploads go on.
async fn uploads_are_limited_then_resume(backend: Backend) {
    let (messenger, mut server) = serve_with(
        backend,
        &["alice"],
        &[
            // One a second, two at once.
            ("MESSENGER_LIMITS__UPLOADS_PER_MIN", "60"),
            ("MESSENGER_LIMITS__UPLOADS_BURST", "2"),
        ],
    )
    .await;
    server.wait_until_accepting_on(server.ws).await;
    let web = messenger_client::WebFiles {
        web: server.ws.to_string(),
        user: crate::util::uid("alice"),
        secret: "alice-pw".to_owned(),
        tls: None,
    };
    let stored = || {
        std::fs::read_dir(messenger.dir().join("data").join("files"))
            .map(|entries| entries.flatten().count())
            .unwrap_or(0)
    };
    let upload = |n: u32| {
        let path = messenger.dir().join(format!("upload-{n}"));
        std::fs::write(&path, format!("upload number {n}")).expect("write the upload");
        let web = web.clone();
        async move { web.upload(&path, "text/plain").await }
    };
    for n in 1..=2 {
        upload(n).await.expect("within the burst");
    }
    assert_eq!(stored(), 2);
    let refused = upload(3).await.expect_err("over the limit");
    let messenger_client::ClientError::Http { status, message } = refused else {
        panic!("not an HTTP refusal: {refused:?}");
    };
    assert_eq!(status, 429, "{message}");
    let error: Value = serde_json::from_str(&message).expect("a JSON error");
    assert_eq!(error["code"], "rate_limited", "{error}");
    let wait = error["retry_after_ms"].as_u64().unwrap_or(0);
    assert!((1..=1000).contains(&wait), "{error}");
    assert_eq!(stored(), 2, "a refused upload stores nothing");

    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match upload(4).await {
            Ok(_) => break,
            Err(messenger_client::ClientError::Http { status: 429, .. }) => {
                assert!(tokio::time::Instant::now() < deadline, "still limited");
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            Err(err) => panic!("{err}"),
        }
    }
    assert_eq!(stored(), 3);
}
