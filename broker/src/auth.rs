//! Sign-in: who may connect, with which client id, credentials and last will.

use std::sync::Arc;

use messenger_accounts::{Accounts, Verdict};
use messenger_protocol::acl::{self, Principal};
use messenger_protocol::{ClientId, UserId};
use rumqttd::protocol::{Connect, ConnectReturnCode, LastWill, Login};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;
use tracing::{info, warn};

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

/// Checks CONNECT packets.
pub(crate) struct Authenticator {
    accounts: Arc<Accounts>,
    service: ServiceAccount,
    /// Bounds concurrent argon2 checks (each takes ~19 MiB and tens of ms of a core).
    hashing: Semaphore,
}

impl Authenticator {
    pub(crate) fn new(accounts: Arc<Accounts>, service: ServiceAccount) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            accounts,
            service,
            hashing: Semaphore::new(cores),
        }
    }

    /// Decides on a CONNECT: the signed-in principal, or the CONNACK refusal code.
    ///
    /// Cheap checks come first. The credential check may block (argon2id); it runs
    /// under `block_in_place` so the runtime's other tasks move to another worker.
    pub(crate) fn admit(
        &self,
        connect: &Connect,
        will: Option<&LastWill>,
        login: Option<&Login>,
    ) -> Result<Principal, ConnectReturnCode> {
        let client = ClientId::parse(&connect.client_id)
            .map_err(|_| ConnectReturnCode::ClientIdentifierNotValid)?;
        let login = login.ok_or(ConnectReturnCode::BadUserNamePassword)?;
        if login.username != client.user {
            warn!(client_id = %connect.client_id, username = %login.username, "client id names another user");
            return Err(ConnectReturnCode::NotAuthorized);
        }
        if login.username == self.service.username {
            let ok = !self.service.password.is_empty()
                && constant_time_eq(login.password.as_bytes(), self.service.password.as_bytes());
            if !ok {
                warn!(client_id = %connect.client_id, "service sign-in refused");
                return Err(ConnectReturnCode::BadUserNamePassword);
            }
            if will.is_some() {
                return Err(ConnectReturnCode::NotAuthorized);
            }
            return Ok(Principal::Service);
        }
        let user =
            UserId::parse(&login.username).map_err(|_| ConnectReturnCode::BadUserNamePassword)?;
        let principal = Principal::User(user.clone());
        if let Some(will) = will {
            let topic = std::str::from_utf8(&will.topic).unwrap_or("");
            if !acl::may_will(&principal, topic) {
                warn!(client_id = %connect.client_id, topic, "last will on a forbidden topic");
                return Err(ConnectReturnCode::NotAuthorized);
            }
        }
        let verdict =
            self.blocking(|| self.accounts.verify(&user, &client.device, &login.password));
        match verdict {
            Ok(Verdict::Accepted) => {
                info!(client_id = %connect.client_id, "signed in");
                Ok(principal)
            }
            Ok(Verdict::UnknownUser | Verdict::Rejected) => {
                warn!(client_id = %connect.client_id, "bad username or password");
                Err(ConnectReturnCode::BadUserNamePassword)
            }
            Err(err) => {
                warn!(cause = %err, "account store unavailable");
                Err(ConnectReturnCode::ServiceUnavailable)
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
