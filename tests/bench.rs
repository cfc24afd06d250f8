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
