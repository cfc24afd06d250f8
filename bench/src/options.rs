//! The command line of `messenger bench` and the options it resolves to: every
//! count has a full default and a `--quick` one, checked before anything starts.

use std::path::PathBuf;

use anyhow::bail;
use clap::ValueEnum;
use serde::Serialize;

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
    /// The storage engines the paced and saturated phases run on (comma-separated);
    /// with postgres, the bench makes a PostgreSQL of this machine's installation.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sqlite")]
    storage: Vec<Storage>,
    /// On PostgreSQL: how many bridges share the database, one run each (comma-separated) [1,3].
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    bridges: Vec<usize>,
    /// The paced and saturated phases also on a NATS cluster of this many nodes
    /// (`messenger cluster up`, one bridge, each pair's devices on two nodes); 0: off [0].
    #[arg(long, default_value_t = 0)]
    cluster: usize,
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
    /// Search: messages in one user's readable set, seeded through the store [1000000; quick 20000].
    #[arg(long)]
    search_messages: Option<u64>,
    /// Search: that user's 1-1 conversations the messages are spread over [100; quick 10].
    #[arg(long)]
    search_partners: Option<usize>,
    /// Search: queries, one at a time [300; quick 30].
    #[arg(long)]
    search_queries: Option<usize>,
    /// Files: bytes per file [10485760; quick 1048576].
    #[arg(long)]
    file_bytes: Option<u64>,
    /// Files: files uploaded, then downloaded, one at a time [20; quick 3].
    #[arg(long)]
    file_count: Option<usize>,
    /// TLS: idle devices connected over plain MQTT and then over MQTT/TLS [5000; quick 100]
    /// (a TLS connection holds three of the server's file descriptors).
    #[arg(long)]
    tls_connections: Option<usize>,
    /// TLS: messages of the saturated e2e run over each transport (after a warm-up) [200000; quick 2000].
    #[arg(long)]
    tls_messages: Option<u64>,
    /// Extra configuration for the servers under test, as NAME=VALUE environment
    /// variables (e.g. MESSENGER_BROKER__SEGMENT_BYTES=131072); repeatable.
    #[arg(long = "server-env", value_parser = parse_env)]
    server_env: Vec<(String, String)>,
    /// Keep the servers' directories (databases, logs) and print where.
    #[arg(long)]
    keep: bool,
}

/// A phase of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
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
    /// Search latency over one user's large readable set.
    Search,
    /// Upload and download throughput on the web listener.
    Files,
    /// MQTT over TLS beside plain MQTT: connect rate, memory per idle connection, e2e throughput.
    Tls,
}

/// A storage engine of the servers under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Storage {
    /// One SQLite file (`messenger serve`).
    Sqlite,
    /// PostgreSQL, with one or more bridges (`--bridges`).
    Postgres,
}

/// `storage.durability` of the servers under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Durability {
    /// Every commit fsynced before its acks.
    Fsync,
    /// Commits reach the OS only.
    Os,
}

impl Durability {
    /// The value of `storage.durability`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Fsync => "fsync",
            Self::Os => "os",
        }
    }
}

/// The resolved options: each field is the like-named argument with its default filled in.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) phases: Vec<Phase>,
    pub(crate) durability: Durability,
    pub(crate) storage: Vec<Storage>,
    pub(crate) bridges: Vec<usize>,
    pub(crate) cluster: usize,
    pub(crate) raw_secs: f64,
    pub(crate) raw_paced_secs: f64,
    pub(crate) raw_publishers: usize,
    pub(crate) pairs: usize,
    pub(crate) window: usize,
    pub(crate) paced_rate: f64,
    pub(crate) paced_secs: f64,
    pub(crate) messages: u64,
    pub(crate) baseline_messages: u64,
    pub(crate) group_size: usize,
    pub(crate) group_messages: usize,
    pub(crate) connections: usize,
    pub(crate) devices_per_user: usize,
    pub(crate) search_messages: u64,
    pub(crate) search_partners: usize,
    pub(crate) search_queries: usize,
    pub(crate) file_bytes: u64,
    pub(crate) file_count: usize,
    pub(crate) tls_connections: usize,
    pub(crate) tls_messages: u64,
    pub(crate) server_env: Vec<(String, String)>,
    pub(crate) keep: bool,
    /// Where to write the figures as JSON, if anywhere.
    pub(crate) json: Option<PathBuf>,
}

impl Options {
    /// The arguments with every default filled in, validated.
    pub(crate) fn from_args(a: &BenchArgs) -> anyhow::Result<Self> {
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
            storage: a.storage.clone(),
            bridges: a.bridges.clone(),
            cluster: a.cluster,
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
            search_messages: a
                .search_messages
                .unwrap_or(if q { 20_000 } else { 1_000_000 }),
            search_partners: count(a.search_partners, 100, 10),
            search_queries: count(a.search_queries, 300, 30),
            file_bytes: a
                .file_bytes
                .unwrap_or(if q { 1024 * 1024 } else { 10 * 1024 * 1024 }),
            file_count: count(a.file_count, 20, 3),
            tls_connections: count(a.tls_connections, 5_000, 100),
            tls_messages: a.tls_messages.unwrap_or(if q { 2_000 } else { 200_000 }),
            server_env: a.server_env.clone(),
            keep: a.keep,
            json: a.json.clone(),
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
        if self.search_messages == 0
            || self.search_queries == 0
            || !(1..=9_999).contains(&self.search_partners)
        {
            bail!("--search-messages and --search-queries must be at least 1, --search-partners 1 to 9999");
        }
        if self.file_count == 0 || self.file_bytes == 0 || self.file_bytes > 1 << 32 {
            bail!("--file-count must be at least 1 and --file-bytes 1 to 4294967296");
        }
        if self.bridges.is_empty() || self.bridges.iter().any(|n| !(1..=8).contains(n)) {
            bail!("--bridges must be 1 to 8, comma-separated");
        }
        if self.cluster == 1 || self.cluster > 9 {
            bail!("--cluster must be 0 (off) or 2 to 9 nodes");
        }
        if self.tls_connections == 0 || self.tls_messages == 0 {
            bail!("--tls-connections and --tls-messages must be at least 1");
        }
        Ok(())
    }

    /// Whether the paced and saturated phases run on `storage`.
    pub(crate) fn on(&self, storage: Storage) -> bool {
        self.storage.contains(&storage)
    }

    /// Whether `phase` was selected.
    pub(crate) fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    /// The most connections open at once, in this process and in a server.
    pub(crate) fn peak_connections(&self) -> usize {
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
        if self.runs(Phase::Tls) {
            peak = peak.max(self.tls_connections + 1).max(2 * self.pairs + 1);
        }
        peak
    }
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
