//! Stock MQTT software: the clients `mosquitto_pub` and `mosquitto_sub` (Debian
//! package `mosquitto-clients`) and the Mosquitto broker (package `mosquitto`).
//! A missing binary fails the test, it never skips it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;

use super::process::Outcome;
use super::{ClientOptions, Transport, PATIENCE};

fn missing(bin: &str, err: &std::io::Error) -> ! {
    panic!(
        "cannot run {bin}: {err}. These tests need Mosquitto and its clients: \
         `apt-get install -y mosquitto mosquitto-clients` (.ci/run installs them), \
         and stdbuf (coreutils)"
    )
}

/// Fails the test with a clear message when `bin` is not installed.
fn require(bin: &str) {
    if let Err(err) = Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        missing(bin, &err);
    }
}

/// `bin` (`mosquitto_pub` or `mosquitto_sub`) speaking MQTT 3.1.1 to `addr`,
/// signing in with this client id, username and password.
pub(crate) fn command(
    bin: &str,
    addr: std::net::SocketAddr,
    (client_id, username, password): (&str, &str, &str),
) -> Command {
    require(bin);
    require("stdbuf");
    // Line-buffered, so a test sees each line (here: the SUBACK report) as it is printed.
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", bin])
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args([
            "-V", "mqttv311", "-i", client_id, "-u", username, "-P", password,
        ])
        .stdin(Stdio::null());
    cmd
}

/// Runs a stock client to completion (off the async workers).
pub(crate) async fn run(mut cmd: Command) -> Outcome {
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("running a stock client");
    Outcome {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running stock client whose output (stdout and stderr) is read line by line.
pub(crate) struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
}

fn forward(stream: impl Read + Send + 'static, tx: mpsc::UnboundedSender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
}

impl Running {
    /// Starts `cmd`.
    pub(crate) fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting a stock client");
        let (tx, lines) = mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            forward(out, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward(err, tx);
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the next output line that `pick` accepts; returns it.
    pub(crate) async fn line(&mut self, what: &str, pick: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if pick(&line) {
                        return line;
                    }
                }
                Ok(None) => panic!(
                    "output ended before {what}; output:\n{}",
                    self.seen.join("\n")
                ),
                Err(_) => panic!(
                    "no {what} within {PATIENCE:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Every line read so far.
    pub(crate) fn seen(&self) -> &[String] {
        &self.seen
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Mosquitto broker binary (in `/usr/sbin`, often not on a user's PATH).
fn mosquitto_bin() -> &'static str {
    const SBIN: &str = "/usr/sbin/mosquitto";
    if std::path::Path::new(SBIN).exists() {
        SBIN
    } else {
        "mosquitto"
    }
}

/// A Mosquitto broker on a free port, with an ACL file, a password file and no
/// anonymous access; killed when dropped.
pub(crate) struct Mosquitto {
    child: Child,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Where its log goes.
    log: PathBuf,
}

impl Mosquitto {
    /// Starts one in `dir` with this ACL file content and these (user, password) pairs.
    pub(crate) async fn start(dir: &Path, acl: &str, users: &[(&str, &str)]) -> Self {
        let passwd = dir.join("mosquitto.passwd");
        for (i, (user, password)) in users.iter().enumerate() {
            require("mosquitto_passwd");
            let mut cmd = Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            cmd.arg("-b").arg(&passwd).args([user, password]);
            let out = run(cmd).await;
            assert!(out.status.success(), "mosquitto_passwd: {out:#?}");
        }
        let acl_file = dir.join("mosquitto.acl");
        std::fs::write(&acl_file, acl).expect("write ACL file");
        let addr = super::process::free_addr();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} {}\nallow_anonymous false\npassword_file {}\nacl_file {}\n\
                 persistence false\nuser root\nlog_dest stderr\n",
                addr.port(),
                addr.ip(),
                passwd.display(),
                acl_file.display()
            ),
        )
        .expect("write mosquitto.conf");
        let log = dir.join("mosquitto.log");
        let bin = mosquitto_bin();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|err| missing(bin, &err));
        let mut broker = Self { child, addr, log };
        broker.wait_until_accepting().await;
        broker
    }

    async fn wait_until_accepting(&mut self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("mosquitto exited with {status}:\n{}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not accept on {} within {PATIENCE:?}:\n{}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What it has logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client signing in as `client_id` (`<user>:<device>`, the user part is the username).
    pub(crate) fn device(&self, client_id: &str, password: &str) -> ClientOptions {
        ClientOptions::new((self.addr, self.addr), Transport::Tcp, client_id, password)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
