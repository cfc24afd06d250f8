//! `messenger`: the one binary. Loads the configuration before anything binds,
//! exits 64 on bad configuration, and stops cleanly on SIGINT/SIGTERM.

mod admin;
mod admin_cli;
mod backup;
mod chat;
mod cli;
mod cluster;
mod database;
mod export;
mod files;
mod migrate;
mod nats_config;
mod serve;
mod settings;
mod users;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use settings::Settings;

/// Exit code for bad configuration or usage (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code for a program this command needs that is not installed (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The chat commands print connection changes themselves; library logs would
    // only interleave with the conversation.
    init_logs(if matches!(cli.command, Command::Chat(_)) {
        "warn,messenger_client=error,rumqttc=error"
    } else {
        "info,rumqttd=off"
    });
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("messenger: {err:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match cli.command {
        Command::Serve => serve::serve(settings),
        Command::Broker => serve::broker_only(settings),
        Command::Bridge => serve::bridge_only(settings),
        Command::User(cmd) => users::run(&settings, cmd),
        Command::Admin(cmd) => admin_cli::run(&settings, cmd),
        Command::Backup { file } => backup::run(&settings, &file),
        Command::Export { user, out } => export::run(&settings, &user, &out),
        Command::Migrate { to } => migrate::run(&settings, &to),
        Command::Chat(cmd) => chat::run(&settings, *cmd),
        Command::Acl { format: _ } => {
            print!(
                "{}",
                messenger_protocol::acl::mosquitto_acl(&settings.bridge.username)
            );
            Ok(())
        }
        Command::NatsConfig(args) => nats_config::run(&settings, args),
        Command::Cluster(cli::ClusterCommand::Up(args)) => cluster::up(args),
        Command::Bench(args) => messenger_bench::run(*args).map(|table| print!("{table}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<ConfigFailure>() => {
            eprintln!("messenger: {err:#}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(err) if err.is::<Unavailable>() => {
            eprintln!("messenger: {err:#}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        Err(err) => {
            eprintln!("messenger: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Bad configuration found after loading the settings (a key file that cannot
/// be read, say): exits [`EXIT_CONFIG`] like a bad setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration")]
struct ConfigFailure(#[source] anyhow::Error);

/// Marks an error as bad configuration.
fn config_failure(err: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(ConfigFailure(err.into()))
}

/// A program a command needs is missing (nats-server for `cluster up`): exits
/// [`EXIT_UNAVAILABLE`].
#[derive(Debug, thiserror::Error)]
#[error("a program this command needs is missing")]
struct Unavailable(#[source] anyhow::Error);

/// Marks an error as a missing program.
fn unavailable(err: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(Unavailable(err.into()))
}

/// Logs to stderr, filtered by `RUST_LOG` or else `default`; colours only on a terminal.
fn init_logs(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
