//! TLS through the real binary: `messenger serve` with `broker.tls_listen` and
//! `broker.wss_listen` and a certificate from a CA generated here; clients that
//! trust the CA chat (the CLI over MQTT/TLS, the client library over WSS), one
//! that does not is refused, plain MQTT to the TLS port fails; `broker.listen = ""`;
//! a certificate reload on SIGHUP; bad certificate files (exit 64 naming the key).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use messenger_client::{ClientConfig, Transport as ClientTransport, Trust};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::util::process::{free_addr, free_addr_below_ephemeral, is_free, Messenger, Server};
use crate::util::server::{next_message, on_both_engines, Backend};
use crate::util::{did, uid, ClientOptions, Transport, PATIENCE};

/// Exit code for bad configuration.
const EXIT_CONFIG: i32 = 64;

/// A CA and a server certificate it signed, as PEM.
struct Pki {
    /// The CA certificate (what clients trust).
    ca: String,
    /// The server's chain: its certificate, then the CA's.
    chain: String,
    /// The server certificate's private key.
    key: String,
}

impl Pki {
    /// A CA and a certificate for `localhost` and `127.0.0.1`, valid now.
    fn new(name: &str) -> Self {
        Self::with(name, |_| {})
    }

    /// Like [`Pki::new`], with the server certificate's parameters adjusted.
    fn with(name: &str, edit: impl FnOnce(&mut CertificateParams)) -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        edit(&mut params);
        let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");
        Self {
            ca: ca.pem(),
            chain: format!("{}{}", cert.pem(), ca.pem()),
            key: key.serialize_pem(),
        }
    }

    /// Writes `ca.pem`, `cert.pem` and `key.pem` under `dir` with `prefix`; returns their paths.
    fn write(&self, dir: &Path, prefix: &str) -> (PathBuf, PathBuf, PathBuf) {
        let paths = (
            dir.join(format!("{prefix}ca.pem")),
            dir.join(format!("{prefix}cert.pem")),
            dir.join(format!("{prefix}key.pem")),
        );
        std::fs::write(&paths.0, &self.ca).expect("write CA");
        std::fs::write(&paths.1, &self.chain).expect("write chain");
        std::fs::write(&paths.2, &self.key).expect("write key");
        paths
    }
}

/// Where a TLS server listens.
struct Listeners {
    mqtt: SocketAddr,
    ws: SocketAddr,
    tls: SocketAddr,
    wss: SocketAddr,
}

impl Listeners {
    fn free() -> Self {
        Self {
            mqtt: free_addr_below_ephemeral(),
            ws: free_addr(),
            tls: free_addr(),
            wss: free_addr(),
        }
    }
}

/// `messenger serve` with both TLS listeners and this certificate, plus `env`.
fn spawn_tls(
    messenger: &Messenger,
    at: &Listeners,
    cert: &Path,
    key: &Path,
    env: &[(&str, &str)],
) -> Server {
    let (tls, wss) = (at.tls.to_string(), at.wss.to_string());
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let mut all = vec![
        ("MESSENGER_BROKER__TLS_LISTEN", tls.as_str()),
        ("MESSENGER_BROKER__WSS_LISTEN", wss.as_str()),
        ("MESSENGER_TLS__CERT_PATH", cert.as_str()),
        ("MESSENGER_TLS__KEY_PATH", key.as_str()),
    ];
    all.extend_from_slice(env);
    messenger.spawn_role("serve", at.mqtt, at.ws, free_addr(), &all)
}

/// A chat command as `user` over MQTT/TLS to `tls`, trusting `ca`.
async fn over_tls(
    messenger: &Messenger,
    tls: SocketAddr,
    ca: &Path,
    user: &str,
    args: &[&str],
) -> crate::util::process::Outcome {
    let ca = ca.display().to_string();
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--tls", "--ca-file", &ca]);
    messenger
        .run_command(messenger.as_user(tls, user, "pw", &full))
        .await
}

/// A device on the client library over TLS (`transport` picks MQTT/TLS or WSS), trusting `ca`.
async fn device(
    addr: SocketAddr,
    transport: ClientTransport,
    ca: &Path,
    user: &str,
    name: &str,
) -> Result<(messenger_client::Client, messenger_client::EventStream), messenger_client::ClientError>
{
    let mut config = ClientConfig::new(addr.to_string(), uid(user), did(name), "pw");
    config.transport = transport;
    config.tls = Some(Trust::CaFile(ca.to_path_buf()));
    config.keepalive = Duration::from_secs(5);
    config.request_timeout = PATIENCE;
    tokio::time::timeout(PATIENCE, messenger_client::Client::connect(config))
        .await
        .expect("connect ends in time")
}

async fn add_users(messenger: &Messenger, users: &[&str]) {
    for user in users {
        messenger
            .run(&["user", "add", user, "--password", "pw"])
            .await
            .ok();
    }
}

/// A server on both TLS listeners with users alice and bob (password `pw`).
struct Trusted {
    messenger: Messenger,
    server: Server,
    at: Listeners,
    /// The CA that signed the server's certificate.
    ca: PathBuf,
    /// A CA that signed nothing of the server's.
    stranger_ca: PathBuf,
}

/// [`Trusted`], accepting on TLS and WSS, storing where `backend` says.
async fn trusted_server(backend: Backend) -> Trusted {
    let messenger = Messenger::on(backend);
    add_users(&messenger, &["alice", "bob"]).await;
    let (ca, cert, key) = Pki::new("server").write(messenger.dir(), "");
    let (stranger_ca, _, _) = Pki::new("stranger").write(messenger.dir(), "stranger-");
    let at = Listeners::free();
    let mut server = spawn_tls(&messenger, &at, &cert, &key, &[]);
    server.wait_until_accepting_on(at.tls).await;
    server.wait_until_accepting_on(at.wss).await;
    Trusted {
        messenger,
        server,
        at,
        ca,
        stranger_ca,
    }
}

on_both_engines!(clients_trusting_the_ca_chat_over_tls_and_wss);

/// Trusting the CA, alice (CLI, MQTT over TLS) and bob (client library, WSS)
/// chat; a client trusting another CA is refused; plain MQTT to the TLS port fails.
async fn clients_trusting_the_ca_chat_over_tls_and_wss(backend: Backend) {
    let Trusted {
        messenger,
        server: _server,
        at,
        ca,
        stranger_ca,
    } = trusted_server(backend).await;

    let sent = over_tls(
        &messenger,
        at.tls,
        &ca,
        "alice",
        &["send", "bob", "over tls"],
    )
    .await
    .ok();
    assert!(sent.starts_with("sent to dm:alice:bob: seq 1"), "{sent}");

    let (bob, mut events) = device(at.wss, ClientTransport::WebSocket, &ca, "bob", "web")
        .await
        .expect("bob connects over WSS");
    let got = next_message(&mut events).await;
    assert_eq!(
        (got.body.as_str(), got.from.as_str()),
        ("over tls", "alice")
    );
    bob.send(&got.conv, "back over wss")
        .await
        .expect("bob sends");
    let history = over_tls(&messenger, at.tls, &ca, "alice", &["history", "bob"])
        .await
        .ok();
    assert!(history.contains("bob: back over wss"), "{history}");

    // Without --ca-file the system's CAs are trusted, and the test CA is not one of them.
    let tls = at.tls.to_string();
    let refused = messenger
        .run(&[
            "send",
            "bob",
            "x",
            "--user",
            "alice",
            "--password",
            "pw",
            "--broker",
            &tls,
            "--tls",
        ])
        .await
        .failed();
    assert!(refused.contains("certificate"), "{refused}");
    // A client that trusts another CA: the CLI and the library, on both TLS listeners.
    let refused = over_tls(
        &messenger,
        at.tls,
        &stranger_ca,
        "alice",
        &["send", "bob", "x"],
    )
    .await
    .failed();
    assert!(refused.contains("certificate"), "{refused}");
    for (addr, transport) in [
        (at.tls, ClientTransport::Tcp),
        (at.wss, ClientTransport::WebSocket),
    ] {
        let Err(err) = device(addr, transport, &stranger_ca, "alice", "phone").await else {
            panic!("an untrusted certificate was accepted on {addr}");
        };
        assert!(format!("{err:#}").contains("certificate"), "{err:#}");
    }
    // Plain MQTT to the TLS port: no CONNACK, the connection fails.
    let plain = ClientOptions::new((at.tls, at.tls), Transport::Tcp, "alice:plain", "pw")
        .connect()
        .await;
    assert!(
        !matches!(
            plain,
            Ok(_) | Err(rumqttc::ConnectionError::ConnectionRefused(_))
        ),
        "plain MQTT got an MQTT answer from the TLS port"
    );
    // Nothing the stranger or the plain client sent was stored: alice's history has two messages.
    let history = over_tls(&messenger, at.tls, &ca, "alice", &["history", "bob"])
        .await
        .ok();
    assert_eq!(
        history.lines().filter(|l| l.contains('#')).count(),
        2,
        "{history}"
    );
    bob.disconnect().await;
}

on_both_engines!(with_plain_mqtt_off_nothing_answers_plain_mqtt);

/// `broker.listen = ""` (and no plain WebSocket): the plain port is not bound,
/// the loopback listener the fronts use refuses a device that dials it directly,
/// and the bridge (which does dial it) serves TLS clients.
async fn with_plain_mqtt_off_nothing_answers_plain_mqtt(backend: Backend) {
    let messenger = Messenger::on(backend);
    add_users(&messenger, &["alice", "bob"]).await;
    let (ca, cert, key) = Pki::new("server").write(messenger.dir(), "");
    let at = Listeners::free();
    let mut server = spawn_tls(
        &messenger,
        &at,
        &cert,
        &key,
        &[
            ("MESSENGER_BROKER__LISTEN", ""),
            ("MESSENGER_BROKER__WS_LISTEN", ""),
        ],
    );
    server.wait_until_accepting_on(at.tls).await;
    let log = server.wait_for_log("plain MQTT off", 1).await;
    assert!(is_free(at.mqtt) && is_free(at.ws), "{log}");

    let sent = over_tls(
        &messenger,
        at.tls,
        &ca,
        "alice",
        &["send", "bob", "tls only"],
    )
    .await
    .ok();
    assert!(sent.starts_with("sent to dm:alice:bob: seq 1"), "{sent}");

    let internal: SocketAddr = log
        .split("internal=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no internal address in the log:\n{log}"));
    assert!(internal.ip().is_loopback(), "{internal}");
    let direct = ClientOptions::new((internal, internal), Transport::Tcp, "bob:direct", "pw")
        .connect()
        .await;
    assert_eq!(
        crate::util::refusal(direct),
        rumqttc::ConnectReturnCode::NotAuthorized
    );
    // Without --broker, --tls finds broker.tls_listen and plain finds nothing.
    let mut cmd = messenger.command(&[
        "history",
        "alice",
        "--user",
        "bob",
        "--password",
        "pw",
        "--tls",
        "--ca-file",
    ]);
    cmd.arg(&ca)
        .env("MESSENGER_BROKER__TLS_LISTEN", at.tls.to_string());
    let history = messenger.run_command(cmd).await.ok();
    assert!(history.contains("alice: tls only"), "{history}");
    let mut cmd = messenger.command(&["history", "alice", "--user", "bob", "--password", "pw"]);
    cmd.env("MESSENGER_BROKER__LISTEN", "");
    let refused = messenger.run_command(cmd).await.failed();
    assert!(refused.contains("broker.listen is empty"), "{refused}");
}

on_both_engines!(certificate_reload_on_sighup);

/// SIGHUP with new files: a new connection sees the new certificate (trusting the
/// new CA works, the old CA no longer does) while a connection opened before keeps
/// working; a reload of a bad file keeps the certificate in use and says why.
async fn certificate_reload_on_sighup(backend: Backend) {
    let messenger = Messenger::on(backend);
    add_users(&messenger, &["alice", "bob"]).await;
    let (old_ca, cert, key) = Pki::new("old").write(messenger.dir(), "");
    let at = Listeners::free();
    let mut server = spawn_tls(&messenger, &at, &cert, &key, &[]);
    server.wait_until_accepting_on(at.tls).await;
    let (bob, mut events) = device(at.tls, ClientTransport::Tcp, &old_ca, "bob", "phone")
        .await
        .expect("bob connects with the old certificate");

    let renewed = Pki::new("new");
    std::fs::write(&cert, &renewed.chain).expect("replace chain");
    std::fs::write(&key, &renewed.key).expect("replace key");
    let new_ca = messenger.dir().join("new-ca.pem");
    std::fs::write(&new_ca, &renewed.ca).expect("write new CA");
    server.hang_up();
    server.wait_for_log("TLS certificate reloaded", 1).await;

    let sent = over_tls(
        &messenger,
        at.tls,
        &new_ca,
        "alice",
        &["send", "bob", "after reload"],
    )
    .await
    .ok();
    assert!(sent.starts_with("sent to dm:alice:bob: seq 1"), "{sent}");
    let refused = over_tls(&messenger, at.tls, &old_ca, "alice", &["send", "bob", "x"])
        .await
        .failed();
    assert!(refused.contains("certificate"), "{refused}");
    // The connection from before the reload still carries traffic both ways.
    let got = next_message(&mut events).await;
    assert_eq!(got.body, "after reload");
    bob.send(&got.conv, "still here")
        .await
        .expect("old connection sends");

    // A bad key on the next reload: refused, logged, the renewed certificate stays.
    std::fs::write(&key, "not a key\n").expect("break key");
    server.hang_up();
    let log = server.wait_for_log("TLS certificate not reloaded", 1).await;
    assert!(log.contains("tls.key_path"), "{log}");
    let history = over_tls(&messenger, at.tls, &new_ca, "alice", &["history", "bob"])
        .await
        .ok();
    assert!(history.contains("bob: still here"), "{history}");
    bob.disconnect().await;
}

on_both_engines!(bad_certificates_exit_64_naming_the_key);

/// Bad certificate files: `serve` exits 64 before binding anything, naming the key.
async fn bad_certificates_exit_64_naming_the_key(backend: Backend) {
    let messenger = Messenger::on(backend);
    let dir = messenger.dir();
    let (_, cert, key) = Pki::new("good").write(dir, "");
    let (_, other_cert, _) = Pki::new("other").write(dir, "other-");
    let expired = Pki::with("expired", |p| {
        p.not_before = rcgen::date_time_ymd(2019, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 1, 1);
    });
    let (_, expired_cert, expired_key) = expired.write(dir, "expired-");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n").expect("write garbage");
    let a_directory = dir.join("keys");
    std::fs::create_dir(&a_directory).expect("mkdir");
    let missing = dir.join("missing.pem");

    let cases: [(&str, &Path, &Path, &[&str]); 7] = [
        (
            "mismatch",
            &other_cert,
            &key,
            &["tls.key_path", "does not match"],
        ),
        (
            "unreadable key",
            &cert,
            &a_directory,
            &["tls.key_path", "cannot read"],
        ),
        (
            "no key",
            &cert,
            &garbage,
            &["tls.key_path", "no private key"],
        ),
        (
            "expired",
            &expired_cert,
            &expired_key,
            &["tls.cert_path", "expired at 2020-01-01"],
        ),
        (
            "missing",
            &missing,
            &key,
            &["tls.cert_path", "cannot read", "missing.pem"],
        ),
        // The key file holds PEM, but no certificate.
        (
            "no certificate",
            &key,
            &key,
            &["tls.cert_path", "no certificate"],
        ),
        (
            "missing key file",
            &cert,
            &missing,
            &["tls.key_path", "cannot read"],
        ),
    ];
    for (case, cert, key, expected) in cases {
        let at = Listeners::free();
        let mut server = spawn_tls(&messenger, &at, cert, key, &[]);
        let status = server.exit_status(PATIENCE).await;
        let log = server.log();
        assert_eq!(status.code(), Some(EXIT_CONFIG), "{case}: {log}");
        for text in expected {
            assert!(log.contains(text), "{case}: no {text:?} in:\n{log}");
        }
        assert!(
            is_free(at.mqtt) && is_free(at.tls) && is_free(at.wss),
            "{case}"
        );
    }

    // A TLS listener without [tls] is bad configuration too.
    let mut cmd = messenger.command(&["serve"]);
    cmd.env("MESSENGER_BROKER__TLS_LISTEN", free_addr().to_string());
    let outcome = messenger.run_command(cmd).await;
    assert_eq!(outcome.status.code(), Some(EXIT_CONFIG), "{outcome:#?}");
    assert!(
        outcome.stderr.contains("tls.cert_path must be set"),
        "{outcome:#?}"
    );
    // So is --ca-file without --tls, and a CA file that cannot be read is named.
    let outcome = messenger
        .run(&[
            "send",
            "bob",
            "x",
            "--user",
            "alice",
            "--password",
            "pw",
            "--ca-file",
            "ca.pem",
        ])
        .await;
    assert!(outcome.stderr.contains("--tls"), "{outcome:#?}");
    let outcome = messenger
        .run(&[
            "send",
            "bob",
            "x",
            "--user",
            "alice",
            "--password",
            "pw",
            "--broker",
            "127.0.0.1:1",
            "--tls",
            "--ca-file",
            "nowhere.pem",
        ])
        .await;
    assert!(outcome.failed().contains("nowhere.pem"));
}

on_both_engines!(files_travel_over_https_with_tls);

/// With `--tls`, `send --file` uploads and `download` fetches over HTTPS on the
/// web listener over TLS (`broker.wss_listen`), trusting `--ca-file`; a client
/// trusting another CA is refused and writes nothing.
async fn files_travel_over_https_with_tls(backend: Backend) {
    let Trusted {
        messenger,
        server: _server,
        at,
        ca,
        stranger_ca,
    } = trusted_server(backend).await;
    let bytes: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(messenger.dir().join("notes.bin"), &bytes).expect("write the file");
    let web = at.wss.to_string();

    let sent = over_tls(
        &messenger,
        at.tls,
        &ca,
        "alice",
        &[
            "send",
            "bob",
            "attached",
            "--file",
            "notes.bin",
            "--web",
            &web,
        ],
    )
    .await
    .ok();
    assert!(sent.starts_with("sent to dm:alice:bob: seq 1"), "{sent}");
    let history = over_tls(
        &messenger,
        at.tls,
        &ca,
        "bob",
        &["history", "alice", "--web", &web],
    )
    .await
    .ok();
    let file = history
        .split("file ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no file id in the history: {history}"))
        .to_owned();

    let saved = over_tls(
        &messenger,
        at.tls,
        &ca,
        "bob",
        &["download", &file, "-o", "copy.bin", "--web", &web],
    )
    .await
    .ok();
    assert!(saved.contains("(3000 bytes)"), "{saved}");
    assert_eq!(
        std::fs::read(messenger.dir().join("copy.bin")).expect("read"),
        bytes
    );

    let refused = over_tls(
        &messenger,
        at.tls,
        &stranger_ca,
        "bob",
        &["download", &file, "-o", "stranger.bin", "--web", &web],
    )
    .await
    .failed();
    assert!(refused.contains("TLS"), "{refused}");
    assert!(!messenger.dir().join("stranger.bin").exists());
}
