//! The readable table: a heading line, then one row per figure, phase by phase,
//! with the targets marked met or missed.

use std::fmt::Write;

use super::Report;
use crate::options::Phase;

/// Targets of the issue (this 2-core machine, fsync durability).
const TARGET_RATIO: f64 = 0.25;
const TARGET_PACED_P99_MS: f64 = 10.0;
const TARGET_BYTES_PER_CONNECTION: f64 = 30.0 * 1024.0;
const TARGET_GROWTH_BYTES: u64 = 100 * 1000 * 1000;
const TARGET_SEARCH_P99_MS: f64 = 50.0;

impl Report {
    /// Whether `phase` ran.
    fn ran(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    /// The readable table: a heading line, then one row per figure, phase by phase.
    pub(crate) fn table(&self) -> String {
        let rows = [
            self.raw_rows(),
            self.saturated_rows(),
            self.paced_rows(),
            self.group_rows(),
            self.connection_rows(),
            self.search_rows(),
            self.file_rows(),
            self.tls_rows(),
            self.postgres_rows(),
            self.cluster_rows(),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
        render(&self.heading(), &rows)
    }

    /// Durability, machine, load and wall time of the run.
    fn heading(&self) -> String {
        format!(
            "messenger bench: durability {}, {} CPUs ({}), load {} -> {}, {:.0} s",
            self.durability.as_str(),
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.loadavg_start,
            self.loadavg_end,
            self.total_secs
        )
    }

    /// The bare broker: throughput, paced latency, CPU per message.
    fn raw_rows(&self) -> Vec<Row> {
        if !self.ran(Phase::Raw) {
            return vec![Row::skipped("raw broker")];
        }
        vec![
            Row::new("raw broker, msgs/s", format!("{:.0}", self.raw_msgs_per_s)),
            Row::new(
                "raw paced p50 / p99 ms",
                format!(
                    "{:.3} / {:.3}",
                    self.raw_paced_p50_ms, self.raw_paced_p99_ms
                ),
            ),
            Row::new(
                "raw CPU us/msg: server / load generator",
                format!(
                    "{:.1} / {:.1}",
                    self.raw_server_cpu_us_per_msg, self.raw_bench_cpu_us_per_msg
                ),
            ),
        ]
    }

    /// The saturated long run: throughput against raw, CPU, latencies, memory growth.
    fn saturated_rows(&self) -> Vec<Row> {
        if !self.ran(Phase::Saturated) {
            return vec![Row::skipped("e2e saturated")];
        }
        if !self.on_sqlite {
            return vec![Row::skipped("e2e saturated on SQLite")];
        }
        let ratio = Row::new("e2e / raw", format!("{:.3}", self.e2e_ratio));
        let ratio = if self.ran(Phase::Raw) {
            ratio.against(self.e2e_ratio >= TARGET_RATIO, ">= 0.25")
        } else {
            ratio
        };
        vec![
            Row::new(
                "e2e saturated, msgs/s",
                format!("{:.0}", self.e2e_msgs_per_s),
            ),
            ratio,
            Row::new(
                "e2e CPU us/msg: server / load generator",
                format!(
                    "{:.1} / {:.1}",
                    self.e2e_server_cpu_us_per_msg, self.e2e_bench_cpu_us_per_msg
                ),
            ),
            Row::new(
                "ack p50 / p90 / p99 / max ms",
                latencies(&[
                    self.ack_p50_ms,
                    self.ack_p90_ms,
                    self.ack_p99_ms,
                    self.ack_max_ms,
                ]),
            ),
            Row::new(
                "delivery p50 / p90 / p99 / max ms",
                latencies(&[
                    self.delivery_p50_ms,
                    self.delivery_p90_ms,
                    self.delivery_p99_ms,
                    self.delivery_max_ms,
                ]),
            ),
            Row::new(
                format!("RSS after {} msgs", self.baseline_messages),
                mib(self.rss_baseline_bytes),
            ),
            Row::new(
                format!("RSS after {} msgs", self.e2e_messages),
                mib(self.rss_end_bytes),
            ),
            Row::new("RSS growth", mib(self.rss_growth_bytes))
                .against(self.rss_growth_bytes < TARGET_GROWTH_BYTES, "< 100 MB"),
        ]
    }

    /// E2E on PostgreSQL, per number of bridges (nothing unless `--storage postgres`).
    fn postgres_rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for run in &self.postgres {
            let on = format!("postgres, {} bridge(s)", run.bridges);
            if !self.ran(Phase::Saturated) {
                rows.push(Row::skipped(&format!("{on}: e2e saturated")));
            } else {
                // Against SQLite only when SQLite's saturated run took place.
                rows.push(if run.of_sqlite > 0.0 {
                    Row::new(
                        format!("{on}: e2e msgs/s (of SQLite's)"),
                        format!("{:.0} ({:.0}%)", run.msgs_per_s, run.of_sqlite * 100.0),
                    )
                    .against(run.of_sqlite >= 0.5, ">= 50% of SQLite")
                } else {
                    Row::new(
                        format!("{on}: e2e msgs/s"),
                        format!("{:.0}", run.msgs_per_s),
                    )
                });
                rows.push(Row::new(
                    format!("{on}: ack p50 / p99, delivery p50 / p99 ms"),
                    latencies(&[
                        run.ack_p50_ms,
                        run.ack_p99_ms,
                        run.delivery_p50_ms,
                        run.delivery_p99_ms,
                    ]),
                ));
                rows.push(Row::new(
                    format!("{on}: CPU us/msg (broker + bridges + PostgreSQL)"),
                    format!("{:.1}", run.server_cpu_us_per_msg),
                ));
            }
            if !self.ran(Phase::Paced) {
                rows.push(Row::skipped(&format!("{on}: paced")));
                continue;
            }
            rows.push(
                Row::new(
                    format!(
                        "{on}: paced {:.0} msg/s delivery p50 / p99 ms",
                        self.paced_rate
                    ),
                    latencies(&[run.paced_delivery_p50_ms, run.paced_delivery_p99_ms]),
                )
                .against(run.paced_delivery_p99_ms < 20.0, "p99 < 20 ms"),
            );
        }
        rows
    }

    /// E2E on a NATS cluster (nothing unless `--cluster N`): sender and
    /// recipient on different nodes.
    fn cluster_rows(&self) -> Vec<Row> {
        let Some(cluster) = &self.cluster else {
            return Vec::new();
        };
        let run = &cluster.figures;
        let on = format!("cluster, {} nodes", cluster.nodes);
        let mut rows = Vec::new();
        if self.ran(Phase::Saturated) {
            rows.push(Row::new(
                format!("{on}: e2e msgs/s"),
                format!("{:.0}", run.msgs_per_s),
            ));
            rows.push(Row::new(
                format!("{on}: ack p50 / p99, delivery p50 / p99 ms"),
                latencies(&[
                    run.ack_p50_ms,
                    run.ack_p99_ms,
                    run.delivery_p50_ms,
                    run.delivery_p99_ms,
                ]),
            ));
            let parts = cluster
                .cpu_us_per_msg_by_part
                .iter()
                .map(|(part, us)| format!("{part} {us:.1}"))
                .collect::<Vec<_>>()
                .join(", ");
            rows.push(Row::new(
                format!("{on}: CPU us/msg ({:.1} in all)", run.server_cpu_us_per_msg),
                parts,
            ));
        } else {
            rows.push(Row::skipped(&format!("{on}: e2e saturated")));
        }
        if self.ran(Phase::Paced) {
            rows.push(
                Row::new(
                    format!(
                        "{on}: paced {:.0} msg/s delivery p50 / p99 ms",
                        self.paced_rate
                    ),
                    latencies(&[run.paced_delivery_p50_ms, run.paced_delivery_p99_ms]),
                )
                .against(run.paced_delivery_p99_ms < 50.0, "p99 < 50 ms"),
            );
        } else {
            rows.push(Row::skipped(&format!("{on}: paced")));
        }
        rows
    }

    /// The paced run: delivery and ack latencies at a fixed rate.
    fn paced_rows(&self) -> Vec<Row> {
        if !self.ran(Phase::Paced) {
            return vec![Row::skipped("e2e paced")];
        }
        if !self.on_sqlite {
            return vec![Row::skipped("e2e paced on SQLite")];
        }
        vec![
            Row::new(
                format!(
                    "e2e paced {:.0} msg/s: delivery p50 / p99 ms",
                    self.paced_rate
                ),
                latencies(&[self.paced_delivery_p50_ms, self.paced_delivery_p99_ms]),
            )
            .against(
                self.paced_delivery_p99_ms < TARGET_PACED_P99_MS,
                "p99 < 10 ms",
            ),
            Row::new(
                "e2e paced: ack p50 / p99 ms",
                latencies(&[self.paced_ack_p50_ms, self.paced_ack_p99_ms]),
            ),
        ]
    }

    /// The big group's fan-out latencies.
    fn group_rows(&self) -> Vec<Row> {
        if !self.ran(Phase::Groups) {
            return vec![Row::skipped("groups")];
        }
        vec![Row::new(
            format!(
                "group of {}: delivery p50 / p99 / max ms",
                self.group_members
            ),
            latencies(&[
                self.group_delivery_p50_ms,
                self.group_delivery_p99_ms,
                self.group_delivery_max_ms,
            ]),
        )]
    }

    /// Idle connections: memory per connection, connect and reconnect times.
    fn connection_rows(&self) -> Vec<Row> {
        if !self.ran(Phase::Connections) {
            return vec![Row::skipped("connections")];
        }
        vec![
            Row::new("idle connections", self.connections.to_string()),
            Row::new(
                "server RSS per connection",
                format!("{:.0} B", self.rss_bytes_per_connection),
            )
            .against(
                self.rss_bytes_per_connection < TARGET_BYTES_PER_CONNECTION,
                "< 30 KiB",
            ),
            Row::new("connect all, s", format!("{:.2}", self.connect_secs)),
            Row::new(
                "restart: listening / all reconnected, s",
                format!(
                    "{:.2} / {:.2}",
                    self.restart_listen_secs, self.reconnect_secs
                ),
            ),
        ]
    }
}

impl Report {
    /// Search latency over the seeded readable set.
    fn search_rows(&self) -> Vec<Row> {
        if !self.ran(Phase::Search) {
            return vec![Row::skipped("search")];
        }
        vec![
            Row::new(
                "search: messages readable / seeded in s",
                format!("{} / {:.1}", self.search_messages, self.search_seed_secs),
            ),
            Row::new(
                "search p50 / p99 ms",
                format!("{:.2} / {:.2}", self.search_p50_ms, self.search_p99_ms),
            )
            .against(self.search_p99_ms < TARGET_SEARCH_P99_MS, "p99 < 50 ms"),
            Row::new(
                "search p99 ms: one word / two / absent",
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    self.search_one_word_p99_ms,
                    self.search_two_words_p99_ms,
                    self.search_absent_p99_ms
                ),
            ),
        ]
    }

    /// Upload and download throughput.
    fn file_rows(&self) -> Vec<Row> {
        if !self.ran(Phase::Files) {
            return vec![Row::skipped("files")];
        }
        vec![
            Row::new(
                "files: count x bytes",
                format!("{} x {}", self.file_count, self.file_bytes),
            ),
            Row::new(
                "upload / download MiB/s",
                format!(
                    "{:.1} / {:.1}",
                    self.upload_mib_per_s, self.download_mib_per_s
                ),
            ),
            Row::new(
                "one upload / download p99 ms",
                format!("{:.1} / {:.1}", self.upload_p99_ms, self.download_p99_ms),
            ),
        ]
    }

    /// MQTT over TLS beside plain MQTT.
    fn tls_rows(&self) -> Vec<Row> {
        if !self.ran(Phase::Tls) {
            return vec![Row::skipped("tls")];
        }
        vec![
            Row::new(
                format!(
                    "connect {} devices, per s: plain / tls",
                    self.tls_connections
                ),
                format!(
                    "{:.0} / {:.0}",
                    self.plain_connects_per_s, self.tls_connects_per_s
                ),
            ),
            Row::new(
                "server RSS per idle connection: plain / tls",
                format!(
                    "{:.0} B / {:.0} B",
                    self.plain_rss_bytes_per_connection, self.tls_rss_bytes_per_connection
                ),
            ),
            Row::new(
                format!("e2e {} msgs, msgs/s: plain / tls", self.tls_e2e_messages),
                format!(
                    "{:.0} / {:.0}",
                    self.plain_e2e_msgs_per_s, self.tls_e2e_msgs_per_s
                ),
            ),
            Row::new(
                "e2e server CPU us/msg: plain / tls",
                format!(
                    "{:.1} / {:.1}",
                    self.plain_server_cpu_us_per_msg, self.tls_server_cpu_us_per_msg
                ),
            ),
        ]
    }
}

/// One line of the table: what, the figure, and the target's verdict if it has one.
struct Row {
    name: String,
    value: String,
    target: String,
}

impl Row {
    fn new(name: impl Into<String>, value: String) -> Self {
        Self {
            name: name.into(),
            value,
            target: String::new(),
        }
    }

    /// A phase that did not run.
    fn skipped(name: &str) -> Self {
        Self::new(name, "skipped".to_owned())
    }

    /// The target `goal`, met or missed.
    fn against(self, met: bool, goal: &str) -> Self {
        let verdict = if met { "met" } else { "MISSED" };
        Self {
            target: format!("{goal} {verdict}"),
            ..self
        }
    }
}

/// The heading, then the rows with names left-aligned and values right-aligned in columns.
fn render(heading: &str, rows: &[Row]) -> String {
    let name_width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|r| r.value.len()).max().unwrap_or(0);
    let mut out = format!("{heading}\n");
    for Row {
        name,
        value,
        target,
    } in rows
    {
        let _ = writeln!(
            out,
            "  {name:<name_width$}  {value:>value_width$}  {target}"
        );
    }
    out
}

/// Milliseconds to two decimals, separated by " / ".
fn latencies(ms: &[f64]) -> String {
    ms.iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Bytes as MiB to one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::empty_report;

    #[test]
    fn the_table_names_skipped_phases() {
        let table = empty_report("raw,connections").table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("messenger bench: durability fsync, "));
        for skipped in ["e2e saturated", "e2e paced", "groups"] {
            assert!(
                lines
                    .iter()
                    .any(|l| l.trim_start().starts_with(skipped) && l.contains("skipped")),
                "{table}"
            );
        }
        assert!(table.contains("raw broker, msgs/s"), "{table}");
        assert!(table.contains("< 30 KiB met"), "{table}");
    }

    #[test]
    fn rows_are_rendered_in_columns() {
        let rows = [
            Row::new("a", "1".to_owned()),
            Row::new("long name", "1234".to_owned()).against(true, "< 2"),
            Row::new("b", "5".to_owned()).against(false, "> 9"),
        ];
        assert_eq!(
            render("heading", &rows),
            "heading\n  a             1  \n  long name  1234  < 2 met\n  b             5  > 9 MISSED\n"
        );
    }
}
