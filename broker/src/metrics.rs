//! What the broker counts for the admin listener's `/metrics`: connected
//! devices and sign-ins by result. Handles are made once; recording is an
//! atomic add.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The labels of `messenger_sign_ins_total`: `result` and, for a refusal, `reason`.
type SignInLabels = [(&'static str, &'static str); 2];

/// Why a sign-in was refused, as the `reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusedBecause {
    /// The client id is not `<user>:<device>`.
    BadClientId,
    /// Wrong username, password or token.
    BadCredentials,
    /// Too many failed password sign-ins: refused unchecked.
    Throttled,
    /// A client id naming another user, a forbidden last will.
    NotAuthorized,
    /// The account store could not be read.
    Unavailable,
    /// The account is disabled (`messenger user disable`).
    Disabled,
    /// The user has `limits.max_devices` devices connected already.
    TooManyDevices,
    /// The client's address has `broker.max_connections_per_ip` connections open already.
    TooManyConnections,
}

impl RefusedBecause {
    fn label(self) -> &'static str {
        match self {
            Self::BadClientId => "bad_client_id",
            Self::BadCredentials => "bad_credentials",
            Self::Throttled => "throttled",
            Self::NotAuthorized => "not_authorized",
            Self::Unavailable => "unavailable",
            Self::Disabled => "disabled",
            Self::TooManyDevices => "too_many_devices",
            Self::TooManyConnections => "too_many_connections",
        }
    }

    const ALL: [Self; 8] = [
        Self::BadClientId,
        Self::BadCredentials,
        Self::Throttled,
        Self::NotAuthorized,
        Self::Unavailable,
        Self::Disabled,
        Self::TooManyDevices,
        Self::TooManyConnections,
    ];
}

/// The broker's metrics; clones share the same values.
#[derive(Debug, Clone, Default)]
pub struct BrokerMetrics {
    /// Signed-in device connections open now (the bridge's own not counted).
    pub(crate) connected: Gauge,
    sign_ins: Family<SignInLabels, Counter>,
}

impl BrokerMetrics {
    /// Adds the broker's metrics to `registry` (every label value present from the start).
    pub fn register(&self, registry: &mut Registry) {
        let _ = self.sign_ins.get_or_create(&ACCEPTED);
        for reason in RefusedBecause::ALL {
            let _ = self.sign_ins.get_or_create(&refused(reason));
        }
        registry.register(
            "messenger_connected_devices",
            "Signed-in device connections open now",
            self.connected.clone(),
        );
        registry.register(
            "messenger_sign_ins",
            "Sign-ins (MQTT CONNECT) by result and refusal reason",
            self.sign_ins.clone(),
        );
    }

    /// Counts an accepted sign-in (the service account's included).
    pub(crate) fn accepted(&self) {
        self.sign_ins.get_or_create(&ACCEPTED).inc();
    }

    /// Counts a refused sign-in.
    pub(crate) fn refused(&self, reason: RefusedBecause) {
        self.sign_ins.get_or_create(&refused(reason)).inc();
    }

    /// Signed-in device connections open now.
    pub fn connected_devices(&self) -> i64 {
        self.connected.get()
    }
}

/// The labels of an accepted sign-in.
const ACCEPTED: SignInLabels = [("result", "accepted"), ("reason", "")];

fn refused(reason: RefusedBecause) -> SignInLabels {
    [("result", "refused"), ("reason", reason.label())]
}
