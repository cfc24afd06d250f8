//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use messenger_bridge::config::BrokerAddress;

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
    /// Operate on the running server through its admin listener (`admin.listen`).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Copy the SQLite file (accounts and conversations) to FILE, consistently,
    /// while the server runs; FILE must not exist.
    Backup {
        /// Where to write the copy.
        file: PathBuf,
    },
    /// Copy this single-node install (the SQLite file: accounts, tokens,
    /// conversations, history, receipts, push registrations, mutes, blocks, files'
    /// records) into an empty PostgreSQL database, and say how many of each it
    /// copied. Stop the server first: what it stores after the copy starts is not copied.
    Migrate {
        /// The database: postgres://USER:PASSWORD@HOST:PORT/DATABASE
        #[arg(long)]
        to: String,
    },
    /// Write everything USER may read (conversations, messages, receipts, groups)
    /// as JSON, for a data-portability request; works while the server runs.
    Export {
        /// User id.
        user: String,
        /// Where to write the JSON document (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the topic ACL for a standard broker.
    Acl {
        /// The broker's ACL format.
        #[arg(long, value_enum, default_value_t = AclFormat::Mosquitto)]
        format: AclFormat,
    },
    /// Print one nats-server node's configuration, for the broker tier on a NATS
    /// cluster: the service user (`bridge.username`/`bridge.password`), the `[nats]`
    /// users and the issuer key of `nats.issuer_seed_file` come from the settings.
    NatsConfig(NatsConfigArgs),
    /// A NATS cluster with PostgreSQL and bridges on this machine, for trying it out and for tests.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Chat commands (send, download, edit, delete, react, search, listen, history, chat, block,
    /// unblock, blocks), signed in as one user.
    #[command(flatten)]
    Chat(Box<ChatCommand>),
    /// Measure throughput, latency, connections and memory against a server child process.
    Bench(Box<messenger_bench::BenchArgs>),
}

/// Where one nats-server node listens, and its place in the cluster.
#[derive(Debug, Args)]
pub(crate) struct NatsConfigArgs {
    /// The node's name (`server_name`), unique in the cluster.
    #[arg(long, default_value = "n1")]
    pub(crate) name: String,
    /// NATS client listener, host:port (the bridges connect here; keep it private).
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub(crate) listen: BrokerAddress,
    /// Monitoring listener, host:port (`/healthz`; keep it private).
    #[arg(long, default_value = "127.0.0.1:8222")]
    pub(crate) http: BrokerAddress,
    /// Route listener, host:port, which the other nodes' --routes name (keep it private).
    #[arg(long, default_value = "127.0.0.1:6222")]
    pub(crate) cluster: BrokerAddress,
    /// The other nodes' route listeners, host:port,...; none: a single node.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub(crate) routes: Vec<BrokerAddress>,
    /// MQTT listener, host:port (devices connect here).
    #[arg(long, default_value = "0.0.0.0:1883")]
    pub(crate) mqtt: BrokerAddress,
    /// MQTT over WebSocket listener, host:port (path /mqtt, plain HTTP; off when not given).
    #[arg(long)]
    pub(crate) websocket: Option<BrokerAddress>,
    /// JetStream's store directory (default: `nats/<name>/jetstream` under the current directory).
    #[arg(long, value_name = "DIR")]
    pub(crate) store: Option<PathBuf>,
    /// Copies of the MQTT streams (default: the node count, itself and --routes, up to 3).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub(crate) replicas: Option<u8>,
    /// First write a new issuer seed to `nats.issuer_seed_file` (refused if the file exists).
    #[arg(long)]
    pub(crate) create_issuer_seed: bool,
}

/// Commands on a cluster of this machine.
#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Start N nats-server nodes, PostgreSQL and M bridges in DIR (empty or absent),
    /// write DIR/cluster.json once all are ready, restart a node or bridge that
    /// exits, and stop them all on SIGINT/SIGTERM.
    Up(ClusterUpArgs),
}

/// What `messenger cluster up` starts.
#[derive(Debug, Args)]
pub(crate) struct ClusterUpArgs {
    /// nats-server nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub(crate) nodes: u16,
    /// `messenger bridge` processes (0: none).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=9))]
    pub(crate) bridges: u16,
    /// The cluster's directory: configuration, data, logs, pid files, cluster.json.
    #[arg(long)]
    pub(crate) dir: PathBuf,
}

/// The chat commands: a device of a user, through the client library.
#[derive(Debug, Subcommand)]
pub(crate) enum ChatCommand {
    /// Send one message; prints its seq and time.
    Send {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// A user id (the 1-1 conversation with them) or a group, `g:<id>`.
        to: String,
        /// The message (may be left out when files are attached).
        #[arg(default_value = "")]
        text: String,
        /// Reply to the message with this seq.
        #[arg(long, value_name = "SEQ")]
        reply_to: Option<u64>,
        /// Attach this file (uploaded first, over HTTP); repeat for more (at most 10).
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<PathBuf>,
    },
    /// Download a file a message carries (its id is shown after the paperclip).
    Download {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// The file's id.
        file: String,
        /// Where to write it (default: the file's id, in the current directory); must not exist.
        #[arg(short = 'o', long = "out", value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Replace the text of one of your messages (within the server's edit window).
    Edit {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// A user id (the 1-1 conversation with them) or a group, `g:<id>`.
        conv: String,
        /// The message's seq.
        seq: u64,
        /// The new text.
        text: String,
    },
    /// Delete a message for everyone (yours; in a group you administer, anyone's).
    Delete {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// A user id (the 1-1 conversation with them) or a group, `g:<id>`.
        conv: String,
        /// The message's seq.
        seq: u64,
    },
    /// React to a message with an emoji; "" takes your reaction back.
    React {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// A user id (the 1-1 conversation with them) or a group, `g:<id>`.
        conv: String,
        /// The message's seq.
        seq: u64,
        /// The emoji (1 to 16 bytes), or "".
        emoji: String,
    },
    /// Search your conversations for messages holding every word, newest first.
    Search {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// The words (1 to 256 characters).
        query: String,
        /// Only this conversation: a user id or a group, `g:<id>`.
        #[arg(long)]
        conv: Option<String>,
        /// Continue from the cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Print events as they come, one line each, until Ctrl-C.
    Listen {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
    },
    /// Print a page of a conversation's history, oldest first.
    History {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// A user id (the 1-1 conversation with them) or a group, `g:<id>`.
        with: String,
        /// Only events before this seq (default: the newest).
        #[arg(long)]
        before: Option<u64>,
        /// Page size.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Print users' presence (online, or when last seen); `--follow` keeps printing changes.
    Status {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// The users to look at.
        #[arg(required = true)]
        users: Vec<String>,
        /// Keep printing changes until Ctrl-C.
        #[arg(long)]
        follow: bool,
    },
    /// Group chats: create, add, remove, leave.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Block a user: they can no longer write to you in your 1-1 chat nor see your presence.
    Block {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// Who to block.
        #[arg(value_name = "USER")]
        who: String,
    },
    /// Take back a block.
    Unblock {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// Who to unblock.
        #[arg(value_name = "USER")]
        who: String,
    },
    /// List the users you block, one a line.
    Blocks {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
    },
    /// Chat interactively: each line of input is sent; /quit or end of input leaves.
    Chat {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// A user id (the 1-1 conversation with them) or a group, `g:<id>`.
        with: String,
    },
}

/// Group commands; each prints the group's id and the event's seq.
#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Create a group with you as its admin.
    Create {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// The group's name.
        name: String,
        /// Its first members besides you.
        members: Vec<String>,
    },
    /// Add a member (any member may).
    Add {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// The group, `g:<id>`.
        group: String,
        /// Who to add.
        #[arg(value_name = "USER")]
        member: String,
    },
    /// Remove a member (admins only).
    Remove {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// The group, `g:<id>`.
        group: String,
        /// Who to remove.
        #[arg(value_name = "USER")]
        member: String,
    },
    /// Leave a group.
    Leave {
        /// Who signs in.
        #[command(flatten)]
        account: Account,
        /// The group, `g:<id>`.
        group: String,
    },
}

/// Sign-in options of the chat commands.
#[derive(Debug, Args)]
pub(crate) struct Account {
    /// User id.
    #[arg(long, env = "MESSENGER_USER")]
    pub(crate) user: String,
    /// Password (or a device token).
    #[arg(long, env = "MESSENGER_PASSWORD", hide_env_values = true)]
    pub(crate) password: String,
    /// Device id of this command line.
    #[arg(long, default_value = "cli")]
    pub(crate) device: String,
    /// Broker address, host:port (default: the configuration's broker.listen,
    /// or broker.tls_listen with --tls).
    #[arg(long)]
    pub(crate) broker: Option<String>,
    /// The server's web listener, host:port, for files (default: the configuration's broker.ws_listen,
    /// or broker.wss_listen with --tls).
    #[arg(long)]
    pub(crate) web: Option<String>,
    /// Connect over TLS (the broker's tls_listen), trusting the system's CAs or --ca-file.
    #[arg(long)]
    pub(crate) tls: bool,
    /// Trust only the CA certificates in this PEM file (a private CA); needs --tls.
    #[arg(long, value_name = "PATH", requires = "tls")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Where the inbox cursor of each user and device is kept between runs
    /// (default: $XDG_STATE_HOME/messenger or ~/.local/state/messenger).
    #[arg(long, env = "MESSENGER_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
}

/// Commands on the running server, through its admin listener.
#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// List the connected devices (of USER only, if given): address and since when.
    Sessions {
        /// User id.
        user: Option<String>,
    },
    /// Cut the connections of USER (or of one device, USER:DEVICE) now; unlike
    /// `user disable`, the devices may sign in again at once.
    Kick {
        /// `USER` or `USER:DEVICE`.
        #[arg(value_name = "USER[:DEVICE]")]
        target: String,
    },
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
        /// Also erase the text of every message they sent, as a deletion does
        /// (finishes an erase that was cut short, too).
        #[arg(long)]
        erase: bool,
    },
    /// List users: created, disabled since, devices known and online.
    List,
    /// Disable a user: refuse their sign-ins (password and device tokens) and
    /// cut their connected devices, until `enable`.
    Disable {
        /// User id.
        name: String,
    },
    /// Enable a disabled user again (their device tokens work again).
    Enable {
        /// User id.
        name: String,
    },
    /// Issue a device token, usable as that device's MQTT password.
    Token {
        /// User id.
        name: String,
        /// Device id.
        #[arg(long)]
        device: String,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
