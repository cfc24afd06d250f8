//! A PostgreSQL server of this machine's installation (Debian's `postgresql`:
//! `initdb`, `pg_ctl`, `postgres` on PATH or under /usr/lib/postgresql), made
//! for one run in a directory of its own, on a free loopback port, with
//! password (SCRAM) authentication over TCP. PostgreSQL refuses to run as
//! root: when this process is root, the server runs as the `postgres` user the
//! package creates. The bench starts one for `--storage postgres`; the tests
//! start theirs with it too.

use std::io::Write;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The superuser the messenger connects as.
pub const SUPERUSER: &str = "messenger";

/// How long the server may take to start.
const START_PATIENCE: Duration = Duration::from_secs(60);

/// A server made for this run; stopped (and its directory removed) when dropped.
pub struct LocalPostgres {
    /// Its port on 127.0.0.1.
    port: u16,
    /// The superuser's password.
    password: String,
    /// Holds the data directory, the socket and the log.
    dir: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
}

impl LocalPostgres {
    /// Makes a server in a new directory under `parent`, with `settings`
    /// (`name=value`, e.g. `synchronous_commit=on`), and starts it.
    pub fn start(parent: &Path, password: &str, settings: &[&str]) -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let user = run_as()?;
        let dir = tempfile_dir(parent)?;
        if let Some((uid, gid)) = user {
            chown(&dir, Some(uid), Some(gid)).context("handing the directory to postgres")?;
        }
        let pwfile = dir.join("pw");
        std::fs::File::create(&pwfile)
            .and_then(|mut f| f.write_all(password.as_bytes()))
            .context("writing the password file")?;
        if let Some((uid, gid)) = user {
            chown(&pwfile, Some(uid), Some(gid))
                .context("handing the password file to postgres")?;
        }
        let out = command(&bin.join("initdb"), user)
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", SUPERUSER, "-E", "UTF8", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nmax_connections = 200\n",
            dir.display()
        );
        for setting in settings {
            conf.push_str(setting);
            conf.push('\n');
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("data").join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .context("writing postgresql.conf")?;
        let server = Self {
            port,
            password: password.to_owned(),
            dir,
            bin,
            user,
        };
        server.pg_ctl_start()?;
        Ok(server)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory that holds it (data, socket, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The connection string of database `name`, as the superuser.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{name}",
            self.password, self.port
        )
    }

    /// Creates database `name`; its connection string.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let mut admin = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .context("connecting to the local PostgreSQL")?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .with_context(|| format!("creating database {name}"))?;
        Ok(self.url(name))
    }

    /// Stops the server (a fast shutdown: open connections are cut).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["stop", "-m", "fast", "-w"])
    }

    /// Starts the server again after [`LocalPostgres::stop`], on the same port and data.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.pg_ctl_start()
    }

    /// The server's processes (the postmaster and its children), for CPU time.
    pub fn pids(&self) -> Vec<u32> {
        pids_of(&self.dir)
    }

    /// A shell command that stops this server at once and removes its
    /// directory: for a watchdog that outlives the process that made it.
    pub fn teardown_script(&self) -> String {
        format!(
            "'{}' -D '{}' stop -m immediate -w >/dev/null 2>&1; rm -rf '{}'",
            self.bin.join("pg_ctl").display(),
            self.dir.join("data").display(),
            self.dir.display()
        )
    }

    /// The user the server runs as (`None`: this process's), for a watchdog.
    pub fn run_as(&self) -> Option<(u32, u32)> {
        self.user
    }

    /// Leaves the server running when dropped (a watchdog stops it).
    pub fn keep(mut self) {
        self.dir = PathBuf::new();
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let log = self.dir.join("server.log");
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", &log.display().to_string()])?;
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            match postgres::Client::connect(&self.url("postgres"), postgres::NoTls) {
                Ok(_) => return Ok(()),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => bail!("PostgreSQL did not start on port {}: {err}", self.port),
            }
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = command(&self.bin.join("pg_ctl"), self.user)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running pg_ctl")?;
        if !out.status.success() {
            bail!(
                "pg_ctl {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() {
            return;
        }
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the server's programs are: PATH, else the newest /usr/lib/postgresql/<v>/bin.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    });
    if let Some(dir) = on_path {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context(
        "PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql): \
         `apt-get install postgresql`",
    )
}

/// The uid and gid to run the server as: `postgres`'s when this process is root.
fn run_as() -> anyhow::Result<Option<(u32, u32)>> {
    let id = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id(&["-u"]) != Some(0) {
        return Ok(None);
    }
    match (id(&["-u", "postgres"]), id(&["-g", "postgres"])) {
        (Some(uid), Some(gid)) => Ok(Some((uid, gid))),
        _ => bail!(
            "running as root, and PostgreSQL refuses root, but there is no `postgres` user \
             to run it as (Debian's postgresql package creates it)"
        ),
    }
}

/// A command that runs as `user` (when set).
fn command(program: &Path, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// A new directory under `parent`, named for this process and a counter.
fn tempfile_dir(parent: &Path) -> anyhow::Result<PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static MADE: AtomicU32 = AtomicU32::new(0);
    let dir = parent.join(format!(
        "messenger-pg-{}-{}",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A free loopback port (bound and released).
fn free_port() -> anyhow::Result<u16> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(probe.local_addr()?.port())
}

/// The processes of the server made in `dir` (see [`LocalPostgres::dir`]): the
/// postmaster and its children.
pub(crate) fn pids_of(dir: &Path) -> Vec<u32> {
    let Some(main) = std::fs::read_to_string(dir.join("data").join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
    else {
        return Vec::new();
    };
    let mut pids = vec![main];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let parent = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let rest = &stat[stat.rfind(')')? + 1..];
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if parent == Some(main) {
            pids.push(pid);
        }
    }
    pids
}
