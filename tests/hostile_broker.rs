//! Hostile clients against the embedded broker (issue 17): WebSocket clients that
//! send more than a packet, WebSocket subprotocols, password guessing, and a
//! CONNECT with the reserved flag set.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use async_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use async_tungstenite::tungstenite::protocol::frame::Frame;
use async_tungstenite::tungstenite::Message;
use rumqttc::ConnectReturnCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ws_stream_tungstenite::WsStream;

use crate::util::raw::{self, RawConnection, CONNACK_ACCEPTED};
use crate::util::server::{on_both_engines, Backend};
use crate::util::{
    did, over_transports_and_engines, refusal, uid, TestBroker, TestBrokerBuilder, Transport,
    BRIDGE_PASSWORD, BRIDGE_USER, PATIENCE,
};

/// CONNACK, session not present, refused: bad user name or password.
const CONNACK_BAD_PASSWORD: [u8; 4] = [0x20, 0x02, 0x00, 0x04];

/// A loopback address other than 127.0.0.1, standing for a second client machine.
const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A broker with alice and bob (passwords `alice-pw`, `bob-pw`), their accounts
/// where `backend` keeps them; `.await` it.
fn alice_and_bob(backend: Backend) -> TestBrokerBuilder {
    TestBroker::on(backend).users(&[("alice", "alice-pw"), ("bob", "bob-pw")])
}

over_transports_and_engines!(
    wrong_passwords_lock_out_the_user_not_others,
    failed_sign_ins_lock_out_the_source_address,
    reserved_connect_flag_closes_without_connack,
);

// ---- WebSocket: what a client may make the front hold ----

/// A raw WebSocket client, upgraded with subprotocol `mqtt`.
async fn raw_ws(
    broker: &TestBroker,
) -> async_tungstenite::WebSocketStream<async_tungstenite::tokio::TokioAdapter<TcpStream>> {
    let addr = broker.ws_addr();
    let tcp = TcpStream::connect(addr).await.expect("TCP connect");
    let mut request = format!("ws://{addr}/mqtt")
        .into_client_request()
        .expect("WebSocket request");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    let (ws, _response) = async_tungstenite::tokio::client_async(request, tcp)
        .await
        .expect("WebSocket upgrade");
    ws
}

on_both_engines!(ws_fragments_beyond_one_packet_are_cut);

/// A client that sends an endless fragmented message (64 KiB non-final fragments,
/// no MQTT CONNECT) is cut off once the fragments exceed one MQTT packet (128 KiB),
/// instead of the server holding them all; other clients still sign in. The
/// CONNECT timeout (which would end it anyway) is set beyond the test's patience.
async fn ws_fragments_beyond_one_packet_are_cut(backend: Backend) {
    let broker = alice_and_bob(backend)
        .config(|c| c.connect_timeout_ms = 60_000)
        .await;
    let mut ws = raw_ws(&broker).await;
    let fragment = vec![0x10; 64 * 1024];
    let mut sent = 0usize;
    for i in 0..16 {
        let opcode = if i == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(fragment.clone(), opcode, false);
        if ws.send(Message::Frame(frame)).await.is_err() {
            break;
        }
        sent += fragment.len();
    }
    // Whatever the writes did, the server must end the connection.
    let mut stream = WsStream::new(ws);
    let mut buf = [0u8; 64];
    let ended = tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await;
    assert!(
        matches!(ended, Ok(Ok(0) | Err(_))),
        "connection still open after {sent} bytes of fragments: {ended:?}"
    );
    broker
        .device(Transport::Ws, "alice:phone", "alice-pw")
        .connect()
        .await
        .expect("the server still serves WebSocket clients");
}

on_both_engines!(ws_more_than_one_packet_before_connack_is_cut);

/// A client that sends more than one packet's worth of bytes (here 1 KiB packets,
/// so 17 KiB with the slack: a CONNECT and then 128 KiB of PINGREQs) before the broker has answered its
/// CONNECT is cut off without an answer.
async fn ws_more_than_one_packet_before_connack_is_cut(backend: Backend) {
    let broker = alice_and_bob(backend)
        .config(|c| c.max_packet_bytes = 1024)
        .await;
    let mut conn = RawConnection::open(&broker, Transport::Ws).await;
    // A wrong password: its refusal is held back (1 s), so nothing has answered yet.
    conn.send(&raw::connect_packet("alice:phone", "alice", "wrong"))
        .await;
    let pings: Vec<u8> = raw::PINGREQ.repeat(1024);
    for _ in 0..64 {
        if conn.try_send(&pings).await.is_err() {
            break;
        }
    }
    assert_eq!(conn.recv().await, None, "expected the connection to be cut");
    // A well-behaved client is not affected.
    let mut ok = RawConnection::open(&broker, Transport::Ws).await;
    ok.send(&raw::connect_packet("bob:phone", "bob", "bob-pw"))
        .await;
    assert_eq!(ok.recv().await.as_deref(), Some(&CONNACK_ACCEPTED[..]));
}

// ---- WebSocket: subprotocol negotiation ----

/// Sends an HTTP upgrade offering `protocols` (one `Sec-WebSocket-Protocol`
/// header each) and returns the status code and every subprotocol header of the answer.
async fn upgrade(broker: &TestBroker, protocols: &[&str]) -> (u16, Vec<String>) {
    let addr = broker.ws_addr();
    let mut tcp = TcpStream::connect(addr).await.expect("TCP connect");
    let mut request = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for p in protocols {
        request.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await.expect("read") == 0 {
                break;
            }
            head.push(byte[0]);
        }
    })
    .await
    .expect("an HTTP answer within patience");
    let head = String::from_utf8(head).expect("HTTP head is text");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let offered = lines
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-protocol"))
        .map(|(_, value)| value.trim().to_owned())
        .collect();
    (status, offered)
}

on_both_engines!(ws_subprotocol_mqtt_is_echoed_when_offered);

/// `mqtt` is echoed when offered: alone, among others in one header, or in one of several headers.
async fn ws_subprotocol_mqtt_is_echoed_when_offered(backend: Backend) {
    let broker = alice_and_bob(backend).await;
    for offer in [
        &["mqtt"][..],
        &["foo, mqtt"],
        &["foo,mqtt , bar"],
        &["foo", "mqtt"],
    ] {
        assert_eq!(
            upgrade(&broker, offer).await,
            (101, vec!["mqtt".to_owned()]),
            "{offer:?}"
        );
    }
}

on_both_engines!(ws_without_subprotocol_gets_none);

/// With no subprotocol offered, the upgrade succeeds without one.
async fn ws_without_subprotocol_gets_none(backend: Backend) {
    let broker = alice_and_bob(backend).await;
    assert_eq!(upgrade(&broker, &[]).await, (101, vec![]));
}

on_both_engines!(ws_unknown_subprotocols_are_refused_with_400);

/// Offering only subprotocols the server does not speak gets HTTP 400.
async fn ws_unknown_subprotocols_are_refused_with_400(backend: Backend) {
    let broker = alice_and_bob(backend).await;
    for offer in [&["mqttv3.1"][..], &["foo, bar"], &["foo", "bar"], &["MQTT"]] {
        assert_eq!(upgrade(&broker, offer).await, (400, vec![]), "{offer:?}");
    }
}

// ---- Password guessing ----

/// After 3 wrong passwords (the configured free failures) alice's password
/// sign-ins are refused unchecked for the window (60 s here), even with the right
/// password; each refusal comes after the failure delay. Her device token still
/// works, and bob signs in at once.
async fn wrong_passwords_lock_out_the_user_not_others(transport: Transport, backend: Backend) {
    let broker = alice_and_bob(backend)
        .config(|c| {
            c.sign_in_free_failures = 3;
            c.sign_in_backoff_ms = 60_000;
            c.sign_in_failure_delay_ms = 300;
        })
        .await;
    let token = broker
        .with_accounts(|a| a.issue_token(&uid("alice"), &did("tablet")))
        .await
        .expect("token issued");
    for attempt in 0..3 {
        let started = Instant::now();
        let result = broker
            .device(transport, "alice:phone", &format!("guess-{attempt}"))
            .connect()
            .await;
        assert_eq!(refusal(result), ConnectReturnCode::BadUserNamePassword);
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "a failed sign-in is answered after the delay"
        );
    }
    let result = broker
        .device(transport, "alice:phone", "alice-pw")
        .connect()
        .await;
    assert_eq!(
        refusal(result),
        ConnectReturnCode::BadUserNamePassword,
        "the right password is refused while alice is locked out"
    );
    broker
        .device(transport, "alice:tablet", &token)
        .connect()
        .await
        .expect("device tokens are not throttled");
    broker
        .device(transport, "bob:phone", "bob-pw")
        .connect()
        .await
        .expect("another user signs in");
}

/// After 3 failed sign-ins from one address (unknown users, so no user record),
/// password sign-ins from that address are refused unchecked, even bob's right
/// password, while bob signs in from another address. Over WebSocket this shows
/// the front passes the client's own address on (every piped connection reaches
/// the broker from the front's loopback address). The service account is never
/// locked out.
async fn failed_sign_ins_lock_out_the_source_address(transport: Transport, backend: Backend) {
    let broker = alice_and_bob(backend)
        .config(|c| {
            c.sign_in_free_failures_per_address = 3;
            c.sign_in_backoff_ms = 60_000;
            c.sign_in_failure_delay_ms = 100;
        })
        .await;
    let attempt = |from: Ipv4Addr, user: &'static str, password: &'static str| {
        let broker = &broker;
        async move {
            let mut conn = RawConnection::open_from(broker, transport, from).await;
            let client_id = format!("{user}:phone");
            conn.send(&raw::connect_packet(&client_id, user, password))
                .await;
            conn.recv().await
        }
    };
    for user in ["zed", "yan", "xia"] {
        let answer = attempt(OTHER_HOST, user, "guess").await;
        assert_eq!(answer.as_deref(), Some(&CONNACK_BAD_PASSWORD[..]), "{user}");
    }
    let answer = attempt(OTHER_HOST, "bob", "bob-pw").await;
    assert_eq!(
        answer.as_deref(),
        Some(&CONNACK_BAD_PASSWORD[..]),
        "bob from the locked-out address"
    );
    let answer = attempt(Ipv4Addr::LOCALHOST, "bob", "bob-pw").await;
    assert_eq!(
        answer.as_deref(),
        Some(&CONNACK_ACCEPTED[..]),
        "bob from another address"
    );
    let service_id = format!("{BRIDGE_USER}:main");
    let mut conn = RawConnection::open_from(&broker, transport, OTHER_HOST).await;
    conn.send(&raw::connect_packet(
        &service_id,
        BRIDGE_USER,
        BRIDGE_PASSWORD,
    ))
    .await;
    assert_eq!(conn.recv().await.as_deref(), Some(&CONNACK_ACCEPTED[..]));
}

// ---- CONNECT flags ----

/// A CONNECT with the reserved flag (bit 0 of the connect flags) set ends the
/// connection without a CONNACK (MQTT-3.1.2-3); the same CONNECT without it is accepted.
async fn reserved_connect_flag_closes_without_connack(transport: Transport, backend: Backend) {
    let broker = alice_and_bob(backend).await;
    let good = raw::connect_packet("alice:phone", "alice", "alice-pw");
    // Fixed header (2 bytes: the packet is short), protocol name (6), level (1), flags.
    assert!(good[1] < 0x80, "one-byte remaining length");
    let flags = 2 + 6 + 1;
    assert_eq!(good[flags], 0xC2, "username, password, clean session");
    let mut bad = good.clone();
    bad[flags] |= 0x01;
    let mut conn = RawConnection::open(&broker, transport).await;
    conn.send(&bad).await;
    assert_eq!(conn.recv().await, None, "no CONNACK, connection closed");
    let mut conn = RawConnection::open(&broker, transport).await;
    conn.send(&good).await;
    assert_eq!(conn.recv().await.as_deref(), Some(&CONNACK_ACCEPTED[..]));
}
