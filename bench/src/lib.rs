//! `messenger bench`: drives simulated devices over real MQTT on loopback
//! against server child processes, and reports throughput, latency, connections
//! and memory in one run.
//!
//! The binary parses [`BenchArgs`] as its `bench` command, calls [`run`] and
//! prints the table. The tests use [`postgres::LocalPostgres`] too. This file only
//! coordinates: it resolves the options, runs the selected phases one after the
//! other, each against a fresh server in its own scratch directory, and hands
//! their results to the report.
//!
//! # Layout
//!
//! - `options`: the command line ([`BenchArgs`]), its defaults, the phases.
//! - `server`: the server under test, a child process of this same executable.
//! - `scratch`: the run's directories under the system's temp directory.
//! - [`postgres`]: a PostgreSQL server made for a run (`--storage postgres`).
//! - `cluster`: a NATS cluster made for a run (`--cluster N`).
//! - `seed`: users and device tokens written into a server's SQLite file.
//! - `devices`: simulated devices on rumqttc, and what they observe.
//! - `pacer`: sends at a fixed rate; `patience`: how long any wait may take.
//! - `stats`: latency samples and percentiles.
//! - `raw`, `e2e`, `groups`, `connections`, `search`, `files`, `tls`: the phases.
//! - `report`: the table and the JSON file.

mod cluster;
mod connections;
mod devices;
mod e2e;
mod files;
mod groups;
mod options;
mod pacer;
mod patience;
pub mod postgres;
mod raw;
mod report;
mod scratch;
mod search;
mod seed;
mod server;
mod stats;
mod tls;

use std::time::Instant;

use anyhow::{bail, Context};
use rand::RngCore;
use tracing::info;

pub use options::BenchArgs;

use options::{Options, Phase, Storage};
use report::Report;
use scratch::Scratch;
use server::{Role, ServerSpec};

/// Runs the benchmark, writes the JSON file if one was asked for, and returns
/// the readable table for the binary to print.
pub fn run(args: BenchArgs) -> anyhow::Result<String> {
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
    if let Some(path) = &options.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.table())
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
            durability: options.durability,
            service_password: hex::encode(password),
            max_connections: (options.peak_connections() + 100).max(20_000),
            env: options.server_env.clone(),
            tls: None,
            postgres: None,
            more_bridges: 0,
        })
    };
    let raw = if options.runs(Phase::Raw) {
        info!("raw: the bare broker");
        raw::run(options, spec("raw")?).await?
    } else {
        raw::Raw::default()
    };
    let one_to_one = options.on(Storage::Sqlite)
        && (options.runs(Phase::Paced) || options.runs(Phase::Saturated));
    let messaging = if one_to_one || options.runs(Phase::Groups) {
        info!("e2e: through the bridge");
        e2e::run(options, spec("messaging")?, one_to_one, true).await?
    } else {
        e2e::Messaging::default()
    };
    let mut on_postgres = Vec::new();
    if options.on(Storage::Postgres)
        && (options.runs(Phase::Paced) || options.runs(Phase::Saturated))
    {
        // `synchronous_commit` on (the default): a commit waits for its WAL on disk.
        let settings = [
            "synchronous_commit = on",
            "shared_buffers = 256MB",
            "max_wal_size = 4GB",
        ];
        let pg = tokio::task::block_in_place(|| {
            postgres::LocalPostgres::start(
                &scratch.dir("postgres")?,
                &hex::encode(password),
                &settings,
            )
        })?;
        for &bridges in &options.bridges {
            info!(bridges, "e2e on PostgreSQL");
            let url =
                tokio::task::block_in_place(|| pg.create_database(&format!("bench{bridges}")))?;
            let spec = ServerSpec {
                postgres: Some((url, pg.dir().to_owned())),
                more_bridges: bridges - 1,
                ..spec(&format!("postgres-{bridges}"))?
            };
            on_postgres.push((bridges, e2e::run(options, spec, true, false).await?));
        }
    }
    let on_cluster =
        if options.cluster > 0 && (options.runs(Phase::Paced) || options.runs(Phase::Saturated)) {
            info!(nodes = options.cluster, "e2e on a NATS cluster");
            let mut cluster = cluster::Cluster::start(
                &scratch.dir("cluster")?,
                options.cluster,
                1,
                &options.server_env,
            )
            .await?;
            let run = e2e::run_on_cluster(options, &cluster).await;
            cluster.stop().await?;
            Some((options.cluster, run?))
        } else {
            None
        };
    let connections = if options.runs(Phase::Connections) {
        info!(devices = options.connections, "connections");
        connections::run(options, spec("connections")?).await?
    } else {
        connections::Connections::default()
    };
    let search = if options.runs(Phase::Search) {
        info!(messages = options.search_messages, "search");
        search::run(options, spec("search")?).await?
    } else {
        search::Search::default()
    };
    let files = if options.runs(Phase::Files) {
        info!(
            files = options.file_count,
            bytes = options.file_bytes,
            "files"
        );
        files::run(options, spec("files")?).await?
    } else {
        files::Files::default()
    };
    let tls = if options.runs(Phase::Tls) {
        info!(
            devices = options.tls_connections,
            "tls: MQTT over TLS beside plain"
        );
        tls::run(options, spec("tls-plain")?, spec("tls")?).await?
    } else {
        tls::TlsComparison::default()
    };
    Ok(Report::new(
        options,
        machine,
        &raw,
        &messaging,
        &connections,
        &report::Extra {
            search: &search,
            files: &files,
            tls: &tls,
            postgres: &on_postgres,
            cluster: on_cluster.as_ref(),
        },
        started.elapsed(),
    ))
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
