//! The ACL seam: an MQTT 3.1.1 codec that enforces sign-in and the topic ACL.
//!
//! rumqttd clones the codec for every accepted connection and passes every
//! incoming packet through [`Protocol::read_mut`] and every outgoing one through
//! [`Protocol::write`]. [`Gate`] wraps rumqttd's `V4` codec and:
//!
//! - binds the connection's identity at the first CONNECT and refuses any later
//!   CONNECT (so a client cannot switch identity mid-connection), and any packet
//!   before CONNECT;
//! - refuses a bad CONNECT with a real CONNACK code, by steering it into rumqttd's
//!   own refusal path (empty client id with `clean_session = false`) and
//!   rewriting the code on the way out; a failed password sign-in's CONNACK is
//!   held back ([`Protocol::connect_delay`]);
//! - drops forbidden filters from a SUBSCRIBE and puts `0x80` back in their
//!   places in the SUBACK;
//! - turns a forbidden PUBLISH into an empty, unretained publish on a `$` topic
//!   that no filter matches (the client still gets its PUBACK; nothing is routed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use messenger_protocol::acl::{self, Principal};
use messenger_protocol::topics::Topic;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{ConnectReturnCode, Error, Packet, Protocol, SubscribeReasonCode};
use tracing::warn;

use crate::addresses::{AddressGuard, Addresses};
use crate::auth::{Authenticator, Refusal};
use crate::metrics::RefusedBecause;
use crate::sessions::{LiveGuard, Sessions};
use crate::websocket::Peers;

/// The topic a refused publish is moved to: `$` topics match no subscriber's filter.
const DENIED_TOPIC: &str = "$messenger/denied";

/// State shared by every connection of one listener.
pub(crate) struct Shared {
    pub(crate) auth: Authenticator,
    pub(crate) sessions: Arc<Sessions>,
    /// The fronts' (WebSocket, TLS) upstream connections and the clients they carry.
    pub(crate) peers: Arc<Peers>,
    /// Connected devices and sign-ins (the same gauge as `sessions` holds).
    pub(crate) metrics: crate::BrokerMetrics,
    /// Plain MQTT is off (`broker.listen = ""`): devices sign in only through a
    /// front (an upstream connection in `peers`); the service account from anywhere.
    pub(crate) fronts_only: bool,
    /// Open connections per client address.
    pub(crate) addresses: Arc<Addresses>,
    /// Devices of one user connected at once (`limits.max_devices`).
    pub(crate) max_devices: usize,
    /// Who blocks whom (the store's `blocks` table), for presence.
    pub(crate) accounts: Arc<messenger_accounts::Accounts>,
}

/// Where a CONNECT comes from.
#[derive(Debug, Clone, Copy)]
struct Source {
    /// The client's address, when known (behind a front, the front's client).
    ip: Option<std::net::IpAddr>,
    /// Whether it came through a front (TLS, WebSocket) rather than dialling the
    /// MQTT listener directly.
    via_front: bool,
}

impl Shared {
    /// Signs a CONNECT in: with plain MQTT off a device must come through a
    /// front (the service account may not), the client's address must have room
    /// (`broker.max_connections_per_ip`; not asked of the service account), the
    /// credentials must pass, and a user must have room for one more device
    /// (`limits.max_devices`). Counts the outcome. Returns the principal and the
    /// guard that counts it as live; `address` gets the guard that counts the
    /// connection against its address, kept until the connection ends, refused
    /// or not (a refused password sign-in waits for its CONNACK).
    fn sign_in(
        self: &Arc<Self>,
        connect: &rumqttd::protocol::Connect,
        will: Option<&rumqttd::protocol::LastWill>,
        login: Option<&rumqttd::protocol::Login>,
        source: Source,
        address: &mut Option<AddressGuard>,
    ) -> Result<(Principal, LiveGuard), Refusal> {
        let decided = self.decide(connect, will, login, source, address);
        match &decided {
            Ok(_) => self.metrics.accepted(),
            Err(refusal) => self.metrics.refused(refusal.reason),
        }
        decided
    }

    /// [`Shared::sign_in`] without the counting.
    fn decide(
        self: &Arc<Self>,
        connect: &rumqttd::protocol::Connect,
        will: Option<&rumqttd::protocol::LastWill>,
        login: Option<&rumqttd::protocol::Login>,
        source: Source,
        address: &mut Option<AddressGuard>,
    ) -> Result<(Principal, LiveGuard), Refusal> {
        let service = login.is_some_and(|l| self.auth.is_service(l));
        if self.fronts_only && !source.via_front && !service {
            return Err(self.auth.refuse_direct(connect, source.ip));
        }
        let source = source.ip;
        *address = match source.filter(|_| !service) {
            Some(addr) => self.addresses.open(addr).map_err(|open| {
                warn!(client_id = %connect.client_id, %addr, open, "too many connections from one address; refused");
                Refusal::because(
                    ConnectReturnCode::ServiceUnavailable,
                    RefusedBecause::TooManyConnections,
                )
            })?,
            None => None,
        };
        let principal = self.auth.admit(connect, will, login, source)?;
        let live = match &principal {
            Principal::User(user) => self
                .sessions
                .live_device(&connect.client_id, self.max_devices)
                .map_err(|connected| {
                    warn!(%user, client_id = %connect.client_id, connected, max = self.max_devices, "too many devices connected; sign-in refused");
                    Refusal::because(
                        ConnectReturnCode::NotAuthorized,
                        RefusedBecause::TooManyDevices,
                    )
                })?,
            Principal::Service => self.sessions.live(&connect.client_id, false),
        };
        Ok((principal, live))
    }

    /// Whether `who` may see the presence of the user of a `status/<user>` topic or
    /// filter: not when that user blocks them. Other topics pass. When the blocks
    /// cannot be read, presence is withheld (and a warning logged).
    fn may_see_presence(&self, who: &Principal, topic: &str) -> bool {
        let Principal::User(me) = who else {
            return true;
        };
        let Some(Topic::Status(owner)) = Topic::parse(topic) else {
            return true;
        };
        match self.accounts.is_blocked(&owner, me) {
            Ok(blocked) => !blocked,
            Err(err) => {
                warn!(cause = %err, "cannot read blocks; presence withheld");
                false
            }
        }
    }
}

/// Where a connection stands.
enum Phase {
    /// Waiting for CONNECT.
    New,
    /// CONNECT refused; the CONNACK carries this code, then the link ends.
    Refused(ConnectReturnCode),
    /// Signed in.
    Bound(Principal),
}

struct ConnState {
    phase: Phase,
    /// SUBSCRIBE packet id -> which of its filters were allowed, in order.
    pending_subacks: HashMap<u16, Vec<bool>>,
    /// Set when the account is revoked: any later packet, either way, ends the connection
    /// (the revocation watcher also takes its session over, which ends it at once).
    revoked: Arc<AtomicBool>,
    /// Present while signed in: counts the connection as live until the codec is dropped.
    _live: Option<LiveGuard>,
    /// Counts the connection against its client's address, from its CONNECT on.
    _address: Option<AddressGuard>,
    /// The connection's peer, as the listener accepted it.
    peer: Option<SocketAddr>,
    /// How long the refusing CONNACK waits.
    refusal_delay: Option<Duration>,
}

/// The per-connection codec handed to rumqttd. Cloning yields a fresh, unbound connection.
pub(crate) struct Gate {
    shared: Arc<Shared>,
    /// `Server::start` holds the codec across awaits on a multi-threaded runtime, so
    /// the state sits behind a (never contended) mutex.
    state: Arc<Mutex<ConnState>>,
}

impl Gate {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            state: Arc::new(Mutex::new(ConnState {
                phase: Phase::New,
                pending_subacks: HashMap::new(),
                revoked: Arc::new(AtomicBool::new(false)),
                _live: None,
                _address: None,
                peer: None,
                refusal_delay: None,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clone for Gate {
    fn clone(&self) -> Self {
        Self::new(self.shared.clone())
    }
}

impl Protocol for Gate {
    fn read_mut(&mut self, stream: &mut BytesMut, max_size: usize) -> Result<Packet, Error> {
        let packet = V4.read_mut(stream, max_size)?;
        let shared = self.shared.clone();
        let mut st = self.lock();
        if st.revoked.load(Ordering::Acquire) {
            return Err(Error::InvalidProtocol);
        }
        match (&st.phase, packet) {
            (Phase::New, Packet::Connect(mut connect, props, will, will_props, login)) => {
                // Taken before the credentials are checked: a revocation after this
                // instant may have invalidated what was checked.
                let since_ms = crate::sessions::now_ms();
                // Behind a front the peer is the front; the client is in its map.
                let via_front = st.peer.and_then(|peer| shared.peers.client_of(peer));
                let client = st.peer.map(|peer| via_front.unwrap_or(peer));
                let source = client.map(|addr| addr.ip());
                let mut address = None;
                let signed_in = shared.sign_in(
                    &connect,
                    will.as_ref(),
                    login.as_ref(),
                    Source {
                        ip: source,
                        via_front: via_front.is_some(),
                    },
                    &mut address,
                );
                st._address = address;
                match signed_in {
                    Ok((principal, live)) => {
                        if let Principal::User(user) = &principal {
                            shared.sessions.register(
                                since_ms,
                                user.as_str(),
                                &connect.client_id,
                                connect.clean_session,
                                will.clone(),
                                &st.revoked,
                                client,
                            );
                        }
                        st._live = Some(live);
                        st.phase = Phase::Bound(principal);
                        Ok(Packet::Connect(connect, props, will, will_props, login))
                    }
                    Err(refusal) => {
                        st.phase = Phase::Refused(refusal.code);
                        st.refusal_delay = refusal.delay;
                        // rumqttd answers an empty client id with clean_session = false by a
                        // refusing CONNACK; `write` puts our code in it.
                        connect.client_id.clear();
                        connect.clean_session = false;
                        connect.keep_alive = connect.keep_alive.max(1);
                        Ok(Packet::Connect(connect, None, None, None, None))
                    }
                }
            }
            (Phase::Bound(who), Packet::Publish(mut publish, props)) => {
                let allowed =
                    std::str::from_utf8(&publish.topic).is_ok_and(|t| acl::may_publish(who, t));
                if !allowed {
                    warn!(?who, topic = %String::from_utf8_lossy(&publish.topic), "publish refused");
                    publish.topic = Bytes::from_static(DENIED_TOPIC.as_bytes());
                    publish.payload = Bytes::new();
                    publish.retain = false;
                }
                Ok(Packet::Publish(publish, props))
            }
            (Phase::Bound(who), Packet::Subscribe(mut subscribe, props)) => {
                let mask: Vec<bool> = subscribe
                    .filters
                    .iter()
                    .map(|f| {
                        acl::may_subscribe(who, &f.path) && shared.may_see_presence(who, &f.path)
                    })
                    .collect();
                if mask.iter().any(|ok| !ok) {
                    warn!(?who, filters = ?subscribe.filters.iter().map(|f| &f.path).collect::<Vec<_>>(), "subscription refused");
                    let mut allowed = mask.iter();
                    subscribe
                        .filters
                        .retain(|_| *allowed.next().unwrap_or(&false));
                    st.pending_subacks.insert(subscribe.pkid, mask);
                }
                Ok(Packet::Subscribe(subscribe, props))
            }
            // A second CONNECT would let a client re-bind its identity: cut it.
            (Phase::Bound(_), Packet::Connect(..)) => Err(Error::InvalidProtocol),
            (Phase::Bound(_), other) => Ok(other),
            // Nothing but CONNECT before sign-in, nothing at all after a refusal.
            (Phase::New | Phase::Refused(_), _) => Err(Error::InvalidProtocol),
        }
    }

    fn write(&self, packet: Packet, write: &mut BytesMut) -> Result<usize, Error> {
        let mut st = self.lock();
        if st.revoked.load(Ordering::Acquire) {
            return Err(Error::InvalidProtocol);
        }
        let packet = match packet {
            // A status the subscriber may no longer see (its owner blocked them after
            // they subscribed): replaced like a refused publish, so it is still acked.
            Packet::Publish(mut publish, props) => {
                if let Phase::Bound(who @ Principal::User(_)) = &st.phase {
                    let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
                    if topic.starts_with("status/") && !self.shared.may_see_presence(who, topic) {
                        publish.topic = Bytes::from_static(DENIED_TOPIC.as_bytes());
                        publish.payload = Bytes::new();
                        publish.retain = false;
                    }
                }
                Packet::Publish(publish, props)
            }
            Packet::ConnAck(mut ack, props) => {
                if let Phase::Refused(code) = st.phase {
                    ack.code = code;
                }
                Packet::ConnAck(ack, props)
            }
            Packet::SubAck(mut ack, props) => {
                if let Some(mask) = st.pending_subacks.remove(&ack.pkid) {
                    let mut granted = ack.return_codes.into_iter();
                    ack.return_codes = mask
                        .into_iter()
                        .map(|ok| {
                            if ok {
                                granted.next().unwrap_or(SubscribeReasonCode::Failure)
                            } else {
                                SubscribeReasonCode::Failure
                            }
                        })
                        .collect();
                }
                Packet::SubAck(ack, props)
            }
            other => other,
        };
        V4.write(packet, write)
    }

    fn set_peer(&mut self, peer: SocketAddr) {
        self.lock().peer = Some(peer);
    }

    fn connect_delay(&self) -> Option<Duration> {
        let st = self.lock();
        match st.phase {
            Phase::Refused(_) => st.refusal_delay,
            Phase::New | Phase::Bound(_) => None,
        }
    }
}
