//! `messenger migrate --to postgres://...`: a single-node install copied into an
//! empty PostgreSQL database (a real server, `util::postgres`), every
//! conversation's history compared row by row; and every kind of bad target
//! refused with a clear message and the configuration exit code, nothing written.

use messenger_protocol::wire::{Event, Platform, Request};
use messenger_protocol::ConvId;

use crate::util::postgres::{self, blocking};
use crate::util::process::Messenger;
use crate::util::{uid, PATIENCE};

fn dm(a: &str, b: &str) -> ConvId {
    ConvId::direct(&uid(a), &uid(b)).expect("two distinct users")
}

/// One row of `events` as both engines store it.
type EventRow = (
    String,
    i64,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    bool,
    Option<String>,
);

/// Every event of every conversation in the SQLite file, in (conv, seq) order.
fn sqlite_history(messenger: &Messenger) -> Vec<EventRow> {
    let conn = rusqlite::Connection::open(messenger.db()).expect("open the SQLite file");
    let mut stmt = conn
        .prepare(
            "SELECT conv, seq, ts, kind, sender, req_id, body, ref_seq, COALESCE(deleted, 0) != 0,
                    attachments
             FROM events ORDER BY conv, seq",
        )
        .expect("prepare");
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
        ))
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// The same from the PostgreSQL database `url`.
fn postgres_history(url: &str) -> Vec<EventRow> {
    blocking(|| {
        let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).expect("connect");
        client
            .query(
                "SELECT conv, seq, ts, kind, sender, req_id, body, ref_seq, deleted, attachments
             FROM events ORDER BY conv, seq",
                &[],
            )
            .expect("query")
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                    r.get(7),
                    r.get(8),
                    r.get(9),
                )
            })
            .collect()
    })
}

fn sqlite_count(messenger: &Messenger, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(messenger.db()).expect("open the SQLite file");
    conn.query_row(sql, [], |r| r.get(0)).expect("count")
}

fn postgres_count(url: &str, sql: &str) -> i64 {
    blocking(|| {
        let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).expect("connect");
        client.query_one(sql, &[]).expect("count").get(0)
    })
}

/// The count `migrate` printed for `what`.
fn printed(stdout: &str, what: &str) -> i64 {
    stdout
        .lines()
        .find_map(|line| {
            let (name, n) = line.rsplit_once(' ')?;
            (name.trim() == what).then(|| n.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no count for {what} in:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_an_install_and_every_history_matches() {
    let messenger = Messenger::new();
    for user in ["ann", "bob", "cat"] {
        messenger
            .run(&["user", "add", user, "--password", "pw"])
            .await
            .ok();
    }
    let mut server = messenger.serve().await;
    let ann = server.library("ann", "phone").await.0;
    let bob = server.library("bob", "laptop").await.0;
    let cat = server.library("cat", "tablet").await.0;
    let ann_bob = dm("ann", "bob");
    for i in 0..5 {
        ann.send(&ann_bob, &format!("hello {i}"))
            .await
            .expect("ack");
    }
    let reply = bob.reply(&ann_bob, 2, "yes to 2").await.expect("ack");
    bob.edit(&ann_bob, reply.seq, "yes to two")
        .await
        .expect("edited");
    ann.react(&ann_bob, reply.seq, "👍").await.expect("reacted");
    ann.delete(&ann_bob, 1).await.expect("deleted");
    bob.mark_read(&ann_bob, 3).await.expect("read");
    let team = match ann
        .call(Request::GroupCreate {
            id: messenger_client::new_request_id(),
            name: "team".into(),
            members: vec![uid("bob"), uid("cat")],
        })
        .await
        .expect("created")
    {
        Event::Ack {
            conv: Some(conv), ..
        } => conv,
        other => panic!("unexpected reply {other:?}"),
    };
    cat.send(&team, "hi team 你好").await.expect("ack");
    cat.call(Request::Mute {
        id: messenger_client::new_request_id(),
        conv: team.clone(),
        until: None,
    })
    .await
    .expect("muted");
    bob.call(Request::PushRegister {
        id: messenger_client::new_request_id(),
        platform: Platform::Fcm,
        token: "fcm-token-of-bobs-laptop".into(),
    })
    .await
    .expect("registered");
    cat.block(&uid("ann")).await.expect("blocked");
    messenger
        .run(&["user", "token", "ann", "--device", "web"])
        .await
        .ok();
    // The client library sends receipts in batches: wait until the read is stored.
    let deadline = std::time::Instant::now() + PATIENCE;
    while sqlite_count(
        &messenger,
        "SELECT COUNT(*) FROM inbox WHERE rstatus IS NOT NULL",
    ) == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the read receipt was never stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.terminate();
    assert!(
        server.exit_status(PATIENCE).await.success(),
        "{}",
        server.log()
    );

    let url = postgres::database();
    let copied = messenger.run(&["migrate", "--to", &url]).await.ok();

    let history = sqlite_history(&messenger);
    assert!(history.len() > 10, "{history:?}");
    assert_eq!(
        postgres_history(&url),
        history,
        "every conversation's history"
    );
    for (what, sqlite, pg_sql) in [
        (
            "users",
            "SELECT COUNT(*) FROM users",
            "SELECT COUNT(*) FROM users",
        ),
        (
            "device tokens",
            "SELECT COUNT(*) FROM device_tokens",
            "SELECT COUNT(*) FROM device_tokens",
        ),
        (
            "conversations",
            "SELECT COUNT(*) FROM conversations",
            "SELECT COUNT(*) FROM conversations",
        ),
        (
            "members",
            "SELECT COUNT(*) FROM members",
            "SELECT COUNT(*) FROM members",
        ),
        (
            "events",
            "SELECT COUNT(*) FROM events",
            "SELECT COUNT(*) FROM events",
        ),
        (
            "receipts",
            "SELECT COUNT(*) FROM inbox WHERE rstatus IS NOT NULL",
            "SELECT COUNT(*) FROM inbox WHERE rstatus IS NOT NULL",
        ),
        (
            "inbox rows",
            "SELECT COUNT(*) FROM inbox WHERE rstatus IS NULL",
            "SELECT COUNT(*) FROM inbox WHERE rstatus IS NULL",
        ),
        (
            "push registrations",
            "SELECT COUNT(*) FROM push_tokens",
            "SELECT COUNT(*) FROM push_tokens",
        ),
        (
            "mutes",
            "SELECT COUNT(*) FROM mutes",
            "SELECT COUNT(*) FROM mutes",
        ),
        (
            "blocks",
            "SELECT COUNT(*) FROM blocks",
            "SELECT COUNT(*) FROM blocks",
        ),
        (
            "reactions",
            "SELECT COUNT(*) FROM reactions",
            "SELECT COUNT(*) FROM reactions",
        ),
    ] {
        let n = sqlite_count(&messenger, sqlite);
        assert!(n > 0, "the install has {what}");
        assert_eq!(postgres_count(&url, pg_sql), n, "{what} in PostgreSQL");
        assert_eq!(printed(&copied, what), n, "{what} as printed");
    }
    // The tables kept for lookups by another key hold one row per row they index.
    for (index, of) in [
        ("memberships", "members"),
        ("requests", "events WHERE req_id IS NOT NULL"),
        ("token_hashes", "device_tokens"),
        ("push_token_owners", "push_tokens"),
    ] {
        assert_eq!(
            postgres_count(&url, &format!("SELECT COUNT(*) FROM {index}")),
            postgres_count(&url, &format!("SELECT COUNT(*) FROM {of}")),
            "{index}"
        );
    }
    // Each user's useq counter is their newest inbox row.
    let behind = postgres_count(
        &url,
        "SELECT COUNT(*) FROM user_seqs s
         WHERE s.last_useq != (SELECT MAX(useq) FROM inbox i WHERE i.\"user\" = s.\"user\")",
    );
    assert_eq!(behind, 0);

    // A second copy into the same database is refused and changes nothing.
    let again = messenger.run(&["migrate", "--to", &url]).await;
    postgres::assert_refused(&again, "--to", "not empty", "a second copy");
    assert_eq!(postgres_history(&url), history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_every_bad_target_and_writes_nothing() {
    let messenger = Messenger::new();
    messenger
        .run(&["user", "add", "ann", "--password", "pw"])
        .await
        .ok();
    let good = postgres::database();
    let (bad, newer) = postgres::bad_urls();
    for (url, says) in &bad {
        let out = messenger.run(&["migrate", "--to", url]).await;
        postgres::assert_refused(&out, "--to", says, url);
    }
    // Nothing was written: the good database is still empty, the newer one untouched.
    let tables = postgres_count(
        &good,
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
    );
    assert_eq!(tables, 0, "nothing written");
    let tables = postgres_count(
        &newer,
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
    );
    assert_eq!(tables, 1, "only schema_versions");
    // A copy that fails half-way (a row that is not UTF-8 text in the source)
    // leaves the database as it was: the schema and the rows are one transaction.
    let broken = Messenger::new();
    broken
        .run(&["user", "add", "bob", "--password", "pw"])
        .await
        .ok();
    rusqlite::Connection::open(broken.db())
        .expect("open")
        .execute("UPDATE users SET phc = CAST(x'ff' AS TEXT)", [])
        .expect("a row that is not UTF-8");
    let empty = postgres::database();
    let failed = broken.run(&["migrate", "--to", &empty]).await;
    assert!(!failed.status.success(), "{}", failed.stderr);
    let tables = postgres_count(
        &empty,
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
    );
    assert_eq!(tables, 0, "nothing stayed: {}", failed.stderr);
    // And the good database takes the copy.
    let copied = messenger.run(&["migrate", "--to", &good]).await.ok();
    assert_eq!(printed(&copied, "users"), 1, "{copied}");
}
