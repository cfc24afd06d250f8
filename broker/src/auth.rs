//! Sign-in: who may connect, with which client id, credentials and last will.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_accounts::{Accounts, Verdict, TOKEN_PREFIX};
use messenger_protocol::acl::{self, Principal};
use messenger_protocol::{ClientId, DeviceId, UserId};
use rumqttd::protocol::{Connect, ConnectReturnCode, LastWill, Login};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::metrics::RefusedBecause;
use messenger_accounts::throttle::{Policy, Throttle};

/// The bridge's credentials.
#[derive(Clone)]
pub struct ServiceAccount {
    /// MQTT username; deliberately not a valid user id, so no user can take it.
    pub username: String,
    /// MQTT password; an empty one refuses every service sign-in.
    pub password: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What an HTTP request's `Authorization` header carries.
pub(crate) enum HttpCredentials {
    /// `Bearer <device token>`.
    Token(String),
    /// `Basic` with the user id and password.
    Password {
        /// The user id as sent.
        user: String,
        /// The password.
        password: String,
    },
}

/// Why a CONNECT is refused: its CONNACK code, and how long to hold that CONNACK back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: ConnectReturnCode,
    /// Set for failed password sign-ins, so guessing costs time.
    pub(crate) delay: Option<Duration>,
    /// What the metrics call it.
    pub(crate) reason: RefusedBecause,
}

impl Refusal {
    /// A refusal with `code` that the metrics count as `reason`, answered at once.
    pub(crate) fn because(code: ConnectReturnCode, reason: RefusedBecause) -> Self {
        Self {
            code,
            delay: None,
            reason,
        }
    }
}

impl From<ConnectReturnCode> for Refusal {
    fn from(code: ConnectReturnCode) -> Self {
        let reason = match code {
            ConnectReturnCode::ClientIdentifierNotValid => RefusedBecause::BadClientId,
            ConnectReturnCode::NotAuthorized => RefusedBecause::NotAuthorized,
            ConnectReturnCode::ServiceUnavailable => RefusedBecause::Unavailable,
            _ => RefusedBecause::BadCredentials,
        };
        Self {
            code,
            delay: None,
            reason,
        }
    }
}

/// Checks CONNECT packets.
pub(crate) struct Authenticator {
    accounts: Arc<Accounts>,
    service: ServiceAccount,
    /// Bounds concurrent argon2 checks (each takes ~19 MiB and tens of ms of a core).
    hashing: Semaphore,
    /// Failed password sign-ins per user and per source address.
    throttle: Throttle,
    /// How long a refusal of a password sign-in is held back.
    failure_delay: Duration,
}

impl Authenticator {
    pub(crate) fn new(
        accounts: Arc<Accounts>,
        service: ServiceAccount,
        policy: Policy,
        failure_delay: Duration,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            accounts,
            service,
            hashing: Semaphore::new(cores),
            throttle: Throttle::new(policy),
            failure_delay,
        }
    }

    /// A refusal for a failed password sign-in (recorded against `user` and `source`).
    fn bad_password(&self, user: Option<&str>, source: Option<IpAddr>) -> Refusal {
        self.throttle.failed(user, source, Instant::now());
        Refusal {
            code: ConnectReturnCode::BadUserNamePassword,
            delay: Some(self.failure_delay),
            reason: RefusedBecause::BadCredentials,
        }
    }

    /// Whether `login` is the service account's (the bridge's), password included:
    /// only the bridge itself is spared the per-address connection count.
    pub(crate) fn is_service(&self, login: &Login) -> bool {
        login.username == self.service.username
            && !self.service.password.is_empty()
            && constant_time_eq(login.password.as_bytes(), self.service.password.as_bytes())
    }

    /// Refuses a device that signs in on the loopback listener directly while
    /// plain MQTT is off: devices come through a front. The caller counts it.
    pub(crate) fn refuse_direct(&self, connect: &Connect, source: Option<IpAddr>) -> Refusal {
        warn!(client_id = %connect.client_id, ?source, "plain MQTT is off (broker.listen is empty); refused");
        Refusal::from(ConnectReturnCode::NotAuthorized)
    }

    /// Decides on a CONNECT from `source` (the client's address, when known):
    /// the signed-in principal, or the refusal. The caller counts the outcome
    /// (the gate may still refuse an accepted sign-in: too many devices).
    ///
    /// Cheap checks come first. The credential check may block (argon2id); it runs
    /// under `block_in_place` so the runtime's other tasks move to another worker.
    /// Password sign-ins pass the throttle first: a user or address with too many
    /// recent failures is refused without a check (the user's lockout spares the
    /// addresses they signed in from before, see `throttle`). Device tokens (256
    /// random bits) are not throttled, so guessing a user's password cannot lock
    /// out their devices' reconnects. The service account is checked in constant
    /// time, no argon2, and never locked out (that would cut the bridge off); its
    /// failures count against the address and are held back like any other.
    pub(crate) fn admit(
        &self,
        connect: &Connect,
        will: Option<&LastWill>,
        login: Option<&Login>,
        source: Option<IpAddr>,
    ) -> Result<Principal, Refusal> {
        let client = ClientId::parse(&connect.client_id)
            .map_err(|_| ConnectReturnCode::ClientIdentifierNotValid)?;
        let login = login.ok_or(ConnectReturnCode::BadUserNamePassword)?;
        if login.username != client.user {
            warn!(client_id = %connect.client_id, username = %login.username, "client id names another user");
            return Err(ConnectReturnCode::NotAuthorized.into());
        }
        if login.username == self.service.username {
            let ok = !self.service.password.is_empty()
                && constant_time_eq(login.password.as_bytes(), self.service.password.as_bytes());
            if !ok {
                warn!(client_id = %connect.client_id, ?source, "service sign-in refused");
                return Err(self.bad_password(None, source));
            }
            if will.is_some() {
                return Err(ConnectReturnCode::NotAuthorized.into());
            }
            return Ok(Principal::Service);
        }
        let Ok(user) = UserId::parse(&login.username) else {
            return Err(self.bad_password(None, source));
        };
        let principal = Principal::User(user.clone());
        if let Some(will) = will {
            let topic = std::str::from_utf8(&will.topic).unwrap_or("");
            if !acl::may_will(&principal, topic) {
                warn!(client_id = %connect.client_id, topic, "last will on a forbidden topic");
                return Err(ConnectReturnCode::NotAuthorized.into());
            }
        }
        let is_token = login.password.starts_with(TOKEN_PREFIX);
        if !is_token && !self.throttle.admits(user.as_str(), source, Instant::now()) {
            warn!(client_id = %connect.client_id, ?source, "too many failed sign-ins; refused unchecked");
            return Err(Refusal {
                code: ConnectReturnCode::BadUserNamePassword,
                delay: Some(self.failure_delay),
                reason: RefusedBecause::Throttled,
            });
        }
        let verdict =
            self.blocking(|| self.accounts.verify(&user, &client.device, &login.password));
        match verdict {
            Ok(Verdict::Accepted) => {
                if !is_token {
                    self.throttle.succeeded(user.as_str());
                }
                if let Some(source) = source {
                    self.throttle.trust(user.as_str(), source, Instant::now());
                }
                info!(client_id = %connect.client_id, "signed in");
                Ok(principal)
            }
            // Refused like a bad credential (a client cannot tell), held back like
            // one, but not counted as a guess: the credential was not checked.
            Ok(Verdict::Disabled) => {
                warn!(client_id = %connect.client_id, ?source, "account disabled; sign-in refused");
                Err(Refusal {
                    code: ConnectReturnCode::BadUserNamePassword,
                    delay: (!is_token).then_some(self.failure_delay),
                    reason: RefusedBecause::Disabled,
                })
            }
            Ok(verdict @ (Verdict::UnknownUser | Verdict::Rejected)) => {
                warn!(client_id = %connect.client_id, ?source, "bad username or password");
                if is_token {
                    return Err(ConnectReturnCode::BadUserNamePassword.into());
                }
                let known = matches!(verdict, Verdict::Rejected).then_some(user.as_str());
                Err(self.bad_password(known, source))
            }
            Err(err) => {
                warn!(cause = %err, "account store unavailable");
                Err(ConnectReturnCode::ServiceUnavailable.into())
            }
        }
    }

    /// Signs in an HTTP request (the web listener's `/files`) from `source`:
    /// the user, or the refusal's delay (set for a failed password, as for a
    /// CONNECT). Passwords pass the same throttle as MQTT sign-ins and their
    /// failures count in it; device tokens are looked up by their hash, not
    /// throttled. The service account has no HTTP access.
    pub(crate) fn http_user(
        &self,
        credentials: &HttpCredentials,
        source: IpAddr,
    ) -> Result<UserId, Option<Duration>> {
        let source = Some(source);
        match credentials {
            HttpCredentials::Token(token) => {
                match self.blocking(|| self.accounts.token_owner(token)) {
                    Ok(Some((user, _device))) => Ok(user),
                    Ok(None) => {
                        warn!(?source, "HTTP request with an unknown device token");
                        Err(None)
                    }
                    Err(err) => {
                        warn!(cause = %err, "account store unavailable");
                        Err(None)
                    }
                }
            }
            HttpCredentials::Password { user, password } => {
                let Ok(user) = UserId::parse(user) else {
                    return Err(self.bad_password(None, source).delay);
                };
                if !self.throttle.admits(user.as_str(), source, Instant::now()) {
                    warn!(%user, ?source, "too many failed sign-ins; HTTP request refused unchecked");
                    return Err(Some(self.failure_delay));
                }
                // A password check does not look at the device.
                let device = DeviceId::parse("http").expect("a valid device id");
                match self.blocking(|| self.accounts.verify(&user, &device, password)) {
                    Ok(Verdict::Accepted) => {
                        self.throttle.succeeded(user.as_str());
                        Ok(user)
                    }
                    Ok(verdict) => {
                        warn!(%user, ?source, "HTTP request with a bad username or password");
                        let known = matches!(verdict, Verdict::Rejected).then_some(user.as_str());
                        Err(self.bad_password(known, source).delay)
                    }
                    Err(err) => {
                        warn!(cause = %err, "account store unavailable");
                        Err(None)
                    }
                }
            }
        }
    }

    fn blocking<T>(&self, f: impl FnOnce() -> T) -> T {
        match Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| {
                    // The semaphore is never closed, so acquire cannot fail.
                    let _permit = handle.block_on(self.hashing.acquire());
                    f()
                })
            }
            _ => f(),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
