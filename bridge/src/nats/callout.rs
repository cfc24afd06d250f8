//! The nodes' auth callout, answered by the bridge: every MQTT sign-in on any
//! node becomes a request on `$SYS.REQ.USER.AUTH` (account AUTH), which the
//! bridges share as a queue group. The answer is a JWT signed by the issuer
//! key: a user JWT with that user's permissions (the topic ACL as NATS
//! subjects), or a refusal, which the device sees as CONNACK 5.
//!
//! Checked, in order: an MQTT client (a device's password opens no NATS
//! connection), a client id `<user>:<device>` naming the user signed in as, the
//! sign-in throttle (passwords only), then the password or device token in the
//! shared account store. The service account is a static user of the nodes'
//! configuration and never reaches the callout. The throttle's records are this
//! bridge's own: several bridges each count the failures they answer.
//!
//! Revocations (a password changed, a user removed or disabled) are polled from
//! the account store and cut on every node through the system account:
//! `$SYS.REQ.SERVER.PING.CONNZ` finds the user's connections, and
//! `$SYS.REQ.SERVER.<id>.KICK` closes each. The devices' reconnects then meet
//! the callout.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use messenger_accounts::throttle::{Policy, Throttle};
use messenger_accounts::{Accounts, Verdict, TOKEN_PREFIX};
use messenger_protocol::acl::{nats_permissions, Principal};
use messenger_protocol::{ClientId, UserId};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::keys::{claims_of, jti, Issuer};

/// The subject the nodes send sign-ins to.
const AUTH_SUBJECT: &str = "$SYS.REQ.USER.AUTH";
/// The bridges' queue group on it.
const QUEUE: &str = "messenger-auth";
/// How long an answer is valid for the node.
const ANSWER_FOR: Duration = Duration::from_secs(10);

/// What the callout needs to sign devices in.
pub struct SignIn {
    /// The shared account store.
    pub accounts: Arc<Accounts>,
    /// When failed password sign-ins are refused unchecked.
    pub throttle: Policy,
    /// How long a refusal of a wrong password is held back (below the nodes'
    /// `authorization.timeout`).
    pub failure_delay: Duration,
    /// How often revocations are looked for.
    pub revocation_poll: Duration,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn")
            .field("throttle", &self.throttle)
            .field("failure_delay", &self.failure_delay)
            .finish_non_exhaustive()
    }
}

/// The part of a sign-in request the callout reads.
#[derive(Debug, Deserialize)]
struct Request {
    nats: RequestBody,
}

#[derive(Debug, Deserialize)]
struct RequestBody {
    server_id: ServerId,
    user_nkey: String,
    #[serde(default)]
    client_info: ClientInfo,
    #[serde(default)]
    connect_opts: ConnectOpts,
}

#[derive(Debug, Deserialize)]
struct ServerId {
    id: String,
}

#[derive(Debug, Default, Deserialize)]
struct ClientInfo {
    #[serde(default)]
    host: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    mqtt_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ConnectOpts {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    pass: Option<String>,
}

/// A refusal: what the node logs, and whether to hold it back (a wrong password).
struct Refused {
    why: &'static str,
    delay: bool,
}

impl Refused {
    fn now(why: &'static str) -> Self {
        Self { why, delay: false }
    }
}

/// Answers sign-ins and cuts revoked users, until `shutdown`.
pub(crate) struct Callout {
    pub(crate) issuer: Arc<Issuer>,
    pub(crate) sign_in: Arc<SignIn>,
    /// The account devices are placed in.
    pub(crate) account: String,
    /// The service account's name: never a device's.
    pub(crate) service: String,
}

impl Callout {
    /// Subscribes to the nodes' sign-in requests, in the bridges' queue group.
    pub(crate) async fn subscribe(
        auth: &async_nats::Client,
    ) -> Result<async_nats::Subscriber, String> {
        let requests = auth
            .queue_subscribe(AUTH_SUBJECT, QUEUE.to_owned())
            .await
            .map_err(|e| format!("subscribing to {AUTH_SUBJECT}: {e}"))?;
        // Once flushed, the nodes know this bridge answers.
        auth.flush()
            .await
            .map_err(|e| format!("subscribing to {AUTH_SUBJECT}: {e}"))?;
        Ok(requests)
    }

    /// Answers each request on `requests` until `shutdown`.
    pub(crate) async fn run(
        self,
        auth: async_nats::Client,
        mut requests: async_nats::Subscriber,
        shutdown: CancellationToken,
    ) {
        let this = Arc::new(Answerer {
            throttle: Throttle::new(self.sign_in.throttle),
            callout: self,
            hashing: Semaphore::new(hashing_slots()),
        });
        info!("answering the nodes' sign-ins");
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                message = requests.next() => message,
            };
            let Some(message) = message else {
                return;
            };
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            let this = this.clone();
            let auth = auth.clone();
            tokio::spawn(async move {
                let answer = this.answer(&message.payload).await;
                if let Some(answer) = answer {
                    if let Err(err) = auth.publish(reply, answer.into()).await {
                        warn!(cause = %err, "cannot answer a sign-in");
                    }
                }
            });
        }
    }
}

/// How many password checks run at once (argon2: ~19 MiB and tens of ms each).
fn hashing_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

struct Answerer {
    callout: Callout,
    throttle: Throttle,
    hashing: Semaphore,
}

impl Answerer {
    /// The signed answer to one request; `None` if it cannot be read at all
    /// (the node then times out and refuses).
    async fn answer(&self, payload: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(payload).ok()?;
        let request: Request = serde_json::from_value(claims_of(text)?).ok()?;
        let body = request.nats;
        let decided = self.decide(&body).await;
        let now = unix_now();
        let issuer = &self.callout.issuer;
        let mut nats = json!({"type": "authorization_response", "version": 2});
        match decided {
            Ok(user) => {
                let permissions = nats_permissions(&Principal::User(user.clone()));
                let claims = json!({
                    "jti": jti(),
                    "iat": now,
                    "iss": issuer.public_key(),
                    "sub": body.user_nkey,
                    "name": user.as_str(),
                    "aud": self.callout.account,
                    "nats": {
                        "pub": {"allow": permissions.publish},
                        "sub": {"allow": permissions.subscribe},
                        "subs": -1, "data": -1, "payload": -1,
                        "type": "user", "version": 2,
                    },
                });
                nats["jwt"] = json!(issuer.sign(&claims));
            }
            Err(refused) => {
                if refused.delay {
                    tokio::time::sleep(self.callout.sign_in.failure_delay).await;
                }
                nats["error"] = json!(refused.why);
            }
        }
        let response = json!({
            "jti": jti(),
            "iat": now,
            "exp": now + ANSWER_FOR.as_secs(),
            "iss": issuer.public_key(),
            "sub": body.user_nkey,
            "aud": body.server_id.id,
            "nats": nats,
        });
        Some(issuer.sign(&response))
    }

    /// The user signed in, or why not.
    async fn decide(&self, body: &RequestBody) -> Result<UserId, Refused> {
        let client = &body.client_info;
        if client.kind.as_deref() != Some("mqtt") {
            return Err(Refused::now("only MQTT clients sign in here"));
        }
        let client_id = client.mqtt_id.as_deref().unwrap_or_default();
        let username = body.connect_opts.user.as_deref().unwrap_or_default();
        let secret = body.connect_opts.pass.clone().unwrap_or_default();
        let source: Option<IpAddr> = client.host.as_deref().and_then(|h| h.parse().ok());
        let Ok(id) = ClientId::parse(client_id) else {
            return Err(Refused::now("the client id is not <user>:<device>"));
        };
        if id.user != username {
            warn!(client_id, username, "client id names another user");
            return Err(Refused::now("the client id names another user"));
        }
        let now = Instant::now();
        let Ok(user) = UserId::parse(username) else {
            self.throttle.failed(None, source, now);
            return Err(Refused {
                why: "bad username or password",
                delay: true,
            });
        };
        if username == self.callout.service {
            return Err(Refused::now(
                "the service account signs in with its own password",
            ));
        }
        let is_token = secret.starts_with(TOKEN_PREFIX);
        if !is_token && !self.throttle.admits(user.as_str(), source, now) {
            warn!(
                client_id,
                ?source,
                "too many failed sign-ins; refused unchecked"
            );
            return Err(Refused {
                why: "too many failed sign-ins",
                delay: true,
            });
        }
        let verdict = {
            // The semaphore is never closed.
            let _permit = self.hashing.acquire().await;
            let accounts = self.callout.sign_in.accounts.clone();
            let (user, device) = (user.clone(), id.device.clone());
            tokio::task::spawn_blocking(move || accounts.verify(&user, &device, &secret)).await
        };
        match verdict {
            Ok(Ok(Verdict::Accepted)) => {
                if !is_token {
                    self.throttle.succeeded(user.as_str());
                }
                if let Some(source) = source {
                    self.throttle.trust(user.as_str(), source, Instant::now());
                }
                info!(client_id, "signed in");
                Ok(user)
            }
            Ok(Ok(Verdict::Disabled)) => {
                warn!(client_id, "account disabled; sign-in refused");
                Err(Refused {
                    why: "bad username or password",
                    delay: !is_token,
                })
            }
            Ok(Ok(verdict)) => {
                warn!(client_id, ?source, "bad username or password");
                if !is_token {
                    let known = matches!(verdict, Verdict::Rejected).then_some(user.as_str());
                    self.throttle.failed(known, source, Instant::now());
                }
                Err(Refused {
                    why: "bad username or password",
                    delay: !is_token,
                })
            }
            Ok(Err(err)) => {
                warn!(cause = %err, "account store unavailable");
                Err(Refused::now("the account store is unavailable"))
            }
            Err(err) => {
                warn!(cause = %err, "a password check failed");
                Err(Refused::now("the password check failed"))
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Cuts revoked users' connections on every node, polling the account store
/// every `sign_in.revocation_poll`, until `shutdown`.
pub(crate) async fn cut_revoked(
    system: async_nats::Client,
    accounts: Arc<Accounts>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let acc = accounts.clone();
    let mut last = match tokio::task::spawn_blocking(move || acc.latest_revocation()).await {
        Ok(Ok(last)) => last,
        _ => {
            warn!("cannot read revocations; revoked users stay connected until they reconnect");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let acc = accounts.clone();
        match tokio::task::spawn_blocking(move || acc.revocations_after(last)).await {
            Ok(Ok((users, newest))) => {
                last = newest;
                for (user, _) in users {
                    let cut = kick(&system, &user).await;
                    info!(%user, connections = cut, "account revoked");
                }
            }
            Ok(Err(err)) => warn!(cause = %err, "cannot read revocations"),
            Err(err) => warn!(cause = %err, "cannot read revocations"),
        }
    }
}

/// Closes every connection of `user` on every node; how many were closed.
async fn kick(system: &async_nats::Client, user: &str) -> usize {
    let answers = match super::liveness::connz(system, json!({"user": user})).await {
        Ok(answers) => answers,
        Err(cause) => {
            warn!(%cause, "cannot list connections");
            return 0;
        }
    };
    let mut cut = 0;
    for answer in answers {
        for conn in answer.data.map(|d| d.connections).unwrap_or_default() {
            let subject = format!("$SYS.REQ.SERVER.{}.KICK", answer.server.id);
            let body = json!({"cid": conn.cid}).to_string();
            // The node acts only on a request (it answers whether it closed it).
            match system.request(subject, body.into()).await {
                Ok(_) => cut += 1,
                Err(err) => warn!(cause = %err, "cannot close a revoked connection"),
            }
        }
    }
    cut
}
