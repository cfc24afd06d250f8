//! Export on PostgreSQL: the shared document (`crate::export`) read through the
//! engine's own rules (`history`'s window, `members`' list), in one
//! `REPEATABLE READ` read-only transaction, so the document is one consistent
//! snapshot while bridges keep writing (a reader never blocks a writer).

use std::io::Write;

use messenger_accounts::AccountsError;
use messenger_protocol::wire::{Event, MemberItem};
use messenger_protocol::{ConvId, UserId};
use postgres::Client;

use super::context::{int, nat, opt_nat, Ctx};
use super::operator::{transaction, OnConflict};
use crate::config::Limits;
use crate::export::{ExportSummary, Membership, Source, CONVERSATIONS_PER_PAGE};
use crate::sqlite::context::Kind;
use crate::sqlite::messages::Order;
use crate::{Failure, StoreError};

/// Writes everything `user` may read in the database to `out`, as JSON (the
/// document of `messenger_store::export_user`, the same on both engines).
/// `limits` are the server's, which decide how message events are cut as in
/// `history`. Fails with [`crate::StoreError::Account`] for a user that does
/// not exist; reading never changes the database.
pub fn export_user(
    client: &mut Client,
    user: &UserId,
    limits: &Limits,
    out: &mut dyn Write,
) -> Result<ExportSummary, StoreError> {
    transaction(
        client,
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        // Pages are written out as they are read: never twice.
        OnConflict::Fail,
        user,
        &mut |ctx| {
            let ctx = Ctx {
                limits,
                pushes: Default::default(),
                released: Default::default(),
                ..*ctx
            };
            let known = ctx
                .db
                .opt("SELECT 1 FROM users WHERE name = $1", &[&user.as_str()])?
                .is_some();
            if !known {
                return Err(AccountsError::NotFound(user.clone()).into());
            }
            crate::export::write(&ctx, user, out)
        },
    )
}

impl Source for Ctx<'_, '_> {
    fn blocks(&self) -> Result<Vec<UserId>, StoreError> {
        let rows = self.db.rows(
            "SELECT blocked FROM blocks WHERE blocker = $1 ORDER BY blocked COLLATE \"C\"",
            &[&self.user.as_str()],
        )?;
        let mut users = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Ok(user) = UserId::parse(row.try_get(0)?) {
                users.push(user);
            }
        }
        Ok(users)
    }

    fn memberships(&self, after: &str) -> Result<Vec<Membership>, StoreError> {
        let rows = self.db.rows(
            "SELECT s.conv, c.kind, c.name, m.role, m.left_seq, m.delivered_seq, m.read_seq
             FROM memberships s
             JOIN members m ON m.conv = s.conv AND m.\"user\" = s.\"user\"
             JOIN conversations c ON c.conv = s.conv
             WHERE s.\"user\" = $1 AND s.conv COLLATE \"C\" > $2
             ORDER BY s.conv COLLATE \"C\" LIMIT $3",
            &[
                &self.user.as_str(),
                &after,
                &int(u64::from(CONVERSATIONS_PER_PAGE)),
            ],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(Membership {
                conv: r.try_get(0)?,
                kind: Kind::from_column(r.try_get(1)?),
                name: r.try_get(2)?,
                role: r.try_get(3)?,
                left_seq: opt_nat(r, 4)?,
                delivered_seq: nat(r, 5)?,
                read_seq: nat(r, 6)?,
            });
        }
        Ok(out)
    }

    fn read_window(&self, conv: &ConvId) -> Result<(u64, u64), Failure> {
        Ctx::read_window(self, conv)
    }

    fn member_rows(
        &self,
        conv: &ConvId,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<(Vec<MemberItem>, bool), StoreError> {
        Ok(Ctx::member_rows(self, conv, after, limit)?)
    }

    fn events(
        &self,
        conv: &ConvId,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        Ok(self.events_between(conv, from, to, limit, Order::OldestFirst)?)
    }
}
