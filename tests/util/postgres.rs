//! A real PostgreSQL server for the tests: one per test binary, started on first
//! use from Debian's `postgresql` package (`initdb` and `postgres`, found on PATH
//! or under /usr/lib/postgresql), in a temp directory, on a free loopback port,
//! with password (SCRAM) authentication over TCP. PostgreSQL refuses to run as
//! root: when the tests do (CI), the server runs as the `postgres` user the
//! package creates. It stops when the test binary exits (its watchdog shell sees
//! stdin close). Each test gets a database of its own ([`database`]).

use std::io::Write;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::process::{free_addr, Outcome};

/// The superuser the tests connect as.
pub(crate) const SUPERUSER: &str = "messenger";
/// Its password.
pub(crate) const PASSWORD: &str = "test-secret";

/// How long the server may take to start.
const START_PATIENCE: Duration = Duration::from_secs(60);

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

/// Where the server's programs are: PATH, else the newest /usr/lib/postgresql/<v>/bin.
fn bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
    });
    if let Some(dir) = on_path {
        return dir;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).expect(
        "PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql): \
         `apt-get install postgresql` (.ci/run does this)",
    )
}

/// The uid and gid to run the server as: `postgres`'s when the tests run as root.
fn run_as() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id(&["-u"])? != 0 {
        return None;
    }
    let user = (id(&["-u", "postgres"]), id(&["-g", "postgres"]));
    match user {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        _ => panic!(
            "the tests run as root and PostgreSQL refuses root, but there is no `postgres` \
             user to run it as (Debian's postgresql package creates it)"
        ),
    }
}

/// A command that runs as `user` (when set).
fn command(program: &Path, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn start() -> Server {
    let bin = bin_dir();
    let user = run_as();
    let dir = tempfile::Builder::new()
        .prefix("messenger-pg")
        .tempdir()
        .expect("temp dir");
    if let Some((uid, gid)) = user {
        chown(dir.path(), Some(uid), Some(gid)).expect("hand the temp dir to postgres");
    }
    let data = dir.path().join("data");
    let pwfile = dir.path().join("pw");
    std::fs::File::create(&pwfile)
        .and_then(|mut f| f.write_all(PASSWORD.as_bytes()))
        .expect("write the password file");
    if let Some((uid, gid)) = user {
        chown(&pwfile, Some(uid), Some(gid)).expect("hand the password file to postgres");
    }
    let out = command(&bin.join("initdb"), user)
        .arg("-D")
        .arg(&data)
        .args(["-U", SUPERUSER, "-E", "UTF8", "--no-sync"])
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_addr().port();
    // The shell waits on its stdin, which nothing writes: when the test binary
    // exits the pipe closes, and it stops the server (SIGINT: a fast shutdown)
    // and removes the directory.
    let dir = dir.keep();
    let watchdog = command(Path::new("/bin/sh"), user)
        .arg("-c")
        .arg(
            r#"dir=$1; shift; "$@" & pid=$!; read _; kill -INT "$pid"; wait "$pid"; rm -rf "$dir""#,
        )
        .arg("sh")
        .arg(&dir)
        .arg(bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        // Test data need not survive a power cut; a restart keeps it all the same.
        .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
        .args(["-c", "max_connections=200"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log")).map_or(Stdio::null(), Stdio::from))
        .spawn()
        .expect("start postgres");
    let server = Server {
        port,
        _watchdog: Mutex::new(watchdog),
    };
    let deadline = Instant::now() + START_PATIENCE;
    loop {
        match postgres::Client::connect(&server.url("postgres"), postgres::NoTls) {
            Ok(_) => return server,
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(err) => panic!("PostgreSQL did not start on port {port}: {err}"),
        }
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
