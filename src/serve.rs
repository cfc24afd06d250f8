//! `messenger serve` and `messenger broker`: the long-running roles.

use std::sync::Arc;

use anyhow::Context;
use messenger_accounts::Accounts;
use messenger_broker::ServiceAccount;
use rand::RngCore;
use tracing::info;

use crate::settings::Settings;

/// Broker and bridge in one process; the bridge signs in with a password generated for this run.
pub(crate) fn serve(settings: Settings) -> anyhow::Result<()> {
    let password = if settings.bridge.password.is_empty() {
        let mut raw = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut raw);
        hex::encode(raw)
    } else {
        settings.bridge.password.clone()
    };
    run_broker(&settings, password)
}

/// The broker alone; the bridge's credentials come from `bridge.username` / `bridge.password`.
pub(crate) fn broker_only(settings: Settings) -> anyhow::Result<()> {
    if settings.bridge.password.is_empty() {
        info!("bridge.password is empty: no bridge can sign in to this broker");
    }
    let password = settings.bridge.password.clone();
    run_broker(&settings, password)
}

fn run_broker(settings: &Settings, service_password: String) -> anyhow::Result<()> {
    let path = &settings.storage.path;
    let accounts =
        Arc::new(Accounts::open(path).with_context(|| format!("opening {}", path.display()))?);
    let service = ServiceAccount {
        username: settings.bridge.username.clone(),
        password: service_password,
    };
    let broker = messenger_broker::start(&settings.broker, accounts, service)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(shutdown_signal())?;
    info!("shutting down");
    broker.stop();
    info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
