//! File throughput on the web listener: one user uploads `file_count` files of
//! `file_bytes` random bytes one after the other (`POST /files`), sends them to
//! another user in messages of up to ten attachments, and that user downloads
//! each (`GET /files/<file>`) to disk. Throughput is the bytes moved over the
//! wall time of each sequence, in MiB/s; each upload's time runs from opening
//! the local file to the `201`, each download's to the last byte written.

use std::time::{Duration, Instant};

use anyhow::Context;
use messenger_client::{Client, ClientConfig, WebFiles};
use messenger_protocol::wire::{AttachmentRef, MAX_ATTACHMENTS};
use messenger_protocol::{ConvId, DeviceId, UserId};
use rand::RngCore;

use super::options::Options;
use super::seed::{self, user_name};
use super::server::{Server, ServerSpec};
use super::stats::Summary;

/// Bytes in a MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// What the files phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Files {
    /// Files moved each way.
    pub(crate) count: usize,
    /// Bytes per file.
    pub(crate) file_bytes: u64,
    /// Uploads, MiB per second.
    pub(crate) upload_mib_per_s: f64,
    /// Downloads, MiB per second.
    pub(crate) download_mib_per_s: f64,
    /// Each upload's time.
    pub(crate) upload: Summary,
    /// Each download's time.
    pub(crate) download: Summary,
}

/// Starts the server, uploads, sends, downloads.
pub(crate) async fn run(options: &Options, mut spec: ServerSpec) -> anyhow::Result<Files> {
    spec.env.push((
        "MESSENGER_LIMITS__MAX_FILE_BYTES".into(),
        options.file_bytes.max(1).to_string(),
    ));
    let dir = spec.dir.clone();
    let devices = [
        (user_name(0), "d0".to_owned()),
        (user_name(1), "d0".to_owned()),
    ];
    let ids = seed::seed(&spec.db(), &devices)?;
    let (sender, receiver) = match ids.as_slice() {
        [a, b] => (a.clone(), b.clone()),
        _ => anyhow::bail!("two identities expected"),
    };
    let server = Server::start(spec).await?;
    let web = |user: &str, token: &str| -> anyhow::Result<WebFiles> {
        Ok(WebFiles {
            web: server.ws_addr().to_string(),
            user: UserId::parse(user)?,
            secret: token.to_owned(),
            tls: None,
        })
    };

    let source = dir.join("upload.bin");
    let mut bytes = vec![0u8; usize::try_from(options.file_bytes)?];
    rand::thread_rng().fill_bytes(&mut bytes);
    std::fs::write(&source, &bytes).context("writing the file to upload")?;
    drop(bytes);

    let up = web(&sender.user, &sender.token)?;
    let mut uploads = Vec::with_capacity(options.file_count);
    let mut upload_times = Vec::with_capacity(options.file_count);
    let started = Instant::now();
    for _ in 0..options.file_count {
        let t = Instant::now();
        let uploaded = up
            .upload(&source, "application/octet-stream")
            .await
            .context("upload")?;
        upload_times.push(micros(t.elapsed()));
        uploads.push(uploaded);
    }
    let upload_secs = started.elapsed().as_secs_f64();

    let mut config = ClientConfig::new(
        server.addr().to_string(),
        UserId::parse(&sender.user)?,
        DeviceId::parse(&sender.device)?,
        sender.token.clone(),
    );
    config.request_timeout = Duration::from_secs(60);
    let (client, _events) = Client::connect(config)
        .await
        .context("the sender's device")?;
    super::search::bridge_answers(&client).await?;
    let conv = ConvId::direct(
        &UserId::parse(&sender.user)?,
        &UserId::parse(&receiver.user)?,
    )?;
    for chunk in uploads.chunks(MAX_ATTACHMENTS) {
        let attachments = chunk
            .iter()
            .enumerate()
            .map(|(i, u)| AttachmentRef {
                file: u.file.clone(),
                name: format!("file-{i}.bin"),
            })
            .collect();
        client
            .send_files(&conv, "", attachments)
            .await
            .context("sending the files")?;
    }
    client.disconnect().await;

    let down = web(&receiver.user, &receiver.token)?;
    let target = dir.join("download.bin");
    let mut download_times = Vec::with_capacity(uploads.len());
    let started = Instant::now();
    for uploaded in &uploads {
        let _ = std::fs::remove_file(&target);
        let t = Instant::now();
        down.download(&uploaded.file, &target)
            .await
            .context("download")?;
        download_times.push(micros(t.elapsed()));
    }
    let download_secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&target);

    let moved = options.file_bytes as f64 * options.file_count as f64 / MIB;
    Ok(Files {
        count: options.file_count,
        file_bytes: options.file_bytes,
        upload_mib_per_s: moved / upload_secs.max(f64::EPSILON),
        download_mib_per_s: moved / download_secs.max(f64::EPSILON),
        upload: Summary::of(upload_times),
        download: Summary::of(download_times),
    })
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}
