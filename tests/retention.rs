//! `storage.retention_days` end to end, on both engines from one body:
//! messages aged in the database while the server is down are removed after a
//! restart with retention on, while newer ones stay, sends keep being acked
//! and a sync from the start delivers what remains; an old message's file goes
//! with it; bad values exit 64 naming the key. On PostgreSQL, an old message
//! another transaction holds is left to a later step without stalling sends.

use std::collections::BTreeSet;
use std::time::Duration;

use messenger_client::{Client, HistoryItem, WebFiles};
use messenger_protocol::wire::AttachmentRef;
use messenger_protocol::ConvId;

use crate::admin::wait_for_status;
use crate::util::client::GRANTED;
use crate::util::postgres::blocking;
use crate::util::process::{free_addr, Messenger, Server};
use crate::util::server::{on_both_engines, Backend};
use crate::util::{uid, Transport, PATIENCE};

/// The exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: i32 = 64;

/// A day in ms.
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Makes the events of `m`'s database that `filter` (an SQL condition both
/// engines read alike) picks `days` older, in the SQLite file or the
/// PostgreSQL database; how many it aged.
async fn age_events(m: &Messenger, filter: &str, days: i64) -> u64 {
    let sql = format!(
        "UPDATE events SET ts = ts - {} WHERE {filter}",
        days * DAY_MS
    );
    match m.postgres_url().map(str::to_owned) {
        Some(url) => blocking(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
            client.execute(sql.as_str(), &[]).expect("ageing")
        }),
        None => {
            let db = m.db();
            tokio::task::spawn_blocking(move || {
                let conn = rusqlite::Connection::open(db).expect("open the database");
                conn.execute(&sql, []).expect("ageing") as u64
            })
            .await
            .expect("join")
        }
    }
}

/// The message seqs of `conv` that `client` reads in `history` (one page is enough here).
async fn history(client: &Client, conv: &ConvId) -> BTreeSet<u64> {
    let page = client.history(conv, None, 100).await.expect("history");
    assert!(!page.more);
    page.events
        .iter()
        .filter_map(|item| match item {
            HistoryItem::Message(m) => Some(m.seq),
            _ => None,
        })
        .collect()
}

/// ann and bob, six messages from ann to bob through `serve`, then `serve`
/// stopped with SIGTERM: their chat, and the stopped server (for its ports).
async fn six_messages_then_stop(m: &Messenger) -> (ConvId, Server) {
    for user in ["ann", "bob"] {
        m.run(&["user", "add", user, "--password", "pw"]).await.ok();
    }
    let conv = ConvId::direct(&uid("ann"), &uid("bob")).expect("dm");
    let mut server = m.serve().await;
    let ann = server.library("ann", "phone").await.0;
    for i in 0..6 {
        ann.send(&conv, &format!("message {i}"))
            .await
            .expect("acked");
    }
    drop(ann);
    server.terminate();
    assert!(server.exit_status(PATIENCE).await.success());
    (conv, server)
}

on_both_engines!(old_messages_go_new_ones_stay_and_sends_go_on);
async fn old_messages_go_new_ones_stay_and_sends_go_on(backend: Backend) {
    let m = Messenger::on(backend);
    let (conv, server) = six_messages_then_stop(&m).await;

    // Seqs 1..=4 are three days old now.
    assert_eq!(age_events(&m, "seq <= 4", 3).await, 4);

    let retention = [("MESSENGER_STORAGE__RETENTION_DAYS", "1")];
    let mut server = m.spawn_role("serve", server.mqtt, server.ws, free_addr(), &retention);
    server.wait_until_accepting().await;
    let ann = server.library("ann", "phone").await.0;
    // Sends are acked while retention works; poll history until the old ones are gone.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut sent = 0;
    loop {
        let ack = ann
            .send(&conv, &format!("later {sent}"))
            .await
            .expect("acked");
        sent += 1;
        assert_eq!(ack.seq, 6 + sent);
        let seqs = history(&ann, &conv).await;
        if !seqs.contains(&1) {
            let expected: BTreeSet<u64> = (5..=6 + sent).collect();
            assert_eq!(seqs, expected, "the old ones only went:\n{}", server.log());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old messages still there after {PATIENCE:?}: {seqs:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A sync from the start delivers what remains, in useq order, and no more.
    let mut bob = server
        .device(Transport::Tcp, "bob:raw", "pw")
        .connect()
        .await
        .expect("bob signs in");
    assert_eq!(bob.subscribe(&["chat/bob/dev/raw"]).await, [GRANTED]);
    let sync = bob
        .reply("bob", br#"{"type":"sync","id":"s1","after":0,"limit":100}"#)
        .await;
    assert_eq!(sync["type"], "sync", "{sync}");
    let seqs: Vec<u64> = sync["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs, (5..=6 + sent).collect::<Vec<_>>(), "{sync}");
}

/// PostgreSQL only (SQLite has one writer and no row locks): a transaction
/// that holds an old message's row, as a batch reacting to it does, neither
/// stalls the bridge nor loses the message: retention removes what comes
/// before it, sends are acked meanwhile, and the rest goes once it lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_old_message_waits_for_the_next_step_and_sends_go_on() {
    let m = Messenger::on(Backend::Postgres);
    let (conv, server) = six_messages_then_stop(&m).await;
    assert_eq!(age_events(&m, "seq <= 4", 3).await, 4);

    // The holder is a thread of its own (the sync client must not live on
    // the test's runtime); it lets go when `release` sends or is dropped.
    let url = m.postgres_url().expect("postgres").to_owned();
    let (held_tx, held) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        client
            .batch_execute(
                "BEGIN; SELECT 1 FROM events WHERE conv = 'dm:ann:bob' AND seq = 3 FOR SHARE",
            )
            .expect("hold seq 3");
        held_tx.send(()).expect("the test waits");
        let _ = released.recv();
        client.batch_execute("COMMIT").expect("let go");
    });
    blocking(|| held.recv()).expect("seq 3 is held");
    let retention = [("MESSENGER_STORAGE__RETENTION_DAYS", "1")];
    let mut server = m.spawn_role("serve", server.mqtt, server.ws, free_addr(), &retention);
    server.wait_until_accepting().await;
    wait_for_status(&server, "/readyz", 200).await;
    let ann = server.library("ann", "phone").await.0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while history(&ann, &conv).await != BTreeSet::from([3, 4, 5, 6]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "seqs 1 and 2 did not go: {:?}\n{}",
            history(&ann, &conv).await,
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ack = tokio::time::timeout(PATIENCE, ann.send(&conv, "while held"))
        .await
        .expect("a send is acked while the old row is held")
        .expect("acked");
    assert_eq!(ack.seq, 7);
    assert_eq!(
        history(&ann, &conv).await,
        BTreeSet::from([3, 4, 5, 6, 7]),
        "the held message and what follows it stay"
    );

    release.send(()).expect("the holder waits");
    blocking(|| holder.join()).expect("the holder let go");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while history(&ann, &conv).await != BTreeSet::from([5, 6, 7]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "seqs 3 and 4 did not go once let go of: {:?}\n{}",
            history(&ann, &conv).await,
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
        .wait_for_log("retention pass removed old events removed=4", 1)
        .await;
}

/// The names in the files directory (the default: `files` beside the database).
fn stored_files(m: &Messenger) -> BTreeSet<String> {
    std::fs::read_dir(m.dir().join("data").join("files"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

on_both_engines!(an_old_message_takes_its_file_with_it);
async fn an_old_message_takes_its_file_with_it(backend: Backend) {
    let m = Messenger::on(backend);
    for user in ["ann", "bob"] {
        m.run(&["user", "add", user, "--password", "pw"]).await.ok();
    }
    let conv = ConvId::direct(&uid("ann"), &uid("bob")).expect("dm");
    let mut server = m.serve().await;
    server.wait_until_accepting_on(server.ws).await;
    let web = WebFiles {
        web: server.ws.to_string(),
        user: uid("ann"),
        secret: "pw".to_owned(),
        tls: None,
    };
    let ann = server.library("ann", "phone").await.0;
    let mut uploads = Vec::new();
    for (seq, bytes) in [(1u64, "old bytes"), (2, "new bytes")] {
        let path = m.dir().join(format!("upload-{seq}.txt"));
        std::fs::write(&path, bytes).expect("write the upload");
        let uploaded = web.upload(&path, "text/plain").await.expect("uploaded");
        let ack = ann
            .send_files(
                &conv,
                "",
                vec![AttachmentRef {
                    file: uploaded.file.clone(),
                    name: format!("{seq}.txt"),
                }],
            )
            .await
            .expect("acked");
        assert_eq!(ack.seq, seq);
        uploads.push(uploaded);
    }
    let both: BTreeSet<String> = uploads.iter().map(|u| u.sha256.clone()).collect();
    assert_eq!(stored_files(&m), both);
    drop(ann);
    server.terminate();
    assert!(server.exit_status(PATIENCE).await.success());

    // The first message is three days old now.
    assert_eq!(age_events(&m, "seq = 1", 3).await, 1);

    let retention = [("MESSENGER_STORAGE__RETENTION_DAYS", "1")];
    let mut server = m.spawn_role("serve", server.mqtt, server.ws, free_addr(), &retention);
    server.wait_until_accepting().await;
    // `history` is asked once, not retried: the bridge must be subscribed first.
    wait_for_status(&server, "/readyz", 200).await;
    let ann = server.library("ann", "phone").await.0;
    let kept: BTreeSet<String> = [uploads[1].sha256.clone()].into();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !(history(&ann, &conv).await == BTreeSet::from([2]) && stored_files(&m) == kept) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old message or its file is still there: {:?}, {:?}\n{}",
            history(&ann, &conv).await,
            stored_files(&m),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.wait_until_accepting_on(server.ws).await;
    let web = WebFiles {
        web: server.ws.to_string(),
        user: uid("ann"),
        secret: "pw".to_owned(),
        tls: None,
    };
    let dest = m.dir().join("downloaded");
    assert!(
        web.download(&uploads[0].file, &dest).await.is_err(),
        "the old upload is gone for its uploader too"
    );
    assert_eq!(
        web.download(&uploads[1].file, &dest).await.expect("kept"),
        9
    );
}

on_both_engines!(bad_retention_days_exit_64_naming_the_key);
async fn bad_retention_days_exit_64_naming_the_key(backend: Backend) {
    let m = Messenger::on(backend);
    for bad in ["-1", "36501", "10000000000", "soon"] {
        let mut cmd = m.command(&["serve"]);
        cmd.env("MESSENGER_STORAGE__RETENTION_DAYS", bad);
        let outcome = m.run_command(cmd).await;
        assert_eq!(
            outcome.status.code(),
            Some(EXIT_CONFIG),
            "{bad}: {outcome:#?}"
        );
        assert!(
            outcome.stderr.contains("retention_days"),
            "{bad}: {outcome:#?}"
        );
    }
}
