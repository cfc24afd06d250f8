//! `messenger serve` and `messenger broker`: the long-running roles.

use std::sync::Arc;

use anyhow::Context;
use messenger_accounts::Accounts;
use messenger_broker::ServiceAccount;
use rand::RngCore;
use std::time::Duration;

use messenger_bridge::Bridge;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long the bridge may take to finish its batches in flight at shutdown.
const GRACE: Duration = Duration::from_secs(10);

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
    run_broker(&settings, password, true)
}

/// The broker alone; the bridge's credentials come from `bridge.username` / `bridge.password`.
pub(crate) fn broker_only(settings: Settings) -> anyhow::Result<()> {
    if settings.bridge.password.is_empty() {
        info!("bridge.password is empty: no bridge can sign in to this broker");
    }
    let password = settings.bridge.password.clone();
    run_broker(&settings, password, false)
}

/// The bridge alone, against the broker at `bridge.broker` (any MQTT 3.1.1 broker).
pub(crate) fn bridge_only(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let bridge = tokio::spawn(bridge(&settings).run(None, shutdown.clone()));
        shutdown_signal().await?;
        info!("shutting down");
        shutdown.cancel();
        finish(bridge).await
    })
}

fn bridge(settings: &Settings) -> Bridge {
    Bridge {
        config: settings.bridge.clone(),
        storage: settings.storage.clone(),
        limits: settings.limits.clone(),
        push: settings.push.clone(),
        liveness: None,
        ready: None,
    }
}

/// Waits for the bridge to drain, within the grace period.
async fn finish(
    bridge: tokio::task::JoinHandle<Result<(), messenger_bridge::BridgeError>>,
) -> anyhow::Result<()> {
    match tokio::time::timeout(GRACE, bridge).await {
        Ok(Ok(result)) => Ok(result?),
        Ok(Err(join)) => Err(anyhow::anyhow!("bridge task failed: {join}")),
        Err(_) => {
            warn!("bridge did not finish within {GRACE:?}; stopping anyway");
            Ok(())
        }
    }
}

fn run_broker(
    settings: &Settings,
    service_password: String,
    with_bridge: bool,
) -> anyhow::Result<()> {
    let path = &settings.storage.path;
    let accounts =
        Arc::new(Accounts::open(path).with_context(|| format!("opening {}", path.display()))?);
    let service = ServiceAccount {
        username: settings.bridge.username.clone(),
        password: service_password.clone(),
    };
    let broker = messenger_broker::start(&settings.broker, accounts, service)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let bridge = with_bridge.then(|| {
            let mut bridge = bridge(settings);
            bridge.config.password = service_password;
            let liveness = broker.liveness();
            bridge.liveness = Some(Arc::new(move |client_id: &str| {
                liveness.is_connected(client_id)
            }));
            tokio::spawn(bridge.run(Some(broker.mqtt_addr().to_string()), shutdown.clone()))
        });
        let signal = shutdown_signal().await;
        info!("shutting down");
        shutdown.cancel();
        if let Some(bridge) = bridge {
            finish(bridge).await?;
        }
        signal
    });
    broker.stop();
    result?;
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
