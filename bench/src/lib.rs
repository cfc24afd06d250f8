//! `messenger bench`: drives simulated devices over real MQTT on loopback
//! against server child processes, and reports throughput, latency, connections
//! and memory in one run.
//!
//! # Layout
//!
//! - `server`: the server under test, a child process of this same executable.
//! - `seed`: users and device tokens written into a server's SQLite file.
//! - `devices`: simulated devices on rumqttc, and what they observe.
//! - `stats`: latency samples and percentiles.
//! - `raw`, `e2e`, `groups`, `connections`: the phases.
//! - `report`: the table and the JSON file.
//!
//! Phases run one after the other, each against a fresh server in its own
//! directory under the system's temp directory (removed at the end unless `--keep`).

mod connections;
mod devices;
mod e2e;
mod groups;
mod raw;
mod report;
mod seed;
mod server;
mod stats;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;
use rand::RngCore;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::info;

use report::Report;
use server::{Role, ServerSpec};

/// How long any one wait (connecting a fleet, a reply, a drain) may take.
const PATIENCE: Duration = Duration::from_secs(60);

/// Options of `messenger bench`. Every count has a default and a `--quick` default.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Shrink every phase to a smoke run of a few seconds.
    #[arg(long)]
    quick: bool,
    /// Also write every figure to this file, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The phases to run (comma-separated); skipped ones report zeros.
    #[arg(long, value_enum, value_delimiter = ',')]
    phases: Vec<Phase>,
    /// The server's storage durability.
    #[arg(long, value_enum, default_value_t = Durability::Fsync)]
    durability: Durability,
    /// Raw: seconds of saturated publishing [5; quick 1].
    #[arg(long)]
    raw_secs: Option<f64>,
    /// Raw: publishing devices [2; quick 2].
    #[arg(long)]
    raw_publishers: Option<usize>,
    /// E2E: 1-1 pairs of devices [50; quick 4].
    #[arg(long)]
    pairs: Option<usize>,
    /// E2E saturated: unacknowledged sends per device [4; quick 16].
    #[arg(long)]
    window: Option<usize>,
    /// Paced phases: messages per second [1000; quick 200].
    #[arg(long)]
    paced_rate: Option<f64>,
    /// E2E paced: seconds [10; quick 1].
    #[arg(long)]
    paced_secs: Option<f64>,
    /// E2E saturated: messages in the long run [1000000; quick 3000].
    #[arg(long)]
    messages: Option<u64>,
    /// E2E saturated: messages before the baseline memory reading and the throughput window [100000; quick 1000].
    #[arg(long)]
    baseline_messages: Option<u64>,
    /// Groups: members, each with one connected device [1024; quick 16].
    #[arg(long)]
    group_size: Option<usize>,
    /// Groups: messages, one at a time [50; quick 5].
    #[arg(long)]
    group_messages: Option<usize>,
    /// Connections: idle devices [10000; quick 100].
    #[arg(long)]
    connections: Option<usize>,
    /// Connections: devices per user [100; quick 10].
    #[arg(long)]
    devices_per_user: Option<usize>,
    /// Extra configuration for the servers under test, as NAME=VALUE environment
    /// variables (e.g. MESSENGER_BROKER__SEGMENT_BYTES=131072); repeatable.
    #[arg(long = "server-env", value_parser = parse_env)]
    server_env: Vec<(String, String)>,
    /// Keep the servers' directories (databases, logs) and print where.
    #[arg(long)]
    keep: bool,
}

/// A phase of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Phase {
    /// The bare broker.
    Raw,
    /// 1-1 messages through the bridge at a fixed rate.
    Paced,
    /// 1-1 messages through the bridge flat out: the long run and memory over time.
    Saturated,
    /// A big group's fan-out.
    Groups,
    /// Idle connections, memory per connection, reconnection after a restart.
    Connections,
}

/// `storage.durability` of the servers under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Durability {
    /// Every commit fsynced before its acks.
    Fsync,
    /// Commits reach the OS only.
    Os,
}

impl Durability {
    fn as_str(self) -> &'static str {
        match self {
            Self::Fsync => "fsync",
            Self::Os => "os",
        }
    }
}

/// The resolved options.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    phases: Vec<Phase>,
    durability: Durability,
    raw_secs: f64,
    raw_paced_secs: f64,
    raw_publishers: usize,
    pairs: usize,
    window: usize,
    paced_rate: f64,
    paced_secs: f64,
    messages: u64,
    baseline_messages: u64,
    group_size: usize,
    group_messages: usize,
    connections: usize,
    devices_per_user: usize,
    server_env: Vec<(String, String)>,
    keep: bool,
}

impl Options {
    fn from_args(a: &BenchArgs) -> anyhow::Result<Self> {
        let q = a.quick;
        let pick =
            |v: Option<f64>, full: f64, quick: f64| v.unwrap_or(if q { quick } else { full });
        let count =
            |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if q { quick } else { full });
        let phases = if a.phases.is_empty() {
            Phase::value_variants().to_vec()
        } else {
            a.phases.clone()
        };
        let options = Self {
            phases,
            durability: a.durability,
            raw_secs: pick(a.raw_secs, 5.0, 1.0),
            raw_paced_secs: if q { 0.5 } else { 3.0 },
            raw_publishers: count(a.raw_publishers, 2, 2),
            pairs: count(a.pairs, 50, 4),
            window: count(a.window, 4, 16),
            paced_rate: pick(a.paced_rate, 1000.0, 200.0),
            paced_secs: pick(a.paced_secs, 10.0, 1.0),
            messages: a.messages.unwrap_or(if q { 3_000 } else { 1_000_000 }),
            baseline_messages: a
                .baseline_messages
                .unwrap_or(if q { 1_000 } else { 100_000 }),
            group_size: count(a.group_size, 1024, 16),
            group_messages: count(a.group_messages, 50, 5),
            connections: count(a.connections, 10_000, 100),
            devices_per_user: count(a.devices_per_user, 100, 10),
            server_env: a.server_env.clone(),
            keep: a.keep,
        };
        options.validate()?;
        Ok(options)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            self.raw_secs,
            self.raw_paced_secs,
            self.paced_rate,
            self.paced_secs,
        ];
        if positive.iter().any(|v| !v.is_finite() || *v <= 0.0) {
            bail!("--raw-secs, --paced-rate and --paced-secs must be above 0");
        }
        if self.raw_publishers == 0 || self.pairs == 0 || self.window == 0 {
            bail!("--raw-publishers, --pairs and --window must be at least 1");
        }
        if self.messages == 0 || self.baseline_messages >= self.messages {
            bail!("--baseline-messages must be below --messages");
        }
        if !(2..=1024).contains(&self.group_size) || self.group_messages == 0 {
            bail!("--group-size must be 2 to 1024 (the server's limit) and --group-messages at least 1");
        }
        if self.connections == 0 || self.devices_per_user == 0 {
            bail!("--connections and --devices-per-user must be at least 1");
        }
        Ok(())
    }

    /// Whether `phase` was selected.
    fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    /// The most connections open at once, in this process and in a server.
    fn peak_connections(&self) -> usize {
        let mut peak = 0;
        if self.runs(Phase::Raw) {
            peak = peak.max(self.raw_publishers + 1);
        }
        if self.runs(Phase::Paced) || self.runs(Phase::Saturated) {
            peak = peak.max(2 * self.pairs);
        }
        if self.runs(Phase::Groups) {
            peak = peak.max(self.group_size);
        }
        if self.runs(Phase::Connections) {
            peak = peak.max(self.connections + 1);
        }
        peak
    }
}

/// Runs the benchmark, prints the table and writes the JSON file.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let options = Options::from_args(&args)?;
    check_open_files(options.peak_connections())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // On SIGINT/SIGTERM the measurement is dropped, which kills the server children.
    let report = runtime.block_on(async {
        tokio::select! {
            report = measure(&options) => report,
            signal = interrupted() => Err(signal.map_or_else(|e| e, |()| anyhow::anyhow!("interrupted"))),
        }
    })?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn measure(options: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let machine = report::Machine::read();
    let scratch = Scratch::new(options.keep)?;
    let mut password = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut password);
    let spec = |name: &str| -> anyhow::Result<ServerSpec> {
        Ok(ServerSpec {
            role: Role::Serve,
            dir: scratch.dir(name)?,
            durability: options.durability.as_str().to_owned(),
            service_password: hex::encode(password),
            max_connections: (options.peak_connections() + 100).max(20_000),
            env: options.server_env.clone(),
        })
    };
    let raw = if options.runs(Phase::Raw) {
        info!("raw: the bare broker");
        raw::run(options, spec("raw")?).await?
    } else {
        raw::Raw::default()
    };
    let messaging = if [Phase::Paced, Phase::Saturated, Phase::Groups]
        .iter()
        .any(|p| options.runs(*p))
    {
        info!("e2e: through the bridge");
        e2e::run(options, spec("messaging")?).await?
    } else {
        e2e::Messaging::default()
    };
    let connections = if options.runs(Phase::Connections) {
        info!(devices = options.connections, "connections");
        connections::run(options, spec("connections")?).await?
    } else {
        connections::Connections::default()
    };
    Ok(Report::new(
        options,
        machine,
        &raw,
        &messaging,
        &connections,
        started.elapsed(),
    ))
}

/// Parses `--server-env NAME=VALUE`.
fn parse_env(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, value)) if name.starts_with("MESSENGER_") => {
            Ok((name.to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "expected MESSENGER_<TABLE>__<KEY>=VALUE, got {arg:?}"
        )),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Schedules sends at a fixed rate: each tick says how many are due.
pub(crate) struct Pacer {
    start: Instant,
    rate: f64,
    total: u64,
    issued: u64,
    tick: Interval,
}

impl Pacer {
    /// `total` sends at `rate` per second, starting now.
    pub(crate) fn new(rate: f64, total: u64) -> Self {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Self {
            start: Instant::now(),
            rate,
            total,
            issued: 0,
            tick,
        }
    }

    /// Waits until at least one send is due and returns how many; `None` when all were issued.
    pub(crate) async fn next_batch(&mut self) -> Option<u64> {
        while self.issued < self.total {
            self.tick.tick().await;
            let due = ((self.start.elapsed().as_secs_f64() * self.rate) as u64 + 1).min(self.total);
            if due > self.issued {
                let n = due - self.issued;
                self.issued = due;
                return Some(n);
            }
        }
        None
    }
}

/// Waits (within [`PATIENCE`]) until `done` holds.
pub(crate) async fn drain(done: impl Fn() -> bool, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what} did not all arrive within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Refuses to start when this process could not open a socket per device:
/// the hard limit here is usually the soft one, so it cannot be raised from inside.
fn check_open_files(connections: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft {
        let needed = connections + 256;
        if needed > soft {
            bail!(
                "{connections} connections need about {needed} open files but `ulimit -n` is {soft}: \
                 raise it or pass a smaller --connections / --group-size"
            );
        }
    }
    Ok(())
}

/// The directory all servers of one run live under.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    fn new(keep: bool) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("messenger-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        if keep {
            info!(dir = %path.display(), "keeping the servers' directories");
        }
        Ok(Self { path, keep })
    }

    /// A fresh directory for one server.
    fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.path.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
