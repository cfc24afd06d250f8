//! The statements of one batch's transaction: prepared once per connection and
//! kept, with the first database error of the running request noted for the
//! engine (which decides whether the batch runs again, see `super::Retry`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Row, Statement};

/// Prepared statements by their text, for one connection.
pub(crate) type Statements = HashMap<&'static str, Statement>;

/// A statement's parameters.
pub(crate) type Params<'p> = [&'p (dyn ToSql + Sync)];

/// One batch's transaction (the engine opens and ends it on the connection),
/// shared by the handlers of its requests.
pub(crate) struct Db<'t> {
    tx: RefCell<&'t mut Client>,
    statements: &'t RefCell<Statements>,
    /// The first database fault since [`Db::take_fault`]: a request's failure
    /// only says `internal`; the engine reads what kind of fault it was here.
    fault: Cell<Option<Fault>>,
    /// Whether a statement that may write ran since [`Db::take_wrote`].
    wrote: Cell<bool>,
}

impl<'t> Db<'t> {
    pub(crate) fn new(tx: &'t mut Client, statements: &'t RefCell<Statements>) -> Self {
        Self {
            tx: RefCell::new(tx),
            statements,
            fault: Cell::new(None),
            wrote: Cell::new(false),
        }
    }

    /// Whether a statement that may have written ran since the last call.
    pub(crate) fn take_wrote(&self) -> bool {
        self.wrote.take()
    }

    /// The database fault noted since the last call, if any.
    pub(crate) fn take_fault(&self) -> Option<Fault> {
        self.fault.take()
    }

    /// Runs `f` on the transaction, noting its error.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let mut tx = self.tx.borrow_mut();
        f(&mut tx).inspect_err(|err| {
            if self.fault.get().is_none() {
                self.fault.set(Some(Fault::of(err)));
            }
        })
    }

    /// Notes a statement that may write (anything but a plain `SELECT`).
    fn note(&self, sql: &str) {
        if !sql.trim_start().starts_with("SELECT") || sql.contains("FOR UPDATE") {
            self.wrote.set(true);
        }
    }

    /// The prepared statement for `sql`, preparing it on first use.
    fn statement(&self, tx: &mut Client, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = tx.prepare(sql)?;
        self.statements.borrow_mut().insert(sql, statement.clone());
        Ok(statement)
    }

    /// The rows `sql` returns.
    pub(crate) fn rows(
        &self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, postgres::Error> {
        self.note(sql);
        self.with(|tx| {
            let statement = self.statement(tx, sql)?;
            tx.query(&statement, params)
        })
    }

    /// The one row `sql` returns, if any (more than one is an error).
    pub(crate) fn opt(
        &self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, postgres::Error> {
        self.note(sql);
        self.with(|tx| {
            let statement = self.statement(tx, sql)?;
            tx.query_opt(&statement, params)
        })
    }

    /// The one row `sql` returns (none is an error).
    pub(crate) fn one(
        &self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Row, postgres::Error> {
        self.note(sql);
        self.with(|tx| {
            let statement = self.statement(tx, sql)?;
            tx.query_one(&statement, params)
        })
    }

    /// Runs `sql`; how many rows it changed.
    pub(crate) fn exec(
        &self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<u64, postgres::Error> {
        self.wrote.set(true);
        self.with(|tx| {
            let statement = self.statement(tx, sql)?;
            tx.execute(&statement, params)
        })
    }

    /// Runs `f` on the transaction itself (for statements of another crate).
    pub(crate) fn with_tx<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        self.wrote.set(true);
        self.with(f)
    }

    /// Runs statements that take no parameters (savepoints), unprepared.
    pub(crate) fn simple(&self, sql: &str) -> Result<(), postgres::Error> {
        self.with(|tx| tx.batch_execute(sql))
    }
}

/// What kind of database fault ended a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Another transaction got there first (a serialization failure, a
    /// deadlock, a unique key another bridge just took): the batch runs again
    /// and sees what the other committed.
    Conflict,
    /// The connection is gone (the server restarted, the network broke): the
    /// batch runs again on a new connection.
    Connection,
    /// Anything else: the request fails (`internal`) and the batch goes on.
    Other,
}

impl Fault {
    /// Sorts a database error.
    pub(crate) fn of(err: &postgres::Error) -> Self {
        match err.code() {
            Some(code)
                if *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
                    || *code == SqlState::UNIQUE_VIOLATION =>
            {
                Self::Conflict
            }
            Some(code)
                if *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CRASH_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW
                    || code.code().starts_with("08") =>
            {
                Self::Connection
            }
            Some(_) => Self::Other,
            // No SQLSTATE: the error came from the connection, not the server.
            None => Self::Connection,
        }
    }
}
