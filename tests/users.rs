//! `messenger user ...`: managing accounts from the command line, alone and
//! while `messenger serve` runs on the same database, on both engines.

use messenger_accounts::Verdict;
use rumqttc::ConnectReturnCode;

use crate::util::client::GRANTED;
use crate::util::process::Messenger;
use crate::util::server::{on_both_engines, Backend};
use crate::util::{refusal, Transport};

on_both_engines!(
    user_commands_manage_accounts,
    bad_user_input_fails_and_changes_nothing,
    user_commands_work_while_serve_runs,
);

/// `user list`'s DEVICES and ONLINE columns for `user`, under the header that
/// names them.
pub(crate) fn devices_of(out: &str, user: &str) -> (u64, u64) {
    let header = out.lines().next().unwrap_or_default();
    assert!(
        header.contains("DEVICES") && header.ends_with("ONLINE"),
        "{out}"
    );
    let line = out
        .lines()
        .skip(1)
        .find(|line| line.split_whitespace().next() == Some(user))
        .unwrap_or_else(|| panic!("{user} is not listed: {out}"));
    let columns: Vec<&str> = line.split_whitespace().collect();
    let number = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
    (
        number(columns[columns.len() - 2]),
        number(columns[columns.len() - 1]),
    )
}

/// The user ids of `user list` (its first column, under the header).
fn listed(out: &str) -> Vec<String> {
    out.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// add, list, passwd, token and remove do what they say, in the database.
async fn user_commands_manage_accounts(backend: Backend) {
    let m = Messenger::on(backend);
    let out = m
        .run(&["user", "add", "bob", "--password", "bob-pw"])
        .await
        .ok();
    assert_eq!(out, "added bob\n");
    // The password may come from the environment instead of the command line.
    let mut cmd = m.command(&["user", "add", "alice"]);
    cmd.env("MESSENGER_PASSWORD", "alice-pw");
    m.run_command(cmd).await.ok();
    assert_eq!(
        listed(&m.run(&["user", "list"]).await.ok()),
        ["alice", "bob"]
    );
    assert_eq!(m.verify("alice", "alice-pw").await, Verdict::Accepted);

    m.run(&["user", "passwd", "alice", "--password", "new-pw"])
        .await
        .ok();
    assert_eq!(m.verify("alice", "alice-pw").await, Verdict::Rejected);
    assert_eq!(m.verify("alice", "new-pw").await, Verdict::Accepted);

    let token = m
        .run(&["user", "token", "alice", "--device", "phone"])
        .await
        .ok();
    let token = token.trim();
    assert!(token.starts_with("mtk_"), "{token}");
    assert_eq!(m.verify("alice", token).await, Verdict::Accepted);
    // A device with a token counts, not online.
    let list = m.run(&["user", "list"]).await.ok();
    assert_eq!(devices_of(&list, "alice"), (1, 0), "{list}");
    assert_eq!(devices_of(&list, "bob"), (0, 0), "{list}");

    assert_eq!(
        m.run(&["user", "remove", "bob"]).await.ok(),
        "removed bob\n"
    );
    assert_eq!(listed(&m.run(&["user", "list"]).await.ok()), ["alice"]);
    assert_eq!(m.verify("bob", "bob-pw").await, Verdict::UnknownUser);
}

/// Bad input fails with a clear message and leaves the store as it was.
async fn bad_user_input_fails_and_changes_nothing(backend: Backend) {
    let m = Messenger::on(backend);
    m.run(&["user", "add", "alice", "--password", "alice-pw"])
        .await
        .ok();
    for (args, message) in [
        (
            &["user", "add", "Alice", "--password", "pw"][..],
            "invalid user id",
        ),
        (
            &["user", "add", "a.b", "--password", "pw"],
            "invalid user id",
        ),
        (
            &["user", "add", "_x", "--password", "pw"],
            "invalid user id",
        ),
        (
            &["user", "add", "alice", "--password", "other"],
            "user alice already exists",
        ),
        (
            &["user", "add", "carol", "--password", ""],
            "password must be 1 to 1024 bytes",
        ),
        (
            &["user", "passwd", "alice", "--password", ""],
            "password must be 1 to 1024 bytes",
        ),
        (
            &["user", "passwd", "zed", "--password", "pw"],
            "user zed does not exist",
        ),
        (&["user", "remove", "zed"], "user zed does not exist"),
        (
            &["user", "remove", "zed", "--erase"],
            "user zed does not exist",
        ),
        (&["user", "remove", "Zed"], "invalid user id"),
        (
            &["user", "token", "zed", "--device", "phone"],
            "user zed does not exist",
        ),
        (
            &["user", "token", "alice", "--device", "a/b"],
            "invalid device id",
        ),
        (&["user", "add", "carol"], "--password"),
    ] {
        let stderr = m.run(args).await.failed();
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in {stderr:?}"
        );
    }
    assert_eq!(listed(&m.run(&["user", "list"]).await.ok()), ["alice"]);
    assert_eq!(m.verify("alice", "alice-pw").await, Verdict::Accepted);
    assert_eq!(m.verify("alice", "other").await, Verdict::Rejected);
}

/// While `serve` runs: a user added from the CLI can sign in at once; `passwd`
/// cuts their connection and only the new password works; `remove` cuts them
/// and refuses them from then on.
async fn user_commands_work_while_serve_runs(backend: Backend) {
    let m = Messenger::on(backend);
    let server = m.serve().await;
    m.run(&["user", "add", "alice", "--password", "alice-pw"])
        .await
        .ok();
    let mut phone = server
        .device(Transport::Tcp, "alice:phone", "alice-pw")
        .connect()
        .await
        .expect("a user added while serving signs in");

    m.run(&["user", "passwd", "alice", "--password", "new-pw"])
        .await
        .ok();
    phone.disconnected().await;
    let result = server
        .device(Transport::Tcp, "alice:phone", "alice-pw")
        .connect()
        .await;
    assert_eq!(refusal(result), ConnectReturnCode::BadUserNamePassword);
    let mut phone = server
        .device(Transport::Ws, "alice:phone", "new-pw")
        .connect()
        .await
        .expect("the new password signs in");
    assert_eq!(phone.subscribe(&["chat/alice/inbox"]).await, [GRANTED]);
    m.run(&["user", "remove", "alice"]).await.ok();
    phone.disconnected().await;
    let result = server
        .device(Transport::Ws, "alice:phone", "new-pw")
        .connect()
        .await;
    assert_eq!(refusal(result), ConnectReturnCode::BadUserNamePassword);
    assert!(listed(&m.run(&["user", "list"]).await.ok()).is_empty());
}
