//! A smoke run of `messenger bench --quick`: every figure is present and sane.
//! No timing is asserted: this only keeps the benchmark from rotting.

use std::process::Command;

/// The names the issue fixes for the JSON file.
const FIGURES: &[&str] = &[
    "raw_msgs_per_s",
    "e2e_msgs_per_s",
    "e2e_ratio",
    "ack_p50_ms",
    "ack_p99_ms",
    "delivery_p50_ms",
    "delivery_p99_ms",
    "paced_rate",
    "paced_delivery_p50_ms",
    "paced_delivery_p99_ms",
    "group_delivery_p99_ms",
    "connections",
    "rss_bytes_per_connection",
    "rss_growth_bytes",
    "search_p50_ms",
    "search_p99_ms",
    "upload_mib_per_s",
    "download_mib_per_s",
    "plain_connects_per_s",
    "tls_connects_per_s",
    "plain_rss_bytes_per_connection",
    "tls_rss_bytes_per_connection",
    "plain_e2e_msgs_per_s",
    "tls_e2e_msgs_per_s",
];

/// Figures that count something the quick run certainly did.
const COUNTS: &[&str] = &[
    "raw_msgs_per_s",
    "e2e_msgs_per_s",
    "e2e_ratio",
    "paced_rate",
    "connections",
    "search_messages",
    "search_p99_ms",
    "upload_mib_per_s",
    "download_mib_per_s",
    "tls_connections",
    "plain_connects_per_s",
    "tls_connects_per_s",
    "plain_e2e_msgs_per_s",
    "tls_e2e_msgs_per_s",
];

#[test]
fn quick_bench_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_messenger"))
        .args(["bench", "--quick", "--json"])
        .arg(&json)
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "bench failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("e2e / raw"), "{table}");
    assert!(table.contains("msgs/s: plain / tls"), "{table}");

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for name in FIGURES {
        let value = report[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{name} missing or not a number in {report}"));
        assert!(value.is_finite() && value >= 0.0, "{name} = {value}");
    }
    for name in COUNTS {
        assert!(report[name].as_f64().unwrap() > 0.0, "{name} is 0");
    }
    assert!(report["ack_p99_ms"].as_f64().unwrap() >= report["ack_p50_ms"].as_f64().unwrap());
    assert!(report["group_delivery_p99_ms"].as_f64().unwrap() > 0.0);
}

/// `--storage postgres --bridges 1,3` makes its own PostgreSQL and reports, for
/// each number of bridges, every e2e figure (nothing but PostgreSQL ran: the
/// SQLite rows say skipped, with no verdict).
#[test]
fn quick_bench_on_postgres_reports_each_bridge_count() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_messenger"))
        .args([
            "bench",
            "--quick",
            "--phases",
            "paced,saturated",
            "--storage",
            "postgres",
            "--bridges",
            "1,3",
            "--json",
        ])
        .arg(&json)
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {table}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for skipped in ["e2e saturated on SQLite", "e2e paced on SQLite"] {
        let row = table
            .lines()
            .find(|line| line.trim_start().starts_with(skipped))
            .unwrap_or_else(|| panic!("no row {skipped:?} in {table}"));
        assert!(row.contains("skipped"), "{row}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let runs = report["postgres"].as_array().expect("postgres runs");
    let bridges: Vec<u64> = runs
        .iter()
        .map(|r| r["bridges"].as_u64().unwrap())
        .collect();
    assert_eq!(bridges, [1, 3], "{report}");
    for run in runs {
        for name in [
            "msgs_per_s",
            "ack_p99_ms",
            "delivery_p99_ms",
            "server_cpu_us_per_msg",
            "paced_delivery_p99_ms",
            "paced_ack_p99_ms",
        ] {
            let value = run[name].as_f64().unwrap_or(0.0);
            assert!(
                value.is_finite() && value > 0.0,
                "{name} = {value} in {run}"
            );
        }
        assert_eq!(run["errors"].as_u64(), Some(0), "{run}");
        // No SQLite run to compare with.
        assert_eq!(run["of_sqlite"].as_f64(), Some(0.0), "{run}");
    }
    assert_eq!(report["on_sqlite"], false);
}

/// `--cluster 3` runs the e2e phases on a NATS cluster too (`messenger cluster
/// up`), beside the single node, and reports its figures with the CPU of each
/// part; a single node of the cluster is refused.
#[test]
fn quick_bench_on_a_cluster_reports_its_figures_by_part() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_messenger"))
        .args(["bench", "--quick", "--phases", "paced,saturated"])
        .args(["--cluster", "3", "--json"])
        .arg(&json)
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {table}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(table.contains("cluster, 3 nodes: e2e msgs/s"), "{table}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let cluster = &report["cluster"];
    assert_eq!(cluster["nodes"], 3, "{report}");
    for name in ["msgs_per_s", "delivery_p99_ms", "paced_delivery_p99_ms"] {
        let value = cluster["figures"][name].as_f64().unwrap_or(0.0);
        assert!(value > 0.0, "cluster {name} = {value}");
    }
    let parts: Vec<&str> = cluster["cpu_us_per_msg_by_part"]
        .as_array()
        .expect("parts")
        .iter()
        .map(|p| p[0].as_str().unwrap_or_default())
        .collect();
    assert_eq!(parts, ["NATS", "bridges", "PostgreSQL"], "{report}");

    let refused = Command::new(env!("CARGO_BIN_EXE_messenger"))
        .args(["bench", "--quick", "--cluster", "1"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--cluster must be"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
