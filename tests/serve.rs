//! `messenger serve` as a process: it starts, signs clients in, stops on SIGTERM,
//! and refuses bad configuration (exit 64) before binding anything; on SQLite
//! and on PostgreSQL.

use std::time::Duration;

use rumqttc::ConnectReturnCode;

use crate::util::client::GRANTED;
use crate::util::process::{free_addr, is_free, Messenger};
use crate::util::{refusal, Transport};

use crate::util::server::Backend;

crate::util::server::on_both_engines!(serve_signs_clients_in_and_stops_on_sigterm,);

/// How long `serve` may take to stop after SIGTERM.
const STOP_PATIENCE: Duration = Duration::from_secs(5);

/// The exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: i32 = 64;

/// `serve` accepts a user added from the CLI over TCP and WebSocket, refuses a
/// wrong password, and exits 0 within seconds of SIGTERM, releasing its ports.
async fn serve_signs_clients_in_and_stops_on_sigterm(backend: Backend) {
    let messenger = Messenger::on(backend);
    messenger
        .run(&["user", "add", "alice", "--password", "alice-pw"])
        .await
        .ok();
    let mut server = messenger.serve().await;

    // One device per transport: rumqttd may cut a new connection that takes over
    // the client id of one closing at the same instant (a stale disconnect).
    for (transport, client_id) in [
        (Transport::Tcp, "alice:phone"),
        (Transport::Ws, "alice:web"),
    ] {
        let mut alice = server
            .device(transport, client_id, "alice-pw")
            .connect()
            .await
            .unwrap_or_else(|err| panic!("{transport:?}: {err}\n{}", server.log()));
        assert_eq!(alice.subscribe(&["chat/alice/inbox"]).await, [GRANTED]);
        let result = server
            .device(transport, "alice:tablet", "wrong")
            .connect()
            .await;
        assert_eq!(refusal(result), ConnectReturnCode::BadUserNamePassword);
    }

    server.terminate();
    let status = server.exit_status(STOP_PATIENCE).await;
    assert!(status.success(), "{status}:\n{}", server.log());
    assert!(is_free(server.mqtt) && is_free(server.ws));
}

crate::util::server::on_both_engines!(unknown_config_key_exits_64_without_binding);

/// An unknown key in a `--config` file: exit 64 naming the key, nothing bound.
async fn unknown_config_key_exits_64_without_binding(backend: Backend) {
    let messenger = Messenger::on(backend);
    let (mqtt, ws) = (free_addr(), free_addr());
    let file = messenger.dir().join("bad.toml");
    std::fs::write(
        &file,
        format!("[broker]\nlisten = \"{mqtt}\"\nws_listen = \"{ws}\"\nlistne = \"{mqtt}\"\n"),
    )
    .expect("write config");
    let config = file.to_string_lossy();

    let outcome = messenger.run(&["--config", &config, "serve"]).await;
    assert_eq!(outcome.status.code(), Some(EXIT_CONFIG), "{outcome:#?}");
    assert!(outcome.stderr.contains("listne"), "{outcome:#?}");
    assert!(!outcome.stderr.contains("listening"), "{outcome:#?}");
    assert!(is_free(mqtt) && is_free(ws));

    // The same file without the typo is fine (checked without serving: `acl` loads it too).
    std::fs::write(&file, format!("[broker]\nlisten = \"{mqtt}\"\n")).expect("write config");
    messenger.run(&["--config", &config, "acl"]).await.ok();
    // A --config file that does not exist is bad configuration too.
    let outcome = messenger.run(&["--config", "missing.toml", "serve"]).await;
    assert_eq!(outcome.status.code(), Some(EXIT_CONFIG), "{outcome:#?}");
    assert!(outcome.stderr.contains("missing.toml"), "{outcome:#?}");
}

crate::util::server::on_both_engines!(bad_listen_address_in_environment_exits_64);

/// A bad address in `MESSENGER_BROKER__LISTEN`: exit 64 naming `broker.listen`,
/// and the WebSocket port given next to it stays free.
async fn bad_listen_address_in_environment_exits_64(backend: Backend) {
    let messenger = Messenger::on(backend);
    let ws = free_addr();
    for bad in ["nowhere", "127.0.0.1", "127.0.0.1:99999"] {
        let mut cmd = messenger.command(&["serve"]);
        cmd.env("MESSENGER_BROKER__LISTEN", bad)
            .env("MESSENGER_BROKER__WS_LISTEN", ws.to_string());
        let outcome = messenger.run_command(cmd).await;
        assert_eq!(
            outcome.status.code(),
            Some(EXIT_CONFIG),
            "{bad}: {outcome:#?}"
        );
        assert!(
            outcome.stderr.contains("broker.listen"),
            "{bad}: {outcome:#?}"
        );
        assert!(is_free(ws));
    }
}

crate::util::server::on_both_engines!(a_failing_bridge_stops_serve_with_the_part_named);

/// A part of `serve` that fails is noticed: the bridge's writer is made to panic
/// at its first batch (a debug-build test hook: a `<database>.fail-writer` file),
/// and the process logs the part and why, stops the broker and exits non-zero,
/// without waiting for a signal.
async fn a_failing_bridge_stops_serve_with_the_part_named(backend: Backend) {
    let messenger = Messenger::on(backend);
    messenger
        .run(&["user", "add", "alice", "--password", "alice-pw"])
        .await
        .ok();
    // Beside `storage.path`, which names the file on PostgreSQL too.
    let db = messenger.db();
    std::fs::create_dir_all(db.parent().expect("a directory")).expect("data dir");
    let mut marker = db.into_os_string();
    marker.push(".fail-writer");
    std::fs::write(&marker, b"").expect("marker");
    let mut server = messenger.spawn_serve(free_addr(), free_addr());
    let status = server.exit_status(crate::util::PATIENCE).await;
    let log = server.log();
    assert!(!status.success(), "{status}:\n{log}");
    assert_ne!(status.code(), Some(EXIT_CONFIG), "{log}");
    assert!(
        log.contains("part=\"bridge\"") && log.contains("writer") && log.contains("panicked"),
        "{log}"
    );
    assert!(is_free(server.mqtt) && is_free(server.ws));
}

crate::util::server::on_both_engines!(an_unparsable_bridge_broker_exits_64_without_binding);

/// Bad `[bridge]` settings found only by parsing them: exit 64 naming the key,
/// before anything listens.
async fn an_unparsable_bridge_broker_exits_64_without_binding(backend: Backend) {
    let messenger = Messenger::on(backend);
    let (mqtt, ws) = (free_addr(), free_addr());
    let mut cmd = messenger.command(&["bridge"]);
    cmd.env("MESSENGER_BRIDGE__BROKER", "no-port-here");
    let outcome = messenger.run_command(cmd).await;
    assert_eq!(outcome.status.code(), Some(EXIT_CONFIG), "{outcome:#?}");
    assert!(outcome.stderr.contains("bridge.broker"), "{outcome:#?}");
    // `serve` checks it too, although it uses its own broker.
    let mut cmd = messenger.command(&["serve"]);
    cmd.env("MESSENGER_BRIDGE__BROKER", "no-port-here")
        .env("MESSENGER_BROKER__LISTEN", mqtt.to_string())
        .env("MESSENGER_BROKER__WS_LISTEN", ws.to_string());
    let outcome = messenger.run_command(cmd).await;
    assert_eq!(outcome.status.code(), Some(EXIT_CONFIG), "{outcome:#?}");
    assert!(outcome.stderr.contains("bridge.broker"), "{outcome:#?}");
    assert!(!outcome.stderr.contains("listening"), "{outcome:#?}");
    assert!(is_free(mqtt) && is_free(ws));
}

crate::util::server::on_both_engines!(a_missing_apns_key_file_exits_64_without_binding);

/// A push key file that is missing: exit 64 naming the setting and the file,
/// before anything listens (the broker used to be listening by then).
async fn a_missing_apns_key_file_exits_64_without_binding(backend: Backend) {
    let messenger = Messenger::on(backend);
    let (mqtt, ws) = (free_addr(), free_addr());
    let mut cmd = messenger.command(&["serve"]);
    cmd.env("MESSENGER_BROKER__LISTEN", mqtt.to_string())
        .env("MESSENGER_BROKER__WS_LISTEN", ws.to_string())
        .env("MESSENGER_PUSH__APNS__KEY_PATH", "missing-key.p8")
        .env("MESSENGER_PUSH__APNS__KEY_ID", "ABC123DEFG")
        .env("MESSENGER_PUSH__APNS__TEAM_ID", "TEAM123456")
        .env("MESSENGER_PUSH__APNS__TOPIC", "com.example.chat");
    let outcome = messenger.run_command(cmd).await;
    assert_eq!(outcome.status.code(), Some(EXIT_CONFIG), "{outcome:#?}");
    assert!(
        outcome.stderr.contains("push.apns.key_path") && outcome.stderr.contains("missing-key.p8"),
        "{outcome:#?}"
    );
    assert!(!outcome.stderr.contains("listening"), "{outcome:#?}");
    assert!(is_free(mqtt) && is_free(ws));
}
