//! Removing an account on PostgreSQL (`messenger user remove [--erase]`), with
//! the rules of `sqlite::removal`: the account's inbox, devices, presence, push
//! registrations, mutes, blocks (by it and of it) and memberships are deleted;
//! its messages stay in the other members' timelines, but its request ids stop
//! reserving anything; a 1-1 chat with it is closed. With `erase`, the text of
//! every message it sent is erased as a `delete` would, [`ERASE_BATCH`]
//! messages per transaction, and the uploads those messages alone carried go,
//! their bytes under the per-hash advisory locks (`files`).
//!
//! # Bridges writing meanwhile
//!
//! The removal is one transaction that takes the locks a bridge's batch takes,
//! in the same order, before it reads what to remove: the user's `user_seqs`
//! row (a batch locks it first for a 1-1 chat with the user, and to deliver
//! anything to the user), then the rows of every conversation the user is in,
//! in conversation order (a batch locks a conversation's row to store an event
//! in it, before it reads its members), then those conversations' `members`
//! rows (a receipt locks its sender's row there before it reads the members it
//! delivers to). So a batch that stores an event or a receipt for the user
//! either commits first (the removal then sees its inbox rows and removes
//! them) or waits for the removal and then sees the user gone (the 1-1 chat
//! closed: `unknown_user`). A deadlock with a batch that locks in the other
//! order (a group's row, then the user's `user_seqs` row) is found by the
//! server, and whichever of the two it stops runs again. The account's row,
//! tokens and revocation go last in the same transaction: every broker node
//! reads the revocation and cuts the user's connections.
//!
//! A device's presence change that comes after the removal (its connection
//! cut) records nothing: `presence` makes no row for a user that does not exist.
//!
//! Erasing locks each message's row as a `delete` does (`FOR NO KEY UPDATE`),
//! so an edit or a reaction never lands on an erased message.

use std::path::Path;

use messenger_accounts::AccountsError;
use messenger_protocol::UserId;
use postgres::Client;

use super::context::{int, nat, Ctx};
use super::files;
use super::operator::{transaction, OnConflict};
use crate::StoreError;

/// Messages erased per transaction (as on SQLite).
pub(crate) const ERASE_BATCH: usize = crate::sqlite::removal::ERASE_BATCH;

/// Removes an account and everything it owned in the conversations (see the
/// module's documentation), in one transaction on `client`: safe while bridges
/// run on the database. `NotFound` for a user that does not exist.
pub fn remove_user(client: &mut Client, user: &UserId) -> Result<(), StoreError> {
    transaction(client, "BEGIN", OnConflict::RunAgain, user, &mut |ctx| {
        purge(ctx)
    })
}

/// Removes an account as [`remove_user`] does, then erases the text of every
/// message it sent as `delete` does, 500 messages per transaction (`ERASE_BATCH`).
/// A user that no longer exists (an erase cut short) has what is left of their
/// messages erased, and their attachments let go of (the bytes of uploads no
/// other message carries are removed from `files_dir`). Returns how many were
/// erased.
pub fn erase_user(client: &mut Client, files_dir: &Path, user: &UserId) -> Result<u64, StoreError> {
    let gone = match remove_user(client, user) {
        Ok(()) => None,
        Err(err @ StoreError::Account(AccountsError::NotFound(_))) => Some(err),
        Err(err) => return Err(err),
    };
    let keys = transaction(client, "BEGIN", OnConflict::RunAgain, user, &mut |ctx| {
        live_messages(ctx)
    })?;
    if let (Some(err), true) = (gone, keys.is_empty()) {
        return Err(err);
    }
    let mut erased = 0;
    for batch in keys.chunks(ERASE_BATCH) {
        erased += transaction(client, "BEGIN", OnConflict::RunAgain, user, &mut |ctx| {
            let n = erase_messages(ctx, batch)?;
            let released = ctx.released.take();
            files::remove_unused(ctx.db, files_dir, released)?;
            Ok(n)
        })?;
    }
    Ok(erased)
}

/// Removes the account and what it owned, inside the caller's transaction.
fn purge(ctx: &Ctx<'_, '_>) -> Result<(), StoreError> {
    let (db, user) = (ctx.db, ctx.user.as_str());
    if db
        .opt("SELECT 1 FROM users WHERE name = $1 FOR UPDATE", &[&user])?
        .is_none()
    {
        return Err(AccountsError::NotFound(ctx.user.clone()).into());
    }
    // The user's useq counter (made if missing, so that no batch makes it meanwhile).
    db.exec(
        "INSERT INTO user_seqs (\"user\", last_useq) VALUES ($1, 0)
         ON CONFLICT (\"user\") DO UPDATE SET last_useq = user_seqs.last_useq",
        &[&user],
    )?;
    // Read under that lock: no batch adds the user to a conversation now.
    let rows = db.rows("SELECT conv FROM memberships WHERE \"user\" = $1", &[&user])?;
    let mut convs = Vec::with_capacity(rows.len());
    for row in &rows {
        convs.push(row.try_get::<_, String>(0)?);
    }
    db.rows(
        "SELECT conv FROM conversations WHERE conv = ANY($1)
         ORDER BY conv COLLATE \"C\" FOR UPDATE",
        &[&convs],
    )?;
    // And their members' rows: a receipt locks its sender's row before it
    // reads the members it delivers to, without the conversation's row.
    db.rows(
        "SELECT 1 FROM members WHERE conv = ANY($1)
         ORDER BY conv COLLATE \"C\", \"user\" COLLATE \"C\" FOR SHARE",
        &[&convs],
    )?;
    db.exec(
        "UPDATE conversations SET closed = TRUE WHERE conv = ANY($1) AND kind = 'dm'",
        &[&convs],
    )?;
    db.exec(
        "DELETE FROM members WHERE conv = ANY($1) AND \"user\" = $2",
        &[&convs, &user],
    )?;
    db.exec(
        "DELETE FROM push_token_owners o USING push_tokens t
         WHERE t.\"user\" = $1 AND o.platform = t.platform AND o.token = t.token
           AND o.\"user\" = $1",
        &[&user],
    )?;
    for sql in [
        "DELETE FROM memberships WHERE \"user\" = $1",
        "DELETE FROM inbox WHERE \"user\" = $1",
        // Presence first: it waits for a device's change in flight (which
        // holds the row), and the devices' delete then sees that change.
        "DELETE FROM presence WHERE \"user\" = $1",
        "DELETE FROM devices WHERE \"user\" = $1",
        "DELETE FROM push_tokens WHERE \"user\" = $1",
        "DELETE FROM mutes WHERE \"user\" = $1",
        "DELETE FROM blocks WHERE blocker = $1 OR blocked = $1",
    ] {
        db.exec(sql, &[&user])?;
    }
    // Its request ids reserve nothing any more; its events keep them to show.
    db.exec(
        "UPDATE events e SET retired_req_id = e.req_id, req_id = NULL
         FROM requests r
         WHERE r.sender = $1 AND e.conv = r.conv AND e.seq = r.seq
           AND e.sender = $1 AND e.req_id IS NOT NULL",
        &[&user],
    )?;
    db.exec("DELETE FROM requests WHERE sender = $1", &[&user])?;
    // A new account of that name numbers its inbox from 1 again, as on SQLite.
    db.exec("DELETE FROM user_seqs WHERE \"user\" = $1", &[&user])?;
    let removed = db.with_tx(|tx| Ok(messenger_accounts::remove_user_postgres(tx, ctx.user)))?;
    removed?;
    Ok(())
}

/// The `(conv, seq)` of every message of the user not deleted yet, in order.
fn live_messages(ctx: &Ctx<'_, '_>) -> Result<Vec<(String, u64)>, StoreError> {
    let rows = ctx.db.rows(
        "SELECT conv, seq FROM events
         WHERE sender = $1 AND kind = 'message' AND NOT deleted
         ORDER BY conv COLLATE \"C\", seq",
        &[&ctx.user.as_str()],
    )?;
    let mut keys = Vec::with_capacity(rows.len());
    for row in &rows {
        keys.push((row.try_get::<_, String>(0)?, nat(row, 1)?));
    }
    Ok(keys)
}

/// Erases the text of these messages as `delete` does (their rows and their
/// edits' rows lose the text, the message is marked deleted, its reactions go,
/// its attachments are let go of into `ctx.released`), inside the caller's
/// transaction; no `delete` event is stored. Returns how many were erased
/// (those not deleted since).
fn erase_messages(ctx: &Ctx<'_, '_>, keys: &[(String, u64)]) -> Result<u64, StoreError> {
    let db = ctx.db;
    let mut erased = 0;
    for (conv, seq) in keys {
        let seq_i = int(*seq);
        let live = db.opt(
            "SELECT 1 FROM events
             WHERE conv = $1 AND seq = $2 AND kind = 'message' AND NOT deleted
             FOR NO KEY UPDATE",
            &[conv, &seq_i],
        )?;
        if live.is_none() {
            continue;
        }
        db.exec(
            "UPDATE events SET body = NULL, deleted = TRUE WHERE conv = $1 AND seq = $2",
            &[conv, &seq_i],
        )?;
        db.exec(
            "UPDATE events SET body = NULL WHERE conv = $1 AND ref_seq = $2 AND kind = 'edit'",
            &[conv, &seq_i],
        )?;
        db.exec(
            "DELETE FROM reactions WHERE conv = $1 AND seq = $2",
            &[conv, &seq_i],
        )?;
        ctx.detach(conv, *seq)?;
        erased += 1;
    }
    Ok(erased)
}
