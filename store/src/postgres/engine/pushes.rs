//! Push tokens, mutes and the notifications a stored message calls for, on
//! PostgreSQL (the rules of `sqlite::pushes`).
//!
//! A token belongs to one app install, so one (user, device) at a time:
//! registering it again from another user or device moves it there. A device
//! keeps one token per platform, a user at most [`MAX_TOKENS_PER_USER`] (the
//! least recently registered go). `push_tokens` is keyed by user (what a
//! notification reads), `push_token_owners` by (platform, token) (who holds a
//! token); both change together, in the request's transaction.

use messenger_protocol::wire::{Event, Platform, RequestId};
use messenger_protocol::{ConvId, UserId};

use super::context::{int, nat, ConvRow, Ctx};
use super::db::Db;
use crate::sqlite::context::Kind;
use crate::sqlite::pushes::{
    check_token, platform_from, platform_name, preview, Notify, HIDDEN_BODY, MAX_TOKENS_PER_USER,
};
use crate::{Effect, Failure, Notification};

/// Deletes a token a push service called dead, unless it was registered again
/// after `not_after_ms`; logs which.
pub(super) fn forget(
    db: &Db<'_>,
    platform: Platform,
    token: &str,
    not_after_ms: u64,
) -> Result<(), postgres::Error> {
    let name = platform_name(platform);
    let owner = db.opt(
        "SELECT \"user\", device FROM push_token_owners
         WHERE platform = $1 AND token = $2 FOR UPDATE",
        &[&name, &token],
    )?;
    let mut deleted = 0;
    if let Some(owner) = owner {
        let (user, device): (&str, &str) = (owner.try_get(0)?, owner.try_get(1)?);
        deleted = db.exec(
            "DELETE FROM push_tokens
             WHERE \"user\" = $1 AND device = $2 AND platform = $3 AND token = $4
               AND registered_ms <= $5",
            &[&user, &device, &name, &token, &int(not_after_ms)],
        )?;
        if deleted > 0 {
            db.exec(
                "DELETE FROM push_token_owners WHERE platform = $1 AND token = $2",
                &[&name, &token],
            )?;
        }
    }
    if deleted == 0 {
        tracing::info!(
            platform = name,
            "dead push token was registered again since (or is gone): kept"
        );
    }
    Ok(())
}

impl Ctx<'_, '_> {
    /// The `ack` of a request that stores no event.
    pub(super) fn ack_id(&self, id: &RequestId) -> Effect {
        self.reply(&Event::Ack {
            id: id.clone(),
            conv: None,
            seq: None,
            ts: None,
        })
    }

    /// Registers the requesting device's token for `platform`: it replaces the
    /// device's previous one, moves from whoever held it, and the user's least
    /// recently registered tokens over [`MAX_TOKENS_PER_USER`] go.
    pub(super) fn push_register(
        &self,
        id: &RequestId,
        platform: Platform,
        token: &str,
    ) -> Result<Vec<Effect>, Failure> {
        check_token(platform, token)?;
        let platform = platform_name(platform);
        let (user, device) = (self.user.as_str(), self.device.as_str());
        // The device's other token of this platform goes.
        let replaced = self.db.rows(
            "DELETE FROM push_tokens
             WHERE \"user\" = $1 AND device = $2 AND platform = $3 AND token <> $4
             RETURNING token",
            &[&user, &device, &platform, &token],
        )?;
        for row in &replaced {
            let old: &str = row.try_get(0)?;
            self.drop_owner(platform, old, user, device)?;
        }
        // Whoever holds the token (locked to the commit) loses it.
        let owner = self.db.opt(
            "SELECT \"user\", device FROM push_token_owners
             WHERE platform = $1 AND token = $2 FOR UPDATE",
            &[&platform, &token],
        )?;
        match &owner {
            None => {
                // Another bridge registering the same new token at once: the key
                // conflicts, the batch runs again and moves it from there.
                self.db.exec(
                    "INSERT INTO push_token_owners (platform, token, \"user\", device)
                     VALUES ($1, $2, $3, $4)",
                    &[&platform, &token, &user, &device],
                )?;
            }
            Some(row) => {
                let (held_by, held_on): (&str, &str) = (row.try_get(0)?, row.try_get(1)?);
                if (held_by, held_on) != (user, device) {
                    self.db.exec(
                        "DELETE FROM push_tokens
                         WHERE \"user\" = $1 AND device = $2 AND platform = $3 AND token = $4",
                        &[&held_by, &held_on, &platform, &token],
                    )?;
                    self.db.exec(
                        "UPDATE push_token_owners SET \"user\" = $3, device = $4
                         WHERE platform = $1 AND token = $2",
                        &[&platform, &token, &user, &device],
                    )?;
                }
            }
        }
        self.db.exec(
            "INSERT INTO push_tokens (\"user\", device, platform, token, registered_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (\"user\", device, platform, token)
             DO UPDATE SET registered_ms = EXCLUDED.registered_ms",
            &[&user, &device, &platform, &token, &int(self.now)],
        )?;
        // Past the cap, the least recently registered go (the order SQLite's
        // `(platform, token)` key breaks ties in, bytewise).
        let dropped = self.db.rows(
            "DELETE FROM push_tokens t
             USING (SELECT device, platform, token FROM push_tokens WHERE \"user\" = $1
                    ORDER BY registered_ms DESC, platform, token COLLATE \"C\" OFFSET $2) old
             WHERE t.\"user\" = $1 AND t.device = old.device AND t.platform = old.platform
               AND t.token = old.token
             RETURNING t.device, t.platform, t.token",
            &[&user, &i64::from(MAX_TOKENS_PER_USER)],
        )?;
        for row in &dropped {
            let (on, platform, token): (&str, &str, &str) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            self.drop_owner(platform, token, user, on)?;
        }
        Ok(vec![self.ack_id(id)])
    }

    /// Deletes the owner row of a token `push_tokens` no longer holds for (user, device).
    fn drop_owner(
        &self,
        platform: &str,
        token: &str,
        user: &str,
        device: &str,
    ) -> Result<(), postgres::Error> {
        self.db.exec(
            "DELETE FROM push_token_owners
             WHERE platform = $1 AND token = $2 AND \"user\" = $3 AND device = $4",
            &[&platform, &token, &user, &device],
        )?;
        Ok(())
    }

    /// Unregisters the sender's token (from whichever of their devices holds
    /// it); another user's token stays theirs.
    pub(super) fn push_unregister(
        &self,
        id: &RequestId,
        platform: Platform,
        token: &str,
    ) -> Result<Vec<Effect>, Failure> {
        check_token(platform, token)?;
        let platform = platform_name(platform);
        let user = self.user.as_str();
        let gone = self.db.rows(
            "DELETE FROM push_tokens WHERE \"user\" = $1 AND platform = $2 AND token = $3
             RETURNING device",
            &[&user, &platform, &token],
        )?;
        for row in &gone {
            self.drop_owner(platform, token, user, row.try_get(0)?)?;
        }
        Ok(vec![self.ack_id(id)])
    }

    /// Mutes `conv` for the sender until `until` (for ever without; `0` unmutes).
    pub(super) fn mute(
        &self,
        id: &RequestId,
        conv: &ConvId,
        until: Option<u64>,
    ) -> Result<Vec<Effect>, Failure> {
        self.require_member(conv, false)?;
        if until == Some(0) {
            self.db.exec(
                "DELETE FROM mutes WHERE \"user\" = $1 AND conv = $2",
                &[&self.user.as_str(), &conv.to_string()],
            )?;
        } else {
            self.db.exec(
                "INSERT INTO mutes (\"user\", conv, until) VALUES ($1, $2, $3)
                 ON CONFLICT (\"user\", conv) DO UPDATE SET until = EXCLUDED.until",
                &[&self.user.as_str(), &conv.to_string(), &until.map(int)],
            )?;
        }
        Ok(vec![self.ack_id(id)])
    }

    /// Records a notification of the message (conv, seq) for every current member
    /// but the sender who has no device online, has a token and has not muted `conv`.
    ///
    /// The members come from `members` (by conversation); what decides whether
    /// and where each is notified is read by the recipients' key (`push_tokens`,
    /// `devices`, `mutes`, all by user).
    pub(super) fn notify_offline(
        &self,
        conv: &ConvId,
        seq: u64,
        body: &str,
    ) -> Result<(), postgres::Error> {
        let Notify::On { preview: show } = self.notify else {
            return Ok(());
        };
        let recipients: Vec<String> = self
            .members(conv)?
            .into_iter()
            .filter(|m| m != self.user)
            .map(|m| m.as_str().to_owned())
            .collect();
        if recipients.is_empty() {
            return Ok(());
        }
        let conv_s = conv.to_string();
        let rows = self.db.rows(
            "SELECT t.\"user\", t.platform, t.token FROM push_tokens t
             WHERE t.\"user\" = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.\"user\" = t.\"user\" AND d.online)
               AND NOT EXISTS (SELECT 1 FROM mutes u WHERE u.\"user\" = t.\"user\" AND u.conv = $2
                               AND (u.until IS NULL OR u.until > $3))
             ORDER BY t.\"user\" COLLATE \"C\", t.platform, t.token COLLATE \"C\"",
            &[&recipients, &conv_s, &int(self.now)],
        )?;
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
        for row in &rows {
            let (user, platform, token): (String, &str, String) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let Some(platform) = platform_from(platform) else {
                continue;
            };
            let target = (platform, token);
            match by_user.last_mut() {
                Some((last, targets)) if *last == user => targets.push(target),
                _ => by_user.push((user, vec![target])),
            }
        }
        for (user, targets) in by_user {
            let Ok(user) = UserId::parse(&user) else {
                continue;
            };
            let badge = self.unread_total(&user)?;
            self.pushes.borrow_mut().push(Notification {
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

    /// The user's unread messages across their conversations (as `conversations`
    /// counts them), from their `memberships`.
    fn unread_total(&self, user: &UserId) -> Result<u64, postgres::Error> {
        let row = self.db.one(
            "SELECT COUNT(*) FROM memberships s
             JOIN members m ON m.conv = s.conv AND m.\"user\" = s.\"user\"
             JOIN events e ON e.conv = m.conv AND e.seq > m.read_seq
             WHERE s.\"user\" = $1 AND s.left_seq IS NULL AND m.left_seq IS NULL
               AND e.kind = 'message' AND e.sender <> m.\"user\"",
            &[&user.as_str()],
        )?;
        nat(&row, 0)
    }
}
