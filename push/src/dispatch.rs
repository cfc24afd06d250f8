//! The push worker: one task that owns every piece of state, and a short-lived
//! task per request.
//!
//! A notification first waits out the coalescing window of its (user,
//! conversation): a newer one for the same pair replaces its content but keeps
//! its deadline, so a burst becomes one push at most one window late. Then each
//! of its tokens gets a request, unless one is already in flight for that token:
//! the notification then waits for it (again replacing an older one for the same
//! pair), so a token never has more than one request in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use messenger_protocol::wire::Platform;
use messenger_protocol::{ConvId, UserId};
use rand::Rng;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::apns::Apns;
use super::fcm::Fcm;
use super::{platform_name, Alert, DeadToken, Notification, Outcome, Queue, Stats, Target};
use crate::config::PushConfig;

/// The longest wait between retries, whatever `Retry-After` asks.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// What every request task needs.
pub(super) struct Shared {
    apns: Option<Apns>,
    fcm: Option<Fcm>,
    pub(super) stats: Arc<Stats>,
    /// Where dead tokens go, for the store to delete.
    dead: mpsc::UnboundedSender<DeadToken>,
    /// Bounds the requests in flight at once (`push.concurrency`).
    permits: Semaphore,
    max_retries: u32,
    retry_base: Duration,
}

impl Shared {
    pub(super) fn new(
        apns: Option<Apns>,
        fcm: Option<Fcm>,
        config: &PushConfig,
        dead: mpsc::UnboundedSender<DeadToken>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            apns,
            fcm,
            stats,
            dead,
            permits: Semaphore::new(config.concurrency.max(1)),
            max_retries: config.max_retries,
            retry_base: Duration::from_millis(config.retry_base_ms.max(1)),
        }
    }

    fn serves(&self, platform: Platform) -> bool {
        match platform {
            Platform::Apns => self.apns.is_some(),
            Platform::Fcm => self.fcm.is_some(),
        }
    }
}

type Key = (UserId, ConvId);

/// Sends the target back to the dispatcher when its request task ends, however it ends.
struct Finished {
    target: Option<Target>,
    done: mpsc::UnboundedSender<Target>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(target) = self.target.take() {
            let _ = self.done.send(target);
        }
    }
}

struct Dispatcher {
    shared: Arc<Shared>,
    window: Duration,
    /// Notifications waiting out their coalescing window: the latest per key.
    waiting: HashMap<Key, Notification>,
    /// When each waiting key is due, in arrival order; the window is fixed, so also in time order.
    due: VecDeque<(Instant, Key)>,
    /// Tokens with a request in flight, and the alerts to send each next (one per key, oldest first).
    busy: HashMap<Target, Vec<Arc<Alert>>>,
    requests: JoinSet<()>,
    done_tx: mpsc::UnboundedSender<Target>,
}

/// Runs until `shutdown`; pending notifications and requests in flight are dropped then.
pub(super) async fn run(
    shared: Arc<Shared>,
    queue: Arc<Queue>,
    window: Duration,
    shutdown: CancellationToken,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut d = Dispatcher {
        shared,
        window,
        waiting: HashMap::new(),
        due: VecDeque::new(),
        busy: HashMap::new(),
        requests: JoinSet::new(),
        done_tx,
    };
    loop {
        while d.requests.try_join_next().is_some() {}
        let next_due = d.due.front().map(|(at, _)| *at);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = queue.ready.notified() => {
                for notification in queue.drain() {
                    d.accept(notification);
                }
            }
            () = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                d.fire_due();
            }
            Some(target) = done_rx.recv() => d.finished(target),
        }
    }
    let pending = d.waiting.len() + d.busy.values().map(Vec::len).sum::<usize>();
    if pending > 0 {
        info!(
            pending,
            "push stopping: dropping notifications not sent yet"
        );
    }
}

impl Dispatcher {
    /// Starts or joins the coalescing window of the notification's key.
    fn accept(&mut self, mut notification: Notification) {
        let shared = &self.shared;
        notification.targets.retain(|t| {
            let served = shared.serves(t.platform);
            if !served {
                debug!(
                    platform = platform_name(t.platform),
                    "no push service configured for this token's platform"
                );
            }
            served
        });
        if notification.targets.is_empty() {
            return;
        }
        let key = (
            notification.alert.user.clone(),
            notification.alert.conv.clone(),
        );
        if let Some(older) = self.waiting.insert(key.clone(), notification) {
            debug!(user = %older.alert.user, conv = %older.alert.conv, seq = older.alert.seq, "push coalesced");
            Stats::add(&self.shared.stats.coalesced);
        } else {
            self.due.push_back((Instant::now() + self.window, key));
        }
    }

    /// Sends every notification whose window is over.
    fn fire_due(&mut self) {
        let now = Instant::now();
        while let Some((at, _)) = self.due.front() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.due.pop_front() else {
                break;
            };
            let Some(notification) = self.waiting.remove(&key) else {
                continue;
            };
            for target in notification.targets {
                self.start(target, notification.alert.clone());
            }
        }
    }

    /// Sends `alert` to `target` now, or after the request in flight for it.
    fn start(&mut self, target: Target, alert: Arc<Alert>) {
        if let Some(next) = self.busy.get_mut(&target) {
            if let Some(slot) = next
                .iter_mut()
                .find(|a| a.user == alert.user && a.conv == alert.conv)
            {
                *slot = alert;
                Stats::add(&self.shared.stats.coalesced);
            } else {
                next.push(alert);
            }
            return;
        }
        self.busy.insert(target.clone(), Vec::new());
        self.spawn(target, alert);
    }

    fn spawn(&mut self, target: Target, alert: Arc<Alert>) {
        let finished = Finished {
            target: Some(target.clone()),
            done: self.done_tx.clone(),
        };
        let shared = self.shared.clone();
        self.requests.spawn(async move {
            deliver(&shared, &target, &alert).await;
            drop(finished);
        });
    }

    /// A token's request is over: send what waited for it, if anything.
    fn finished(&mut self, target: Target) {
        let Some(next) = self.busy.get_mut(&target) else {
            return;
        };
        if next.is_empty() {
            self.busy.remove(&target);
        } else {
            let alert = next.remove(0);
            self.spawn(target, alert);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The start of a token, enough to tell tokens apart in logs.
fn short(token: &str) -> &str {
    token.get(..8).unwrap_or(token)
}

/// Exponential backoff with jitter: `base` doubling each retry, each within ±50%.
fn backoff(base: Duration, retry: u32) -> Duration {
    let base_ms = (base.as_millis() as u64)
        .saturating_mul(1 << retry.clamp(1, 16).saturating_sub(1))
        .min(MAX_RETRY_WAIT.as_millis() as u64);
    Duration::from_millis(rand::thread_rng().gen_range(base_ms / 2..=base_ms + base_ms / 2))
        .min(MAX_RETRY_WAIT)
}

/// One notification to one token: the request, its retries, and what its outcome calls for.
async fn deliver(shared: &Shared, target: &Target, alert: &Alert) {
    let platform = platform_name(target.platform);
    let token = short(&target.token);
    let mut retries = 0;
    let mut reauthorized = false;
    loop {
        // A permit per attempt: waiting out a backoff holds none.
        let Ok(permit) = shared.permits.acquire().await else {
            return;
        };
        let sent_ms = now_ms();
        let outcome = match (target.platform, &shared.apns, &shared.fcm) {
            (Platform::Apns, Some(apns), _) => apns.send(&target.token, alert).await,
            (Platform::Fcm, _, Some(fcm)) => fcm.send(&target.token, alert).await,
            _ => return,
        };
        drop(permit);
        match outcome {
            Outcome::Sent => {
                Stats::add(&shared.stats.provider(target.platform).sent);
                debug!(platform, token, user = %alert.user, conv = %alert.conv, seq = alert.seq, badge = alert.badge, "push sent");
                return;
            }
            Outcome::Unregistered { reason, since_ms } => {
                Stats::add(&shared.stats.provider(target.platform).unregistered);
                info!(platform, token, user = %alert.user, reason, "push token is no longer valid: deleting it");
                let dead = DeadToken {
                    platform: target.platform,
                    token: target.token.clone(),
                    not_after_ms: since_ms.unwrap_or(sent_ms),
                };
                if shared.dead.send(dead).is_err() {
                    warn!(
                        platform,
                        "cannot hand over a dead push token: the bridge is stopping"
                    );
                }
                return;
            }
            Outcome::Reauthorize { reason } if !reauthorized => {
                reauthorized = true;
                Stats::add(&shared.stats.provider(target.platform).reauthorized);
                info!(
                    platform,
                    reason, "push provider token refused: signing a new one"
                );
            }
            Outcome::Reauthorize { reason } => {
                Stats::add(&shared.stats.provider(target.platform).rejected);
                warn!(
                    platform,
                    token, reason, "push refused again after a new provider token"
                );
                return;
            }
            Outcome::Retry {
                status,
                reason,
                after,
            } => {
                if retries >= shared.max_retries {
                    Stats::add(&shared.stats.provider(target.platform).failed);
                    warn!(
                        platform,
                        token, status, reason, retries, "push failed: giving up"
                    );
                    return;
                }
                retries += 1;
                Stats::add(&shared.stats.provider(target.platform).retried);
                let wait = after.map_or_else(
                    || backoff(shared.retry_base, retries),
                    |a| a.min(MAX_RETRY_WAIT),
                );
                warn!(
                    platform,
                    token,
                    status,
                    reason,
                    retry = retries,
                    wait_ms = wait.as_millis() as u64,
                    "push failed: retrying"
                );
                tokio::time::sleep(wait).await;
            }
            Outcome::Rejected { status, reason } => {
                Stats::add(&shared.stats.provider(target.platform).rejected);
                warn!(platform, token, status, reason, user = %alert.user, "push rejected");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_is_bounded() {
        let base = Duration::from_millis(100);
        for retry in 1..40 {
            let d = backoff(base, retry);
            let nominal = (100u64 << (retry.min(17) - 1)).min(60_000);
            assert!(
                d.as_millis() as u64 >= nominal / 2 && d <= MAX_RETRY_WAIT,
                "{retry}: {d:?}"
            );
        }
        assert!(backoff(base, 1) <= Duration::from_millis(150));
    }
}
