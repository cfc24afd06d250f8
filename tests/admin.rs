//! The admin listener of the real binary: `/healthz`, `/readyz` per role,
//! `/metrics` after real traffic, 404 elsewhere, and a busy admin address as
//! bad configuration (exit 64) before anything listens; each on SQLite and on
//! PostgreSQL (where the storage size is the database's).

use std::net::TcpListener;
use std::time::Duration;

use crate::util::client::GRANTED;
use crate::util::process::{free_addr, free_addr_below_ephemeral, is_free, Messenger};
use crate::util::server::{on_both_engines, Backend};
use crate::util::{Transport, PATIENCE};

/// The exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: i32 = 64;

/// How often a wait on the admin listener looks again.
const POLL: Duration = Duration::from_millis(50);

/// The service password `messenger broker` and `messenger bridge` share.
const SERVICE_PASSWORD: &str = "bridge-secret";

pub(crate) use crate::util::process::{get, wait_for_status};

/// The value of one series (`name{labels}` exactly as rendered) in a `/metrics` body.
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
}

on_both_engines!(serve_reports_health_readiness_and_metrics);

/// `serve`: `/healthz` 200, `/readyz` 200 once serving, 404 elsewhere; after a
/// sign-in, a refused sign-in and one sent message, `/metrics` counts them.
async fn serve_reports_health_readiness_and_metrics(backend: Backend) {
    let messenger = Messenger::on(backend);
    for user in ["alice", "bob"] {
        messenger
            .run(&["user", "add", user, "--password", &format!("{user}-pw")])
            .await
            .ok();
    }
    let server = messenger.serve().await;
    assert_eq!(get(server.admin, "/healthz").await.0, 200);
    wait_for_status(&server, "/readyz", 200).await;
    assert_eq!(get(server.admin, "/nope").await.0, 404);
    assert_eq!(get(server.admin, "/").await.0, 404);

    let mut alice = server
        .device(Transport::Tcp, "alice:raw", "alice-pw")
        .connect()
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", server.log()));
    assert!(server
        .device(Transport::Tcp, "alice:other", "wrong")
        .connect()
        .await
        .is_err());
    assert_eq!(alice.subscribe(&["chat/alice/dev/raw"]).await, [GRANTED]);
    let reply = alice
        .reply(
            "alice",
            br#"{"type":"send","id":"m1","conv":"dm:alice:bob","body":"hi"}"#,
        )
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let bad = alice
        .reply(
            "alice",
            br#"{"type":"send","id":"m2","conv":"dm:alice:zed","body":"x"}"#,
        )
        .await;
    assert_eq!(bad["type"], "error", "{bad}");

    let (status, metrics) = get(server.admin, "/metrics").await;
    assert_eq!(status, 200);
    // The bridge's two connections sign in too.
    assert!(
        value(
            &metrics,
            r#"messenger_sign_ins_total{result="accepted",reason=""}"#
        ) >= 3.0,
        "{metrics}"
    );
    assert_eq!(
        value(
            &metrics,
            r#"messenger_sign_ins_total{result="refused",reason="bad_credentials"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &metrics,
            r#"messenger_requests_total{type="send",outcome="ack"}"#
        ),
        1.0
    );
    let code = bad["code"].as_str().expect("an error code");
    assert_eq!(
        value(
            &metrics,
            &format!(r#"messenger_requests_total{{type="send",outcome="{code}"}}"#)
        ),
        1.0
    );
    assert!(value(&metrics, "messenger_messages_stored_total") >= 1.0);
    assert_eq!(value(&metrics, "messenger_connected_devices"), 1.0);
    assert!(value(&metrics, "messenger_commit_batch_size_count") >= 1.0);
    assert!(value(&metrics, "messenger_commit_seconds_count") >= 1.0);
    assert!(value(&metrics, r#"messenger_storage_bytes{file="db"}"#) > 0.0);
    assert_eq!(value(&metrics, "messenger_bridge_subscribed"), 1.0);
    assert!(metrics.contains("# TYPE messenger_commit_seconds histogram"));

    drop(alice);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while value(
        &get(server.admin, "/metrics").await.1,
        "messenger_connected_devices",
    ) != 0.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the device stays counted"
        );
        tokio::time::sleep(POLL).await;
    }
}

on_both_engines!(readiness_follows_the_parts_of_each_role);

/// `messenger broker` alone is ready while it accepts MQTT connections (it runs
/// no bridge and writes nothing). `messenger bridge` alone answers 503 while it
/// is not connected to its broker, 200 once subscribed, and 503 again when the
/// broker goes away; `/healthz` stays 200 throughout.
async fn readiness_follows_the_parts_of_each_role(backend: Backend) {
    let messenger = Messenger::on(backend);
    // The bridge dials the broker before it listens: a port outside the ephemeral range.
    let (mqtt, ws) = (free_addr_below_ephemeral(), free_addr());
    let service = [("MESSENGER_BRIDGE__PASSWORD", SERVICE_PASSWORD)];

    let bridge = messenger.spawn_role("bridge", mqtt, free_addr(), free_addr(), &service);
    let reason = wait_for_status(&bridge, "/readyz", 503).await;
    assert!(reason.contains("not subscribed"), "{reason}");
    assert_eq!(get(bridge.admin, "/healthz").await.0, 200);

    let mut broker = messenger.spawn_role("broker", mqtt, ws, free_addr(), &service);
    broker.wait_until_accepting().await;
    wait_for_status(&broker, "/readyz", 200).await;
    wait_for_status(&bridge, "/readyz", 200).await;

    broker.kill();
    let reason = wait_for_status(&bridge, "/readyz", 503).await;
    assert!(reason.contains("not subscribed"), "{reason}");
    assert_eq!(get(bridge.admin, "/healthz").await.0, 200);
}

on_both_engines!(a_busy_admin_address_exits_64_before_anything_listens);

/// A busy `admin.listen`: exit 64 naming the key, and nothing else listened.
async fn a_busy_admin_address_exits_64_before_anything_listens(backend: Backend) {
    let messenger = Messenger::on(backend);
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = busy.local_addr().expect("addr");
    let (mqtt, ws) = (free_addr(), free_addr());
    for role in ["serve", "broker"] {
        let mut cmd = messenger.command(&[role]);
        cmd.env("MESSENGER_ADMIN__LISTEN", admin.to_string())
            .env("MESSENGER_BROKER__LISTEN", mqtt.to_string())
            .env("MESSENGER_BROKER__WS_LISTEN", ws.to_string());
        let outcome = messenger.run_command(cmd).await;
        assert_eq!(
            outcome.status.code(),
            Some(EXIT_CONFIG),
            "{role}: {outcome:#?}"
        );
        assert!(
            outcome.stderr.contains("admin.listen"),
            "{role}: {outcome:#?}"
        );
        assert!(
            !outcome.stderr.contains("listening"),
            "{role}: {outcome:#?}"
        );
        assert!(is_free(mqtt) && is_free(ws), "{role}");
    }
    // A malformed address is bad configuration too.
    let mut cmd = messenger.command(&["serve"]);
    cmd.env("MESSENGER_ADMIN__LISTEN", "localhost");
    let outcome = messenger.run_command(cmd).await;
    assert_eq!(outcome.status.code(), Some(EXIT_CONFIG), "{outcome:#?}");
    assert!(outcome.stderr.contains("admin.listen"), "{outcome:#?}");
}
