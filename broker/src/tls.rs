//! The certificate of the TLS listeners (`[tls]`): read and checked at start, so
//! a bad file is bad configuration, and swapped in place on reload.
//!
//! Every TLS connection asks [`Certificates`] (a rustls certificate resolver)
//! for the current chain and key during its handshake, so a reload applies to
//! the next handshake; connections already open keep the session they have.
//! A reload that fails keeps the certificate in use.

mod validity;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_rustls::rustls;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Why the certificate or its key cannot be used; each names the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A TLS listener is on but `[tls]` lacks a path.
    #[error("{key} must be set when broker.tls_listen or broker.wss_listen is")]
    Missing {
        /// `tls.cert_path` or `tls.key_path`.
        key: &'static str,
    },
    /// A file cannot be read (missing, not a file, no permission).
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        /// `tls.cert_path` or `tls.key_path`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not the PEM expected.
    #[error("{key}: {path}: {problem}")]
    Pem {
        /// `tls.cert_path` or `tls.key_path`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The leaf certificate is outside its validity window (or its dates cannot be read).
    #[error("tls.cert_path: {path}: the certificate {problem}")]
    Validity {
        /// The certificate file.
        path: PathBuf,
        /// Expired when, not valid before when, or unreadable.
        problem: String,
    },
    /// The key is not one rustls can sign with.
    #[error("tls.key_path: {path}: unusable private key: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// The key does not belong to the leaf certificate.
    #[error("tls.key_path: the key in {key} does not match the certificate in {cert}")]
    Mismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// rustls refused to build a server configuration.
    #[error("tls: cannot build the TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The TLS listeners' certificate, shared by every handshake; cheap to clone.
#[derive(Clone)]
pub struct Certificates {
    inner: Arc<Inner>,
}

struct Inner {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert_path", &self.inner.cert_path)
            .field("key_path", &self.inner.key_path)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Reads and checks the `[tls]` files: a chain with at least one certificate,
    /// the leaf valid now, a private key that matches it.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let cert_path = config.cert_path.clone().ok_or(TlsError::Missing {
            key: "tls.cert_path",
        })?;
        let key_path = config.key_path.clone().ok_or(TlsError::Missing {
            key: "tls.key_path",
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read_certified(&cert_path, &key_path, &provider)?;
        Ok(Self {
            inner: Arc::new(Inner {
                cert_path,
                key_path,
                provider,
                current: RwLock::new(Arc::new(key)),
            }),
        })
    }

    /// Reads the files again; on success the next handshakes use the new
    /// certificate, on failure the current one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = read_certified(
            &self.inner.cert_path,
            &self.inner.key_path,
            &self.inner.provider,
        )?;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// The certificate file (for logs).
    pub fn cert_path(&self) -> &Path {
        &self.inner.cert_path
    }

    /// An acceptor that presents the current certificate at each handshake.
    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.inner
                .current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// Reads the chain and the key and checks them against each other and the clock.
fn read_certified(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_chain(cert_path)?;
    check_validity(cert_path, &chain[0])?;
    let key = read_key(key_path)?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::Key {
            path: key_path.to_path_buf(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch {
                key: key_path.to_path_buf(),
                cert: cert_path.to_path_buf(),
            })
        }
        Err(source) => Err(TlsError::Key {
            path: key_path.to_path_buf(),
            source,
        }),
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

/// Every `CERTIFICATE` block of the file, in order (leaf first).
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file("tls.cert_path", path)?;
    let bad = |problem: String| TlsError::Pem {
        key: "tls.cert_path",
        path: path.to_path_buf(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| bad(format!("not a valid PEM file: {err}")))?;
    if chain.is_empty() {
        return Err(bad(
            "no certificate in it (expected \"-----BEGIN CERTIFICATE-----\" blocks)".into(),
        ));
    }
    Ok(chain)
}

/// The first private key of the file (PKCS#8, PKCS#1 or SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file("tls.key_path", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| TlsError::Pem {
        key: "tls.key_path",
        path: path.to_path_buf(),
        problem: match err {
            pem::Error::NoItemsFound => {
                "no private key in it (expected a PEM PKCS#8, PKCS#1 or SEC1 key)".into()
            }
            other => format!("not a valid PEM file: {other}"),
        },
    })
}

/// Refuses a leaf certificate that has expired or is not valid yet.
fn check_validity(path: &Path, leaf: &CertificateDer<'_>) -> Result<(), TlsError> {
    let invalid = |problem: String| TlsError::Validity {
        path: path.to_path_buf(),
        problem,
    };
    let window = validity::Validity::of(leaf.as_ref())
        .ok_or_else(|| invalid("cannot be read (not an X.509 certificate)".into()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if now > window.not_after {
        return Err(invalid(format!(
            "expired at {}",
            validity::format_utc(window.not_after)
        )));
    }
    if now < window.not_before {
        return Err(invalid(format!(
            "is not valid before {}",
            validity::format_utc(window.not_before)
        )));
    }
    Ok(())
}
