//! The protocol's MQTT topics.

use crate::ids::{DeviceId, UserId};

/// Where a device publishes its requests: `chat/<user>/out/<device>`.
pub fn out(user: &UserId, device: &DeviceId) -> String {
    format!("chat/{user}/out/{device}")
}

/// Events for every device of a user: `chat/<user>/inbox`.
pub fn inbox(user: &UserId) -> String {
    format!("chat/{user}/inbox")
}

/// Replies to one device's requests: `chat/<user>/dev/<device>`.
pub fn dev(user: &UserId, device: &DeviceId) -> String {
    format!("chat/{user}/dev/{device}")
}

/// A device's presence, its last will: `presence/<user>/<device>`.
pub fn presence(user: &UserId, device: &DeviceId) -> String {
    format!("presence/{user}/{device}")
}

/// A user's aggregated presence: `status/<user>`.
pub fn status(user: &UserId) -> String {
    format!("status/{user}")
}

/// The filter the bridge consumes requests on.
pub const OUT_FILTER: &str = "chat/+/out/+";

/// The filter the bridge consumes device presence on.
pub const PRESENCE_FILTER: &str = "presence/+/+";

/// A topic of the protocol, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `chat/<user>/out/<device>`
    Out(UserId, DeviceId),
    /// `chat/<user>/inbox`
    Inbox(UserId),
    /// `chat/<user>/dev/<device>`
    Dev(UserId, DeviceId),
    /// `presence/<user>/<device>`
    Presence(UserId, DeviceId),
    /// `status/<user>`
    Status(UserId),
}

impl Topic {
    /// Parses a concrete topic name (no wildcards); `None` if it is not one of the protocol's.
    pub fn parse(topic: &str) -> Option<Self> {
        let parts: Vec<&str> = topic.split('/').collect();
        match parts.as_slice() {
            ["chat", u, "out", d] => {
                Some(Self::Out(UserId::parse(u).ok()?, DeviceId::parse(d).ok()?))
            }
            ["chat", u, "inbox"] => Some(Self::Inbox(UserId::parse(u).ok()?)),
            ["chat", u, "dev", d] => {
                Some(Self::Dev(UserId::parse(u).ok()?, DeviceId::parse(d).ok()?))
            }
            ["presence", u, d] => Some(Self::Presence(
                UserId::parse(u).ok()?,
                DeviceId::parse(d).ok()?,
            )),
            ["status", u] => Some(Self::Status(UserId::parse(u).ok()?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let u = UserId::parse("alice").unwrap();
        let d = DeviceId::parse("phone").unwrap();
        assert_eq!(
            Topic::parse(&out(&u, &d)),
            Some(Topic::Out(u.clone(), d.clone()))
        );
        assert_eq!(Topic::parse(&inbox(&u)), Some(Topic::Inbox(u.clone())));
        assert_eq!(
            Topic::parse(&dev(&u, &d)),
            Some(Topic::Dev(u.clone(), d.clone()))
        );
        assert_eq!(
            Topic::parse(&presence(&u, &d)),
            Some(Topic::Presence(u.clone(), d.clone()))
        );
        assert_eq!(Topic::parse(&status(&u)), Some(Topic::Status(u)));
        for bad in [
            "chat/+/out/+",
            "chat/alice/out",
            "chat/Alice/inbox",
            "x/alice",
            "status/a/b",
            "",
        ] {
            assert_eq!(Topic::parse(bad), None, "{bad}");
        }
    }
}
