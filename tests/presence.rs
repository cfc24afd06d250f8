//! Presence end to end: last wills, the bridge's device table, the retained
//! aggregate on `status/<user>`, reconciliation after restarts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use messenger_client::ClientEvent;
use messenger_protocol::wire::Status;

use crate::util::proxy::FreezingProxy;
use crate::util::server::{expect, on_both_engines, on_engines_and_cluster, Backend, TestServer};
use crate::util::{uid, PATIENCE};

on_engines_and_cluster!(
    user_goes_offline_only_when_the_last_device_goes,
    a_half_open_connection_is_declared_dead,
    a_clean_disconnect_turns_the_user_offline,
);

on_both_engines!(
    status_is_right_after_a_bridge_restart,
    a_device_without_a_connection_is_reconciled_offline,
);

const USERS: &[(&str, &str)] = &[("alice", "alice-pw"), ("bob", "bob-pw")];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Waits for alice's status to say `online`.
async fn status(events: &mut messenger_client::EventStream, online: bool) -> Status {
    expect(events, |e| match e {
        ClientEvent::Status(s) if s.user.as_str() == "alice" && s.online == online => Some(s),
        _ => None,
    })
    .await
}

/// Follows alice's status; returns once the broker holds the subscription: a
/// request sent after it is answered (a broker handles one connection's
/// packets in order). A NATS node sets a subscription up as a JetStream
/// consumer, and a status published meanwhile can be missed.
async fn follow_alice(client: &messenger_client::Client) {
    client
        .subscribe_status(&uid("alice"))
        .await
        .expect("subscribe");
    client
        .blocks()
        .await
        .expect("a request after the subscription is answered");
}

/// A plain MQTT device of alice's with the presence last will, `online` published.
async fn device(
    server: &TestServer,
    name: &str,
    keepalive: Duration,
    via: Option<std::net::SocketAddr>,
) -> crate::util::Client {
    let client_id = format!("alice:{name}");
    let addr = via.unwrap_or_else(|| server.addr());
    let mut options = crate::util::ClientOptions::new(
        (addr, addr),
        crate::util::Transport::Tcp,
        &client_id,
        "alice-pw",
    )
    .will(&format!("presence/alice/{name}"), "offline");
    options.tune(|o| {
        o.set_keep_alive(keepalive).set_clean_session(false);
    });
    let mut client = options.connect().await.expect("device connects");
    client
        .publish(&format!("presence/alice/{name}"), "online", true)
        .await;
    client
}

/// Polls the bridge's device table until `device` has the state `online`.
async fn bridge_sees(server: &TestServer, device: &str, online: bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let state = server.device_online("alice", device).await;
        if state == Some(online) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bridge never saw {device} online={online}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn user_goes_offline_only_when_the_last_device_goes(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let (bob, mut bob_events) = server.device("bob", "bob-pw", "phone").await;
    follow_alice(&bob).await;
    let phone = device(&server, "phone", Duration::from_secs(5), None).await;
    let laptop = device(&server, "laptop", Duration::from_secs(5), None).await;
    assert!(status(&mut bob_events, true).await.online);
    bridge_sees(&server, "laptop", true).await;

    // The phone's socket closes without DISCONNECT: its will fires, alice stays online.
    drop(phone);
    bridge_sees(&server, "phone", false).await;
    let before_last = now_ms();
    drop(laptop);
    let offline = status(&mut bob_events, false).await;
    let last_seen = offline.last_seen.expect("last_seen is set");
    assert!(
        last_seen >= before_last && last_seen <= now_ms(),
        "last_seen {last_seen} not when the laptop went"
    );

    // A later subscriber gets the retained status.
    let (carol_view, mut later) = server.device("bob", "bob-pw", "tablet").await;
    follow_alice(&carol_view).await;
    let retained = status(&mut later, false).await;
    assert_eq!(retained.last_seen, Some(last_seen));

    // Coming back turns alice online again.
    let _phone = device(&server, "phone", Duration::from_secs(5), None).await;
    assert!(status(&mut bob_events, true).await.online);
}

async fn a_half_open_connection_is_declared_dead(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let (bob, mut bob_events) = server.device("bob", "bob-pw", "phone").await;
    follow_alice(&bob).await;
    let proxy = FreezingProxy::start(server.addr()).await;
    let _phone = device(&server, "phone", Duration::from_secs(1), Some(proxy.addr())).await;
    status(&mut bob_events, true).await;
    let frozen_at = now_ms();
    proxy.freeze();
    // The broker gives up after 1.5 x keepalive and fires the will.
    let offline = status(&mut bob_events, false).await;
    // 1.5 x keepalive after the last packet, which came at most one keepalive
    // before the freeze.
    assert!(offline.last_seen.expect("last_seen") >= frozen_at + 500);
}

async fn a_clean_disconnect_turns_the_user_offline(backend: Backend) {
    let server = TestServer::start(backend, USERS).await;
    let (bob, mut bob_events) = server.device("bob", "bob-pw", "phone").await;
    follow_alice(&bob).await;
    let (alice, _events) = server.device("alice", "alice-pw", "phone").await;
    status(&mut bob_events, true).await;
    alice.disconnect().await;
    status(&mut bob_events, false).await;
    let (_alice, _events) = server.device("alice", "alice-pw", "phone").await;
    status(&mut bob_events, true).await;
}

async fn status_is_right_after_a_bridge_restart(backend: Backend) {
    let mut server = TestServer::build(backend, USERS, Default::default(), 1).await;
    let (bob, mut bob_events) = server.device("bob", "bob-pw", "phone").await;
    follow_alice(&bob).await;
    let phone = device(&server, "phone", Duration::from_secs(5), None).await;
    status(&mut bob_events, true).await;
    bridge_sees(&server, "phone", true).await;

    // The device goes while the bridge is down: the broker keeps the will for it.
    server.stop_bridge().await;
    drop(phone);
    server.start_bridge().await;
    status(&mut bob_events, false).await;
}

async fn a_device_without_a_connection_is_reconciled_offline(backend: Backend) {
    // The bridge's table says online, but the broker has no such connection (as
    // after the whole server restarted): within one keepalive period it is corrected.
    let mut server = TestServer::build(backend, USERS, Default::default(), 1).await;
    let (bob, mut bob_events) = server.device("bob", "bob-pw", "phone").await;
    follow_alice(&bob).await;
    server.stop_bridge().await;
    server
        .execute(
            "INSERT INTO devices (\"user\", device, online, changed_ms) VALUES ('alice', 'ghost', TRUE, 0);
             INSERT INTO presence (\"user\", online, last_seen) VALUES ('alice', TRUE, NULL);",
        )
        .await;
    server.start_bridge().await;
    let offline = status(&mut bob_events, false).await;
    assert!(offline.last_seen.is_some());
}
