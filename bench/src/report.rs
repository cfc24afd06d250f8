//! The figures of one run: a readable table, and JSON with fixed names.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use super::connections::Connections;
use super::e2e::{Messaging, RssSample};
use super::raw::Raw;
use super::{Options, Phase};

/// Targets of the issue (this 2-core machine, fsync durability).
const TARGET_RATIO: f64 = 0.25;
const TARGET_PACED_P99_MS: f64 = 10.0;
const TARGET_BYTES_PER_CONNECTION: f64 = 30.0 * 1024.0;
const TARGET_GROWTH_BYTES: u64 = 100 * 1000 * 1000;

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
    /// Storage durability of the servers.
    pub(crate) durability: String,
    /// The phases that ran.
    pub(crate) phases: Vec<String>,
    /// The machine.
    pub(crate) machine: Machine,
    /// /proc/loadavg at the end.
    pub(crate) loadavg_end: String,
    /// Wall time of the whole run.
    pub(crate) total_secs: f64,
}

impl Report {
    /// Collects the phases' results.
    pub(crate) fn new(
        options: &Options,
        machine: Machine,
        raw: &Raw,
        messaging: &Messaging,
        connections: &Connections,
        elapsed: Duration,
    ) -> Self {
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
            durability: options.durability.as_str().to_owned(),
            phases: options
                .phases
                .iter()
                .map(|p| format!("{p:?}").to_lowercase())
                .collect(),
            machine,
            loadavg_end: loadavg(),
            total_secs: elapsed.as_secs_f64(),
        }
    }

    fn ran(&self, phase: Phase) -> bool {
        self.phases.contains(&format!("{phase:?}").to_lowercase())
    }

    /// The readable table.
    pub(crate) fn table(&self) -> String {
        let mut rows: Vec<(String, String, String)> = Vec::new();
        let mut row = |name: &str, value: String, target: String| {
            rows.push((name.to_owned(), value, target));
        };
        let verdict =
            |ok: bool, goal: &str| format!("{goal} {}", if ok { "met" } else { "MISSED" });
        let lat4 = |a: f64, b: f64, c: f64, d: f64| format!("{a:.2} / {b:.2} / {c:.2} / {d:.2}");
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
        let skipped = || "skipped".to_owned();
        let none = String::new;

        if self.ran(Phase::Raw) {
            row(
                "raw broker, msgs/s",
                format!("{:.0}", self.raw_msgs_per_s),
                none(),
            );
            row(
                "raw paced p50 / p99 ms",
                format!(
                    "{:.3} / {:.3}",
                    self.raw_paced_p50_ms, self.raw_paced_p99_ms
                ),
                none(),
            );
            row(
                "raw CPU us/msg: server / load generator",
                format!(
                    "{:.1} / {:.1}",
                    self.raw_server_cpu_us_per_msg, self.raw_bench_cpu_us_per_msg
                ),
                none(),
            );
        } else {
            row("raw broker", skipped(), none());
        }
        if self.ran(Phase::Saturated) {
            row(
                "e2e saturated, msgs/s",
                format!("{:.0}", self.e2e_msgs_per_s),
                none(),
            );
            let ratio = if self.ran(Phase::Raw) {
                verdict(self.e2e_ratio >= TARGET_RATIO, ">= 0.25")
            } else {
                none()
            };
            row("e2e / raw", format!("{:.3}", self.e2e_ratio), ratio);
            row(
                "e2e CPU us/msg: server / load generator",
                format!(
                    "{:.1} / {:.1}",
                    self.e2e_server_cpu_us_per_msg, self.e2e_bench_cpu_us_per_msg
                ),
                none(),
            );
            row(
                "ack p50 / p90 / p99 / max ms",
                lat4(
                    self.ack_p50_ms,
                    self.ack_p90_ms,
                    self.ack_p99_ms,
                    self.ack_max_ms,
                ),
                none(),
            );
            row(
                "delivery p50 / p90 / p99 / max ms",
                lat4(
                    self.delivery_p50_ms,
                    self.delivery_p90_ms,
                    self.delivery_p99_ms,
                    self.delivery_max_ms,
                ),
                none(),
            );
            row(
                &format!("RSS after {} msgs", self.baseline_messages),
                mib(self.rss_baseline_bytes),
                none(),
            );
            row(
                &format!("RSS after {} msgs", self.e2e_messages),
                mib(self.rss_end_bytes),
                none(),
            );
            row(
                "RSS growth",
                mib(self.rss_growth_bytes),
                verdict(self.rss_growth_bytes < TARGET_GROWTH_BYTES, "< 100 MB"),
            );
        } else {
            row("e2e saturated", skipped(), none());
        }
        if self.ran(Phase::Paced) {
            row(
                &format!(
                    "e2e paced {:.0} msg/s: delivery p50 / p99 ms",
                    self.paced_rate
                ),
                format!(
                    "{:.2} / {:.2}",
                    self.paced_delivery_p50_ms, self.paced_delivery_p99_ms
                ),
                verdict(
                    self.paced_delivery_p99_ms < TARGET_PACED_P99_MS,
                    "p99 < 10 ms",
                ),
            );
            row(
                "e2e paced: ack p50 / p99 ms",
                format!(
                    "{:.2} / {:.2}",
                    self.paced_ack_p50_ms, self.paced_ack_p99_ms
                ),
                none(),
            );
        } else {
            row("e2e paced", skipped(), none());
        }
        if self.ran(Phase::Groups) {
            row(
                &format!(
                    "group of {}: delivery p50 / p99 / max ms",
                    self.group_members
                ),
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    self.group_delivery_p50_ms,
                    self.group_delivery_p99_ms,
                    self.group_delivery_max_ms
                ),
                none(),
            );
        } else {
            row("groups", skipped(), none());
        }
        if self.ran(Phase::Connections) {
            row("idle connections", self.connections.to_string(), none());
            row(
                "server RSS per connection",
                format!("{:.0} B", self.rss_bytes_per_connection),
                verdict(
                    self.rss_bytes_per_connection < TARGET_BYTES_PER_CONNECTION,
                    "< 30 KiB",
                ),
            );
            row(
                "connect all, s",
                format!("{:.2}", self.connect_secs),
                none(),
            );
            row(
                "restart: listening / all reconnected, s",
                format!(
                    "{:.2} / {:.2}",
                    self.restart_listen_secs, self.reconnect_secs
                ),
                none(),
            );
        } else {
            row("connections", skipped(), none());
        }

        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let value_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "messenger bench: durability {}, {} CPUs ({}), load {} -> {}, {:.0} s",
            self.durability,
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.loadavg_start,
            self.loadavg_end,
            self.total_secs
        );
        for (name, value, target) in rows {
            let _ = writeln!(out, "  {name:<width$}  {value:>value_width$}  {target}");
        }
        out
    }
}
