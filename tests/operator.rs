//! The operator's commands against a running `messenger serve`: `user list`,
//! `user disable` / `enable`, `admin sessions`, `admin kick`, and their bad input
//! (unknown or malformed users, nobody to kick, no server to reach).

use std::time::Instant;

use rumqttc::ConnectReturnCode;

use crate::util::client::GRANTED;
use crate::util::process::{free_addr, http, Messenger, Outcome, Server};
use crate::util::server::{on_both_engines, Backend};
use crate::util::{refusal, Transport, PATIENCE};

/// `messenger <args>` aimed at `server`'s admin listener.
async fn admin(m: &Messenger, server: &Server, args: &[&str]) -> Outcome {
    let mut cmd = m.command(args);
    cmd.env("MESSENGER_ADMIN__LISTEN", server.admin.to_string());
    m.run_command(cmd).await
}

/// The rows of `user list` (header skipped), each split into its columns.
fn rows(listing: &str) -> Vec<Vec<String>> {
    let mut lines = listing.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("USER"), "{listing}");
    lines
        .map(|line| {
            // Dates hold one space ("YYYY-MM-DD HH:MM:SS"): split on two or more.
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// Adds users with `<name>-pw` passwords.
async fn add_users(m: &Messenger, users: &[&str]) {
    for user in users {
        m.run(&["user", "add", user, "--password", &format!("{user}-pw")])
            .await
            .ok();
    }
}

on_both_engines!(sessions_kick_disable_and_enable_through_the_real_binary);

/// sessions shows a connected device with its address; kick cuts it and it
/// signs in again; disable cuts every device and refuses the password and the
/// device token with CONNACK 4 (as a bad password); enable restores both;
/// `user list` shows the accounts, disabled or not, and their devices.
async fn sessions_kick_disable_and_enable_through_the_real_binary(backend: Backend) {
    let m = Messenger::on(backend);
    add_users(&m, &["alice", "bob"]).await;
    let token = m
        .run(&["user", "token", "alice", "--device", "tab"])
        .await
        .ok();
    let token = token.trim().to_owned();
    let server = m.serve().await;

    let listed = rows(&m.run(&["user", "list"]).await.ok());
    let names: Vec<&str> = listed.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(listed[0][2], "-", "not disabled: {listed:?}");
    assert_eq!(
        listed[0][3], "1",
        "alice's token names one device: {listed:?}"
    );

    let mut phone = server
        .device(Transport::Tcp, "alice:phone", "alice-pw")
        .connect()
        .await
        .expect("alice signs in");
    let mut tab = server
        .device(Transport::Ws, "alice:tab", &token)
        .connect()
        .await
        .expect("alice's token signs in");

    let all = admin(&m, &server, &["admin", "sessions"]).await.ok();
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 2, "{all}");
    assert!(lines[0].starts_with("alice:phone  127.0.0.1:"), "{all}");
    assert!(lines[0].contains(" since 20"), "{all}");
    // Over WebSocket too (on loopback the front's address and the client's look alike).
    assert!(lines[1].starts_with("alice:tab  127.0.0.1:"), "{all}");
    let only = admin(&m, &server, &["admin", "sessions", "alice"])
        .await
        .ok();
    assert_eq!(only, all);
    let none = admin(&m, &server, &["admin", "sessions", "bob"]).await.ok();
    assert_eq!(none, "no connected devices\n");

    // kick: the one device is cut, the other stays; the kicked one signs in again.
    let kicked = admin(&m, &server, &["admin", "kick", "alice:phone"])
        .await
        .ok();
    assert!(
        kicked.starts_with("kicked alice:phone  127.0.0.1:"),
        "{kicked}"
    );
    assert_eq!(kicked.lines().count(), 1, "{kicked}");
    phone.disconnected().await;
    let mut phone = server
        .device(Transport::Tcp, "alice:phone", "alice-pw")
        .connect()
        .await
        .expect("a kicked device signs in again");
    assert_eq!(phone.subscribe(&["chat/alice/inbox"]).await, [GRANTED]);
    assert_eq!(
        tab.subscribe(&["chat/alice/inbox"]).await,
        [GRANTED],
        "the other device stays"
    );

    // disable: both devices cut, password and token refused with 4.
    let out = m.run(&["user", "disable", "alice"]).await.ok();
    assert!(out.starts_with("disabled alice"), "{out}");
    phone.disconnected().await;
    tab.disconnected().await;
    for (transport, client_id, secret) in [
        (Transport::Tcp, "alice:phone", "alice-pw"),
        (Transport::Ws, "alice:tab", token.as_str()),
    ] {
        let result = server.device(transport, client_id, secret).connect().await;
        assert_eq!(refusal(result), ConnectReturnCode::BadUserNamePassword);
    }
    let listed = rows(&m.run(&["user", "list"]).await.ok());
    assert!(listed[0][2].starts_with("20"), "disabled since: {listed:?}");
    assert_eq!(listed[1][2], "-", "bob untouched: {listed:?}");
    assert_eq!(
        admin(&m, &server, &["admin", "sessions", "alice"])
            .await
            .ok(),
        "no connected devices\n"
    );
    // bob is not affected.
    server
        .device(Transport::Tcp, "bob:phone", "bob-pw")
        .connect()
        .await
        .expect("bob still signs in");

    // enable: the password and the kept token sign in again.
    let out = m.run(&["user", "enable", "alice"]).await.ok();
    assert_eq!(out, "enabled alice\n");
    let mut phone = server
        .device(Transport::Tcp, "alice:phone", "alice-pw")
        .connect()
        .await
        .expect("enabled: the password signs in");
    assert_eq!(phone.subscribe(&["chat/alice/inbox"]).await, [GRANTED]);
    server
        .device(Transport::Ws, "alice:tab", &token)
        .connect()
        .await
        .expect("enabled: the token signs in");
    assert_eq!(rows(&m.run(&["user", "list"]).await.ok())[0][2], "-");
}

on_both_engines!(bad_admin_input_fails_clearly_and_changes_nothing);

/// Unknown users, malformed ids, nobody to kick, a route asked without the
/// caller header: each a clear error that changes nothing; a device that was
/// connected stays connected throughout.
async fn bad_admin_input_fails_clearly_and_changes_nothing(backend: Backend) {
    let m = Messenger::on(backend);
    add_users(&m, &["alice", "bob"]).await;
    let server = m.serve().await;
    let mut phone = server
        .device(Transport::Tcp, "alice:phone", "alice-pw")
        .connect()
        .await
        .expect("alice signs in");

    for (args, message) in [
        (&["admin", "kick", "zed"][..], "user zed does not exist"),
        (&["admin", "kick", "zed:phone"], "user zed does not exist"),
        (&["admin", "sessions", "zed"], "user zed does not exist"),
        (&["admin", "kick", "Bad"], "bad user id"),
        (&["admin", "kick", "alice:a/b"], "bad device id"),
        (&["admin", "sessions", "Bad"], "invalid user id"),
        (&["admin", "kick", "bob"], "bob has no connected device"),
        (
            &["admin", "kick", "alice:laptop"],
            "alice:laptop is not connected",
        ),
        (&["user", "disable", "zed"], "user zed does not exist"),
        (&["user", "enable", "zed"], "user zed does not exist"),
        (&["user", "disable", "Bad"], "invalid user id"),
        (&["admin", "kick"], "USER[:DEVICE]"),
    ] {
        let stderr = admin(&m, &server, args).await.failed();
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in {stderr:?}"
        );
    }
    // Enabling an enabled user changes nothing and says so.
    assert_eq!(
        m.run(&["user", "enable", "alice"]).await.ok(),
        "alice was not disabled\n"
    );
    // A program that does not send the caller header (a web page) is refused.
    let (status, body) = http(server.admin, "POST", "/kick?user=alice").await;
    assert_eq!(status, 403, "{body}");
    // Nothing was cut: alice's device still works.
    assert_eq!(phone.subscribe(&["chat/alice/inbox"]).await, [GRANTED]);
    let sessions = admin(&m, &server, &["admin", "sessions"]).await.ok();
    assert!(
        sessions.starts_with("alice:phone  127.0.0.1:"),
        "{sessions}"
    );
}

on_both_engines!(admin_commands_without_a_server_fail_at_once);

/// No server on `admin.listen`, or the listener turned off: a clear error, at once.
async fn admin_commands_without_a_server_fail_at_once(backend: Backend) {
    let m = Messenger::on(backend);
    add_users(&m, &["alice"]).await;
    let nobody = free_addr();
    for args in [&["admin", "sessions"][..], &["admin", "kick", "alice"]] {
        let mut cmd = m.command(args);
        cmd.env("MESSENGER_ADMIN__LISTEN", nobody.to_string());
        let started = Instant::now();
        let stderr = m.run_command(cmd).await.failed();
        assert!(
            stderr.contains(&format!(
                "cannot reach the server's admin listener at {nobody}"
            )),
            "{stderr}"
        );
        assert!(started.elapsed() < PATIENCE, "took {:?}", started.elapsed());
    }
    // The fixture's default: admin.listen = "".
    let stderr = m.run(&["admin", "sessions"]).await.failed();
    assert!(stderr.contains("admin.listen is empty"), "{stderr}");
}
