//! Fake push services on 127.0.0.1: HTTP/2 servers (h2c, or TLS with a
//! self-signed certificate) that record every request and answer as the test
//! scripts them; and the keys they check signatures with.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// A throwaway 2048-bit RSA key for the fake service account (made with
/// `openssl genpkey -algorithm RSA`); it signs nothing but test requests.
const SERVICE_ACCOUNT_KEY: &str = r#"-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCjOtxkbgaDgBBQ
oY3cLW1tZ7J1v13PtIqUpVpCAMvr8sP4PpyJ7snckB3daTdYjrDRhiD+wI5Gjemr
YjjhLgJHw6TMl2rwWZwh4reTP3CAI8ZG6GL7FcLbcKGWyrRfJcXBXHt1p+FUJwX1
l/MuUJbvMxJXo0qqmzORlUIo8gbuSIGs/KwxaCCNUHjlu+gnDVmhXaGTOx2/77yr
3ihgbNRTRNRNhUAosB8yuG99p0aMZUKhKnFiZk8hPr6nyTk4Bh9M1EC7kweaYDPJ
9tvo9HVvGKURoC7gKYxt53qUAcUVPbIG6W0ol0MXY0TxDvNd1ySB7X3HVbRVBSt7
MyUWkfPJAgMBAAECggEAPf4K2fGXc7XdfGH++JIgLx7k/icxv8K3pwCtqMeYqwHG
P6+30ALqk2QAk6h0JqP6r3iba2VCI7Wd+0MQiyToJM0+95zCNoox7ASo57l+RoxP
r3purSF0odbC5/wQSNqVonw3P1YFE+rGLqII75wX1ry0yKfxoZ3UFgRz3g0daL1x
eFdfgnfgOPKQlHigRDXKGRqFRfRR3tcBxaMbqoIgJDZmjz2yX8HNd+RP2FLa8dnw
WcP95+XDdYns45bWw4tRdou+5chX6ZpO9fyr3f0HluvfqHDuaJXcajAClCx4mkCA
pWnEpdAne4QWioP3SqCla4PO5VT+xs2m4YDLgI3SaQKBgQDTEM7lMfMRb3ypyZjq
wr3xSLCPNhMwSqrhCEzDwixIHEOVowNJ/6IuVQU1HnOLNOFa2YWe2U2kIRURTJio
Z3hqu8sztxNEWPtScoFxoKOdVubcZZqSY15S11YcNqAkURoAQiL1QD3xa0F1ht+v
Be+jAXw7u4E3MxrXMLU92DhKKwKBgQDF+vrI2dHN64uCL6VL4VuVCXPhwDpMgKKs
fBWGS8l/3nwAbGHQVjm5D7WTZP7qDNsUxUZTKgCWJjl90p/40LJaBD0Ehty5V0yk
cyvA8HMuPosdmrdPqV4MBiNO+eQ+JMn05B7Ws2moxXVzBsMb9RWQEGHYsWHzegj2
RZlv1qQD2wKBgA8Z58OsRDjeIiw/uUoqrs5hpghJFSxiW0GIh32GGgb6xrchF64m
tSLdgGbhi+DM4sbOQ2ovIAf7Ofen5FBAPvRcBVjo418Dgs/OU4aeuLYcLp5cQqfw
piIFOCsCmYifqN2V3cxwUT5Br0hKYxyxrwiZpZrceo1JgcUdvgnzu2tLAoGAGNpX
zwzg9IukGLSoeG0S1RO5s1YxO1dOlH6DKTesVNv2DwuL/95DIsMhFR6xjWoNun7F
RD1ak3666tuc71wrd3devYm8fZvC6EX48SB+JQj+57l7V4m4X6QJnKlsCI0PuSlF
4cfl9KTNCKKJraHHki0sS0qBNFJWe6vjBhIYxs8CgYEAiKvqJxKxQUmdUgkNIo7b
rtoLPlBKQjeYYYrimGGswipBCvutlM4IpRLJWn1dw6OQJsZ5Jzpj1CD43oxYWsZB
1Ip6vB0SQUnC2xduAksOQ9khjr7jll55iVKXtQxWu9K534u5Ef7muid9lNlBnGHX
s/Ddmcgpeni3WTc5L/INAjQ=
-----END PRIVATE KEY-----
"#;
const SERVICE_ACCOUNT_PUBLIC_KEY: &str = r#"-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAozrcZG4Gg4AQUKGN3C1t
bWeydb9dz7SKlKVaQgDL6/LD+D6cie7J3JAd3Wk3WI6w0YYg/sCORo3pq2I44S4C
R8OkzJdq8FmcIeK3kz9wgCPGRuhi+xXC23Chlsq0XyXFwVx7dafhVCcF9ZfzLlCW
7zMSV6NKqpszkZVCKPIG7kiBrPysMWggjVB45bvoJw1ZoV2hkzsdv++8q94oYGzU
U0TUTYVAKLAfMrhvfadGjGVCoSpxYmZPIT6+p8k5OAYfTNRAu5MHmmAzyfbb6PR1
bxilEaAu4CmMbed6lAHFFT2yBultKJdDF2NE8Q7zXdckge19x1W0VQUrezMlFpHz
yQIDAQAB
-----END PUBLIC KEY-----
"#;

/// The access token the fake OAuth endpoint issues.
pub(crate) const ACCESS_TOKEN: &str = "test-access-token";
/// The project of the fake service account.
pub(crate) const PROJECT: &str = "test-project";
/// The fake service account's email (the JWT-bearer assertion's `iss`).
pub(crate) const CLIENT_EMAIL: &str = "push@test-project.iam.gserviceaccount.com";

/// One request a fake server received.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) path: String,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
    pub(crate) at: Instant,
}

impl Recorded {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The device token of an APNs request (`/3/device/<token>`).
    pub(crate) fn apns_token(&self) -> &str {
        self.path.strip_prefix("/3/device/").unwrap_or("")
    }

    /// The registration token of an FCM request.
    pub(crate) fn fcm_token(&self) -> String {
        self.json()["message"]["token"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// How a fake server answers one request.
pub(crate) enum Reply {
    /// A status, headers and a body.
    Respond(u16, Vec<(&'static str, String)>, String),
    /// Never.
    Hang,
}

impl Reply {
    pub(crate) fn ok() -> Self {
        Self::Respond(200, Vec::new(), String::new())
    }

    pub(crate) fn json(status: u16, body: &str) -> Self {
        Self::Respond(
            status,
            vec![("content-type", "application/json".into())],
            body.to_owned(),
        )
    }
}

type Script = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// An HTTP server (HTTP/1.1 and HTTP/2, with or without TLS) that records requests.
pub(crate) struct FakeServer {
    addr: SocketAddr,
    tls: bool,
    requests: mpsc::UnboundedReceiver<Recorded>,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Starts on 127.0.0.1:0; TLS when `tls` is given.
    pub(crate) async fn start(
        tls: Option<TlsAcceptor>,
        script: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (tx, requests) = mpsc::unbounded_channel();
        let script: Script = Arc::new(script);
        let with_tls = tls.is_some();
        let task = tokio::spawn(async move {
            // Dropping the set (when the server is dropped) closes every connection.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, script, tls) = (tx.clone(), script.clone(), tls.clone());
                connections.spawn(async move {
                    let service = service_fn(move |req| answer(req, tx.clone(), script.clone()));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            tls: with_tls,
            requests,
            task,
        }
    }

    /// The base URL to configure.
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The next request; fails the test if none comes within `within`.
    pub(crate) async fn next(&mut self, within: Duration) -> Recorded {
        tokio::time::timeout(within, self.requests.recv())
            .await
            .expect("a request in time")
            .expect("server running")
    }

    /// Requests until one matches `last` (included), failing the test after `within`.
    pub(crate) async fn until(
        &mut self,
        within: Duration,
        last: impl Fn(&Recorded) -> bool,
    ) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let request = tokio::time::timeout_at(deadline, self.requests.recv())
                .await
                .unwrap_or_else(|_| panic!("the awaited request never came; got {seen:#?}"))
                .expect("server running");
            let done = last(&request);
            seen.push(request);
            if done {
                return seen;
            }
        }
    }

    /// Requests received and not read yet.
    pub(crate) fn pending(&mut self) -> Vec<Recorded> {
        let mut seen = Vec::new();
        while let Ok(request) = self.requests.try_recv() {
            seen.push(request);
        }
        seen
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    request: Request<Incoming>,
    record: mpsc::UnboundedSender<Recorded>,
    script: Script,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let recorded = Recorded {
        path: parts.uri.path().to_owned(),
        version: parts.version,
        headers: parts.headers,
        body,
        at: Instant::now(),
    };
    let reply = script(&recorded);
    let _ = record.send(recorded);
    match reply {
        Reply::Hang => std::future::pending().await,
        Reply::Respond(status, headers, body) => {
            let mut response = Response::builder().status(status);
            for (name, value) in headers {
                response = response.header(name, value);
            }
            Ok(response
                .body(Full::new(Bytes::from(body)))
                .expect("a valid response"))
        }
    }
}

/// A self-signed certificate for 127.0.0.1 (written as PEM to `dir/ca.pem` for
/// `push.ca_cert_path`) and a TLS acceptor that serves it with ALPN h2.
pub(crate) fn self_signed_tls(dir: &Path) -> (TlsAcceptor, PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let path = dir.join("ca.pem");
    std::fs::write(&path, cert.pem()).expect("write certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    (TlsAcceptor::from(Arc::new(config)), path)
}

/// An APNs signing key made for the test: the `.p8` file and the public key to verify with.
pub(crate) struct ApnsKey {
    pub(crate) path: PathBuf,
    public_pem: String,
}

impl ApnsKey {
    pub(crate) fn generate(dir: &Path) -> Self {
        let key = rcgen::KeyPair::generate().expect("P-256 key");
        let path = dir.join("AuthKey_TESTKEY123.p8");
        std::fs::write(&path, key.serialize_pem()).expect("write key");
        Self {
            path,
            public_pem: key.public_key_pem(),
        }
    }

    /// Checks an APNs `authorization` header: `bearer` and an ES256 JWT from
    /// this key with this `kid` and `iss`, issued within the last minute.
    pub(crate) fn verify(&self, authorization: &str, kid: &str, iss: &str) -> String {
        let jwt = authorization
            .strip_prefix("bearer ")
            .unwrap_or_else(|| panic!("not a bearer token: {authorization:?}"));
        let header = jsonwebtoken::decode_header(jwt).expect("a JWT header");
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(kid));
        #[derive(Deserialize)]
        struct Claims {
            iss: String,
            iat: u64,
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let key = DecodingKey::from_ec_pem(self.public_pem.as_bytes()).expect("public key");
        let claims = jsonwebtoken::decode::<Claims>(jwt, &key, &validation)
            .expect("the JWT verifies with the test key")
            .claims;
        assert_eq!(claims.iss, iss);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(
            claims.iat <= now && claims.iat + 60 >= now,
            "iat {}",
            claims.iat
        );
        jwt.to_owned()
    }
}

/// Writes the fake service account's JSON key, whose OAuth endpoint is `token_uri`.
pub(crate) fn service_account(dir: &Path, token_uri: &str) -> PathBuf {
    let path = dir.join("service-account.json");
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "test-key",
        "private_key": SERVICE_ACCOUNT_KEY,
        "client_email": CLIENT_EMAIL,
        "client_id": "1",
        "token_uri": token_uri,
    });
    std::fs::write(&path, json.to_string()).expect("write service account");
    path
}

/// The fake OAuth token endpoint's answer (at `/token`): an access token for a
/// valid JWT-bearer grant signed by the service account's key, 400 otherwise.
pub(crate) fn oauth(request: &Recorded) -> Reply {
    let body = String::from_utf8_lossy(&request.body).into_owned();
    let grant = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
    let assertion = body
        .split('&')
        .find_map(|pair| pair.strip_prefix("assertion="))
        .unwrap_or("")
        .replace("%3D", "=");
    let token_uri = format!("http://{}/token", request.header("host"));
    if body.contains(grant) && grant_is_valid(&assertion, &token_uri) {
        Reply::json(
            200,
            &format!(
                r#"{{"access_token":"{ACCESS_TOKEN}","expires_in":3600,"token_type":"Bearer"}}"#
            ),
        )
    } else {
        Reply::json(400, r#"{"error":"invalid_grant"}"#)
    }
}

/// Checks a JWT-bearer assertion: RS256 by the service account's key, for the
/// token endpoint, from the service account, asking to send FCM messages.
/// gcp_auth pads its base64 (Google accepts that), so the signature is checked
/// over the text as sent and the claims are read without the padding.
fn grant_is_valid(assertion: &str, token_uri: &str) -> bool {
    #[derive(Deserialize)]
    struct Claims {
        scope: String,
    }
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return false;
    };
    let key = DecodingKey::from_rsa_pem(SERVICE_ACCOUNT_PUBLIC_KEY.as_bytes()).expect("public key");
    let signature = signature.trim_end_matches('=');
    let signed = jsonwebtoken::crypto::verify(
        signature,
        format!("{header}.{claims}").as_bytes(),
        &key,
        Algorithm::RS256,
    );
    if !matches!(signed, Ok(true)) {
        return false;
    }
    let unpadded = format!(
        "{}.{}.{signature}",
        header.trim_end_matches('='),
        claims.trim_end_matches('=')
    );
    let mut validation = Validation::new(Algorithm::RS256);
    validation.insecure_disable_signature_validation();
    validation.set_audience(&[token_uri]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    jsonwebtoken::decode::<Claims>(&unpadded, &key, &validation)
        .is_ok_and(|t| t.claims.scope == "https://www.googleapis.com/auth/firebase.messaging")
}
