//! Live connections per user, so that revoking an account cuts its connections,
//! and so that an operator can list them (`messenger admin sessions`) and cut
//! them (`messenger admin kick`).
//!
//! A revoked connection is marked (the gate then refuses its next packet either
//! way) and taken over: a local link with the same client id connects to the
//! router, which drops the device's link at once, as MQTT requires for a
//! duplicate client id; the local link publishes the device's last will and
//! disconnects. Without the takeover an idle device would stay connected until
//! its next packet, up to its keepalive.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use prometheus_client::metrics::gauge::Gauge;
use rumqttd::local::{LinkBuilder, LinkError};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, LastWill, Packet, Publish};

/// What is needed to cut one signed-in connection.
pub(crate) struct Live {
    /// Its MQTT client id.
    pub(crate) client_id: String,
    /// Whether it asked for a clean session; the takeover keeps a persistent
    /// session (the device's queued messages) for its next sign-in.
    pub(crate) clean_session: bool,
    /// Its last will, published when it is cut.
    pub(crate) will: Option<LastWill>,
    /// Set on revocation; dropped with the connection.
    revoked: Weak<AtomicBool>,
    /// When its sign-in began (ms since the epoch): revocations after it cut it,
    /// earlier ones (e.g. the password change it signed in after) do not.
    since_ms: i64,
    /// The client's address (behind the WebSocket front: the client's, not the front's).
    peer: Option<SocketAddr>,
}

impl Live {
    /// Whether the connection is still open and not being cut.
    fn open(&self) -> bool {
        self.revoked
            .upgrade()
            .is_some_and(|flag| !flag.load(Ordering::Acquire))
    }

    /// Marks the connection revoked (its gate refuses its next packet); false if it is gone.
    fn mark(&self) -> bool {
        match self.revoked.upgrade() {
            Some(flag) => {
                flag.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// How `messenger admin sessions` shows it.
    pub(crate) fn session(&self, user: &str) -> Session {
        Session {
            user: user.to_owned(),
            device: self.device().to_owned(),
            address: self.peer,
            since_ms: self.since_ms,
        }
    }

    /// The device part of its client id (`<user>:<device>`).
    fn device(&self) -> &str {
        self.client_id
            .split_once(':')
            .map_or(self.client_id.as_str(), |(_, device)| device)
    }
}

/// One signed-in device connection, as `messenger admin sessions` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Whose.
    pub user: String,
    /// Which device.
    pub device: String,
    /// The client's address, when known.
    pub address: Option<SocketAddr>,
    /// When it signed in, ms since the epoch.
    pub since_ms: i64,
}

/// The wall clock in ms since the epoch, the unit of the revocations table.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A registry of every signed-in user's live connections.
pub(crate) struct Sessions {
    by_user: Mutex<HashMap<String, Vec<Live>>>,
    /// user -> client id -> number of open connections with it (briefly 2 while one
    /// replaces another); the user is the client id's part before its first `:`.
    live: Mutex<HashMap<String, HashMap<String, usize>>>,
    /// Open device connections (the metric `messenger_connected_devices`).
    connected: Gauge,
}

/// Counts a connection as live until dropped (when rumqttd drops the connection's codec).
pub(crate) struct LiveGuard {
    sessions: Arc<Sessions>,
    client_id: String,
    /// Whether it is a device's (counted in the `connected` gauge).
    device: bool,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.device {
            self.sessions.connected.dec();
        }
        let mut live = self.sessions.live.lock().unwrap_or_else(|e| e.into_inner());
        let user = user_of(&self.client_id);
        if let Some(ids) = live.get_mut(user) {
            if let Some(n) = ids.get_mut(&self.client_id) {
                *n -= 1;
                if *n == 0 {
                    ids.remove(&self.client_id);
                }
            }
            if ids.is_empty() {
                live.remove(user);
            }
        }
    }
}

impl Sessions {
    /// No sessions yet; `connected` counts the open device connections.
    pub(crate) fn new(connected: Gauge) -> Self {
        Self {
            by_user: Mutex::default(),
            live: Mutex::default(),
            connected,
        }
    }

    /// Records a connection from `peer`; `revoked` is set when the user is revoked.
    #[allow(clippy::too_many_arguments)] // one call site, in the gate; each is a fact of the CONNECT
    pub(crate) fn register(
        &self,
        since_ms: i64,
        user: &str,
        client_id: &str,
        clean_session: bool,
        will: Option<LastWill>,
        revoked: &Arc<AtomicBool>,
        peer: Option<SocketAddr>,
    ) {
        let mut map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(user.to_owned()).or_default();
        list.retain(|live| live.revoked.strong_count() > 0);
        list.push(Live {
            client_id: client_id.to_owned(),
            clean_session,
            will,
            revoked: Arc::downgrade(revoked),
            since_ms,
            peer,
        });
    }

    /// The open device connections, of `user` only if given, by user, then
    /// device, then sign-in time.
    pub(crate) fn list(&self, user: Option<&str>) -> Vec<Session> {
        let map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let mut sessions: Vec<Session> = map
            .iter()
            .filter(|(name, _)| user.is_none_or(|u| u == name.as_str()))
            .flat_map(|(name, list)| {
                list.iter()
                    .filter(|live| live.open())
                    .map(|live| live.session(name))
            })
            .collect();
        sessions.sort_by(|a, b| {
            (&a.user, &a.device, a.since_ms).cmp(&(&b.user, &b.device, b.since_ms))
        });
        sessions
    }

    /// Marks revoked the open connections of `user` (of its `device` only, if
    /// given) and returns them, to be [`cut`]. Unlike [`Sessions::revoke`] this
    /// records nothing: the devices may sign in again at once.
    pub(crate) fn kick(&self, user: &str, device: Option<&str>) -> Vec<Live> {
        let mut map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = map.remove(user) else {
            return Vec::new();
        };
        let (chosen, kept): (Vec<Live>, Vec<Live>) = list
            .into_iter()
            .filter(|live| live.revoked.strong_count() > 0)
            .partition(|live| device.is_none_or(|d| d == live.device()));
        if !kept.is_empty() {
            map.insert(user.to_owned(), kept);
        }
        chosen.into_iter().filter(Live::mark).collect()
    }

    /// Counts a signed-in connection as live for as long as the guard lives;
    /// a `device`'s (not the service account's) also as a connected device.
    pub(crate) fn live(self: &Arc<Self>, client_id: &str, device: bool) -> LiveGuard {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        self.count(&mut live, client_id, device)
    }

    /// Counts a connection in `live` (the locked map) and returns its guard.
    fn count(
        self: &Arc<Self>,
        live: &mut HashMap<String, HashMap<String, usize>>,
        client_id: &str,
        device: bool,
    ) -> LiveGuard {
        *live
            .entry(user_of(client_id).to_owned())
            .or_default()
            .entry(client_id.to_owned())
            .or_insert(0) += 1;
        if device {
            self.connected.inc();
        }
        LiveGuard {
            sessions: self.clone(),
            client_id: client_id.to_owned(),
            device,
        }
    }

    /// Whether a connection with this client id is open.
    pub(crate) fn is_connected(&self, client_id: &str) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user_of(client_id))
            .is_some_and(|ids| ids.contains_key(client_id))
    }

    /// Counts a device's connection as [`Sessions::live`] does, unless its user has
    /// `max` other devices (client ids) connected already: then `None`, with the
    /// count. A client id that is connected already (a device replacing its own
    /// connection) always gets in. Checked and counted under one lock, so two
    /// sign-ins at once cannot both take the last place.
    pub(crate) fn live_device(
        self: &Arc<Self>,
        client_id: &str,
        max: usize,
    ) -> Result<LiveGuard, usize> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ids) = live.get(user_of(client_id)) {
            if !ids.contains_key(client_id) && ids.len() >= max {
                return Err(ids.len());
            }
        }
        Ok(self.count(&mut live, client_id, true))
    }

    /// Marks revoked every live connection of `user` that signed in before the
    /// revocation at `at_ms`, and returns them, to be [`cut`]. Later sign-ins
    /// (with the new password) stay.
    pub(crate) fn revoke(&self, user: &str, at_ms: i64) -> Vec<Live> {
        let mut map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = map.remove(user) else {
            return Vec::new();
        };
        let (before, after): (Vec<Live>, Vec<Live>) =
            list.into_iter().partition(|live| live.since_ms <= at_ms);
        if !after.is_empty() {
            map.insert(user.to_owned(), after);
        }
        before.into_iter().filter(Live::mark).collect()
    }
}

/// The user part of a client id (`<user>:<device>`; the service account's `<service>:<instance>`).
fn user_of(client_id: &str) -> &str {
    client_id
        .split_once(':')
        .map_or(client_id, |(user, _)| user)
}

/// Makes local links to the router (for takeovers). A closure because the
/// router's channel type is not nameable outside rumqttd.
pub(crate) type Links = Arc<dyn for<'a> Fn(&'a str) -> LinkBuilder<'a> + Send + Sync>;

/// Wraps `make` as [`Links`] (a function, so the closure's signature is inferred).
pub(crate) fn links(
    make: impl for<'a> Fn(&'a str) -> LinkBuilder<'a> + Send + Sync + 'static,
) -> Links {
    Arc::new(make)
}

/// Ends a revoked connection now by taking its session over (see the module docs).
///
/// Must run on a multi-threaded runtime: waiting for the router's answer blocks.
pub(crate) async fn cut(links: &Links, live: &Live) -> Result<(), Box<LinkError>> {
    let (mut tx, rx, _connack) = tokio::task::block_in_place(|| {
        links(&live.client_id)
            .clean_session(live.clean_session)
            .build()
            .map_err(Box::new)
    })?;
    // The router may or may not publish the dropped link's will before it sees the
    // DISCONNECT below (which forgets the will): publish it here so it goes out at least once.
    if let Some(will) = &live.will {
        tx.send(Packet::Publish(
            Publish::new(will.topic.clone(), will.message.clone(), will.retain),
            None,
        ))
        .await?;
    }
    tx.send(Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    ))
    .await?;
    drop(rx);
    Ok(())
}
