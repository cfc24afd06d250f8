//! `messenger`: the one binary. Loads the configuration before anything binds,
//! exits 64 on bad configuration, and stops cleanly on SIGINT/SIGTERM.

mod bench;
mod cli;
mod serve;
mod settings;
mod users;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use settings::Settings;

/// Exit code for bad configuration or usage (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs();
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
        Command::Acl { format: _ } => {
            print!(
                "{}",
                messenger_protocol::acl::mosquitto_acl(&settings.bridge.username)
            );
            Ok(())
        }
        Command::Bench(args) => bench::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("messenger: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
