//! The writer: one thread that owns the SQLite connection and commits in groups.
//!
//! It blocks for the first job, then takes everything else already queued, and
//! handles the whole batch in one transaction, each request in its own savepoint
//! (a failed request rolls back alone and changes nothing). While a commit is
//! syncing to disk, new jobs queue up and form the next batch, so one fsync
//! covers many requests. Publishes and broker acks go to the publisher only
//! after the commit returned: nothing is acked before it is durable. Push
//! notifications the batch calls for go to the push queue then too; handing
//! them over never blocks.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use messenger_protocol::topics;
use messenger_protocol::wire::ErrorCode;
use messenger_protocol::{DeviceId, UserId};
use rumqttc::Publish;
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::mpsc;
use tracing::{debug, error};

use crate::checkpoint::Wal;
use crate::config::Limits;
use crate::outbox::{Failure, Outgoing};
use crate::push::{Notification, Sink};
use crate::request;
use crate::store::{presence, Ctx, Notify};

#[cfg(test)]
mod fuzz;

/// Most jobs in one transaction (the embedded broker lets at most `broker.service_inflight`,
/// 1000 by default, be unacked anyway).
const MAX_BATCH: usize = 1024;

/// An inbound publish for the writer.
pub(crate) struct Job {
    pub(crate) work: Work,
    /// The inbound publish to ack to the broker once the batch is durable.
    pub(crate) ack: Option<Publish>,
    /// The MQTT connection it arrived on (acks for an older connection are dropped).
    pub(crate) epoch: u64,
}

/// What a job asks for.
pub(crate) enum Work {
    /// A device's request from `chat/<user>/out/<device>`.
    Request {
        user: UserId,
        device: DeviceId,
        payload: Bytes,
    },
    /// A device's presence from `presence/<user>/<device>`.
    Presence {
        user: UserId,
        device: DeviceId,
        online: bool,
    },
    /// Mark offline the devices that look online but have no connection.
    Reconcile,
    /// Publish every user's status again (the broker lost its retained messages).
    Republish,
    /// Nothing to do but ack (a publish on a topic the bridge does not handle).
    Skip,
}

/// Answers whether a client id has an open connection (the embedded broker knows).
pub type Liveness = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The result of one committed batch, in order.
pub(crate) struct Batch {
    pub(crate) publishes: Vec<Outgoing>,
    pub(crate) acks: Vec<(Publish, u64)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs the writer until `jobs` closes, then returns (dropping `batches`).
/// Notifications go to `push` when push is configured.
pub(crate) fn run(
    mut conn: Connection,
    wal: &Wal,
    limits: Limits,
    liveness: Option<Liveness>,
    push: Option<Sink>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    batches: mpsc::Sender<Batch>,
) {
    let notify = match &push {
        Some(sink) => Notify::On {
            preview: sink.preview,
        },
        None => Notify::Off,
    };
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let size = batch.len();
        let (out, pushes) = process(&mut conn, &limits, liveness.as_ref(), notify, batch);
        debug!(
            size,
            publishes = out.publishes.len(),
            pushes = pushes.len(),
            "batch committed"
        );
        if let Some(sink) = &push {
            for notification in pushes {
                sink.queue.push(notification);
            }
        }
        if batches.blocking_send(out).is_err() {
            return;
        }
        // The batch's acks are on their way; the next batch may wait for this.
        wal.rewind_if_due(&conn);
    }
}

/// Refuses an outcome with a publish over the largest reply (`limits.max_reply_bytes`,
/// under the broker's packet limit): the request is then rolled back and answered
/// `too_large`. Pages are cut to fit before this; it is the last line of defence
/// that keeps the bridge's connection to the broker from being dropped.
fn fits(out: Vec<Outgoing>, limits: &Limits) -> Result<Vec<Outgoing>, Failure> {
    let max = limits.max_reply_bytes();
    match out.iter().map(|o| o.payload.len()).max() {
        Some(largest) if largest > max => {
            error!(
                bytes = largest,
                max, "a reply or event would be over the packet limit; request refused"
            );
            Err(Failure::new(
                ErrorCode::TooLarge,
                format!("the reply would be over the limit of {max} bytes"),
            ))
        }
        _ => Ok(out),
    }
}

/// Handles a batch in one transaction; returns what to publish and ack, and the
/// push notifications the committed requests call for (none if the commit failed).
fn process(
    conn: &mut Connection,
    limits: &Limits,
    liveness: Option<&Liveness>,
    notify: Notify,
    jobs: Vec<Job>,
) -> (Batch, Vec<Notification>) {
    let now = now_ms();
    let mut acks = Vec::with_capacity(jobs.len());
    let mut replies: Vec<(Option<String>, &UserId, &DeviceId)> = Vec::new();
    let mut pushes = Vec::new();
    let result = (|| -> rusqlite::Result<Vec<Outgoing>> {
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut publishes = Vec::new();
        for job in &jobs {
            let (user, device, payload) = match &job.work {
                Work::Request {
                    user,
                    device,
                    payload,
                } => (user, device, payload),
                Work::Presence {
                    user,
                    device,
                    online,
                } => {
                    publishes.extend(presence::update(
                        &tx,
                        user,
                        device,
                        *online,
                        now,
                        limits.max_devices_per_user,
                    )?);
                    continue;
                }
                Work::Reconcile => {
                    if let Some(is_connected) = liveness {
                        publishes.extend(presence::reconcile(&tx, is_connected.as_ref(), now)?);
                    }
                    continue;
                }
                Work::Republish => {
                    publishes.extend(presence::all(&tx)?);
                    continue;
                }
                Work::Skip => continue,
            };
            let outcome = match request::decode(payload, limits.max_request_bytes()) {
                Err(rejected) => Err((rejected.id, rejected.failure)),
                Ok(req) => {
                    let id = req.id().map(|i| i.to_string());
                    replies.push((id.clone(), user, device));
                    let sp = tx.savepoint()?;
                    let ctx = Ctx {
                        conn: &sp,
                        user,
                        device,
                        limits,
                        now,
                        notify,
                        pushes: RefCell::new(Vec::new()),
                    };
                    match ctx.handle(req).and_then(|out| fits(out, limits)) {
                        Ok(out) => {
                            let calls_for = ctx.pushes.take();
                            sp.commit()?;
                            pushes.extend(calls_for);
                            Ok(out)
                        }
                        Err(failure) => Err((id, failure)),
                    }
                }
            };
            match outcome {
                Ok(out) => publishes.extend(out),
                Err((id, failure)) => publishes.push(Outgoing::event(
                    topics::dev(user, device),
                    &failure.reply(id),
                )),
            }
        }
        tx.commit()?;
        Ok(publishes)
    })();
    let publishes = match result {
        Ok(p) => p,
        Err(err) => {
            pushes.clear();
            // Nothing of the batch is stored: every request that expected a reply learns so.
            error!(cause = %err, "batch failed; nothing of it was stored");
            let failure = Failure::new(ErrorCode::Internal, "storage failure; retry later");
            replies
                .into_iter()
                .map(|(id, user, device)| {
                    Outgoing::event(topics::dev(user, device), &failure.reply(id))
                })
                .collect()
        }
    };
    for job in jobs {
        if let Some(p) = job.ack {
            acks.push((p, job.epoch));
        }
    }
    (Batch { publishes, acks }, pushes)
}
