//! The figures of one run, collected from the phases' results: JSON with fixed
//! names (this file) and a readable table (`table`).

mod table;

use std::time::Duration;

use serde::Serialize;

use crate::connections::Connections;
use crate::e2e::{Messaging, RssSample};
use crate::files::Files;
use crate::options::{Durability, Options, Phase, Storage};
use crate::raw::Raw;
use crate::search::Search;
use crate::tls::TlsComparison;

/// The machine the run was on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    /// Logical CPUs.
    pub(crate) cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub(crate) cpu_model: String,
    /// `MemTotal` from /proc/meminfo.
    pub(crate) mem_total_bytes: u64,
    /// /proc/loadavg when the run started.
    pub(crate) loadavg_start: String,
}

impl Machine {
    /// Reads /proc.
    pub(crate) fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map_or_else(String::new, |(_, v)| v.trim().to_owned()),
            mem_total_bytes: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
                .map_or(0, |kib| kib * 1024),
            loadavg_start: loadavg(),
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every figure of a run. The first fields are the names the issue fixes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// Raw broker: messages per second, publishers -> one consumer.
    pub(crate) raw_msgs_per_s: f64,
    /// E2E saturated: messages delivered per second.
    pub(crate) e2e_msgs_per_s: f64,
    /// e2e / raw.
    pub(crate) e2e_ratio: f64,
    /// E2E saturated: send -> ack, median.
    pub(crate) ack_p50_ms: f64,
    /// E2E saturated: send -> ack, 99th percentile.
    pub(crate) ack_p99_ms: f64,
    /// E2E saturated: send -> partner's inbox, median.
    pub(crate) delivery_p50_ms: f64,
    /// E2E saturated: send -> partner's inbox, 99th percentile.
    pub(crate) delivery_p99_ms: f64,
    /// E2E paced: messages per second.
    pub(crate) paced_rate: f64,
    /// E2E paced: send -> partner's inbox, median.
    pub(crate) paced_delivery_p50_ms: f64,
    /// E2E paced: send -> partner's inbox, 99th percentile.
    pub(crate) paced_delivery_p99_ms: f64,
    /// Group: send -> each other member's inbox, 99th percentile.
    pub(crate) group_delivery_p99_ms: f64,
    /// Idle devices connected with presence.
    pub(crate) connections: usize,
    /// Server memory per connected device.
    pub(crate) rss_bytes_per_connection: f64,
    /// Server memory after the long run minus after its first `baseline_messages` (0 if it shrank).
    pub(crate) rss_growth_bytes: u64,

    /// Raw: publishing devices.
    pub(crate) raw_publishers: usize,
    /// Raw paced (at `paced_rate`): publish -> consumer, median.
    pub(crate) raw_paced_p50_ms: f64,
    /// Raw paced: 99th percentile.
    pub(crate) raw_paced_p99_ms: f64,
    /// Raw saturated: the broker's CPU time per message, microseconds.
    pub(crate) raw_server_cpu_us_per_msg: f64,
    /// Raw saturated: the load generator's CPU time per message, microseconds.
    pub(crate) raw_bench_cpu_us_per_msg: f64,
    /// E2E saturated: the server's CPU time per message, microseconds.
    pub(crate) e2e_server_cpu_us_per_msg: f64,
    /// E2E saturated: the load generator's CPU time per message, microseconds.
    pub(crate) e2e_bench_cpu_us_per_msg: f64,
    /// E2E: 1-1 pairs.
    pub(crate) pairs: usize,
    /// E2E saturated: unacknowledged sends per device.
    pub(crate) window: usize,
    /// E2E saturated: messages in the long run.
    pub(crate) e2e_messages: u64,
    /// E2E saturated: wall time of the long run.
    pub(crate) e2e_run_secs: f64,
    /// E2E saturated: `error` replies.
    pub(crate) e2e_errors: u64,
    /// E2E saturated: ack 90th percentile.
    pub(crate) ack_p90_ms: f64,
    /// E2E saturated: slowest ack.
    pub(crate) ack_max_ms: f64,
    /// E2E saturated: delivery 90th percentile.
    pub(crate) delivery_p90_ms: f64,
    /// E2E saturated: slowest delivery.
    pub(crate) delivery_max_ms: f64,
    /// E2E paced: messages sent.
    pub(crate) paced_messages: u64,
    /// E2E paced: send -> ack, median.
    pub(crate) paced_ack_p50_ms: f64,
    /// E2E paced: send -> ack, 99th percentile.
    pub(crate) paced_ack_p99_ms: f64,
    /// E2E paced: slowest delivery.
    pub(crate) paced_delivery_max_ms: f64,
    /// Group: members.
    pub(crate) group_members: usize,
    /// Group: messages sent, one at a time.
    pub(crate) group_messages: usize,
    /// Group: delivery median.
    pub(crate) group_delivery_p50_ms: f64,
    /// Group: slowest delivery.
    pub(crate) group_delivery_max_ms: f64,
    /// Group: send -> ack, median.
    pub(crate) group_ack_p50_ms: f64,
    /// Connections: seconds to connect them all.
    pub(crate) connect_secs: f64,
    /// Connections: server memory before.
    pub(crate) rss_before_connections_bytes: u64,
    /// Connections: server memory with all connected.
    pub(crate) rss_with_connections_bytes: u64,
    /// Restart: seconds from the kill until the new server listened.
    pub(crate) restart_listen_secs: f64,
    /// Restart: seconds from the kill until every device was back.
    pub(crate) reconnect_secs: f64,
    /// Restart: server memory once all were back.
    pub(crate) rss_reconnected_bytes: u64,
    /// Long run: messages before the baseline reading.
    pub(crate) baseline_messages: u64,
    /// Long run: server memory at the baseline.
    pub(crate) rss_baseline_bytes: u64,
    /// Long run: server memory at the end.
    pub(crate) rss_end_bytes: u64,
    /// Long run: server memory about every second.
    pub(crate) rss_series: Vec<RssSample>,
    /// Search: messages in the reader's readable set.
    pub(crate) search_messages: u64,
    /// Search: seconds to seed them through the store.
    pub(crate) search_seed_secs: f64,
    /// Search: request -> reply, every query, median.
    pub(crate) search_p50_ms: f64,
    /// Search: request -> reply, every query, 99th percentile.
    pub(crate) search_p99_ms: f64,
    /// Search: one common word, 99th percentile.
    pub(crate) search_one_word_p99_ms: f64,
    /// Search: two words that rarely meet, 99th percentile.
    pub(crate) search_two_words_p99_ms: f64,
    /// Search: a word found nowhere, 99th percentile.
    pub(crate) search_absent_p99_ms: f64,
    /// Files: bytes per file.
    pub(crate) file_bytes: u64,
    /// Files: files moved each way.
    pub(crate) file_count: usize,
    /// Files: upload throughput, MiB/s.
    pub(crate) upload_mib_per_s: f64,
    /// Files: download throughput, MiB/s.
    pub(crate) download_mib_per_s: f64,
    /// Files: one upload, 99th percentile.
    pub(crate) upload_p99_ms: f64,
    /// Files: one download, 99th percentile.
    pub(crate) download_p99_ms: f64,
    /// TLS phase: idle devices connected over each transport.
    pub(crate) tls_connections: usize,
    /// TLS phase: plain MQTT, devices connected per second.
    pub(crate) plain_connects_per_s: f64,
    /// TLS phase: MQTT over TLS, devices connected per second.
    pub(crate) tls_connects_per_s: f64,
    /// TLS phase: plain MQTT, server memory per idle connection.
    pub(crate) plain_rss_bytes_per_connection: f64,
    /// TLS phase: MQTT over TLS, server memory per idle connection.
    pub(crate) tls_rss_bytes_per_connection: f64,
    /// TLS phase: messages of each e2e run.
    pub(crate) tls_e2e_messages: u64,
    /// TLS phase: plain MQTT, e2e messages delivered per second.
    pub(crate) plain_e2e_msgs_per_s: f64,
    /// TLS phase: MQTT over TLS, e2e messages delivered per second.
    pub(crate) tls_e2e_msgs_per_s: f64,
    /// TLS phase: plain MQTT, the server's CPU time per message, microseconds.
    pub(crate) plain_server_cpu_us_per_msg: f64,
    /// TLS phase: MQTT over TLS, the server's CPU time per message, microseconds.
    pub(crate) tls_server_cpu_us_per_msg: f64,
    /// Storage durability of the servers.
    pub(crate) durability: Durability,
    /// The phases that ran.
    pub(crate) phases: Vec<Phase>,
    /// Whether the paced and saturated phases ran on SQLite (`--storage`).
    pub(crate) on_sqlite: bool,
    /// The machine.
    pub(crate) machine: Machine,
    /// /proc/loadavg at the end.
    pub(crate) loadavg_end: String,
    /// Wall time of the whole run.
    pub(crate) total_secs: f64,
    /// E2E on PostgreSQL (`--storage postgres`), one run per `--bridges` count.
    pub(crate) postgres: Vec<OnPostgres>,
    /// E2E on a NATS cluster (`--cluster N`), if it ran.
    pub(crate) cluster: Option<OnCluster>,
}

/// The paced and saturated e2e figures on a NATS cluster (one bridge,
/// PostgreSQL), each pair's devices on two different nodes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OnCluster {
    /// NATS nodes.
    pub(crate) nodes: usize,
    /// The figures, as on PostgreSQL (`bridges` is the cluster's bridges).
    pub(crate) figures: OnPostgres,
    /// Saturated: CPU time per message of each part (NATS, bridges, PostgreSQL), microseconds.
    pub(crate) cpu_us_per_msg_by_part: Vec<(String, f64)>,
}

/// The paced and saturated e2e figures on PostgreSQL with some number of bridges.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OnPostgres {
    /// Bridges sharing the database (`serve`'s and `messenger bridge` processes).
    pub(crate) bridges: usize,
    /// Saturated: messages delivered per second.
    pub(crate) msgs_per_s: f64,
    /// Saturated: `msgs_per_s` over SQLite's in the same run (0 if SQLite's did not run).
    pub(crate) of_sqlite: f64,
    /// Saturated: send -> ack, median and 99th percentile.
    pub(crate) ack_p50_ms: f64,
    /// See `ack_p50_ms`.
    pub(crate) ack_p99_ms: f64,
    /// Saturated: send -> partner's inbox, median and 99th percentile.
    pub(crate) delivery_p50_ms: f64,
    /// See `delivery_p50_ms`.
    pub(crate) delivery_p99_ms: f64,
    /// Saturated: `error` replies.
    pub(crate) errors: u64,
    /// Saturated: CPU time per message of the broker, the bridges and PostgreSQL, microseconds.
    pub(crate) server_cpu_us_per_msg: f64,
    /// Paced (at `paced_rate`): send -> partner's inbox, median and 99th percentile.
    pub(crate) paced_delivery_p50_ms: f64,
    /// See `paced_delivery_p50_ms`.
    pub(crate) paced_delivery_p99_ms: f64,
    /// Paced: send -> ack, 99th percentile.
    pub(crate) paced_ack_p99_ms: f64,
}

impl OnPostgres {
    /// The figures of one run with `bridges` bridges, beside SQLite's saturated `sqlite_msgs_per_s`.
    pub(crate) fn new(bridges: usize, run: &Messaging, sqlite_msgs_per_s: f64) -> Self {
        let (paced, sat) = (&run.paced, &run.saturated);
        Self {
            bridges,
            msgs_per_s: sat.msgs_per_s,
            of_sqlite: if sqlite_msgs_per_s > 0.0 {
                sat.msgs_per_s / sqlite_msgs_per_s
            } else {
                0.0
            },
            ack_p50_ms: sat.ack.p50_ms,
            ack_p99_ms: sat.ack.p99_ms,
            delivery_p50_ms: sat.delivery.p50_ms,
            delivery_p99_ms: sat.delivery.p99_ms,
            errors: sat.errors,
            server_cpu_us_per_msg: sat.server_cpu_us_per_msg,
            paced_delivery_p50_ms: paced.delivery.p50_ms,
            paced_delivery_p99_ms: paced.delivery.p99_ms,
            paced_ack_p99_ms: paced.ack.p99_ms,
        }
    }
}

/// The results of the phases added with files and search.
pub(crate) struct Extra<'a> {
    /// The search phase.
    pub(crate) search: &'a Search,
    /// The files phase.
    pub(crate) files: &'a Files,
    /// The TLS phase.
    pub(crate) tls: &'a TlsComparison,
    /// E2E on PostgreSQL, by bridges.
    pub(crate) postgres: &'a [(usize, Messaging)],
    /// E2E on a NATS cluster of so many nodes.
    pub(crate) cluster: Option<&'a (usize, Messaging)>,
}

impl Report {
    /// Collects the phases' results.
    pub(crate) fn new(
        options: &Options,
        machine: Machine,
        raw: &Raw,
        messaging: &Messaging,
        connections: &Connections,
        extra: &Extra<'_>,
        elapsed: Duration,
    ) -> Self {
        let (search, files, tls) = (extra.search, extra.files, extra.tls);
        let (paced, sat, group) = (&messaging.paced, &messaging.saturated, &messaging.group);
        let ratio = if raw.msgs_per_s > 0.0 {
            sat.msgs_per_s / raw.msgs_per_s
        } else {
            0.0
        };
        Self {
            raw_msgs_per_s: raw.msgs_per_s,
            e2e_msgs_per_s: sat.msgs_per_s,
            e2e_ratio: ratio,
            ack_p50_ms: sat.ack.p50_ms,
            ack_p99_ms: sat.ack.p99_ms,
            delivery_p50_ms: sat.delivery.p50_ms,
            delivery_p99_ms: sat.delivery.p99_ms,
            paced_rate: options.paced_rate,
            paced_delivery_p50_ms: paced.delivery.p50_ms,
            paced_delivery_p99_ms: paced.delivery.p99_ms,
            group_delivery_p99_ms: group.delivery.p99_ms,
            connections: connections.devices,
            rss_bytes_per_connection: connections.rss_bytes_per_connection,
            rss_growth_bytes: sat.rss_end_bytes.saturating_sub(sat.rss_baseline_bytes),
            raw_publishers: options.raw_publishers,
            raw_paced_p50_ms: raw.paced.p50_ms,
            raw_paced_p99_ms: raw.paced.p99_ms,
            raw_server_cpu_us_per_msg: raw.server_cpu_us_per_msg,
            raw_bench_cpu_us_per_msg: raw.bench_cpu_us_per_msg,
            e2e_server_cpu_us_per_msg: sat.server_cpu_us_per_msg,
            e2e_bench_cpu_us_per_msg: sat.bench_cpu_us_per_msg,
            pairs: options.pairs,
            window: options.window,
            e2e_messages: sat.messages,
            e2e_run_secs: sat.secs,
            e2e_errors: sat.errors,
            ack_p90_ms: sat.ack.p90_ms,
            ack_max_ms: sat.ack.max_ms,
            delivery_p90_ms: sat.delivery.p90_ms,
            delivery_max_ms: sat.delivery.max_ms,
            paced_messages: paced.messages,
            paced_ack_p50_ms: paced.ack.p50_ms,
            paced_ack_p99_ms: paced.ack.p99_ms,
            paced_delivery_max_ms: paced.delivery.max_ms,
            group_members: group.members,
            group_messages: group.messages,
            group_delivery_p50_ms: group.delivery.p50_ms,
            group_delivery_max_ms: group.delivery.max_ms,
            group_ack_p50_ms: group.ack.p50_ms,
            connect_secs: connections.connect_secs,
            rss_before_connections_bytes: connections.rss_before_bytes,
            rss_with_connections_bytes: connections.rss_after_bytes,
            restart_listen_secs: connections.restart_listen_secs,
            reconnect_secs: connections.reconnect_secs,
            rss_reconnected_bytes: connections.rss_reconnected_bytes,
            baseline_messages: options.baseline_messages,
            rss_baseline_bytes: sat.rss_baseline_bytes,
            rss_end_bytes: sat.rss_end_bytes,
            rss_series: sat.rss_series.clone(),
            search_messages: search.messages,
            search_seed_secs: search.seed_secs,
            search_p50_ms: search.all.p50_ms,
            search_p99_ms: search.all.p99_ms,
            search_one_word_p99_ms: search.one_word.p99_ms,
            search_two_words_p99_ms: search.two_words.p99_ms,
            search_absent_p99_ms: search.absent.p99_ms,
            file_bytes: files.file_bytes,
            file_count: files.count,
            upload_mib_per_s: files.upload_mib_per_s,
            download_mib_per_s: files.download_mib_per_s,
            upload_p99_ms: files.upload.p99_ms,
            download_p99_ms: files.download.p99_ms,
            tls_connections: tls.tls.devices,
            plain_connects_per_s: tls.plain.connects_per_s,
            tls_connects_per_s: tls.tls.connects_per_s,
            plain_rss_bytes_per_connection: tls.plain.rss_bytes_per_connection,
            tls_rss_bytes_per_connection: tls.tls.rss_bytes_per_connection,
            tls_e2e_messages: tls.tls.messages,
            plain_e2e_msgs_per_s: tls.plain.msgs_per_s,
            tls_e2e_msgs_per_s: tls.tls.msgs_per_s,
            plain_server_cpu_us_per_msg: tls.plain.server_cpu_us_per_msg,
            tls_server_cpu_us_per_msg: tls.tls.server_cpu_us_per_msg,
            durability: options.durability,
            phases: options.phases.clone(),
            on_sqlite: options.on(Storage::Sqlite),
            machine,
            loadavg_end: loadavg(),
            total_secs: elapsed.as_secs_f64(),
            postgres: extra
                .postgres
                .iter()
                .map(|(bridges, run)| OnPostgres::new(*bridges, run, sat.msgs_per_s))
                .collect(),
            cluster: extra.cluster.map(|(nodes, run)| OnCluster {
                nodes: *nodes,
                figures: OnPostgres::new(1, run, sat.msgs_per_s),
                cpu_us_per_msg_by_part: run
                    .saturated
                    .parts_cpu_us_per_msg
                    .iter()
                    .map(|(part, us)| ((*part).to_owned(), *us))
                    .collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::options::BenchArgs;

    /// `messenger bench`'s arguments alone.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    /// The report of a run of `phases` in which nothing was measured.
    pub(super) fn empty_report(phases: &str) -> Report {
        let cli = Cli::try_parse_from(["bench", "--quick", "--phases", phases]).unwrap();
        let options = Options::from_args(&cli.args).unwrap();
        Report::new(
            &options,
            Machine::read(),
            &Raw::default(),
            &Messaging::default(),
            &Connections::default(),
            &Extra {
                search: &Search::default(),
                files: &Files::default(),
                tls: &TlsComparison::default(),
                postgres: &[],
                cluster: None,
            },
            Duration::from_secs(1),
        )
    }

    #[test]
    fn the_json_names_phases_and_durability_in_lowercase() {
        let json = serde_json::to_value(empty_report("saturated,groups")).unwrap();
        assert_eq!(json["phases"], serde_json::json!(["saturated", "groups"]));
        assert_eq!(json["durability"], "fsync");
    }
}
