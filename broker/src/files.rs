//! `POST /files` and `GET /files/<file>`: uploads streamed to disk and
//! downloads streamed from it, never held whole in memory.
//!
//! An upload is written to a temporary file in the files directory while its
//! SHA-256 is computed, synced, and handed to the [`FileCatalog`], which records
//! it and moves the bytes to their content-hash name. A body over the limit is
//! refused with `413` before it is read past the limit (at once when its
//! `Content-Length` says so); a body cut short, a refusal or any failure removes
//! the temporary file (`Partial`), so nothing is left behind.

use std::io;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use messenger_protocol::wire::Uploaded;
use messenger_protocol::{FileId, UserId};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;
use tracing::{error, info, warn};

use crate::http::{self, Body};

/// The media type of an upload sent without a `Content-Type`.
const DEFAULT_TYPE: &str = "application/octet-stream";

/// The longest `Content-Type` kept.
const MAX_TYPE_BYTES: usize = 255;

/// How much of a file a download reads at once.
const CHUNK_BYTES: usize = 64 * 1024;

/// A failure of the [`FileCatalog`] (the cause is logged; the client gets `500`).
#[derive(Debug, thiserror::Error)]
#[error("file catalog: {0}")]
pub struct CatalogError(pub String);

/// A stored upload, as a download needs it.
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// Where its bytes are.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// Media type, as uploaded.
    pub media_type: String,
}

/// Where uploads are recorded and looked up; the binary backs it with the
/// store's catalog on the shared SQLite file, so that a bridge in another
/// process sees the same uploads. Every method may block (SQLite, files); the
/// front calls them off the async workers.
pub trait FileCatalog: Send + Sync + 'static {
    /// A fresh path in the files directory to write an upload's bytes to.
    fn temp_path(&self) -> PathBuf;

    /// Records a complete upload whose bytes are at `temp` (synced) and moves them
    /// to their content-hash name; returns the upload's id.
    fn keep(
        &self,
        temp: &Path,
        uploader: &UserId,
        sha256: &str,
        size: u64,
        media_type: &str,
        now_ms: u64,
    ) -> Result<FileId, CatalogError>;

    /// The upload `file` if `user` may read it (its uploader, or a member who can
    /// see a message that carries it); `None` otherwise and when it does not exist.
    fn readable(&self, user: &UserId, file: &FileId) -> Result<Option<StoredFile>, CatalogError>;
}

/// Uploads and downloads on the web listener.
#[derive(Clone)]
pub struct Files {
    /// Where uploads are recorded.
    pub catalog: Arc<dyn FileCatalog>,
    /// The largest upload, in bytes (`limits.max_file_bytes`).
    pub max_file_bytes: u64,
    /// Uploads per user (`limits.uploads_per_min`); `None`: no limit.
    pub uploads: Option<Arc<UploadLimit>>,
    /// The longest an upload's body may pause before it is refused with `408`
    /// (`broker.ws_handshake_timeout_ms`, the web listener's bound on a client
    /// that stalls): a client trickling bytes must not hold a connection and a
    /// partial file for ever.
    pub stall: Duration,
}

/// Uploads per user and minute (a GCRA limiter keyed by user, in this process's
/// memory): without it one user could fill the disk with uploads no message
/// carries, each kept for `storage.unreferenced_file_secs`.
pub struct UploadLimit {
    limiter: DefaultKeyedRateLimiter<UserId>,
    clock: DefaultClock,
    /// Checks since idle users' state was last forgotten.
    checks: AtomicU64,
}

/// How many checks pass between forgetting idle users' limiter state.
const FORGET_EVERY_CHECKS: u64 = 1024;

impl UploadLimit {
    /// `per_min` uploads a minute, `burst` at once (`per_min` when absent); `None` for 0.
    pub fn new(per_min: u32, burst: Option<u32>) -> Option<Self> {
        let rate = NonZeroU32::new(per_min)?;
        let burst = burst.and_then(NonZeroU32::new).unwrap_or(rate);
        Some(Self {
            limiter: RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        })
    }

    /// Takes one upload from `user`'s allowance, or says how long until one is allowed.
    fn check(&self, user: &UserId) -> Result<(), Duration> {
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(FORGET_EVERY_CHECKS)
        {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(user)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// `429` with how long to wait: `Retry-After` in seconds (rounded up) and the
/// error as JSON, as over MQTT (`rate_limited` with `retry_after_ms`).
fn rate_limited(wait: Duration) -> Response<Body> {
    let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    let body = serde_json::json!({
        "code": "rate_limited",
        "message": format!("too many uploads; retry in {ms} ms"),
        "retry_after_ms": ms,
    });
    let mut response = http::json(StatusCode::TOO_MANY_REQUESTS, body.to_string());
    if let Ok(secs) = HeaderValue::from_str(&ms.div_ceil(1000).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, secs);
    }
    response
}

impl Files {
    /// `POST /files`: `201` {`file`,`size`,`type`,`sha256`}, `413` over the limit,
    /// `429` over `limits.uploads_per_min`,
    /// `400` for a malformed `Content-Type` or a body cut short, `408` for a body
    /// that paused longer than [`Files::stall`].
    pub(crate) async fn upload(&self, request: Request<Incoming>, user: &UserId) -> Response<Body> {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_file_bytes) {
            return self.too_large();
        }
        if let Some(Err(wait)) = self.uploads.as_ref().map(|limit| limit.check(user)) {
            info!(%user, "upload refused: limits.uploads_per_min");
            return rate_limited(wait);
        }
        let Some(media_type) = media_type(request.headers().get(header::CONTENT_TYPE)) else {
            return http::text(
                StatusCode::BAD_REQUEST,
                "Content-Type must be a media type (type/subtype, printable ASCII, at most 255 bytes)\n",
            );
        };
        let partial = Partial(Some(self.catalog.temp_path()));
        let written = match self.write(request.into_body(), partial.path()).await {
            Ok(Written::Complete { size, sha256 }) => (size, sha256),
            Ok(Written::TooLarge) => return self.too_large(),
            Ok(Written::Cut(err)) => {
                info!(%user, cause = %err, "upload cut short");
                return http::text(StatusCode::BAD_REQUEST, "the upload was cut short\n");
            }
            Ok(Written::Stalled) => {
                info!(%user, "upload stalled");
                let said = format!(
                    "the upload paused for longer than {} ms\n",
                    self.stall.as_millis()
                );
                return http::text(StatusCode::REQUEST_TIMEOUT, &said);
            }
            Err(err) => {
                error!(cause = %err, path = %partial.path().display(), "cannot write an upload");
                return internal();
            }
        };
        let (size, sha256) = written;
        let catalog = self.catalog.clone();
        let owner = user.clone();
        let kept = {
            let temp = partial.path().to_path_buf();
            let media_type = media_type.clone();
            let sha256 = sha256.clone();
            tokio::task::spawn_blocking(move || {
                catalog.keep(&temp, &owner, &sha256, size, &media_type, now_ms())
            })
            .await
        };
        let file = match kept {
            Ok(Ok(file)) => file,
            Ok(Err(err)) => {
                error!(cause = %err, "cannot record an upload");
                return internal();
            }
            Err(err) => {
                error!(cause = %err, "cannot record an upload");
                return internal();
            }
        };
        // The bytes were moved to their content-hash name: nothing to remove.
        partial.kept();
        info!(%user, %file, size, "upload stored");
        let answer = Uploaded {
            file,
            size,
            media_type,
            sha256,
        };
        match serde_json::to_string(&answer) {
            Ok(json) => http::json(StatusCode::CREATED, json),
            Err(_) => internal(),
        }
    }

    /// Streams `body` to `path`, hashing and counting; stops at the limit.
    async fn write(&self, body: Incoming, path: &Path) -> io::Result<Written> {
        let mut out = tokio::fs::File::create(path).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = body;
        loop {
            let Ok(next) = tokio::time::timeout(self.stall, body.frame()).await else {
                return Ok(Written::Stalled);
            };
            let Some(frame) = next else {
                break;
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(err) => return Ok(Written::Cut(err)),
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            size += data.len() as u64;
            if size > self.max_file_bytes {
                return Ok(Written::TooLarge);
            }
            hasher.update(&data);
            out.write_all(&data).await?;
        }
        out.sync_all().await?;
        Ok(Written::Complete {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    /// `GET /files/<file>`: the bytes with their `Content-Type`, or `404` (the
    /// same whether the file does not exist or `user` may not read it).
    pub(crate) async fn download(&self, file: &str, user: &UserId) -> Response<Body> {
        let Ok(file) = FileId::parse(file) else {
            return http::not_found();
        };
        let catalog = self.catalog.clone();
        let reader = user.clone();
        let found =
            match tokio::task::spawn_blocking(move || catalog.readable(&reader, &file)).await {
                Ok(Ok(found)) => found,
                Ok(Err(err)) => {
                    error!(cause = %err, "cannot look up a file");
                    return internal();
                }
                Err(err) => {
                    error!(cause = %err, "cannot look up a file");
                    return internal();
                }
            };
        let Some(stored) = found else {
            return http::not_found();
        };
        let source = match tokio::fs::File::open(&stored.path).await {
            Ok(f) => f,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return http::not_found(),
            Err(err) => {
                error!(cause = %err, path = %stored.path.display(), "cannot open a file");
                return internal();
            }
        };
        let chunks = ReaderStream::with_capacity(source, CHUNK_BYTES)
            .inspect_err(|err| warn!(cause = %err, "reading a file for a download failed"))
            .map_ok(Frame::data);
        let body = StreamBody::new(chunks);
        let mut response = Response::new(body.boxed_unsync());
        let h = response.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(stored.size));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&stored.media_type)
                .unwrap_or_else(|_| HeaderValue::from_static(DEFAULT_TYPE)),
        );
        // Uploaded content is never interpreted as a page of this origin.
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        );
        response
    }

    fn too_large(&self) -> Response<Body> {
        http::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the file is over the limit of {} bytes\n",
                self.max_file_bytes
            ),
        )
    }
}

/// How an upload's body ended.
enum Written {
    /// All of it, with its size and SHA-256 (hex).
    Complete { size: u64, sha256: String },
    /// Past the limit.
    TooLarge,
    /// The connection failed mid-body.
    Cut(hyper::Error),
    /// No byte came for longer than the stall limit.
    Stalled,
}

/// A temporary file removed when dropped: on every early return, and when the
/// request's task is dropped because its connection went away.
/// `None` once its bytes were kept.
struct Partial(Option<PathBuf>);

impl Partial {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// The bytes were moved to their final name: nothing to remove.
    fn kept(mut self) {
        self.0 = None;
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let Some(path) = self.0.take() else { return };
        if let Err(err) = std::fs::remove_file(&path) {
            if err.kind() != io::ErrorKind::NotFound {
                warn!(cause = %err, path = %path.display(), "cannot remove a partial upload");
            }
        }
    }
}

/// The upload's media type: its `Content-Type` (visible ASCII, at most
/// [`MAX_TYPE_BYTES`], with a `/`), or [`DEFAULT_TYPE`] when absent; `None` when malformed.
fn media_type(value: Option<&HeaderValue>) -> Option<String> {
    let Some(value) = value else {
        return Some(DEFAULT_TYPE.to_owned());
    };
    let ok = value.len() <= MAX_TYPE_BYTES
        && value.as_bytes().iter().all(|b| (0x20..0x7f).contains(b))
        && value.as_bytes().contains(&b'/');
    match value.to_str() {
        Ok(s) if ok => Some(s.trim().to_owned()),
        _ => None,
    }
}

fn internal() -> Response<Body> {
    http::text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the server could not handle the file; retry later\n",
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
