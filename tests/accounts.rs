//! The account store on both engines, from one test body: SQLite (a temp file)
//! and PostgreSQL (a real server, `util::postgres`). `messenger user` on a
//! PostgreSQL database; the servers refusing every kind of bad `storage.url`
//! with a message naming the key and the configuration exit code.

use messenger_accounts::{Accounts, AccountsError, Verdict};
use messenger_protocol::DeviceId;

use crate::util::postgres::{self, blocking};
use crate::util::process::Messenger;
use crate::util::uid;

/// Everything the account store promises, on `accounts` (empty).
fn lifecycle(accounts: &Accounts) {
    let (ann, bob) = (uid("ann"), uid("bob"));
    let (phone, laptop) = (
        DeviceId::parse("phone").expect("id"),
        DeviceId::parse("laptop").expect("id"),
    );
    let start = accounts.latest_revocation().expect("revocations");
    accounts.add(&ann, "pw1").expect("add");
    accounts.add(&bob, "pw").expect("add");
    assert!(matches!(
        accounts.add(&ann, "x"),
        Err(AccountsError::Exists(_))
    ));
    assert!(matches!(
        accounts.add(&uid("cat"), ""),
        Err(AccountsError::BadPassword)
    ));
    let listed: Vec<String> = accounts
        .list()
        .expect("list")
        .iter()
        .map(|u| u.as_str().to_owned())
        .collect();
    assert_eq!(listed, ["ann", "bob"]);
    assert!(accounts.exists(&ann).expect("exists"));
    assert!(!accounts.exists(&uid("cat")).expect("exists"));

    let verify =
        |user: &_, device: &_, secret: &str| accounts.verify(user, device, secret).expect("verify");
    assert_eq!(verify(&ann, &phone, "pw1"), Verdict::Accepted);
    assert_eq!(verify(&ann, &phone, "pw1"), Verdict::Accepted, "remembered");
    assert_eq!(verify(&ann, &phone, "nope"), Verdict::Rejected);
    assert_eq!(verify(&uid("cat"), &phone, "pw1"), Verdict::UnknownUser);

    let token = accounts.issue_token(&ann, &phone).expect("token");
    assert_eq!(verify(&ann, &phone, &token), Verdict::Accepted);
    assert_eq!(
        verify(&ann, &laptop, &token),
        Verdict::Rejected,
        "another device"
    );
    assert_eq!(
        accounts.token_owner(&token).expect("owner"),
        Some((ann.clone(), phone.clone()))
    );
    let newer = accounts.issue_token(&ann, &phone).expect("token");
    assert_eq!(verify(&ann, &phone, &token), Verdict::Rejected, "replaced");
    assert_eq!(
        accounts.token_owner(&token).expect("owner"),
        None,
        "replaced"
    );
    assert!(matches!(
        accounts.issue_token(&uid("cat"), &phone),
        Err(AccountsError::NotFound(_))
    ));

    accounts.set_password(&ann, "pw2").expect("passwd");
    assert_eq!(verify(&ann, &phone, "pw1"), Verdict::Rejected);
    assert_eq!(
        verify(&ann, &phone, &newer),
        Verdict::Rejected,
        "tokens dropped"
    );
    assert_eq!(accounts.token_owner(&newer).expect("owner"), None);
    assert_eq!(verify(&ann, &phone, "pw2"), Verdict::Accepted);

    let bobs = accounts.issue_token(&bob, &laptop).expect("token");
    assert!(accounts.set_disabled(&bob, true).expect("disable"));
    assert!(
        !accounts.set_disabled(&bob, true).expect("again"),
        "already"
    );
    assert_eq!(verify(&bob, &laptop, "pw"), Verdict::Disabled);
    assert_eq!(verify(&bob, &laptop, &bobs), Verdict::Disabled);
    assert_eq!(accounts.token_owner(&bobs).expect("owner"), None);
    let info = accounts.accounts().expect("accounts");
    assert!(info[1].disabled_ms.is_some() && info[0].disabled_ms.is_none());
    assert!(accounts.set_disabled(&bob, false).expect("enable"));
    assert_eq!(verify(&bob, &laptop, &bobs), Verdict::Accepted, "kept");

    accounts.remove(&ann).expect("remove");
    assert!(matches!(
        accounts.remove(&ann),
        Err(AccountsError::NotFound(_))
    ));
    assert!(matches!(
        accounts.set_password(&ann, "x"),
        Err(AccountsError::NotFound(_))
    ));
    assert!(matches!(
        accounts.set_disabled(&ann, true),
        Err(AccountsError::NotFound(_))
    ));
    assert_eq!(verify(&ann, &phone, "pw2"), Verdict::UnknownUser);
    // Password change, disabling, removal: three revocations, in order.
    let (revoked, last) = accounts.revocations_after(start).expect("revocations");
    let names: Vec<&str> = revoked.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(names, ["ann", "bob", "ann"]);
    assert_eq!(accounts.latest_revocation().expect("latest"), last);
    assert!(accounts.revocations_after(last).expect("none").0.is_empty());
    assert!(!accounts.is_blocked(&bob, &ann).expect("blocks"));
}

#[test]
fn the_account_store_behaves_the_same_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let accounts = Accounts::open(&dir.path().join("m.db")).expect("open");
    lifecycle(&accounts);
}

#[test]
fn the_account_store_behaves_the_same_on_postgres() {
    let url = postgres::database();
    let accounts_url = url.clone();
    let mut client = messenger_store::postgres::connect(&url).expect("connect");
    messenger_store::postgres::migrate(&mut client).expect("schema");
    let again = url.clone();
    let reconnect = move || messenger_store::postgres::connect(&again).map_err(|e| e.to_string());
    let accounts = Accounts::on_postgres(client, Box::new(reconnect)).expect("accounts");
    lifecycle(&accounts);
    // Every node sees the same accounts: a second store on the same database.
    let client = messenger_store::postgres::connect(&url).expect("connect");
    let reconnect = move || messenger_store::postgres::connect(&url).map_err(|e| e.to_string());
    let other = Accounts::on_postgres(client, Box::new(reconnect)).expect("accounts");
    assert!(other.exists(&uid("bob")).expect("exists"));
    assert_eq!(
        other.latest_revocation().expect("latest"),
        accounts.latest_revocation().expect("latest")
    );
    // The server cuts every connection of the database (as a restart or a
    // failover does): the next calls make theirs again and succeed.
    let name = url_of(&accounts_url);
    let cut: i64 = {
        let mut admin = postgres::server().connect("postgres");
        admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[&name],
            )
            .expect("terminate")
            .len()
            .try_into()
            .expect("a count")
    };
    assert_eq!(cut, 2, "both stores' connections were cut");
    assert!(other.exists(&uid("bob")).expect("reconnected"));
    assert_eq!(
        accounts
            .verify(&uid("bob"), &DeviceId::parse("laptop").expect("id"), "pw")
            .expect("reconnected"),
        Verdict::Accepted
    );
}

/// The database name in a connection string.
fn url_of(url: &str) -> String {
    url.rsplit('/').next().expect("a database name").to_owned()
}

/// `messenger <args>` on the PostgreSQL database `url`.
async fn on_postgres(
    messenger: &Messenger,
    url: &str,
    args: &[&str],
) -> crate::util::process::Outcome {
    let mut cmd = messenger.command(args);
    cmd.env("MESSENGER_STORAGE__BACKEND", "postgres")
        .env("MESSENGER_STORAGE__URL", url);
    messenger.run_command(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_run_on_postgres() {
    let messenger = Messenger::new();
    let url = postgres::database();
    on_postgres(
        &messenger,
        &url,
        &["user", "add", "ann", "--password", "pw"],
    )
    .await
    .ok();
    let token = on_postgres(
        &messenger,
        &url,
        &["user", "token", "ann", "--device", "phone"],
    )
    .await
    .ok();
    assert!(token.trim().starts_with("mtk_"), "{token}");
    on_postgres(&messenger, &url, &["user", "disable", "ann"])
        .await
        .ok();
    let list = on_postgres(&messenger, &url, &["user", "list"]).await.ok();
    assert!(
        list.lines()
            .any(|l| l.starts_with("ann ") && !l.ends_with('-')),
        "{list}"
    );
    // In the database, not in a SQLite file.
    assert!(!messenger.db().exists(), "no SQLite file was made");
    let counted = accounts_and_tokens(&url);
    assert_eq!(counted, (1, 1));
    // Removal takes the account's rows with it, in the database.
    let out = on_postgres(&messenger, &url, &["user", "remove", "ann"])
        .await
        .ok();
    assert_eq!(out, "removed ann\n");
    let left = accounts_and_tokens(&url);
    assert_eq!(left, (0, 0));
}

/// How many accounts and device tokens the database at `url` holds.
fn accounts_and_tokens(url: &str) -> (i64, i64) {
    blocking(|| {
        let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).expect("connect");
        let mut count = |table: &str| -> i64 {
            client
                .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
                .expect("count")
                .get(0)
        };
        (count("users"), count("token_hashes"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_refuse_every_bad_storage_url_with_the_key_named() {
    let messenger = Messenger::new();
    let (bad, _) = postgres::bad_urls();
    let mut cases = vec![(String::new(), "be set when storage.backend")];
    cases.extend(bad);
    for command in ["serve", "broker", "bridge"] {
        for (url, says) in &cases {
            let out = on_postgres(&messenger, url, &[command]).await;
            postgres::assert_refused(&out, "storage.", says, &format!("{command} {url}"));
            assert!(
                !out.stderr.contains("listening"),
                "nothing listened: {}",
                out.stderr
            );
        }
    }
}

/// `messenger serve` on PostgreSQL: the schema is made at start, devices
/// chat, and what they said is in the database (no SQLite file is made).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_on_postgres() {
    let messenger = Messenger::new();
    let url = postgres::database();
    for user in ["alice", "bob"] {
        on_postgres(&messenger, &url, &["user", "add", user, "--password", "pw"])
            .await
            .ok();
    }
    let env = [
        ("MESSENGER_STORAGE__BACKEND", "postgres"),
        ("MESSENGER_STORAGE__URL", url.as_str()),
    ];
    let mut server = messenger.spawn_role(
        "serve",
        crate::util::process::free_addr_below_ephemeral(),
        crate::util::process::free_addr(),
        crate::util::process::free_addr(),
        &env,
    );
    server.wait_until_accepting().await;
    let (alice, _alice_events) = server.library("alice", "phone").await;
    let (_bob, mut bob_events) = server.library("bob", "phone").await;
    let conv = messenger_protocol::ConvId::parse("dm:alice:bob").expect("conv");
    let ack = alice.send(&conv, "over postgres").await.expect("ack");
    assert_eq!(ack.seq, 1);
    let got = crate::util::server::next_message(&mut bob_events).await;
    assert_eq!((got.seq, got.body.as_str()), (1, "over postgres"));
    let stored: String = blocking(|| {
        let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).expect("connect");
        client
            .query_one(
                "SELECT body FROM events WHERE conv = 'dm:alice:bob' AND seq = 1",
                &[],
            )
            .expect("the message is stored")
            .get(0)
    });
    assert_eq!(stored, "over postgres");
    assert!(!messenger.db().exists(), "no SQLite file was made");
    server.terminate();
    assert!(server.exit_status(crate::util::PATIENCE).await.success());
}
