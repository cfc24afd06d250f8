//! The writer: one thread that owns the store and hands it batches.
//!
//! It blocks for the first job, then takes everything else already queued, and
//! has the store handle the whole batch in one transaction, each request on its
//! own (a failed request changes nothing). While a commit is syncing to disk,
//! new jobs queue up and form the next batch, so one fsync covers many
//! requests. Publishes and broker acks go to the publisher only after the store
//! returned: nothing is acked before it is durable. Push notifications the
//! batch calls for go to the push queue then too; handing them over never blocks.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use messenger_protocol::wire::{ErrorCode, Event};
use messenger_protocol::{DeviceId, UserId};
use messenger_push::{Alert, Notification, Sink, Target};
use messenger_store::{Effect, Failure, Housekeeping, Input, Outcome, Store};
use rumqttc::Publish;
use tokio::sync::mpsc;
use tracing::{debug, error};

use crate::config::Limits;
use crate::metrics::{self, BridgeMetrics};
use crate::outbox::Outgoing;
use crate::request;

#[cfg(test)]
mod fuzz;

/// Most jobs in one transaction (the embedded broker lets at most `broker.service_inflight`,
/// 1000 by default, be unacked anyway).
const MAX_BATCH: usize = 1024;

/// A job for the writer.
pub(crate) struct Job {
    pub(crate) work: Work,
    /// What to acknowledge once the batch is durable: an opaque handle the
    /// writer only carries.
    pub(crate) ack: Option<Ack>,
    /// The MQTT connection it arrived on (acks for an older connection are dropped).
    pub(crate) epoch: u64,
}

/// A request's acknowledgement, sent once the batch that handled it is durable.
pub(crate) enum Ack {
    /// An inbound MQTT publish, acked to the broker on the consumer connection.
    Mqtt(Publish),
    /// A message of the bridge's JetStream consumer (a NATS cluster).
    JetStream(Box<async_nats::jetstream::Message>),
}

/// What a job asks for.
pub(crate) enum Work {
    /// A device's request from `chat/<user>/out/<device>`.
    Request {
        user: UserId,
        device: DeviceId,
        payload: Bytes,
    },
    /// Anything else the store handles (presence, reconciling, republishing,
    /// dead push tokens).
    Store(Input),
    /// Nothing to do but ack (a publish on a topic the bridge does not handle).
    Skip,
    /// Nothing to store: wakes the writer so that the store's housekeeping
    /// (retention) runs while no request comes.
    Housekeeping,
}

/// The result of one committed batch, in order.
pub(crate) struct Batch {
    pub(crate) publishes: Vec<Outgoing>,
    pub(crate) acks: Vec<(Ack, u64)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs the writer until `jobs` closes, then returns (dropping `batches`).
/// Notifications go to `push` when push is configured; each batch and request
/// is counted in `metrics`.
pub(crate) fn run(
    mut store: Box<dyn Store>,
    limits: &Limits,
    push: Option<Sink>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    batches: mpsc::Sender<Batch>,
    metrics: &BridgeMetrics,
) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        batch.retain(|job| !matches!(job.work, Work::Housekeeping));
        if batch.is_empty() {
            housekeeping(store.as_mut(), &jobs);
            continue;
        }
        let size = batch.len();
        metrics.queue_depth.set(jobs.len() as i64);
        let (out, pushes) = process(store.as_mut(), limits, batch, now_ms(), metrics);
        debug!(
            size,
            publishes = out.publishes.len(),
            pushes = pushes.len(),
            "batch committed"
        );
        if let Some(sink) = &push {
            for notification in pushes {
                sink.queue.push(to_push(notification));
            }
        }
        if batches.blocking_send(out).is_err() {
            return;
        }
        // The batch's acks are on their way; the next batch may wait for this.
        housekeeping(store.as_mut(), &jobs);
    }
}

/// The store's housekeeping: one step, and more while no job waits (so a job
/// waits for one step at most).
fn housekeeping(store: &mut dyn Store, jobs: &mpsc::UnboundedReceiver<Job>) {
    while store.between_batches() == Housekeeping::More && jobs.is_empty() {}
}

/// What became of a job before the store saw it.
enum Planned {
    /// Handed to the store as the next input; a reply goes to `from`.
    Stored {
        from: Option<(UserId, DeviceId)>,
        /// For a request: its `type` label.
        kind: Option<&'static str>,
        /// For a request: its id, to answer `internal` if the batch fails.
        id: Option<Option<String>>,
    },
    /// A request that did not decode: answered at once.
    Rejected {
        from: (UserId, DeviceId),
        /// Boxed: an `Event` is large, and most jobs are stored.
        reply: Box<Event>,
    },
    /// Nothing to do.
    Nothing,
}

/// Handles a batch; returns what to publish and ack, and the push
/// notifications the committed requests call for (none if the commit failed).
/// Counts the batch and each request's outcome in `metrics`.
fn process(
    store: &mut dyn Store,
    limits: &Limits,
    jobs: Vec<Job>,
    now: u64,
    metrics: &BridgeMetrics,
) -> (Batch, Vec<messenger_store::Notification>) {
    let mut acks = Vec::with_capacity(jobs.len());
    let mut plan = Vec::with_capacity(jobs.len());
    let mut inputs = Vec::with_capacity(jobs.len());
    for job in jobs {
        if let Some(ack) = job.ack {
            acks.push((ack, job.epoch));
        }
        plan.push(decode(job.work, limits, &mut inputs));
    }
    let size = plan.len();
    let started = Instant::now();
    let processed = store.process(inputs, now);
    metrics.batch(size, started.elapsed(), processed.is_ok());
    let (publishes, pushes) = match processed {
        Ok(outcomes) => publish(plan, outcomes, metrics),
        Err(err) => {
            // Nothing of the batch is stored: every request that expected a reply learns so.
            error!(cause = %err, "batch failed; nothing of it was stored");
            (failed(plan, metrics), Vec::new())
        }
    };
    (Batch { publishes, acks }, pushes)
}

/// Decodes a job's work into the store's next input, or answers it at once.
fn decode(work: Work, limits: &Limits, inputs: &mut Vec<Input>) -> Planned {
    match work {
        Work::Request {
            user,
            device,
            payload,
        } => match request::decode(&payload, limits.max_request_bytes()) {
            Err(rejected) => Planned::Rejected {
                reply: Box::new(rejected.failure.reply(rejected.id)),
                from: (user, device),
            },
            Ok(request) => {
                let kind = Some(metrics::kind(&request));
                let id = Some(request.id().map(|i| i.to_string()));
                let from = Some((user.clone(), device.clone()));
                inputs.push(Input::Request {
                    user,
                    device,
                    request,
                });
                Planned::Stored { from, kind, id }
            }
        },
        Work::Store(input) => {
            inputs.push(input);
            Planned::Stored {
                from: None,
                kind: None,
                id: None,
            }
        }
        Work::Skip | Work::Housekeeping => Planned::Nothing,
    }
}

/// The publishes of a committed batch, in job order, and its notifications.
fn publish(
    plan: Vec<Planned>,
    outcomes: Vec<Outcome>,
    metrics: &BridgeMetrics,
) -> (Vec<Outgoing>, Vec<messenger_store::Notification>) {
    let mut publishes = Vec::new();
    let mut pushes = Vec::new();
    let mut outcomes = outcomes.into_iter();
    for planned in plan {
        match planned {
            Planned::Stored { from, kind, .. } => {
                let Some(outcome) = outcomes.next() else {
                    error!("the store returned fewer outcomes than inputs");
                    break;
                };
                if let Some(kind) = kind {
                    let reply = outcome.effects.iter().find_map(|effect| match effect {
                        Effect::Reply(payload) => Some(payload.as_slice()),
                        _ => None,
                    });
                    metrics.request(kind, reply.map_or(metrics::ACK, metrics::outcome_of));
                }
                let from = from.as_ref().map(|(u, d)| (u, d));
                publishes.extend(
                    outcome
                        .effects
                        .into_iter()
                        .filter_map(|effect| Outgoing::of(effect, from)),
                );
                pushes.extend(outcome.notifications);
            }
            Planned::Rejected { from, reply } => {
                metrics.request(metrics::INVALID, rejected_code(&reply));
                publishes.extend(Outgoing::of(
                    Effect::reply(&reply),
                    Some((&from.0, &from.1)),
                ));
            }
            Planned::Nothing => {}
        }
    }
    (publishes, pushes)
}

/// The replies of a batch that failed: `internal` to every request, decoded or not.
fn failed(plan: Vec<Planned>, metrics: &BridgeMetrics) -> Vec<Outgoing> {
    let failure = Failure::new(ErrorCode::Internal, "storage failure; retry later");
    let internal = metrics::code(ErrorCode::Internal);
    plan.into_iter()
        .filter_map(|planned| match planned {
            Planned::Stored {
                from: Some((user, device)),
                kind,
                id: Some(id),
            } => {
                metrics.request(kind.unwrap_or(metrics::INVALID), internal);
                Outgoing::of(Effect::reply(&failure.reply(id)), Some((&user, &device)))
            }
            Planned::Rejected { from, reply } => {
                metrics.request(metrics::INVALID, rejected_code(&reply));
                Outgoing::of(Effect::reply(&reply), Some((&from.0, &from.1)))
            }
            _ => None,
        })
        .collect()
}

/// The `outcome` label of a request that did not decode.
fn rejected_code(reply: &Event) -> &'static str {
    match reply {
        Event::Error { code, .. } => metrics::code(*code),
        _ => "unknown",
    }
}

/// The push service's form of a notification the store computed.
fn to_push(n: messenger_store::Notification) -> Notification {
    Notification {
        alert: std::sync::Arc::new(Alert {
            user: n.user,
            conv: n.conv,
            seq: n.seq,
            title: n.title,
            body: n.body,
            badge: n.badge,
        }),
        targets: n
            .targets
            .into_iter()
            .map(|(platform, token)| Target { platform, token })
            .collect(),
    }
}
