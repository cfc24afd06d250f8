//! Push tokens and mutes, and the notifications a stored message calls for.
//!
//! A token belongs to one app install, so `(platform, token)` is unique: registering
//! it again from another user or device moves it there. A device keeps one token
//! per platform (registering a new one replaces the old), and a user at most
//! [`MAX_TOKENS_PER_USER`] (the oldest go). What a notification says (title,
//! preview, badge) is computed here, inside the transaction that stores the message.

use messenger_protocol::wire::{ErrorCode, Event, Platform, RequestId};
use messenger_protocol::{ConvId, UserId};
use rusqlite::{params, Connection};

use super::context::{ConvRow, Kind};
use super::Ctx;
use crate::Notification;
use crate::{Effect, Failure};

/// Longest token accepted, in bytes.
pub(crate) const MAX_TOKEN_BYTES: usize = 4096;
/// Most tokens one user keeps; registering another drops the least recently registered.
pub(crate) const MAX_TOKENS_PER_USER: u32 = 32;
/// Longest message preview in a notification, in characters (APNs allows 4 KiB in all).
const MAX_PREVIEW_CHARS: usize = 240;
/// The body of a notification when previews are off.
pub(crate) const HIDDEN_BODY: &str = "New message";

/// Whether stored messages call for notifications, and what they show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// Push is not configured: compute nothing.
    Off,
    /// Push is on; `preview` shows the message's text.
    On {
        /// Whether a notification shows the message's text.
        preview: bool,
    },
}

/// The name the `push_tokens` table stores a platform by.
pub(crate) fn platform_name(platform: Platform) -> &'static str {
    match platform {
        Platform::Apns => "apns",
        Platform::Fcm => "fcm",
    }
}

/// Deletes a token a push service called dead, unless it was registered again
/// after `not_after_ms`; logs which.
pub(super) fn forget(
    conn: &Connection,
    platform: Platform,
    token: &str,
    not_after_ms: u64,
) -> rusqlite::Result<()> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM push_tokens WHERE platform = ?1 AND token = ?2 AND registered_ms <= ?3",
        )?
        .execute(params![platform_name(platform), token, not_after_ms])?;
    if deleted == 0 {
        tracing::info!(
            platform = platform_name(platform),
            "dead push token was registered again since (or is gone): kept"
        );
    }
    Ok(())
}

/// The platform a `push_tokens` row names, if it is one.
pub(crate) fn platform_from(name: &str) -> Option<Platform> {
    match name {
        "apns" => Some(Platform::Apns),
        "fcm" => Some(Platform::Fcm),
        _ => None,
    }
}

/// Checks a token's size and alphabet. It ends up in a URL path (APNs) or a JSON
/// body (FCM), so only the characters those services issue pass: hexadecimal
/// for APNs, `A-Z a-z 0-9 - _ : .` for FCM.
pub(crate) fn check_token(platform: Platform, token: &str) -> Result<(), Failure> {
    if token.is_empty() {
        return Err(Failure::bad("token must not be empty"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Failure::new(
            ErrorCode::TooLarge,
            format!(
                "token of {} bytes is over the limit of {MAX_TOKEN_BYTES}",
                token.len()
            ),
        ));
    }
    let fits = match platform {
        Platform::Apns => token.bytes().all(|b| b.is_ascii_hexdigit()),
        Platform::Fcm => token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.')),
    };
    if !fits {
        return Err(Failure::bad(match platform {
            Platform::Apns => "an apns token must be hexadecimal",
            Platform::Fcm => "an fcm token may hold only A-Z a-z 0-9 - _ : .",
        }));
    }
    Ok(())
}

/// The start of `body`, at most [`MAX_PREVIEW_CHARS`] characters, with an ellipsis if cut.
pub(crate) fn preview(body: &str) -> String {
    match body.char_indices().nth(MAX_PREVIEW_CHARS) {
        None => body.to_owned(),
        Some((at, _)) => format!("{}…", &body[..at]),
    }
}

impl Ctx<'_> {
    pub(super) fn ack_id(&self, id: &RequestId) -> Effect {
        self.reply(&Event::Ack {
            id: id.clone(),
            conv: None,
            seq: None,
            ts: None,
        })
    }

    pub(super) fn push_register(
        &self,
        id: &RequestId,
        platform: Platform,
        token: &str,
    ) -> Result<Vec<Effect>, Failure> {
        check_token(platform, token)?;
        let platform = platform_name(platform);
        self.conn
            .prepare_cached(
                "DELETE FROM push_tokens WHERE user = ?1 AND device = ?2 AND platform = ?3 AND token != ?4",
            )?
            .execute(params![self.user.as_str(), self.device.as_str(), platform, token])?;
        self.conn
            .prepare_cached(
                "INSERT INTO push_tokens (platform, token, user, device, registered_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (platform, token) DO UPDATE SET
                    user = excluded.user, device = excluded.device, registered_ms = excluded.registered_ms",
            )?
            .execute(params![platform, token, self.user.as_str(), self.device.as_str(), self.now])?;
        self.conn
            .prepare_cached(
                "DELETE FROM push_tokens WHERE user = ?1 AND (platform, token) IN (
                    SELECT platform, token FROM push_tokens WHERE user = ?1
                    ORDER BY registered_ms DESC, platform, token LIMIT -1 OFFSET ?2)",
            )?
            .execute(params![self.user.as_str(), MAX_TOKENS_PER_USER])?;
        Ok(vec![self.ack_id(id)])
    }

    pub(super) fn push_unregister(
        &self,
        id: &RequestId,
        platform: Platform,
        token: &str,
    ) -> Result<Vec<Effect>, Failure> {
        check_token(platform, token)?;
        self.conn
            .prepare_cached(
                "DELETE FROM push_tokens WHERE platform = ?1 AND token = ?2 AND user = ?3",
            )?
            .execute(params![platform_name(platform), token, self.user.as_str()])?;
        Ok(vec![self.ack_id(id)])
    }

    pub(super) fn mute(
        &self,
        id: &RequestId,
        conv: &ConvId,
        until: Option<u64>,
    ) -> Result<Vec<Effect>, Failure> {
        self.require_member(conv, false)?;
        if until == Some(0) {
            self.conn
                .prepare_cached("DELETE FROM mutes WHERE user = ?1 AND conv = ?2")?
                .execute(params![self.user.as_str(), conv.to_string()])?;
        } else {
            self.conn
                .prepare_cached(
                    "INSERT INTO mutes (user, conv, until) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user, conv) DO UPDATE SET until = excluded.until",
                )?
                .execute(params![self.user.as_str(), conv.to_string(), until])?;
        }
        Ok(vec![self.ack_id(id)])
    }

    /// Records a notification of the message (conv, seq) for every current member
    /// but the sender who has no device online, has a token and has not muted `conv`.
    pub(super) fn notify_offline(
        &self,
        conv: &ConvId,
        seq: u64,
        body: &str,
    ) -> rusqlite::Result<()> {
        let Notify::On { preview: show } = self.notify else {
            return Ok(());
        };
        let conv_s = conv.to_string();
        let rows: Vec<(String, String, String)> = self
            .conn
            .prepare_cached(
                "SELECT t.user, t.platform, t.token
                 FROM members m JOIN push_tokens t ON t.user = m.user
                 WHERE m.conv = ?1 AND m.left_seq IS NULL AND m.user != ?2
                   AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.user = m.user AND d.online = 1)
                   AND NOT EXISTS (SELECT 1 FROM mutes u WHERE u.user = m.user AND u.conv = ?1
                                   AND (u.until IS NULL OR u.until > ?3))
                 ORDER BY t.user, t.platform, t.token",
            )?
            .query_map(params![conv_s, self.user.as_str(), self.now], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        if rows.is_empty() {
            return Ok(());
        }
        let title = match self.conversation(conv)? {
            Some(ConvRow {
                kind: Kind::Group,
                name,
                ..
            }) => format!("{name}: {}", self.user),
            _ => self.user.to_string(),
        };
        let text = if show {
            preview(body)
        } else {
            HIDDEN_BODY.to_owned()
        };
        let mut by_user: Vec<(String, Vec<(Platform, String)>)> = Vec::new();
        for (user, platform, token) in rows {
            let Some(platform) = platform_from(&platform) else {
                continue;
            };
            let target = (platform, token);
            match by_user.last_mut() {
                Some((last, targets)) if *last == user => targets.push(target),
                _ => by_user.push((user, vec![target])),
            }
        }
        let mut pushes = self.pushes.borrow_mut();
        for (user, targets) in by_user {
            let Ok(user) = UserId::parse(&user) else {
                continue;
            };
            let badge = self.unread_total(&user)?;
            pushes.push(Notification {
                user,
                conv: conv.clone(),
                seq,
                title: title.clone(),
                body: text.clone(),
                badge,
                targets,
            });
        }
        Ok(())
    }

    /// The user's unread messages across their conversations (as `conversations` counts them).
    fn unread_total(&self, user: &UserId) -> rusqlite::Result<u64> {
        self.conn
            .prepare_cached(
                "SELECT COUNT(*) FROM members m JOIN events e ON e.conv = m.conv AND e.seq > m.read_seq
                 WHERE m.user = ?1 AND m.left_seq IS NULL AND e.kind = 'message' AND e.sender != m.user",
            )?
            .query_row([user.as_str()], |r| r.get(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked() {
        assert!(check_token(Platform::Apns, "00ff").is_ok());
        assert!(check_token(Platform::Fcm, "abc:APA91b-x_y.z").is_ok());
        assert_eq!(
            check_token(Platform::Apns, "").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            check_token(Platform::Fcm, &"a".repeat(MAX_TOKEN_BYTES + 1))
                .unwrap_err()
                .code,
            ErrorCode::TooLarge
        );
        assert!(check_token(Platform::Fcm, &"a".repeat(MAX_TOKEN_BYTES)).is_ok());
        assert!(check_token(Platform::Apns, "../x").is_err());
        assert!(check_token(Platform::Fcm, "a/b").is_err());
        assert!(check_token(Platform::Fcm, "a b").is_err());
    }

    #[test]
    fn a_dead_token_registered_again_since_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let conn =
            super::super::open(&dir.path().join("m.db"), crate::config::Durability::Os).unwrap();
        conn.execute(
            "INSERT INTO push_tokens (platform, token, user, device, registered_ms)
             VALUES ('apns', 'aa', 'u', 'd', 5000)",
            [],
        )
        .unwrap();
        let count = || -> u32 {
            conn.query_row("SELECT COUNT(*) FROM push_tokens", [], |r| r.get(0))
                .unwrap()
        };
        forget(&conn, Platform::Apns, "aa", 4999).unwrap();
        assert_eq!(count(), 1, "registered after APNs saw it die: kept");
        forget(&conn, Platform::Apns, "aa", 5000).unwrap();
        assert_eq!(count(), 0);
    }

    #[test]
    fn previews_are_cut_on_characters() {
        assert_eq!(preview("hi"), "hi");
        let long = "é".repeat(MAX_PREVIEW_CHARS + 5);
        let cut = preview(&long);
        assert_eq!(cut.chars().count(), MAX_PREVIEW_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(
            preview(&"é".repeat(MAX_PREVIEW_CHARS)).chars().count(),
            MAX_PREVIEW_CHARS
        );
    }
}
