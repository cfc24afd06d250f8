//! `messenger backup` and `messenger export` against a running `messenger serve`,
//! on both engines: a backup taken under load restores into a fresh server with
//! every message acked before it (SQLite: the copied file; PostgreSQL:
//! `pg_dump`'s file through `pg_restore` into a fresh database); an export
//! holds exactly what its user may read.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use messenger_client::{Client, HistoryItem};
use messenger_protocol::wire::{Event, Request};
use messenger_protocol::ConvId;
use serde_json::Value;

use crate::util::process::Messenger;
use crate::util::server::{on_both_engines, Backend};
use crate::util::{uid, PATIENCE};

on_both_engines!(
    a_backup_under_load_restores_every_message_acked_before_it,
    an_export_holds_exactly_what_the_user_may_read,
);

fn dm(a: &str, b: &str) -> ConvId {
    ConvId::direct(&uid(a), &uid(b)).expect("two distinct users")
}

async fn add_users(messenger: &Messenger, users: &[&str]) {
    for user in users {
        messenger
            .run(&["user", "add", user, "--password", "pw"])
            .await
            .ok();
    }
}

/// Every message seq of `conv` that `client` can read.
async fn message_seqs(client: &Client, conv: &ConvId) -> BTreeSet<u64> {
    let mut seqs = BTreeSet::new();
    let mut before = None;
    loop {
        let page = client.history(conv, before, 500).await.expect("history");
        for item in &page.events {
            if let HistoryItem::Message(m) = item {
                seqs.insert(m.seq);
            }
        }
        if !page.more {
            return seqs;
        }
        before = page.events.first().map(HistoryItem::seq);
    }
}

/// Senders keep sending with acks while the backup runs; restored into a fresh
/// directory (or database), a fresh server has every message acked before the
/// backup began.
async fn a_backup_under_load_restores_every_message_acked_before_it(backend: Backend) {
    let messenger = Messenger::on(backend);
    add_users(&messenger, &["alice", "bob"]).await;
    let server = messenger.serve().await;
    let conv = dm("alice", "bob");
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = tokio::task::JoinSet::new();
    for n in 0..2 {
        let client = server.library("alice", &format!("phone{n}")).await.0;
        let (acked, stop, conv) = (acked.clone(), stop.clone(), conv.clone());
        senders.spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let ack = client
                    .send(&conv, &format!("from {n}: {i}"))
                    .await
                    .expect("every send is acked");
                acked.lock().expect("lock").insert(ack.seq);
                i += 1;
            }
        });
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while acked.lock().expect("lock").len() < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "too few acks: {}\n{}",
            acked.lock().expect("lock").len(),
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let before: BTreeSet<u64> = acked.lock().expect("lock").clone();
    let file = messenger.dir().join(match backend {
        Backend::Postgres => "backup.dump",
        _ => "backup.db",
    });
    let out = messenger
        .run(&["backup", &file.display().to_string()])
        .await
        .ok();
    let after_backup = acked.lock().expect("lock").len();
    assert!(out.starts_with("backed up "), "{out}");
    // The senders were not stopped by it: more acks keep coming.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while acked.lock().expect("lock").len() < after_backup + 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sends stalled after the backup"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // A second backup to the same file is refused and leaves it as it was.
    let size = std::fs::metadata(&file).expect("the copy").len();
    let refused = messenger
        .run(&["backup", &file.display().to_string()])
        .await
        .failed();
    assert!(refused.contains("already exists"), "{refused}");
    assert_eq!(std::fs::metadata(&file).expect("the copy").len(), size);
    if backend == Backend::Postgres {
        // Without pg_dump on PATH: a clear error, and no file left behind.
        let other = messenger.dir().join("other.dump");
        let mut cmd = messenger.command(&["backup", &other.display().to_string()]);
        cmd.env("PATH", messenger.dir());
        let err = messenger.run_command(cmd).await.failed();
        assert!(err.contains("cannot run pg_dump"), "{err}");
        assert!(!other.exists(), "no file is left behind");
    }
    stop.store(true, Ordering::SeqCst);
    while let Some(done) = senders.join_next().await {
        done.expect("sender");
    }
    drop(server);

    let fresh = restore(backend, &file).await;
    let mut restored = fresh.serve().await;
    restored
        .wait_for_log("Adding subscription on topic chat/+/out/+", 1)
        .await;
    let bob = restored.library("bob", "phone").await.0;
    let seqs = message_seqs(&bob, &conv).await;
    let missing: Vec<_> = before.difference(&seqs).collect();
    assert!(
        missing.is_empty(),
        "acked before the backup, lost: {missing:?}"
    );
    let last = *seqs.last().expect("messages");
    assert_eq!(
        seqs,
        (1..=last).collect::<BTreeSet<_>>(),
        "a consistent copy: gap-free seqs"
    );
    // The restored server goes on from there.
    let ack = bob.send(&conv, "after the restore").await.expect("ack");
    assert_eq!(ack.seq, last + 1);
}

/// Restores the backup `file` as docs/OPERATIONS.md says, into a fresh
/// installation: on SQLite the file at storage.path, nothing beside it; on
/// PostgreSQL `pg_restore` into a fresh, empty database.
async fn restore(backend: Backend, file: &std::path::Path) -> Messenger {
    if backend != Backend::Postgres {
        let fresh = Messenger::new();
        std::fs::create_dir_all(fresh.db().parent().expect("a directory")).expect("data dir");
        std::fs::copy(file, fresh.db()).expect("restore");
        return fresh;
    }
    let url = crate::util::postgres::database();
    let mut cmd = std::process::Command::new("pg_restore");
    cmd.arg("--no-owner")
        .arg("--exit-on-error")
        .arg("--dbname")
        .arg(&url)
        .arg(file);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("running pg_restore");
    assert!(
        out.status.success(),
        "pg_restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Messenger::on_database(url)
}

/// The export holds the user's dm and groups, events as `history` shows them
/// (edits, deletions and reactions folded in; a left group up to the leaving),
/// their receipts, and nothing of other users' private chats.
async fn an_export_holds_exactly_what_the_user_may_read(backend: Backend) {
    let messenger = Messenger::on(backend);
    add_users(&messenger, &["alice", "bob", "carol"]).await;
    let server = messenger.serve().await;
    let alice = server.library("alice", "phone").await.0;
    let bob = server.library("bob", "phone").await.0;
    let carol = server.library("carol", "phone").await.0;

    let ab = dm("alice", "bob");
    alice.send(&ab, "first draft").await.expect("ack");
    bob.send(&ab, "regrettable").await.expect("ack");
    alice.send(&ab, "thumbs").await.expect("ack");
    alice.edit(&ab, 1, "final text").await.expect("edited");
    bob.delete(&ab, 2).await.expect("deleted");
    bob.react(&ab, 3, "👍").await.expect("reacted");
    alice.mark_read(&ab, 3).await.expect("read");
    // Receipts are batched by the client and have no reply: wait until stored.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let list = alice.conversations().await.expect("conversations");
        if list.iter().any(|c| c.conv == ab && c.read_seq == 3) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receipt was not stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    carol
        .send(&dm("bob", "carol"), "secret between bob and carol")
        .await
        .expect("ack");

    let group = |name: &str, members: &[&str]| Request::GroupCreate {
        id: messenger_client::new_request_id(),
        name: name.into(),
        members: members.iter().map(|m| uid(m)).collect(),
    };
    let conv_of = |reply: Event| match reply {
        Event::Ack {
            conv: Some(conv), ..
        } => conv,
        other => panic!("unexpected reply {other:?}"),
    };
    let team = conv_of(
        bob.call(group("team", &["alice", "carol"]))
            .await
            .expect("created"),
    );
    carol.send(&team, "hello team").await.expect("ack");
    let old = conv_of(alice.call(group("old", &["bob"])).await.expect("created"));
    bob.send(&old, "before alice left").await.expect("ack");
    let left = alice
        .call(Request::GroupLeave {
            id: messenger_client::new_request_id(),
            conv: old.clone(),
        })
        .await
        .expect("left");
    let Event::Ack {
        seq: Some(left_seq),
        ..
    } = left
    else {
        panic!("unexpected reply {left:?}");
    };
    bob.send(&old, "after alice left").await.expect("ack");

    let file = messenger.dir().join("alice.json");
    let path = file.display().to_string();
    let out = messenger
        .run(&["export", "alice", "--out", &path])
        .await
        .ok();
    assert!(out.starts_with("exported alice"), "{out}");
    let text = std::fs::read_to_string(&file).expect("the export");
    for absent in [
        "secret between bob and carol",
        "after alice left",
        "first draft",
        "regrettable",
    ] {
        assert!(
            !text.contains(absent),
            "{absent:?} is in the export:\n{text}"
        );
    }
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(doc["user"], "alice");
    let convs = doc["conversations"].as_array().expect("conversations");
    let by_id = |id: &ConvId| {
        convs
            .iter()
            .find(|c| c["conv"] == id.to_string())
            .unwrap_or_else(|| panic!("{id} missing from {text}"))
    };
    assert_eq!(convs.len(), 3, "{text}");

    let d = by_id(&ab);
    assert_eq!(
        (d["kind"].as_str(), d["name"].as_str()),
        (Some("dm"), Some("bob"))
    );
    assert_eq!(
        (d["read_seq"].as_u64(), d["member"].as_bool()),
        (Some(3), Some(true))
    );
    let messages: Vec<&Value> = d["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "message")
        .collect();
    assert_eq!(messages.len(), 3, "{d}");
    assert_eq!(messages[0]["body"], "final text");
    assert!(messages[0]["edited"].is_u64(), "{}", messages[0]);
    assert_eq!(messages[1]["deleted"], true);
    assert_eq!(messages[2]["reactions"]["👍"][0], "bob");
    let types: Vec<&str> = d["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        types,
        ["message", "message", "message", "edit", "delete", "reaction"],
        "every event, oldest first"
    );

    let t = by_id(&team);
    assert_eq!(
        (t["kind"].as_str(), t["name"].as_str()),
        (Some("group"), Some("team"))
    );
    let members: Vec<&str> = t["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["user"].as_str())
        .collect();
    assert_eq!(members, ["alice", "bob", "carol"]);
    assert!(text.contains("hello team"));

    let o = by_id(&old);
    assert_eq!(o["member"], false);
    assert_eq!(o["left_seq"].as_u64(), Some(left_seq));
    assert!(
        o.get("members").is_none(),
        "a former member sees no members"
    );
    let last = o["events"]
        .as_array()
        .expect("events")
        .last()
        .expect("events");
    assert_eq!(last["seq"].as_u64(), Some(left_seq), "up to the leaving");
    assert!(text.contains("before alice left"));

    // Bad input: an unknown user, an existing file; neither leaves anything behind.
    let missing = messenger.dir().join("nobody.json");
    let err = messenger
        .run(&["export", "nobody", "--out", &missing.display().to_string()])
        .await
        .failed();
    assert!(err.contains("user nobody does not exist"), "{err}");
    assert!(!missing.exists());
    let err = messenger
        .run(&["export", "alice", "--out", &path])
        .await
        .failed();
    assert!(err.contains("never overwrites"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).expect("kept"), text);
}
