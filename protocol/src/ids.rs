//! Validated identifiers.
//!
//! Every id that appears in a topic is checked when it is built, so a value of
//! one of these types can be put into a topic without further escaping.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not a user id: `^[a-z0-9][a-z0-9_-]{0,31}$`.
    #[error("invalid user id {0:?}: expected 1-32 of a-z 0-9 _ - starting with a letter or digit")]
    User(String),
    /// Not a device id: `^[A-Za-z0-9_-]{1,64}$`.
    #[error("invalid device id {0:?}: expected 1-64 of A-Z a-z 0-9 _ -")]
    Device(String),
    /// Not a conversation id: `dm:<a>:<b>` with `a < b`, or `g:<id>`.
    #[error("invalid conversation id {0:?}: expected dm:<a>:<b> with a < b, or g:<id>")]
    Conv(String),
    /// Not a client id: `<user>:<device>`.
    #[error("invalid client id {0:?}: expected <user>:<device>")]
    Client(String),
    /// Not a file id: `^[A-Za-z0-9_-]{1,64}$`.
    #[error("invalid file id {0:?}: expected 1-64 of A-Z a-z 0-9 _ -")]
    File(String),
}

/// The most characters of a rejected value an [`IdError`] keeps: errors are echoed
/// to clients, so a huge bad value must not make a huge error.
pub const SHOWN_CHARS: usize = 40;

/// The start of a rejected value, as an [`IdError`] keeps it.
fn shown(s: &str) -> String {
    let n = s.chars().count();
    if n <= SHOWN_CHARS {
        s.to_owned()
    } else {
        let head: String = s.chars().take(SHOWN_CHARS).collect();
        format!("{head}... ({n} characters)")
    }
}

fn is_user_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn is_token_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $check:expr, $err:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if $check(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError::$err(shown(s)))
                }
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A user id: `^[a-z0-9][a-z0-9_-]{0,31}$`; the MQTT username.
    UserId,
    is_user_id,
    User
);
string_id!(
    /// A device id: `^[A-Za-z0-9_-]{1,64}$`.
    DeviceId,
    is_token_id,
    Device
);
string_id!(
    /// The server-chosen part of a group's conversation id: `^[A-Za-z0-9_-]{1,64}$`.
    GroupId,
    is_token_id,
    Conv
);

string_id!(
    /// An uploaded file, as `POST /files` named it: `^[A-Za-z0-9_-]{1,64}$` (the
    /// server issues 32 random hex digits, one per upload, never the content hash).
    FileId,
    is_token_id,
    File
);

/// A conversation: a 1-1 chat between two users, or a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConvId {
    /// `dm:<a>:<b>` with `a < b` in byte order.
    Direct(UserId, UserId),
    /// `g:<id>`.
    Group(GroupId),
}

impl ConvId {
    /// The 1-1 conversation between two distinct users, in canonical order.
    pub fn direct(x: &UserId, y: &UserId) -> Result<Self, IdError> {
        match x.cmp(y) {
            std::cmp::Ordering::Less => Ok(Self::Direct(x.clone(), y.clone())),
            std::cmp::Ordering::Greater => Ok(Self::Direct(y.clone(), x.clone())),
            std::cmp::Ordering::Equal => Err(IdError::Conv(format!("dm:{x}:{y}"))),
        }
    }

    /// Parses `dm:<a>:<b>` (requiring `a < b`) or `g:<id>`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let bad = || IdError::Conv(shown(s));
        if let Some(rest) = s.strip_prefix("dm:") {
            let (a, b) = rest.split_once(':').ok_or_else(bad)?;
            let a = UserId::parse(a).map_err(|_| bad())?;
            let b = UserId::parse(b).map_err(|_| bad())?;
            if a < b {
                Ok(Self::Direct(a, b))
            } else {
                Err(bad())
            }
        } else if let Some(id) = s.strip_prefix("g:") {
            Ok(Self::Group(GroupId::parse(id).map_err(|_| bad())?))
        } else {
            Err(bad())
        }
    }

    /// The two members of a 1-1 conversation; `None` for a group.
    pub fn direct_members(&self) -> Option<(&UserId, &UserId)> {
        match self {
            Self::Direct(a, b) => Some((a, b)),
            Self::Group(_) => None,
        }
    }
}

impl fmt::Display for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct(a, b) => write!(f, "dm:{a}:{b}"),
            Self::Group(g) => write!(f, "g:{g}"),
        }
    }
}

impl std::str::FromStr for ConvId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl Serialize for ConvId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConvId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An MQTT client id, `<user>:<device>`.
///
/// The user part is kept as a plain string so that the service account
/// (whose name is deliberately not a valid [`UserId`]) fits too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId {
    /// The user (or service account) part.
    pub user: String,
    /// The device part.
    pub device: DeviceId,
}

impl ClientId {
    /// Splits `<user>:<device>` at the first `:` and validates the device.
    /// The user part is returned as written; the caller decides which names are valid.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let bad = || IdError::Client(shown(s));
        let (user, device) = s.split_once(':').ok_or_else(bad)?;
        if user.is_empty() {
            return Err(bad());
        }
        let device = DeviceId::parse(device).map_err(|_| bad())?;
        Ok(Self {
            user: user.to_owned(),
            device,
        })
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.user, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        for ok in [
            "a",
            "alice",
            "0",
            "a_b-c",
            "abcdefghijklmnopqrstuvwxyz012345",
        ] {
            assert!(UserId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "_a",
            "-a",
            "Alice",
            "a.b",
            "a b",
            "a/b",
            "a+b",
            "a#b",
            "a:b",
            "abcdefghijklmnopqrstuvwxyz0123456",
            "é",
        ] {
            assert!(UserId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn device_ids() {
        assert!(DeviceId::parse("Phone_1-x").is_ok());
        assert!(DeviceId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a.b", "a b", "a/b", "+", "#", "a:b"] {
            assert!(DeviceId::parse(bad).is_err(), "{bad}");
        }
        assert!(DeviceId::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn conv_ids() {
        let a = UserId::parse("alice").unwrap();
        let b = UserId::parse("bob").unwrap();
        let dm = ConvId::direct(&b, &a).unwrap();
        assert_eq!(dm.to_string(), "dm:alice:bob");
        assert_eq!(ConvId::parse("dm:alice:bob").unwrap(), dm);
        assert!(ConvId::parse("dm:bob:alice").is_err());
        assert!(ConvId::parse("dm:alice:alice").is_err());
        assert!(ConvId::direct(&a, &a).is_err());
        assert!(ConvId::parse("g:abc_1").is_ok());
        for bad in [
            "",
            "dm:",
            "dm:alice",
            "g:",
            "g:a.b",
            "x:alice:bob",
            "dm:Alice:bob",
        ] {
            assert!(ConvId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_show_only_the_start_of_a_long_value() {
        let long = "\u{85}".repeat(21_000);
        for err in [
            ConvId::parse(&long).unwrap_err(),
            UserId::parse(&long).unwrap_err(),
            DeviceId::parse(&long).unwrap_err(),
            ClientId::parse(&long).unwrap_err(),
        ] {
            let text = err.to_string();
            assert!(text.len() < 600, "{} bytes", text.len());
            assert!(text.contains("21000 characters"), "{text}");
        }
    }

    #[test]
    fn client_ids() {
        let c = ClientId::parse("alice:phone").unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.device.as_str(), "phone");
        assert_eq!(
            ClientId::parse("alice:ph:one").map(|_| ()),
            Err(IdError::Client("alice:ph:one".into()))
        );
        for bad in ["alice", ":phone", "alice:", "alice:a/b"] {
            assert!(ClientId::parse(bad).is_err(), "{bad}");
        }
    }
}
