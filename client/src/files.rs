//! File transfers over HTTP on the server's web listener (`POST /files`,
//! `GET /files/<file>`), streamed from and to local files, never held whole in
//! memory. HTTP/1.1 (over TLS when asked) on one connection per transfer.

use std::path::Path;

use base64::Engine;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use messenger_protocol::wire::Uploaded;
use messenger_protocol::{FileId, UserId};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_util::io::ReaderStream;

use crate::config::{split_host_port, tls_config, Trust, TOKEN_PREFIX};
use crate::ClientError;

/// How much of a file an upload reads at once.
const CHUNK_BYTES: usize = 64 * 1024;

/// The start of the name of a download while it is written (beside its destination).
const PARTIAL_SUFFIX: &str = ".part";

/// Uploads and downloads of one user on a server's web listener.
#[derive(Debug, Clone)]
pub struct WebFiles {
    /// The web listener, `host:port` (the server's `broker.ws_listen`, or `broker.wss_listen` with [`WebFiles::tls`]).
    pub web: String,
    /// Who signs in.
    pub user: UserId,
    /// The user's password (sent as HTTP Basic), or a device token (`mtk_...`, sent as `Bearer`).
    pub secret: String,
    /// HTTPS (the server's `broker.wss_listen`) trusting these CAs; `None`: plain HTTP.
    pub tls: Option<Trust>,
}

impl WebFiles {
    /// Uploads the file at `path` with the media type `media_type`; the answer
    /// names the upload for [`Client::send_files`](crate::Client::send_files).
    pub async fn upload(&self, path: &Path, media_type: &str) -> Result<Uploaded, ClientError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| transfer(format!("{}: {e}", path.display())))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| transfer(format!("{}: {e}", path.display())))?
            .len();
        let body =
            StreamBody::new(ReaderStream::with_capacity(file, CHUNK_BYTES).map_ok(Frame::data));
        let mut request = self.request(Method::POST, "/files", body)?;
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(media_type)
                .map_err(|_| transfer(format!("bad media type {media_type:?}")))?,
        );
        let response = expect(self.exchange(request).await?, StatusCode::CREATED).await?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| transfer(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Downloads the upload `file` to `dest` (written beside it first, then
    /// renamed; nothing is left on failure). Returns the bytes written.
    pub async fn download(&self, file: &FileId, dest: &Path) -> Result<u64, ClientError> {
        let request = self.request(
            Method::GET,
            &format!("/files/{file}"),
            Empty::<Bytes>::new(),
        )?;
        let response = expect(self.exchange(request).await?, StatusCode::OK).await?;
        let mut partial = dest.as_os_str().to_owned();
        partial.push(PARTIAL_SUFFIX);
        let partial = std::path::PathBuf::from(partial);
        let written = save(response.into_body(), &partial).await;
        match written {
            Ok(n) => {
                tokio::fs::rename(&partial, dest)
                    .await
                    .map_err(|e| transfer(format!("{}: {e}", dest.display())))?;
                Ok(n)
            }
            Err(err) => {
                let _ = tokio::fs::remove_file(&partial).await;
                Err(err)
            }
        }
    }

    /// A request with this user's credentials.
    fn request<B>(&self, method: Method, path: &str, body: B) -> Result<Request<B>, ClientError> {
        let authorization = if self.secret.starts_with(TOKEN_PREFIX) {
            format!("Bearer {}", self.secret)
        } else {
            let pair = format!("{}:{}", self.user, self.secret);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        };
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.web)
            .header(header::AUTHORIZATION, authorization)
            .body(body)
            .map_err(|e| transfer(e.to_string()))
    }

    /// Sends one request on a new connection and returns the answer's head.
    async fn exchange<B>(&self, request: Request<B>) -> Result<Response<Incoming>, ClientError>
    where
        B: hyper::body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tcp = TcpStream::connect(&self.web)
            .await
            .map_err(|e| transfer(format!("cannot reach {}: {e}", self.web)))?;
        let _ = tcp.set_nodelay(true);
        let mut sender = match &self.tls {
            None => {
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| transfer(e.to_string()))?;
                tokio::spawn(connection);
                sender
            }
            Some(trust) => {
                let (host, _port) = split_host_port(&self.web)?;
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| ClientError::Config(format!("{host:?} is not a server name")))?;
                let tls = TlsConnector::from(tls_config(trust)?)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| transfer(format!("TLS with {}: {e}", self.web)))?;
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| transfer(e.to_string()))?;
                tokio::spawn(connection);
                sender
            }
        };
        sender
            .send_request(request)
            .await
            .map_err(|e| transfer(e.to_string()))
    }
}

/// The answer if it has the expected status; its text as [`ClientError::Http`] otherwise.
async fn expect(
    response: Response<Incoming>,
    status: StatusCode,
) -> Result<Response<Incoming>, ClientError> {
    if response.status() == status {
        return Ok(response);
    }
    let code = response.status().as_u16();
    let text = match response.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).trim().to_owned(),
        Err(_) => String::new(),
    };
    Err(ClientError::Http {
        status: code,
        message: text,
    })
}

/// Writes a body to `path` as it arrives; returns the bytes written.
async fn save(mut body: Incoming, path: &Path) -> Result<u64, ClientError> {
    let mut out = tokio::fs::File::create(path)
        .await
        .map_err(|e| transfer(format!("{}: {e}", path.display())))?;
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| transfer(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data)
                .await
                .map_err(|e| transfer(format!("{}: {e}", path.display())))?;
            written += data.len() as u64;
        }
    }
    out.flush()
        .await
        .map_err(|e| transfer(format!("{}: {e}", path.display())))?;
    Ok(written)
}

fn transfer(message: String) -> ClientError {
    ClientError::Transfer(message)
}
