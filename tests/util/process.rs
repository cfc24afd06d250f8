//! The real `messenger` binary, run in its own temp directory.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use messenger_accounts::{Accounts, Verdict};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{did, uid, ClientOptions, Transport, PATIENCE};

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_messenger");

/// How often a wait on a process looks again.
const POLL: Duration = Duration::from_millis(20);

/// A free port on 127.0.0.1 for a server the test starts: bound, read, released.
/// Below the ephemeral range, so that no other test's outgoing connection takes
/// it as its source port between the release and the server's bind.
pub(crate) fn free_addr() -> SocketAddr {
    free_addr_below_ephemeral()
}

/// A free port on 127.0.0.1 below the ephemeral range (32768 and up on Linux), for
/// a server that a client starts dialling before the server listens: a connect to
/// a closed port in the ephemeral range can pick that same port as its source and
/// connect to itself (TCP simultaneous open), which then holds the port.
///
/// Never the same port twice in one test binary: a port handed out is free
/// again until its server binds it, and another pick (of the same test, or of
/// a test running beside it) must not take it meanwhile.
pub(crate) fn free_addr_below_ephemeral() -> SocketAddr {
    use rand::Rng;
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let start: u16 = rand::thread_rng().gen_range(0..12_000);
    let addr = (0..12_000u16)
        .map(|i| 20_000 + (start + i) % 12_000)
        .filter(|port| !handed_out.contains(port))
        .find_map(|port| {
            TcpListener::bind(("127.0.0.1", port))
                .and_then(|l| l.local_addr())
                .ok()
        })
        .expect("a free port below the ephemeral range");
    handed_out.push(addr.port());
    addr
}

/// Whether nothing listens on `addr` (binding it succeeds).
pub(crate) fn is_free(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// A `messenger` installation: a temp directory (the working directory of every
/// command, so no `config/messenger.toml` is picked up) and its SQLite file.
pub(crate) struct Messenger {
    dir: TempDir,
    /// The PostgreSQL database every command uses (`storage.backend = "postgres"`),
    /// if not the SQLite file.
    postgres: Option<String>,
}

/// How a finished command went.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Its exit status.
    pub(crate) status: ExitStatus,
    /// Everything it printed on stdout.
    pub(crate) stdout: String,
    /// Everything it printed on stderr.
    pub(crate) stderr: String,
}

impl Outcome {
    /// Asserts success and returns stdout.
    pub(crate) fn ok(self) -> String {
        assert!(self.status.success(), "command failed: {self:#?}");
        self.stdout
    }

    /// Asserts failure and returns stderr.
    pub(crate) fn failed(self) -> String {
        assert!(!self.status.success(), "command succeeded: {self:#?}");
        self.stderr
    }
}

impl Messenger {
    /// A fresh installation with no users.
    pub(crate) fn new() -> Self {
        super::init_logs();
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            postgres: None,
        }
    }

    /// A fresh installation on the storage `backend` names: SQLite, or a new
    /// database of the test binary's PostgreSQL server.
    pub(crate) fn on(backend: super::server::Backend) -> Self {
        let mut messenger = Self::new();
        if backend == super::server::Backend::Postgres {
            messenger.postgres = Some(super::postgres::database());
        }
        messenger
    }

    /// A fresh installation on the PostgreSQL database `url` (e.g. one a backup
    /// was restored into).
    pub(crate) fn on_database(url: String) -> Self {
        let mut messenger = Self::new();
        messenger.postgres = Some(url);
        messenger
    }

    /// The PostgreSQL database, when the installation is on one.
    pub(crate) fn postgres_url(&self) -> Option<&str> {
        self.postgres.as_deref()
    }

    /// The temp directory.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The SQLite file, set through `MESSENGER_STORAGE__PATH`.
    pub(crate) fn db(&self) -> PathBuf {
        self.dir.path().join("data").join("messenger.db")
    }

    /// `messenger <args>` with a clean environment: no inherited `MESSENGER_*`
    /// variables, the storage path set, the rate and per-address limits off, the admin listener off (tests run in
    /// parallel; [`Messenger::spawn_serve`] gives it a free port), the temp
    /// directory as working directory.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MESSENGER_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("MESSENGER_STORAGE__PATH", self.db())
            .env("MESSENGER_ADMIN__LISTEN", "")
            // Tests send far faster than a person, all from one address
            // (tests/limits.rs turns these limits on).
            .env("MESSENGER_LIMITS__SENDS_PER_SEC", "0")
            .env("MESSENGER_LIMITS__GROUP_CREATES_PER_HOUR", "0")
            .env("MESSENGER_LIMITS__TOKEN_REQUESTS_PER_MIN", "0")
            .env("MESSENGER_LIMITS__UPLOADS_PER_MIN", "0")
            .env("MESSENGER_BROKER__MAX_CONNECTIONS_PER_IP", "0")
            .env("RUST_LOG", "info");
        if let Some(url) = &self.postgres {
            cmd.env("MESSENGER_STORAGE__BACKEND", "postgres")
                .env("MESSENGER_STORAGE__URL", url);
        }
        cmd
    }

    /// `messenger <args>` as a user types a chat command: signed in as `user` with
    /// `password` to the broker at `broker`, its state in the temp directory.
    pub(crate) fn as_user(
        &self,
        broker: SocketAddr,
        user: &str,
        password: &str,
        args: &[&str],
    ) -> Command {
        let mut cmd = self.command(args);
        cmd.args(["--user", user, "--password", password, "--broker"])
            .arg(broker.to_string())
            .arg("--state-dir")
            .arg(self.dir().join("state"));
        cmd
    }

    /// Runs `messenger <args>` to completion (off the async workers).
    pub(crate) async fn run(&self, args: &[&str]) -> Outcome {
        self.run_command(self.command(args)).await
    }

    /// Runs a command from [`Messenger::command`] to completion.
    pub(crate) async fn run_command(&self, mut cmd: Command) -> Outcome {
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .expect("running the messenger binary");
        Outcome {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Checks a password against the installation's account store directly (the
    /// SQLite file or the PostgreSQL database), as the broker would.
    pub(crate) async fn verify(&self, user: &str, password: &str) -> Verdict {
        let (user, password) = (uid(user), password.to_owned());
        if let Some(url) = self.postgres.clone() {
            return super::postgres::blocking(move || {
                let client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
                let reconnect = move || {
                    postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())
                };
                Accounts::on_postgres(client, Box::new(reconnect))
                    .expect("account store")
                    .verify(&user, &did("phone"), &password)
                    .expect("verify")
            });
        }
        let db = self.db();
        tokio::task::spawn_blocking(move || {
            Accounts::open(&db)
                .expect("account store")
                .verify(&user, &did("phone"), &password)
                .expect("verify")
        })
        .await
        .expect("join")
    }

    /// `messenger serve` on free ports (revocations polled every 100 ms); returns
    /// once its MQTT port accepts connections and it is ready (`/readyz`: the
    /// bridge has subscribed).
    /// Its MQTT port is below the ephemeral range: a test may restart it on the same
    /// port while devices are dialling it (see [`free_addr_below_ephemeral`]).
    pub(crate) async fn serve(&self) -> Server {
        self.serve_on(free_addr_below_ephemeral(), free_addr())
            .await
    }

    /// `messenger serve` on these addresses (e.g. again, after [`Server::kill`]).
    pub(crate) async fn serve_on(&self, mqtt: SocketAddr, ws: SocketAddr) -> Server {
        let mut server = self.spawn_serve(mqtt, ws);
        server.wait_until_accepting().await;
        // As a load balancer would: a device that sends before the bridge has
        // subscribed gets no answer until its retry.
        wait_for_status(&server, "/readyz", 200).await;
        server
    }

    /// `messenger serve` on these addresses (the admin listener on a free
    /// port), without waiting for anything.
    pub(crate) fn spawn_serve(&self, mqtt: SocketAddr, ws: SocketAddr) -> Server {
        self.spawn_role("serve", mqtt, ws, free_addr(), &[])
    }

    /// `messenger <role>` (`serve`, `broker` or `bridge`) on these addresses,
    /// with `env` besides, without waiting for anything. A bridge's `mqtt` is
    /// the broker it is told to use.
    pub(crate) fn spawn_role(
        &self,
        role: &str,
        mqtt: SocketAddr,
        ws: SocketAddr,
        admin: SocketAddr,
        env: &[(&str, &str)],
    ) -> Server {
        self.spawn_named(role, role, mqtt, ws, admin, env)
    }

    /// [`Messenger::spawn_role`] logging to `<name>.log` (several processes of
    /// one role, e.g. bridges).
    pub(crate) fn spawn_named(
        &self,
        name: &str,
        role: &str,
        mqtt: SocketAddr,
        ws: SocketAddr,
        admin: SocketAddr,
        env: &[(&str, &str)],
    ) -> Server {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut cmd = self.command(&[role]);
        cmd.env("MESSENGER_BROKER__LISTEN", mqtt.to_string())
            .env("MESSENGER_ADMIN__LISTEN", admin.to_string())
            .env("MESSENGER_BROKER__WS_LISTEN", ws.to_string())
            .env("MESSENGER_BROKER__REVOCATION_POLL_MS", "100")
            .env("MESSENGER_BRIDGE__BROKER", mqtt.to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"));
        let child = cmd.spawn().expect("spawning messenger");
        Server {
            child,
            mqtt,
            ws,
            admin,
            log,
        }
    }
}

/// A running `messenger serve`; killed when dropped if still running.
pub(crate) struct Server {
    child: Child,
    /// Its MQTT over TCP address.
    pub(crate) mqtt: SocketAddr,
    /// Its MQTT over WebSocket address.
    pub(crate) ws: SocketAddr,
    /// Its admin listener (metrics, health).
    pub(crate) admin: SocketAddr,
    /// Where its stderr goes.
    log: PathBuf,
}

impl Server {
    /// What it has logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its MQTT port accepts connections.
    pub(crate) async fn wait_until_accepting(&mut self) {
        self.wait_until_accepting_on(self.mqtt).await;
    }

    /// Waits until `addr` (one of its listeners) accepts connections.
    pub(crate) async fn wait_until_accepting_on(&mut self, addr: SocketAddr) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("messenger serve exited with {status}:\n{}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "messenger serve did not accept on {addr} within {PATIENCE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// `user`'s `device` on the real client library, signed in with the password
    /// `pw` over plain MQTT, with its event stream. Other tests run beside these,
    /// some under load: a slow ack is not a failure here (three times the patience).
    pub(crate) async fn library(
        &self,
        user: &str,
        device: &str,
    ) -> (messenger_client::Client, messenger_client::EventStream) {
        let mut config = messenger_client::ClientConfig::new(
            self.mqtt.to_string(),
            uid(user),
            did(device),
            "pw",
        );
        config.request_timeout = PATIENCE * 3;
        messenger_client::Client::connect(config)
            .await
            .expect("connect")
    }

    /// A device signing in to this server.
    pub(crate) fn device(
        &self,
        transport: Transport,
        client_id: &str,
        password: &str,
    ) -> ClientOptions {
        ClientOptions::new((self.mqtt, self.ws), transport, client_id, password)
    }

    /// Sends SIGHUP (through `kill`): reload the TLS certificate.
    pub(crate) fn hang_up(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -HUP failed: {status}");
    }

    /// Waits until its log holds `text` `times` times or more; returns the log.
    pub(crate) async fn wait_for_log(&mut self, text: &str, times: usize) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if log.matches(text).count() >= times {
                return log;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("messenger exited with {status} before logging {text:?}:\n{log}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "messenger did not log {text:?} within {PATIENCE:?}:\n{log}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends SIGTERM (through `kill`, to need no signal crate).
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Kills the process with SIGKILL (no cleanup of any kind) and reaps it.
    pub(crate) fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Waits up to `patience` for the process to exit.
    pub(crate) async fn exit_status(&mut self, patience: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "messenger serve still running after {patience:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET path` over plain HTTP/1.1; the status code and the body.
pub(crate) async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    http(admin, "GET", path).await
}

/// `method path` over plain HTTP/1.1, with no body and no caller header (as a
/// program other than `messenger` would send it); the status code and the body.
pub(crate) async fn http(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .unwrap_or_else(|err| panic!("connecting to the admin listener {admin}: {err}"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response))
        .await
        .expect("a response in time")
        .expect("reading the response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `path` until it answers `status`; the body then.
pub(crate) async fn wait_for_status(server: &Server, path: &str, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if tokio::net::TcpStream::connect(server.admin).await.is_ok() {
            let (got, body) = get(server.admin, path).await;
            if got == status {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} still answers {got} ({body:?}), not {status}, after {PATIENCE:?}:\n{}",
                server.log()
            );
        } else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the admin listener {} is not up after {PATIENCE:?}:\n{}",
                server.admin,
                server.log()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
