//! Files end to end through the real binary (issue 13, files): `POST /files` and
//! `GET /files/<file>` on the web listener, `send` with attachments, downloads by
//! members only, a file's bytes going with the last message that carries it, the
//! sweep of uploads no message carries, and every refusal changing nothing. On
//! both engines; on PostgreSQL also the per-hash lock that the upload catalog and
//! the writer's removal of bytes take.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use messenger_client::{Client, ClientConfig, ClientError, ClientEvent, WebFiles};
use messenger_protocol::wire::{AttachmentRef, ErrorCode, Uploaded};
use messenger_protocol::{ConvId, FileId};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::process::{free_addr, free_addr_below_ephemeral, Messenger, Server};
use crate::util::server::{on_both_engines, Backend};
use crate::util::{did, uid, PATIENCE};

on_both_engines!(
    a_member_downloads_the_bytes_sent_and_another_device_sees_them_after_sync,
    the_cli_sends_a_file_and_downloads_it,
    an_upload_over_the_limit_gets_413_and_leaves_nothing,
    uploads_without_valid_credentials_get_401,
    a_download_by_a_non_member_is_the_404_of_a_missing_file,
    sending_a_file_uploaded_by_someone_else_is_refused_and_stores_nothing,
    more_than_ten_attachments_are_refused,
    a_cut_upload_leaves_nothing_behind,
    a_stalled_upload_gets_408_and_leaves_nothing,
    a_file_goes_with_the_last_message_that_carries_it,
    erasing_a_user_lets_go_of_the_files_of_their_messages,
    uploads_no_message_carries_are_swept,
    bytes_two_uploads_share_stay_while_either_row_does,
    wrong_passwords_over_http_count_in_the_sign_in_throttle,
    other_requests_on_the_web_listener_get_404,
    uploads_are_shared_by_a_broker_and_a_bridge_in_separate_processes,
    chat_sends_a_file_with_slash_file,
);

/// A server on `backend`'s engine with alice, bob and carol (password `pw`),
/// `env` besides.
async fn server_with(backend: Backend, env: &[(&str, &str)]) -> (Messenger, Server) {
    let messenger = Messenger::on(backend);
    for user in ["alice", "bob", "carol"] {
        messenger
            .run(&["user", "add", user, "--password", "pw"])
            .await
            .ok();
    }
    let mut server = messenger.spawn_role(
        "serve",
        free_addr_below_ephemeral(),
        free_addr(),
        free_addr(),
        env,
    );
    server.wait_until_accepting().await;
    // The web listener comes up just after the MQTT listener; the bridge may
    // take longer (on PostgreSQL it leases its users first): requests before
    // it serves wait, and an upload's unsent time runs meanwhile.
    server.wait_until_accepting_on(server.ws).await;
    crate::admin::wait_for_status(&server, "/readyz", 200).await;
    (messenger, server)
}

/// The files directory (the default: `files` beside the database).
fn files_dir(messenger: &Messenger) -> PathBuf {
    messenger.dir().join("data").join("files")
}

/// The names in the files directory.
fn stored(messenger: &Messenger) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(files_dir(messenger))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits until the files directory's names satisfy `done`.
async fn wait_for_files(messenger: &Messenger, what: &str, done: impl Fn(&[String]) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let names = stored(messenger);
        if done(&names) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: the files directory holds {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn web(server: &Server, user: &str, secret: &str) -> WebFiles {
    WebFiles {
        web: server.ws.to_string(),
        user: uid(user),
        secret: secret.to_owned(),
        tls: None,
    }
}

fn dm(a: &str, b: &str) -> ConvId {
    ConvId::direct(&uid(a), &uid(b)).expect("dm")
}

/// `n` random bytes written to a file in `dir`.
fn random_file(dir: &Path, name: &str, n: usize) -> (PathBuf, Vec<u8>) {
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).expect("write");
    (path, bytes)
}

async fn upload(web: &WebFiles, path: &Path) -> Uploaded {
    web.upload(path, "application/x-test")
        .await
        .unwrap_or_else(|err| panic!("upload {}: {err}", path.display()))
}

fn attach(uploaded: &Uploaded, name: &str) -> Vec<AttachmentRef> {
    vec![AttachmentRef {
        file: uploaded.file.clone(),
        name: name.to_owned(),
    }]
}

/// The server's refusal code of a failed call.
fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The HTTP status of a failed transfer.
fn status<T: std::fmt::Debug>(result: Result<T, ClientError>) -> u16 {
    match result {
        Err(ClientError::Http { status, .. }) => status,
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

/// One raw HTTP/1.1 exchange (`Connection: close`): status, head and body.
async fn raw_http(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let request = format!("{head}Host: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write head");
    // The server may answer (and close) before it has read a refused body.
    let _ = tcp.write_all(body).await;
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect("an answer within patience")
        .expect("read");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&answer)));
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head, answer[split + 4..].to_vec())
}

/// The HTTP Basic header value of `user:password`.
fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

async fn a_member_downloads_the_bytes_sent_and_another_device_sees_them_after_sync(
    backend: Backend,
) {
    let (messenger, server) = server_with(backend, &[]).await;
    let (alice, _alice_events) = server.library("alice", "phone").await;
    let (_bob, mut bob_events) = server.library("bob", "phone").await;
    let (path, bytes) = random_file(messenger.dir(), "photo.bin", 300 * 1024 + 7);

    let uploaded = upload(&web(&server, "alice", "pw"), &path).await;
    assert_eq!(uploaded.size, bytes.len() as u64);
    assert_eq!(uploaded.media_type, "application/x-test");
    assert_eq!(uploaded.sha256.len(), 64);
    assert_ne!(
        uploaded.file.as_str(),
        uploaded.sha256,
        "the id is not the hash"
    );
    assert_eq!(
        stored(&messenger),
        std::slice::from_ref(&uploaded.sha256),
        "the bytes under their hash, nothing else"
    );

    let conv = dm("alice", "bob");
    let ack = alice
        .send_files(&conv, "", attach(&uploaded, "photo.bin"))
        .await
        .expect("sent");
    let seen = crate::util::server::expect(&mut bob_events, |e| match e {
        ClientEvent::Message(m) if m.seq == ack.seq => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(seen.body, "");
    assert_eq!(seen.attachments.len(), 1);
    let carried = &seen.attachments[0];
    assert_eq!(
        (
            &carried.file,
            carried.name.as_str(),
            carried.size,
            carried.media_type.as_str()
        ),
        (
            &uploaded.file,
            "photo.bin",
            bytes.len() as u64,
            "application/x-test"
        )
    );

    // bob downloads with his password, then with a device token.
    let out = messenger.dir().join("bob-copy");
    let n = web(&server, "bob", "pw")
        .download(&carried.file, &out)
        .await
        .expect("download");
    assert_eq!(n, bytes.len() as u64);
    assert_eq!(std::fs::read(&out).expect("read"), bytes);
    let token = messenger
        .run(&["user", "token", "bob", "--device", "tablet"])
        .await
        .ok();
    let token = token
        .split_whitespace()
        .find(|w| w.starts_with("mtk_"))
        .unwrap_or_else(|| panic!("no token in {token:?}"))
        .to_owned();
    let out2 = messenger.dir().join("bob-copy-2");
    web(&server, "bob", &token)
        .download(&carried.file, &out2)
        .await
        .expect("download with a token");
    assert_eq!(std::fs::read(&out2).expect("read"), bytes);
    // The answer's headers: the type as uploaded, never sniffed.
    let (code, head, body) = raw_http(
        server.ws,
        &format!(
            "GET /files/{} HTTP/1.1\r\nAuthorization: {}\r\n",
            carried.file,
            basic("bob", "pw")
        ),
        b"",
    )
    .await;
    assert_eq!(code, 200);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/x-test"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert_eq!(body, bytes);

    // alice's second device sees the attachment after its sync, and in history.
    let (laptop, mut laptop_events) = server.library("alice", "laptop").await;
    let synced = crate::util::server::expect(&mut laptop_events, |e| match e {
        ClientEvent::Message(m) if m.seq == ack.seq => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(synced.attachments, seen.attachments);
    let page = laptop.history(&conv, None, 10).await.expect("history");
    let in_history = page
        .events
        .iter()
        .find_map(|e| match e {
            messenger_client::HistoryItem::Message(m) if m.seq == ack.seq => Some(m),
            _ => None,
        })
        .expect("the message in history");
    assert_eq!(in_history.attachments, seen.attachments);
}

async fn the_cli_sends_a_file_and_downloads_it(backend: Backend) {
    let (messenger, server) = server_with(backend, &[]).await;
    let (_path, bytes) = random_file(messenger.dir(), "notes.txt", 2000);
    let webaddr = server.ws.to_string();
    // A chat command as `user`, with the web listener for the file transfers.
    let run = |user: &'static str, args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--web", webaddr.as_str()]);
        messenger.run_command(messenger.as_user(server.mqtt, user, "pw", &args))
    };
    let sent = run(
        "alice",
        &["send", "bob", "here you go", "--file", "notes.txt"],
    )
    .await
    .ok();
    assert!(sent.starts_with("sent to dm:alice:bob: seq 1"), "{sent}");

    let history = run("bob", &["history", "alice"]).await.ok();
    assert!(
        history.contains("here you go") && history.contains("notes.txt (2.0 KiB, file "),
        "{history}"
    );
    let file = history
        .split("file ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the file id in the history line")
        .to_owned();

    let saved = run("bob", &["download", &file, "-o", "copy.txt"])
        .await
        .ok();
    assert!(saved.contains("(2000 bytes)"), "{saved}");
    assert_eq!(
        std::fs::read(messenger.dir().join("copy.txt")).expect("read"),
        bytes
    );

    // carol is no member: the same refusal as for a file that does not exist.
    let refused = run("carol", &["download", &file, "-o", "carol.txt"])
        .await
        .failed();
    assert!(refused.contains("404"), "{refused}");
    assert!(!messenger.dir().join("carol.txt").exists());
}

async fn an_upload_over_the_limit_gets_413_and_leaves_nothing(backend: Backend) {
    let (messenger, server) =
        server_with(backend, &[("MESSENGER_LIMITS__MAX_FILE_BYTES", "1000")]).await;
    let auth = basic("alice", "pw");
    // Declared too large: refused before the body is read.
    let (code, _, body) = raw_http(
        server.ws,
        &format!("POST /files HTTP/1.1\r\nAuthorization: {auth}\r\nContent-Length: 5000\r\n"),
        b"",
    )
    .await;
    assert_eq!(code, 413, "{}", String::from_utf8_lossy(&body));
    // Chunked, no length: refused once the count passes the limit.
    let mut chunked = Vec::new();
    for _ in 0..3 {
        chunked.extend_from_slice(b"258\r\n");
        chunked.extend(std::iter::repeat_n(b'x', 0x258));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (code, _, _) = raw_http(
        server.ws,
        &format!("POST /files HTTP/1.1\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n"),
        &chunked,
    )
    .await;
    assert_eq!(code, 413);
    // At the limit is fine: the limit is what it says.
    let (code, _, body) = raw_http(
        server.ws,
        &format!("POST /files HTTP/1.1\r\nAuthorization: {auth}\r\nContent-Length: 1000\r\n"),
        &[7u8; 1000],
    )
    .await;
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let kept: Uploaded = serde_json::from_slice(&body).expect("201 JSON");
    wait_for_files(&messenger, "only the upload at the limit", |names| {
        names == [kept.sha256.clone()]
    })
    .await;
}

async fn uploads_without_valid_credentials_get_401(backend: Backend) {
    let (messenger, server) = server_with(backend, &[]).await;
    let bad_token = format!("Bearer mtk_{}", "0".repeat(64));
    for (what, auth) in [
        ("no credentials", None),
        ("a wrong password", Some(basic("alice", "nope"))),
        ("an unknown user", Some(basic("zed", "pw"))),
        ("a bad token", Some(bad_token.clone())),
        ("a malformed header", Some("Basic !!!".to_owned())),
    ] {
        let head = match &auth {
            Some(auth) => {
                format!("POST /files HTTP/1.1\r\nAuthorization: {auth}\r\nContent-Length: 5\r\n")
            }
            None => "POST /files HTTP/1.1\r\nContent-Length: 5\r\n".to_owned(),
        };
        let (code, head, _) = raw_http(server.ws, &head, b"hello").await;
        assert_eq!(code, 401, "{what}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{what}: {head}"
        );
    }
    // The client library says the same.
    let (path, _) = random_file(messenger.dir(), "f", 10);
    assert_eq!(
        status(
            web(&server, "alice", "wrong")
                .upload(&path, "text/plain")
                .await
        ),
        401
    );
    assert!(stored(&messenger).is_empty(), "{:?}", stored(&messenger));
}

async fn a_download_by_a_non_member_is_the_404_of_a_missing_file(backend: Backend) {
    let (messenger, server) = server_with(backend, &[]).await;
    let (alice, _) = server.library("alice", "phone").await;
    let (path, _) = random_file(messenger.dir(), "secret.bin", 4096);
    let uploaded = upload(&web(&server, "alice", "pw"), &path).await;
    alice
        .send_files(
            &dm("alice", "bob"),
            "for bob",
            attach(&uploaded, "secret.bin"),
        )
        .await
        .expect("sent");
    // carol uploads the very same bytes: her own upload, under its own id.
    let hers = upload(&web(&server, "carol", "pw"), &path).await;
    assert_ne!(hers.file, uploaded.file);
    assert_eq!(hers.sha256, uploaded.sha256);

    let get = |file: String, user: &'static str| {
        let addr = server.ws;
        async move {
            raw_http(
                addr,
                &format!(
                    "GET /files/{file} HTTP/1.1\r\nAuthorization: {}\r\n",
                    basic(user, "pw")
                ),
                b"",
            )
            .await
        }
    };
    let (code, _, _) = get(uploaded.file.to_string(), "bob").await;
    assert_eq!(code, 200, "bob is a member");
    let forbidden = get(uploaded.file.to_string(), "carol").await;
    let missing = get("0123456789abcdef0123456789abcdef".to_owned(), "carol").await;
    let malformed = get("not.an.id".to_owned(), "carol").await;
    assert_eq!(forbidden.0, 404);
    for other in [&missing, &malformed] {
        assert_eq!(
            (other.0, &other.2),
            (forbidden.0, &forbidden.2),
            "the same answer"
        );
    }
    // bob may not read carol's upload of the same bytes, nor carol alice's.
    assert_eq!(get(hers.file.to_string(), "bob").await.0, 404);
    let out = messenger.dir().join("x");
    assert_eq!(
        status(
            web(&server, "carol", "pw")
                .download(&uploaded.file, &out)
                .await
        ),
        404
    );
    assert!(!out.exists());
}

async fn sending_a_file_uploaded_by_someone_else_is_refused_and_stores_nothing(backend: Backend) {
    let (messenger, server) = server_with(backend, &[]).await;
    let (alice, _) = server.library("alice", "phone").await;
    let (path, _) = random_file(messenger.dir(), "b.bin", 100);
    let bobs = upload(&web(&server, "bob", "pw"), &path).await;
    let conv = dm("alice", "bob");
    assert_eq!(
        code(
            alice
                .send_files(&conv, "look", attach(&bobs, "b.bin"))
                .await
        ),
        ErrorCode::BadRequest
    );
    let unknown = Uploaded {
        file: FileId::parse("0123456789abcdef0123456789abcdef").expect("id"),
        ..bobs.clone()
    };
    assert_eq!(
        code(alice.send_files(&conv, "look", attach(&unknown, "x")).await),
        ErrorCode::BadRequest
    );
    let page = alice.history(&conv, None, 10).await;
    assert!(
        page.is_err() || page.as_ref().is_ok_and(|p| p.events.is_empty()),
        "nothing stored: {page:?}"
    );
    // The next message takes seq 1: the refusals used none.
    assert_eq!(alice.send(&conv, "hi").await.expect("sent").seq, 1);
}

async fn more_than_ten_attachments_are_refused(backend: Backend) {
    let (messenger, server) = server_with(backend, &[]).await;
    let (alice, _) = server.library("alice", "phone").await;
    let web = web(&server, "alice", "pw");
    let mut refs = Vec::new();
    for i in 0..11 {
        let (path, _) = random_file(messenger.dir(), &format!("f{i}"), 10);
        refs.extend(attach(&upload(&web, &path).await, &format!("f{i}")));
    }
    let conv = dm("alice", "bob");
    assert_eq!(
        code(alice.send_files(&conv, "", refs.clone()).await),
        ErrorCode::BadRequest
    );
    // Ten go.
    refs.truncate(10);
    let ack = alice
        .send_files(&conv, "", refs)
        .await
        .expect("ten attachments");
    assert_eq!(ack.seq, 1, "the refusal stored nothing");
}

async fn a_cut_upload_leaves_nothing_behind(backend: Backend) {
    let (messenger, server) = server_with(backend, &[]).await;
    let mut tcp = TcpStream::connect(server.ws).await.expect("connect");
    let head = format!(
        "POST /files HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Length: 1000000\r\n\r\n",
        server.ws,
        basic("alice", "pw")
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    tcp.write_all(&[1u8; 400_000])
        .await
        .expect("part of the body");
    // The partial upload is on disk while the body comes...
    wait_for_files(&messenger, "a partial upload", |names| {
        names.len() == 1 && names[0].starts_with(".upload-")
    })
    .await;
    // ...and gone once the connection drops mid-body.
    drop(tcp);
    wait_for_files(&messenger, "nothing after the cut", <[String]>::is_empty).await;
}

/// A client that sends part of a body and then nothing gets `408` once the body
/// has paused for `broker.ws_handshake_timeout_ms`, and its partial file goes.
async fn a_stalled_upload_gets_408_and_leaves_nothing(backend: Backend) {
    let (messenger, server) = server_with(
        backend,
        &[("MESSENGER_BROKER__WS_HANDSHAKE_TIMEOUT_MS", "300")],
    )
    .await;
    let mut tcp = TcpStream::connect(server.ws).await.expect("connect");
    let head = format!(
        "POST /files HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Length: 1000\r\n\r\n",
        server.ws,
        basic("alice", "pw")
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    tcp.write_all(&[1u8; 10]).await.expect("part of the body");
    // Then nothing: the connection stays open, the answer comes anyway.
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect("an answer within patience")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("paused for longer than 300 ms"), "{answer}");
    wait_for_files(&messenger, "nothing after the stall", <[String]>::is_empty).await;
}

async fn a_file_goes_with_the_last_message_that_carries_it(backend: Backend) {
    let (messenger, server) = server_with(backend, &[]).await;
    let (alice, _) = server.library("alice", "phone").await;
    let (path, _) = random_file(messenger.dir(), "a.bin", 5000);
    let uploaded = upload(&web(&server, "alice", "pw"), &path).await;
    let conv = dm("alice", "bob");
    let first = alice
        .send_files(&conv, "one", attach(&uploaded, "a.bin"))
        .await
        .expect("sent");
    let second = alice
        .send_files(&conv, "again", attach(&uploaded, "a.bin"))
        .await
        .expect("sent");
    let bob_web = web(&server, "bob", "pw");

    alice.delete(&conv, first.seq).await.expect("deleted");
    let out = messenger.dir().join("still");
    bob_web
        .download(&uploaded.file, &out)
        .await
        .expect("the second message still carries it");
    assert_eq!(stored(&messenger), std::slice::from_ref(&uploaded.sha256));

    alice.delete(&conv, second.seq).await.expect("deleted");
    assert!(
        stored(&messenger).is_empty(),
        "the bytes go with the last message: {:?}",
        stored(&messenger)
    );
    let gone = messenger.dir().join("gone");
    assert_eq!(status(bob_web.download(&uploaded.file, &gone).await), 404);
    assert_eq!(
        status(
            web(&server, "alice", "pw")
                .download(&uploaded.file, &gone)
                .await
        ),
        404,
        "not even to its uploader"
    );
    let page = alice.history(&conv, None, 10).await.expect("history");
    for event in &page.events {
        if let messenger_client::HistoryItem::Message(m) = event {
            assert!(m.deleted && m.attachments.is_empty(), "{m:?}");
        }
    }
}

/// `user remove --erase` lets go of the files of the messages it erases (on
/// PostgreSQL their bytes go under their hash locks).
async fn erasing_a_user_lets_go_of_the_files_of_their_messages(backend: Backend) {
    let (messenger, server) = server_with(backend, &[]).await;
    let (path, _) = random_file(messenger.dir(), "c.bin", 3000);
    let carols = upload(&web(&server, "carol", "pw"), &path).await;
    let (carol, _) = server.library("carol", "phone").await;
    carol
        .send_files(&dm("bob", "carol"), "bye", attach(&carols, "c.bin"))
        .await
        .expect("sent");
    assert_eq!(stored(&messenger), std::slice::from_ref(&carols.sha256));
    messenger
        .run(&["user", "remove", "carol", "--erase"])
        .await
        .ok();
    assert!(stored(&messenger).is_empty(), "{:?}", stored(&messenger));
}

async fn uploads_no_message_carries_are_swept(backend: Backend) {
    let (messenger, server) = server_with(
        backend,
        &[("MESSENGER_STORAGE__UNREFERENCED_FILE_SECS", "1")],
    )
    .await;
    let (alice, _) = server.library("alice", "phone").await;
    let alice_web = web(&server, "alice", "pw");
    let (kept_path, _) = random_file(messenger.dir(), "kept.bin", 100);
    let (lone_path, _) = random_file(messenger.dir(), "lone.bin", 100);
    let kept = upload(&alice_web, &kept_path).await;
    let lone = upload(&alice_web, &lone_path).await;
    alice
        .send_files(&dm("alice", "bob"), "", attach(&kept, "kept.bin"))
        .await
        .expect("sent");
    wait_for_files(&messenger, "the unsent upload swept", |names| {
        names == [kept.sha256.clone()]
    })
    .await;
    let out = messenger.dir().join("lone-copy");
    assert_eq!(status(alice_web.download(&lone.file, &out).await), 404);
    let out = messenger.dir().join("kept-copy");
    web(&server, "bob", "pw")
        .download(&kept.file, &out)
        .await
        .expect("a file a message carries stays");
}

/// Two uploads of the same bytes share them: the sweep of one (never sent)
/// leaves the bytes to the other, which a message carries.
async fn bytes_two_uploads_share_stay_while_either_row_does(backend: Backend) {
    let (messenger, server) = server_with(
        backend,
        &[("MESSENGER_STORAGE__UNREFERENCED_FILE_SECS", "1")],
    )
    .await;
    let (alice, _) = server.library("alice", "phone").await;
    let (path, bytes) = random_file(messenger.dir(), "same.bin", 2000);
    let alices = upload(&web(&server, "alice", "pw"), &path).await;
    alice
        .send_files(&dm("alice", "bob"), "", attach(&alices, "same.bin"))
        .await
        .expect("sent");
    let carol_web = web(&server, "carol", "pw");
    let carols = upload(&carol_web, &path).await;
    assert_eq!(carols.sha256, alices.sha256);
    // carol's upload goes with a sweep...
    let out = messenger.dir().join("carol-copy");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while carol_web.download(&carols.file, &out).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol's unsent upload is never swept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and the bytes stay for alice's, which a message carries.
    assert_eq!(stored(&messenger), std::slice::from_ref(&alices.sha256));
    let out = messenger.dir().join("bob-copy");
    web(&server, "bob", "pw")
        .download(&alices.file, &out)
        .await
        .expect("the bytes of the upload a message carries stay");
    assert_eq!(std::fs::read(&out).expect("read"), bytes);
}

/// A client of the installation's PostgreSQL database, for a test's runtime:
/// every call goes through `crate::util::postgres::blocking`, the drop too.
struct Postgres(Option<postgres::Client>);

impl Postgres {
    /// Connects to `messenger`'s database (it must be on PostgreSQL).
    fn of(messenger: &Messenger) -> Self {
        let url = messenger
            .postgres_url()
            .expect("an installation on PostgreSQL");
        Self(Some(crate::util::postgres::blocking(|| {
            postgres::Client::connect(url, postgres::NoTls).expect("connect to PostgreSQL")
        })))
    }

    /// Runs `f` on the client, off the async workers.
    fn with<T>(&mut self, f: impl FnOnce(&mut postgres::Client) -> T) -> T {
        let client = self.0.as_mut().expect("a client until dropped");
        crate::util::postgres::blocking(|| f(client))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let client = self.0.take();
        crate::util::postgres::blocking(|| drop(client));
    }
}

/// The key of a hash's advisory lock: its first 64 bits (as the store takes it).
fn lock_key(sha256: &str) -> i64 {
    let bits = u64::from_str_radix(&sha256[..16], 16).expect("a hex hash");
    i64::from_ne_bytes(bits.to_ne_bytes())
}

/// Takes the advisory lock of `sha256` for `client`'s session.
fn hold_hash_lock(client: &mut Postgres, sha256: &str) {
    client.with(|c| {
        c.execute("SELECT pg_advisory_lock($1)", &[&lock_key(sha256)])
            .expect("take the hash's lock")
    });
}

/// Lets go of the advisory lock of `sha256` that `client`'s session holds.
fn release_hash_lock(client: &mut Postgres, sha256: &str) {
    client.with(|c| {
        c.execute("SELECT pg_advisory_unlock($1)", &[&lock_key(sha256)])
            .expect("let go of the hash's lock")
    });
}

/// Waits until another session of the database waits for an advisory lock.
async fn wait_for_a_lock_waiter(client: &mut Postgres) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let waiting: i64 = client.with(|c| {
            c.query_one(
                "SELECT COUNT(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                 WHERE l.locktype = 'advisory' AND NOT l.granted
                   AND d.datname = current_database()",
                &[],
            )
            .and_then(|row| row.try_get(0))
            .expect("read pg_locks")
        });
        if waiting > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing waits for the hash's lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// On PostgreSQL an upload records its row and renames its bytes into place
/// under its hash's advisory lock: while another session holds the lock, the
/// upload waits; once it lets go, the upload completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_waits_for_its_hash_lock_on_postgres() {
    let (messenger, server) = server_with(Backend::Postgres, &[]).await;
    let mut client = Postgres::of(&messenger);
    let (path, _) = random_file(messenger.dir(), "locked.bin", 5000);
    let first = upload(&web(&server, "alice", "pw"), &path).await;
    hold_hash_lock(&mut client, &first.sha256);
    let again = tokio::spawn({
        let web = web(&server, "bob", "pw");
        async move { web.upload(&path, "application/x-test").await }
    });
    wait_for_a_lock_waiter(&mut client).await;
    assert!(!again.is_finished(), "the upload went on under the lock");
    release_hash_lock(&mut client, &first.sha256);
    let second = tokio::time::timeout(PATIENCE, again)
        .await
        .expect("the upload completes once the lock is free")
        .expect("join")
        .expect("uploaded");
    assert_eq!(second.sha256, first.sha256);
    assert_ne!(second.file, first.file);
    assert_eq!(stored(&messenger), std::slice::from_ref(&first.sha256));
}

/// On PostgreSQL the writer removes the bytes of an upload it let go of (here
/// by the sweep) only under the hash's advisory lock: while another session
/// holds it, the bytes stay; once it lets go, they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_bytes_under_their_hash_lock_on_postgres() {
    let (messenger, server) = server_with(
        Backend::Postgres,
        &[("MESSENGER_STORAGE__UNREFERENCED_FILE_SECS", "1")],
    )
    .await;
    let mut client = Postgres::of(&messenger);
    let (path, _) = random_file(messenger.dir(), "lone.bin", 3000);
    let lone = upload(&web(&server, "alice", "pw"), &path).await;
    // The sweep takes an upload a second after it was stored: well after this.
    hold_hash_lock(&mut client, &lone.sha256);
    wait_for_a_lock_waiter(&mut client).await;
    assert_eq!(
        stored(&messenger),
        std::slice::from_ref(&lone.sha256),
        "the bytes stay while the lock is held"
    );
    release_hash_lock(&mut client, &lone.sha256);
    wait_for_files(
        &messenger,
        "the swept upload's bytes gone",
        <[String]>::is_empty,
    )
    .await;
}

async fn wrong_passwords_over_http_count_in_the_sign_in_throttle(backend: Backend) {
    let (_messenger, server) = server_with(
        backend,
        &[
            ("MESSENGER_BROKER__SIGN_IN_FREE_FAILURES", "2"),
            ("MESSENGER_BROKER__SIGN_IN_BACKOFF_MS", "60000"),
            ("MESSENGER_BROKER__SIGN_IN_FAILURE_DELAY_MS", "10"),
        ],
    )
    .await;
    let head = |password: &str| {
        format!(
            "POST /files HTTP/1.1\r\nAuthorization: {}\r\nContent-Length: 1\r\n",
            basic("alice", password)
        )
    };
    for _ in 0..3 {
        assert_eq!(raw_http(server.ws, &head("guess"), b"x").await.0, 401);
    }
    // alice is locked out, over HTTP and MQTT alike, even with her password...
    assert_eq!(raw_http(server.ws, &head("pw"), b"x").await.0, 401);
    let config = ClientConfig::new(server.mqtt.to_string(), uid("alice"), did("phone"), "pw");
    assert!(
        matches!(
            Client::connect(config).await,
            Err(ClientError::Refused(
                messenger_client::RefusalCode::BadCredentials
            ))
        ),
        "MQTT sign-in refused while throttled"
    );
    // ...and bob is not.
    let (code, _, body) = raw_http(
        server.ws,
        &format!(
            "POST /files HTTP/1.1\r\nAuthorization: {}\r\nContent-Length: 1\r\n",
            basic("bob", "pw")
        ),
        b"x",
    )
    .await;
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
}

async fn other_requests_on_the_web_listener_get_404(backend: Backend) {
    let (_messenger, server) = server_with(backend, &[]).await;
    let auth = basic("alice", "pw");
    // (`GET /` is the web client: tests/web.rs.)
    for head in [
        "GET /index.html HTTP/1.1\r\n".to_owned(),
        format!("GET /files HTTP/1.1\r\nAuthorization: {auth}\r\n"),
        format!("PUT /files/0123 HTTP/1.1\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n"),
        format!("POST /files/0123 HTTP/1.1\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n"),
    ] {
        assert_eq!(raw_http(server.ws, &head, b"").await.0, 404, "{head}");
    }
    // MQTT over WebSocket still works on any path.
    let device = server.device(crate::util::Transport::Ws, "alice:phone", "pw");
    device.connect().await.expect("MQTT over WebSocket");
}

/// `messenger broker` and `messenger bridge` as two processes on one database
/// (the SQLite file, or PostgreSQL) and files directory: the broker's web
/// listener records the upload, the bridge validates the attachment and, on
/// deletion, removes the bytes the broker wrote.
async fn uploads_are_shared_by_a_broker_and_a_bridge_in_separate_processes(backend: Backend) {
    let messenger = Messenger::on(backend);
    for user in ["alice", "bob"] {
        messenger
            .run(&["user", "add", user, "--password", "pw"])
            .await
            .ok();
    }
    let (mqtt, ws) = (free_addr_below_ephemeral(), free_addr());
    let service = [("MESSENGER_BRIDGE__PASSWORD", "svc-secret")];
    let mut broker = messenger.spawn_role("broker", mqtt, ws, free_addr(), &service);
    broker.wait_until_accepting().await;
    let bridge = messenger.spawn_role("bridge", mqtt, free_addr(), free_addr(), &service);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let ready = match TcpStream::connect(bridge.admin).await {
            Ok(_) => {
                raw_http(bridge.admin, "GET /readyz HTTP/1.1\r\n", b"")
                    .await
                    .0
                    == 200
            }
            Err(_) => false,
        };
        if ready && TcpStream::connect(ws).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready:\n{}\n{}",
            broker.log(),
            bridge.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (alice, _) = broker.library("alice", "phone").await;
    let (path, bytes) = random_file(messenger.dir(), "shared.bin", 70_000);
    let uploaded = upload(&web(&broker, "alice", "pw"), &path).await;
    let conv = dm("alice", "bob");
    let ack = alice
        .send_files(&conv, "from two processes", attach(&uploaded, "shared.bin"))
        .await
        .expect("the bridge sees the broker's upload");
    let out = messenger.dir().join("copy");
    web(&broker, "bob", "pw")
        .download(&uploaded.file, &out)
        .await
        .expect("the broker sees the bridge's message");
    assert_eq!(std::fs::read(&out).expect("read"), bytes);

    alice.delete(&conv, ack.seq).await.expect("deleted");
    assert!(
        stored(&messenger).is_empty(),
        "the bridge removed the bytes: {:?}",
        stored(&messenger)
    );
}

/// `chat`'s `/file PATH` uploads the file and sends it; the other user sees it.
async fn chat_sends_a_file_with_slash_file(backend: Backend) {
    let (messenger, server) = server_with(backend, &[]).await;
    random_file(messenger.dir(), "plan.pdf", 3000);
    let typed = messenger.dir().join("typed.txt");
    std::fs::write(&typed, "the plan:\n/file plan.pdf\n/file missing.pdf\n").expect("input");
    let webaddr = server.ws.to_string();
    let mut cmd = messenger.as_user(
        server.mqtt,
        "alice",
        "pw",
        &["chat", "bob", "--web", &webaddr],
    );
    cmd.stdin(std::fs::File::open(&typed).expect("input"));
    let outcome = messenger.run_command(cmd).await;
    assert!(outcome.status.success(), "{outcome:#?}");
    assert!(
        outcome.stdout.contains("(sent plan.pdf as #2)"),
        "{outcome:#?}"
    );
    assert!(
        outcome.stderr.contains("missing.pdf"),
        "a file that is not there is reported: {outcome:#?}"
    );
    let (bob, _) = server.library("bob", "phone").await;
    let page = bob
        .history(&dm("alice", "bob"), None, 10)
        .await
        .expect("history");
    let files: Vec<(String, u64, String)> = page
        .events
        .iter()
        .filter_map(|e| match e {
            messenger_client::HistoryItem::Message(m) => Some(m),
            _ => None,
        })
        .flat_map(|m| m.attachments.clone())
        .map(|a| (a.name, a.size, a.media_type))
        .collect();
    assert_eq!(
        files,
        [("plan.pdf".to_owned(), 3000, "application/pdf".to_owned())]
    );
}
