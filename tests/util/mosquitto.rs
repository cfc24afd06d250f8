//! A real Mosquitto broker on a free loopback port, with a generated password
//! file and the ACL that `messenger acl --format mosquitto` prints: the proof
//! that the bridge and devices need nothing of the embedded broker.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use tempfile::TempDir;

use super::{BRIDGE_PASSWORD, BRIDGE_USER, PATIENCE};

/// A running `mosquitto`, killed on drop.
pub(crate) struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

fn require(binary: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{binary} is not installed: `apt-get install mosquitto mosquitto-clients` (.ci/run does this)"
    );
}

/// A free port for Mosquitto (below the ephemeral range, see `free_addr`).
fn free_port() -> u16 {
    super::process::free_addr_below_ephemeral().port()
}

fn add_password(file: &Path, user: &str, password: &str, create: bool) {
    let mut cmd = Command::new("mosquitto_passwd");
    if create {
        cmd.arg("-c");
    }
    let status = cmd
        .arg("-b")
        .arg(file)
        .args([user, password])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run mosquitto_passwd");
    assert!(status.success(), "mosquitto_passwd failed for {user}");
}

impl Mosquitto {
    /// Starts Mosquitto with these users (and the bridge's service account).
    pub(crate) fn start(users: &[(&str, &str)]) -> Self {
        require("mosquitto");
        require("mosquitto_passwd");
        let dir = tempfile::tempdir().expect("temp dir");
        let passwords = dir.path().join("passwords");
        add_password(&passwords, BRIDGE_USER, BRIDGE_PASSWORD, true);
        for (user, password) in users {
            add_password(&passwords, user, password, false);
        }
        let acl = dir.path().join("acl");
        std::fs::write(&acl, messenger_protocol::acl::mosquitto_acl(BRIDGE_USER))
            .expect("write acl");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\n\
                 listener {port} 127.0.0.1\n\
                 allow_anonymous false\n\
                 password_file {}\n\
                 acl_file {}\n\
                 persistence false\n\
                 max_queued_messages 100000\n\
                 log_dest stderr\n\
                 log_type error\n",
                passwords.display(),
                acl.display()
            ),
        )
        .expect("write mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < PATIENCE,
                "mosquitto did not listen on {addr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Its MQTT address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
