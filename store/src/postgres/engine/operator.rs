//! The operator's commands on PostgreSQL, outside any bridge's batch: each runs
//! on a connection of its own, in transactions of its own, while bridges keep
//! writing. A transaction that meets another one in a deadlock or a
//! serialization failure runs again (as a bridge's batch does).

use std::cell::RefCell;

use messenger_protocol::{DeviceId, UserId};
use postgres::Client;

use super::context::Ctx;
use super::db::{Db, Fault, Statements};
use super::CONFLICT_RUNS;
use crate::config::Limits;
use crate::rate::{Allowance, RateLimits};
use crate::sqlite::pushes::Notify;
use crate::StoreError;

/// How a transaction that failed on a conflict with another one goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnConflict {
    /// It runs again (up to `CONFLICT_RUNS` times): its work has no effect
    /// outside the database before the commit.
    RunAgain,
    /// It fails (its work wrote out what it read, e.g. an export).
    Fail,
}

/// Runs `work` in a transaction opened with `begin`, committed if it succeeds,
/// rolled back otherwise, and run again on a conflict if `on_conflict` says so.
/// `work` gets a context for `user` (the subject of the command; its device is
/// `operator`) with the server's default limits.
pub(super) fn transaction<T>(
    client: &mut Client,
    begin: &str,
    on_conflict: OnConflict,
    user: &UserId,
    work: &mut dyn FnMut(&Ctx<'_, '_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let statements = RefCell::new(Statements::new());
    let device = DeviceId::parse("operator").expect("a valid device id");
    let limits = Limits::default();
    let rates = RateLimits::new(&limits);
    let mut runs = 0;
    loop {
        runs += 1;
        client.batch_execute(begin)?;
        let (result, fault) = {
            let db = Db::new(client, &statements);
            let allowance = Allowance::new(&rates);
            let ctx = Ctx {
                db: &db,
                user,
                device: &device,
                limits: &limits,
                rates: &allowance,
                now: crate::sqlite::now_ms(),
                notify: Notify::Off,
                pushes: RefCell::new(Vec::new()),
                looked: None,
                released: RefCell::new(Vec::new()),
            };
            let result = work(&ctx);
            (result, db.take_fault())
        };
        match result {
            Ok(value) => {
                client.batch_execute("COMMIT")?;
                return Ok(value);
            }
            Err(err) => {
                // Nothing of it stays (on a broken connection the server has
                // rolled it back already).
                let _ = client.batch_execute("ROLLBACK");
                let again = on_conflict == OnConflict::RunAgain && runs < CONFLICT_RUNS;
                if fault != Some(Fault::Conflict) || !again {
                    return Err(err);
                }
                tracing::info!(runs, "another transaction got there first: running again");
            }
        }
    }
}
