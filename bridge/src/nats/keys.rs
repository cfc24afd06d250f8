//! NATS nkeys and JWTs, as far as the auth callout needs them: the issuer
//! account key (an Ed25519 key kept as an nkey seed, `SA…`), its public key
//! (`A…`), and JWTs signed with it.
//!
//! An nkey is base32 (RFC 4648, no padding) of a prefix byte, the key and a
//! CRC-16/XMODEM of both, little-endian. A seed has two prefix bytes: the seed
//! kind and the key's kind. A NATS JWT is `header.claims.signature`, each part
//! base64url without padding, the signature Ed25519 over `header.claims`.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use data_encoding::BASE32_NOPAD;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// The prefix byte of an account's public key (`A`).
const ACCOUNT: u8 = 0;
/// The prefix byte of a seed (`S`).
const SEED: u8 = 18 << 3;

/// Why an issuer seed cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The seed file could not be read or written.
    #[error("{path}: {cause}")]
    File {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The text is not an account nkey seed.
    #[error("not an account nkey seed (SA…): {0}")]
    Malformed(&'static str),
}

/// The account key that signs the auth callout's answers (the `issuer` of a
/// node's `auth_callout` block is its public key).
pub struct Issuer {
    pair: Ed25519KeyPair,
    public: String,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("public", &self.public)
            .finish()
    }
}

impl Issuer {
    /// The key of an account nkey seed (`SA…`, surrounding whitespace ignored).
    pub fn from_seed(seed: &str) -> Result<Self, KeyError> {
        let raw = BASE32_NOPAD
            .decode(seed.trim().as_bytes())
            .map_err(|_| KeyError::Malformed("not base32"))?;
        if raw.len() != 2 + 32 + 2 {
            return Err(KeyError::Malformed("wrong length"));
        }
        let (body, crc) = raw.split_at(34);
        if crc16(body).to_le_bytes() != crc {
            return Err(KeyError::Malformed("checksum mismatch"));
        }
        if body[0] & 0xf8 != SEED || ((body[0] & 7) << 5 | body[1] >> 3) != ACCOUNT {
            return Err(KeyError::Malformed("not an account seed"));
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(&body[2..])
            .map_err(|_| KeyError::Malformed("not an Ed25519 seed"))?;
        let public = encode(&[ACCOUNT], pair.public_key().as_ref());
        Ok(Self { pair, public })
    }

    /// The key in `path` (an nkey seed).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|cause| KeyError::File {
            path: path.display().to_string(),
            cause,
        })?;
        Self::from_seed(&text)
    }

    /// A new random seed, as text (`SA…`).
    pub fn generate_seed() -> String {
        let raw: [u8; 32] = rand::random();
        encode(&[SEED | (ACCOUNT >> 5), (ACCOUNT & 31) << 3], &raw)
    }

    /// Writes a new random seed to `path`, readable by its owner only; an
    /// existing file is refused.
    pub fn create_file(path: &Path) -> Result<(), KeyError> {
        use std::io::Write;
        let failed = |cause| KeyError::File {
            path: path.display().to_string(),
            cause,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(failed)?;
        file.write_all(Self::generate_seed().as_bytes())
            .map_err(failed)?;
        file.sync_all().map_err(failed)
    }

    /// The public key (`A…`).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// A JWT with `claims`, signed by this key.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{body}");
        let signature = self.pair.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// The claims of a JWT (its middle part), unverified.
pub fn claims_of(jwt: &str) -> Option<serde_json::Value> {
    let body = jwt.split('.').nth(1)?;
    let raw = URL_SAFE_NO_PAD.decode(body.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&raw).ok()
}

/// A random JWT id.
pub fn jti() -> String {
    let raw: [u8; 16] = rand::random();
    BASE32_NOPAD.encode(&raw)
}

/// base32 of `prefix ++ key ++ crc16(prefix ++ key)`.
fn encode(prefix: &[u8], key: &[u8]) -> String {
    let mut raw = Vec::with_capacity(prefix.len() + key.len() + 2);
    raw.extend_from_slice(prefix);
    raw.extend_from_slice(key);
    let crc = crc16(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    BASE32_NOPAD.encode(&raw)
}

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0).
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pair made by the `nkeys` Python package (`nkeys.encode_seed`, `public_key`).
    const SEED_TEXT: &str = "SAAH6EMQMZEZV2556N25RD57AZCUOCCDUBQBPMJV34SH3ZLVNQBZIRYIR4";
    const PUBLIC: &str = "ABYQ2N46WJXQ3EPFAN37DWIAUBS7VRCGUVYNRL2XEHVT47QY2QCPMXRG";

    #[test]
    fn an_account_seed_gives_the_public_key_nkeys_gives() {
        let issuer = Issuer::from_seed(&format!("{SEED_TEXT}\n")).unwrap();
        assert_eq!(issuer.public_key(), PUBLIC);
        let fresh = Issuer::from_seed(&Issuer::generate_seed()).unwrap();
        assert!(fresh.public_key().starts_with('A'));
        assert_ne!(fresh.public_key(), PUBLIC);
    }

    #[test]
    fn bad_seeds_are_refused() {
        let mut flipped = SEED_TEXT.to_owned();
        flipped.replace_range(10..11, "A");
        for bad in ["", "not base32!", "SAAH6EMQ", flipped.as_str(), PUBLIC] {
            assert!(Issuer::from_seed(bad).is_err(), "{bad}");
        }
        // A user seed (SU…) is not an account seed.
        let user_prefix: u8 = 20 << 3;
        let user = encode(
            &[SEED | (user_prefix >> 5), (user_prefix & 31) << 3],
            &[7; 32],
        );
        assert!(user.starts_with("SU"), "{user}");
        assert!(matches!(
            Issuer::from_seed(&user),
            Err(KeyError::Malformed("not an account seed"))
        ));
    }

    #[test]
    fn a_signed_jwt_verifies_with_the_public_key() {
        let issuer = Issuer::from_seed(SEED_TEXT).unwrap();
        let jwt = issuer.sign(&serde_json::json!({"sub": "x", "n": 1}));
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(claims_of(&jwt).unwrap()["n"], 1);
        let raw = BASE32_NOPAD.decode(PUBLIC.as_bytes()).unwrap();
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &raw[1..33]);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .unwrap();
    }
}
