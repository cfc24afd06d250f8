//! `messenger serve`, `messenger broker` and `messenger bridge`: the long-running
//! roles, each with the admin listener (`admin.rs`) for the parts it runs.

use std::sync::Arc;

use messenger_broker::{Certificates, ServiceAccount};
use rand::RngCore;
use std::time::Duration;

use messenger_bridge::config::BrokerAddress;
use messenger_bridge::{Bridge, BridgeError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, Admin};
use crate::config_failure;

/// How long the bridge may take to finish its batches in flight at shutdown.
const GRACE: Duration = Duration::from_secs(10);

use crate::settings::Settings;

/// Broker and bridge in one process; the bridge signs in with a password generated for this run.
pub(crate) fn serve(settings: Settings) -> anyhow::Result<()> {
    crate::database::check(&settings)?;
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
    crate::database::check(&settings)?;
    if settings.bridge.password.is_empty() {
        info!("bridge.password is empty: no bridge can sign in to this broker");
    }
    if settings.broker.listen.is_none() {
        warn!("broker.listen is empty: only this machine's TLS and WebSocket fronts reach the broker; a `messenger bridge` elsewhere cannot");
    }
    let password = settings.bridge.password.clone();
    run_broker(&settings, password, false)
}

/// The bridge alone, against the broker at `bridge.broker` (any MQTT 3.1.1 broker).
pub(crate) fn bridge_only(settings: Settings) -> anyhow::Result<()> {
    crate::database::check(&settings)?;
    let mut prepared = bridge(&settings).prepare().map_err(config_failure)?;
    if prepared.on_nats() {
        // The bridge answers the cluster's sign-ins from the shared accounts.
        let broker = &settings.broker;
        prepared = prepared.with_sign_in(messenger_bridge::nats::SignIn {
            accounts: Arc::new(crate::database::accounts(&settings)?),
            throttle: messenger_accounts::throttle::Policy {
                free_per_user: broker.sign_in_free_failures,
                free_per_address: broker.sign_in_free_failures_per_address,
                first_backoff: Duration::from_millis(broker.sign_in_backoff_ms),
                max_backoff: Duration::from_millis(broker.sign_in_max_backoff_ms),
            },
            failure_delay: Duration::from_millis(broker.sign_in_failure_delay_ms),
            revocation_poll: Duration::from_millis(broker.revocation_poll_ms),
        });
    }
    let listener = admin::bind(&settings.admin).map_err(config_failure)?;
    let mut admin = Admin::new(&settings.storage);
    prepared.register_metrics(&mut admin.registry);
    admin.readiness.bridge = Some(prepared.metrics());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let admin = spawn_admin(listener, admin, &shutdown);
        let bridge = tokio::spawn(prepared.run(None, shutdown.clone()));
        supervise(Some(bridge), None, admin, shutdown).await
    })
}

/// The admin listener's task, if it is on.
type AdminTask = JoinHandle<anyhow::Result<()>>;

/// Starts the admin listener on its bound socket (inside the runtime).
fn spawn_admin(
    listener: Option<std::net::TcpListener>,
    admin: Admin,
    shutdown: &CancellationToken,
) -> Option<AdminTask> {
    listener.map(|listener| tokio::spawn(admin::run(listener, Arc::new(admin), shutdown.clone())))
}

fn bridge(settings: &Settings) -> Bridge {
    Bridge {
        config: settings.bridge.clone(),
        storage: settings.storage.clone(),
        limits: settings.limits.clone(),
        push: settings.push.clone(),
        nats: settings.nats.clone(),
        liveness: None,
        ready: None,
    }
}

/// A bridge running in this process.
type BridgeTask = JoinHandle<Result<(), BridgeError>>;

/// Waits for SIGINT/SIGTERM *and* for the parts: when a part ends on its own
/// (it failed or panicked), logs which and why, stops the others in order
/// (the bridge first, then the broker when the caller drops it) and returns an
/// error, so the process exits non-zero.
async fn supervise(
    bridge: Option<BridgeTask>,
    broker: Option<&mut messenger_broker::RunningBroker>,
    admin: Option<AdminTask>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut bridge = bridge;
    let mut admin = admin;
    let admin_ended = async {
        match admin.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let broker_failed = async {
        match broker {
            Some(broker) => broker.failed().await,
            None => std::future::pending().await,
        }
    };
    let bridge_ended = async {
        match bridge.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let failure = tokio::select! {
        signal = shutdown_signal() => {
            signal?;
            info!("shutting down");
            None
        }
        ended = bridge_ended => {
            bridge = None;
            let cause = match ended {
                Ok(Ok(())) => "it stopped on its own".to_owned(),
                Ok(Err(err)) => format!("{err}"),
                Err(join) => format!("its task failed: {join}"),
            };
            error!(part = "bridge", %cause, "a part of the server stopped; shutting down");
            Some(anyhow::anyhow!("the bridge stopped: {cause}"))
        }
        err = broker_failed => {
            error!(part = "broker", cause = %err, "a part of the server stopped; shutting down");
            Some(anyhow::anyhow!("the broker stopped: {err}"))
        }
        ended = admin_ended => {
            let cause = match ended {
                Ok(Ok(())) => "it stopped on its own".to_owned(),
                Ok(Err(err)) => format!("{err:#}"),
                Err(join) => format!("its task failed: {join}"),
            };
            error!(part = "admin", %cause, "a part of the server stopped; shutting down");
            Some(anyhow::anyhow!("the admin listener stopped: {cause}"))
        }
    };
    shutdown.cancel();
    if let Some(bridge) = bridge {
        finish(bridge).await?;
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Waits for the bridge to drain, within the grace period.
async fn finish(bridge: BridgeTask) -> anyhow::Result<()> {
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
    // Everything that can fail on bad configuration happens before anything listens.
    let certificates = if settings.broker.needs_tls() {
        Some(Certificates::load(&settings.tls).map_err(config_failure)?)
    } else {
        None
    };
    let prepared = if with_bridge {
        let mut bridge = bridge(settings);
        bridge.config.password = service_password.clone();
        Some(bridge.prepare().map_err(config_failure)?)
    } else {
        None
    };
    let listener = admin::bind(&settings.admin).map_err(config_failure)?;
    let accounts = Arc::new(crate::database::accounts(settings)?);
    let service = ServiceAccount {
        username: settings.bridge.username.clone(),
        password: service_password,
    };
    let files = match (settings.broker.ws_listen, settings.broker.wss_listen) {
        (None, None) => None,
        _ => Some(crate::files::web_files(settings)?),
    };
    let extras = messenger_broker::Extras {
        certificates: certificates.as_ref(),
        files,
    };
    let mut broker = messenger_broker::start_with(&settings.broker, extras, accounts, service)?;
    let mut admin = Admin::new(&settings.storage);
    broker.metrics().register(&mut admin.registry);
    admin.readiness.broker = Some(broker.mqtt_addr());
    admin.control = Some(broker.control());
    if let Some(prepared) = &prepared {
        prepared.register_metrics(&mut admin.registry);
        admin.readiness.bridge = Some(prepared.metrics());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let admin = spawn_admin(listener, admin, &shutdown);
        if let Some(certificates) = certificates {
            tokio::spawn(reload_on_hangup(certificates, shutdown.clone()));
        }
        let bridge = prepared.map(|prepared| {
            let liveness = broker.liveness();
            let prepared = prepared.with_liveness(Arc::new(move |client_id: &str| {
                liveness.is_connected(client_id)
            }));
            let address = BrokerAddress::from(broker.mqtt_addr());
            tokio::spawn(prepared.run(Some(address), shutdown.clone()))
        });
        supervise(bridge, Some(&mut broker), admin, shutdown).await
    });
    broker.stop();
    result?;
    info!("stopped");
    Ok(())
}

/// Reads the `[tls]` files again on each SIGHUP: new TLS connections get the
/// new certificate, open ones keep theirs; a bad file keeps the old certificate.
async fn reload_on_hangup(certificates: Certificates, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(err) => {
                warn!(cause = %err, "cannot watch SIGHUP; certificate reloads need a restart");
                return;
            }
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                got = hangup.recv() => if got.is_none() { return },
            }
            match certificates.reload() {
                Ok(()) => {
                    info!(cert = %certificates.cert_path().display(), "SIGHUP: TLS certificate reloaded")
                }
                Err(err) => {
                    error!(cause = %err, "SIGHUP: TLS certificate not reloaded; keeping the one in use")
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = certificates;
        shutdown.cancelled().await;
    }
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
