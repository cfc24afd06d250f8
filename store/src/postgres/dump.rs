//! `messenger backup` on PostgreSQL: PostgreSQL's own tool, `pg_dump`, in its
//! custom format (one consistent snapshot, taken while bridges keep writing;
//! restored with `pg_restore`). The connection settings reach it through
//! libpq's environment (`PGHOST`, `PGPASSWORD`, ...), never its command line,
//! where any local user could read the password.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postgres::config::Host;
use postgres::Config;

use super::PostgresError;
use crate::StoreError;

/// The tool, looked up on `PATH`.
const PG_DUMP: &str = "pg_dump";

/// How a dump went.
#[derive(Debug, Clone)]
pub struct DumpReport {
    /// The database dumped (its name and where it is, without the password).
    pub database: String,
    /// Size of the dump file.
    pub bytes: u64,
    /// Time taken.
    pub elapsed: Duration,
}

/// Dumps the database `url` names to `dest` (custom format, `pg_dump --format
/// custom --file dest`), which must not exist: it is never overwritten, and a
/// failed dump leaves no file behind. Fails with [`StoreError::DumpMissing`]
/// when `pg_dump` cannot be run, [`StoreError::DumpFailed`] with what it said
/// when it fails.
pub fn dump(url: &str, dest: &Path) -> Result<DumpReport, StoreError> {
    let config: Config = url
        .parse()
        .map_err(|e: postgres::Error| StoreError::Connect(PostgresError::Url(e.to_string())))?;
    let started = Instant::now();
    // Made here (not by pg_dump, which would overwrite a file made meanwhile).
    match OpenOptions::new().write(true).create_new(true).open(dest) {
        Ok(_) => {}
        Err(err) if err.kind() == ErrorKind::AlreadyExists => {
            return Err(StoreError::BackupExists(dest.to_path_buf()));
        }
        Err(err) => return Err(StoreError::Io(dest.to_path_buf(), err)),
    }
    let ran = run(&config, dest);
    let bytes = ran.and_then(|()| {
        std::fs::metadata(dest)
            .map(|m| m.len())
            .map_err(|err| StoreError::Io(dest.to_path_buf(), err))
    });
    match bytes {
        Ok(bytes) => Ok(DumpReport {
            database: describe(&config),
            bytes,
            elapsed: started.elapsed(),
        }),
        Err(err) => {
            let _ = std::fs::remove_file(dest);
            Err(err)
        }
    }
}

/// Runs `pg_dump` into `dest`.
fn run(config: &Config, dest: &Path) -> Result<(), StoreError> {
    let mut cmd = Command::new(PG_DUMP);
    cmd.arg("--format=custom")
        .arg("--no-password")
        .arg("--file")
        .arg(dest)
        .envs(environment(config))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let output = match cmd.output() {
        Ok(output) => output,
        Err(err) if err.kind() == ErrorKind::NotFound => {
            return Err(StoreError::DumpMissing(err.to_string()));
        }
        Err(err) => return Err(StoreError::Io(PathBuf::from(PG_DUMP), err)),
    };
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr);
    Err(StoreError::DumpFailed(format!(
        "{} ({})",
        said.trim(),
        output.status
    )))
}

/// libpq's environment for `config`: where, who, the password, which database.
fn environment(config: &Config) -> Vec<(&'static str, OsString)> {
    let mut env = Vec::new();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        env.push(("PGHOST", hosts.join(",").into()));
    }
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        env.push(("PGPORT", ports.join(",").into()));
    }
    if let Some(user) = config.get_user() {
        env.push(("PGUSER", user.into()));
    }
    if let Some(password) = config.get_password() {
        env.push((
            "PGPASSWORD",
            String::from_utf8_lossy(password).into_owned().into(),
        ));
    }
    if let Some(dbname) = config.get_dbname() {
        env.push(("PGDATABASE", dbname.into()));
    }
    if let Some(timeout) = config.get_connect_timeout() {
        env.push((
            "PGCONNECT_TIMEOUT",
            timeout.as_secs().max(1).to_string().into(),
        ));
    }
    env
}

/// The database's name and where it is (no password).
fn describe(config: &Config) -> String {
    let name = config.get_dbname().unwrap_or("(default)");
    format!("database {name} at {}", super::target(config))
}
