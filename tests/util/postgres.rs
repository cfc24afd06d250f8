//! A real PostgreSQL server for the tests: one per test binary, started on first
//! use from Debian's `postgresql` package by the bench's [`LocalPostgres`] (in a
//! temp directory, on a free loopback port, with password (SCRAM) authentication
//! over TCP, as the `postgres` user when the tests run as root). It stops when
//! the test binary exits (its watchdog shell sees stdin close). Each test gets a
//! database of its own ([`database`]); a test that stops its server makes one
//! of its own ([`private`]).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

pub(crate) use messenger_bench::postgres::{LocalPostgres, SUPERUSER};

use super::process::{free_addr, Outcome};

/// The superuser's password.
pub(crate) const PASSWORD: &str = "test-secret";

/// A server of the test's own, stopped when dropped (for a test that stops and
/// restarts it); see [`blocking`].
pub(crate) fn private() -> LocalPostgres {
    blocking(|| {
        LocalPostgres::start(&std::env::temp_dir(), PASSWORD, &["fsync = off"])
            .expect("start a PostgreSQL")
    })
}

/// The running server.
pub(crate) struct Server {
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
    /// The watchdog shell (its stdin is the pipe whose end stops the server).
    _watchdog: Mutex<Child>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The shared server, started on first use. The client is synchronous (it runs
/// its own runtime): from a test's runtime, call this and everything else here
/// through [`blocking`].
pub(crate) fn server() -> &'static Server {
    SERVER.get_or_init(start)
}

/// Runs `f`, which uses the synchronous PostgreSQL client, off the async
/// executor (the tests run on multi-threaded runtimes).
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A new, empty database on the shared server; its connection string.
pub(crate) fn database() -> String {
    blocking(create_database)
}

fn create_database() -> String {
    let server = server();
    let name = format!(
        "test_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = server.connect("postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create a test database");
    server.url(&name)
}

impl Server {
    /// The connection string of database `name`, as the superuser.
    pub(crate) fn url(&self, name: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{PASSWORD}@127.0.0.1:{}/{name}",
            self.port
        )
    }

    /// A client of database `name` (see [`blocking`]).
    pub(crate) fn connect(&self, name: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(name), postgres::NoTls)
            .expect("connect to the test PostgreSQL")
    }
}

fn start() -> Server {
    let local = LocalPostgres::start(
        &std::env::temp_dir(),
        PASSWORD,
        // Test data need not survive a power cut; a restart keeps it all the same.
        &["fsync = off", "full_page_writes = off"],
    )
    .expect("start the test PostgreSQL");
    // The shell waits on its stdin, which nothing writes: when the test binary
    // exits the pipe closes, and it stops the server and removes its directory.
    let mut shell = Command::new("/bin/sh");
    if let Some((uid, gid)) = local.run_as() {
        shell.uid(uid).gid(gid);
    }
    let watchdog = shell
        .arg("-c")
        .arg(format!("read _; {}", local.teardown_script()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the watchdog");
    let port = local.port();
    local.keep();
    Server {
        port,
        _watchdog: Mutex::new(watchdog),
    }
}

/// Connection strings that must be refused, each with words its error says: one
/// that does not parse, a port nothing listens on, a wrong password, a database
/// that does not exist, and a database whose schema is newer than this binary
/// (made here, with nothing in it but that version). Also returns that last one's
/// connection string, to check it was left alone.
pub(crate) fn bad_urls() -> (Vec<(String, &'static str)>, String) {
    let server = blocking(server);
    let nowhere = free_addr();
    let newer = database();
    blocking(|| {
        let mut client = postgres::Client::connect(&newer, postgres::NoTls).expect("connect");
        client
            .batch_execute(
                "CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version BIGINT NOT NULL);
                 INSERT INTO schema_versions VALUES ('messenger', 999);",
            )
            .expect("a schema from the future");
    });
    let port = server.port;
    let urls = vec![
        (
            "postgres://ann@127.0.0.1:notaport/db".to_owned(),
            "connection string",
        ),
        (
            format!("postgres://{SUPERUSER}:x@{nowhere}/postgres"),
            "cannot reach",
        ),
        (
            format!("postgres://{SUPERUSER}:wrong@127.0.0.1:{port}/postgres"),
            "refused",
        ),
        (
            format!("postgres://{SUPERUSER}:{PASSWORD}@127.0.0.1:{port}/no_such_database"),
            "refused",
        ),
        (newer.clone(), "newer"),
    ];
    (urls, newer)
}

/// Asserts that `out` is a refusal as bad configuration: exit code 64, a message
/// naming `key` and saying `says`, no password in it.
pub(crate) fn assert_refused(out: &Outcome, key: &str, says: &str, what: &str) {
    assert_eq!(out.status.code(), Some(64), "{what}: {}", out.stderr);
    assert!(
        out.stderr.contains(key),
        "{what}: names {key}: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(says),
        "{what}: says {says:?}: {}",
        out.stderr
    );
    for secret in [PASSWORD, "wrong@"] {
        assert!(
            !out.stderr.contains(secret),
            "{what}: no password shown: {}",
            out.stderr
        );
    }
}
