//! `messenger user ...`: managing accounts from the command line, alone and
//! while `messenger serve` runs on the same database, on both engines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use messenger_accounts::Verdict;
use messenger_client::ClientError;
use messenger_protocol::wire::{ErrorCode, Event, Request};
use messenger_protocol::ConvId;
use rumqttc::ConnectReturnCode;

use crate::limits::count;
use crate::util::client::GRANTED;
use crate::util::process::Messenger;
use crate::util::server::{on_both_engines, Backend};
use crate::util::{refusal, uid, Transport};

on_both_engines!(
    user_commands_manage_accounts,
    bad_user_input_fails_and_changes_nothing,
    user_commands_work_while_serve_runs,
    a_removal_while_messages_flow_to_the_user_leaves_nothing_of_them,
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

/// `user remove` while bob keeps sending to alice, in their 1-1 chat and in a
/// group, and receipts flow in both (on PostgreSQL the removal takes the locks the
/// bridge's batches take): every send is either acked or, in the 1-1 chat once
/// she is gone, refused with `unknown_user`; the group goes on without her; and
/// nothing of hers is left in the database: no inbox row, no membership, no
/// device.
async fn a_removal_while_messages_flow_to_the_user_leaves_nothing_of_them(backend: Backend) {
    let m = Messenger::on(backend);
    for user in ["alice", "bob", "carol"] {
        m.run(&["user", "add", user, "--password", "pw"]).await.ok();
    }
    let mut server = m.serve().await;
    server
        .wait_for_log("Adding subscription on topic chat/+/out/+", 1)
        .await;
    let alice = server.library("alice", "phone").await.0;
    let bob = Arc::new(server.library("bob", "phone").await.0);
    let carol = Arc::new(server.library("carol", "phone").await.0);
    let dm = ConvId::direct(&uid("alice"), &uid("bob")).expect("dm");
    alice.send(&dm, "hello bob").await.expect("ack");
    let reply = bob
        .call(Request::GroupCreate {
            id: messenger_client::new_request_id(),
            name: "team".into(),
            members: vec![uid("alice"), uid("carol")],
        })
        .await
        .expect("created");
    let Event::Ack {
        conv: Some(team), ..
    } = reply
    else {
        panic!("unexpected reply {reply:?}");
    };

    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = tokio::task::JoinSet::new();
    for conv in [dm.clone(), team.clone()] {
        let (bob, stop) = (bob.clone(), stop.clone());
        senders.spawn(async move {
            let (mut acked, mut refused, mut i) = (0u32, 0u32, 0u32);
            while !stop.load(Ordering::SeqCst) {
                match bob.send(&conv, &format!("to {conv}: {i}")).await {
                    Ok(_) => {
                        assert_eq!(refused, 0, "{conv}: acked after a refusal");
                        acked += 1;
                    }
                    Err(ClientError::Server {
                        code: ErrorCode::UnknownUser,
                        ..
                    }) => refused += 1,
                    Err(err) => panic!("{conv}: {err}"),
                }
                i += 1;
            }
            (conv, acked, refused)
        });
    }
    // Alice reads as they come in, so receipts go to bob meanwhile.
    let read = dm.clone();
    let reader = tokio::spawn(async move {
        let mut seq = 1;
        loop {
            seq += 1;
            if alice.mark_read(&read, seq).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    // Carol reads in the group, so her receipts go to alice meanwhile.
    let (reading, group) = (carol.clone(), team.clone());
    let carol_reads = tokio::spawn(async move {
        let mut seq = 0;
        loop {
            seq += 1;
            if reading.mark_read(&group, seq).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    m.run(&["user", "remove", "alice"]).await.ok();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut results = Vec::new();
    while let Some(done) = senders.join_next().await {
        results.push(done.expect("sender"));
    }
    reader.abort();
    carol_reads.abort();
    for (conv, acked, refused) in results {
        assert!(acked > 0, "{conv}: nothing acked before the removal");
        if conv == dm {
            assert!(refused > 0, "{conv}: nothing refused after the removal");
        } else {
            assert_eq!(refused, 0, "{conv}: the group goes on");
        }
    }
    // The group goes on without her.
    let ack = carol.send(&team, "still here").await.expect("ack");
    assert!(ack.seq > 1);

    // Let a device's last presence change land, then look in the database.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut tables = vec!["inbox", "members", "devices", "presence", "device_tokens"];
    if backend == Backend::Postgres {
        tables.push("memberships");
    }
    for table in tables {
        assert_eq!(count(&m, table, "\"user\" = 'alice'"), 0, "{table}");
    }
    if backend == Backend::Postgres {
        // Bob's batches lock (and make) her counter row, at 0: nothing counted.
        let filter = "\"user\" = 'alice' AND last_useq > 0";
        assert_eq!(count(&m, "user_seqs", filter), 0, "user_seqs");
    }
    // A new account of that name starts empty.
    m.run(&["user", "add", "alice", "--password", "pw"])
        .await
        .ok();
    let alice = server.library("alice", "tablet").await.0;
    let sync = alice
        .call(Request::Sync {
            id: messenger_client::new_request_id(),
            after: 0,
            limit: None,
        })
        .await
        .expect("sync");
    assert!(
        matches!(&sync, Event::Sync { events, .. } if events.is_empty()),
        "{sync:?}"
    );
    let list = alice.conversations().await.expect("conversations");
    assert!(list.is_empty(), "{list:?}");
}
