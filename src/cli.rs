//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// An instant messenger on MQTT.
#[derive(Debug, Parser)]
#[command(name = "messenger", version)]
pub(crate) struct Cli {
    /// Configuration file (default: config/messenger.toml when present).
    #[arg(long, global = true)]
    pub(crate) config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Broker and bridge in one process, on the configured (embedded) defaults.
    Serve,
    /// The embedded broker alone.
    Broker,
    /// The bridge alone, against any MQTT 3.1.1 broker (`bridge.broker`).
    Bridge,
    /// Manage accounts (works while the server runs).
    #[command(subcommand)]
    User(UserCommand),
    /// Print the topic ACL for a standard broker.
    Acl {
        /// The broker's ACL format.
        #[arg(long, value_enum, default_value_t = AclFormat::Mosquitto)]
        format: AclFormat,
    },
    /// Measure throughput, latency, connections and memory against a server child process.
    Bench(Box<crate::bench::BenchArgs>),
}

/// ACL file formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum AclFormat {
    /// Mosquitto `acl_file` with `pattern` lines.
    Mosquitto,
}

/// Account commands.
#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Create a user.
    Add {
        /// User id.
        name: String,
        /// Password.
        #[arg(long, env = "MESSENGER_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Change a user's password (signs out their devices).
    Passwd {
        /// User id.
        name: String,
        /// New password.
        #[arg(long, env = "MESSENGER_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Delete a user (signs out their devices).
    Remove {
        /// User id.
        name: String,
    },
    /// List users.
    List,
    /// Issue a device token, usable as that device's MQTT password.
    Token {
        /// User id.
        name: String,
        /// Device id.
        #[arg(long)]
        device: String,
    },
}
