//! Runs of plain texts to open 1-1 chats, stored in one statement per run.
//!
//! Under load most of a batch is texts to existing 1-1 chats. One after the
//! other each costs a round trip to the database; a run of them (consecutive
//! in the batch, looked up as no repeat and not blocked, of this bridge's
//! users) is stored in one statement that numbers each conversation's seqs and
//! each user's useqs in the run's order, exactly as one after the other would.
//! A text to a chat that does not exist yet or is closed stops the run (the
//! batch runs again with a savepoint per request, the general path).

use std::collections::HashMap;

use messenger_protocol::wire::{Event, Reactions, Request};
use messenger_protocol::UserId;

use super::context::{int, nat, Looked};
use super::db::Db;
use crate::config::Limits;
use crate::rate::{Action, Ledger, RateLimits};
use crate::sqlite::context::check_body;
use crate::{Effect, Input, Outcome};

/// Why a run stopped before its outcomes.
pub(super) enum Stop {
    /// The database failed.
    Database(postgres::Error),
    /// A text's chat does not exist or is closed: the general path handles it.
    NotOpen,
}

impl From<postgres::Error> for Stop {
    fn from(err: postgres::Error) -> Self {
        Self::Database(err)
    }
}

/// Whether `input` is a text the run can store: a plain `send` (no reply, no
/// attachments) to a 1-1 chat of its sender, looked up at the batch's start as
/// neither a repeat nor blocked (`looked` has only this bridge's users).
fn is_text(input: &Input, looked: Option<&Looked>) -> bool {
    let Input::Request { user, request, .. } = input else {
        return false;
    };
    let Request::Send {
        conv,
        reply_to: None,
        attachments,
        body,
        ..
    } = request
    else {
        return false;
    };
    let Some((a, b)) = conv.direct_members() else {
        return false;
    };
    attachments.is_empty()
        && !body.is_empty()
        && a != b
        && (user == a || user == b)
        && looked.is_some_and(|l| !l.repeat && !l.blocked)
}

/// The end of the run of texts starting at `start` (`start` itself if none).
pub(super) fn run_end(inputs: &[Input], start: usize, looked: &HashMap<usize, Looked>) -> usize {
    let mut end = start;
    while end < inputs.len() && is_text(&inputs[end], looked.get(&end)) {
        end += 1;
    }
    end
}

/// Stores the run `texts` (at `first` in the batch): each text's outcome, in
/// order. A text over its sender's rate is answered `rate_limited` and left out;
/// one over the body limit `too_large`.
pub(super) fn store(
    db: &Db<'_>,
    texts: &[Input],
    first: usize,
    ledger: &mut Ledger,
    (rates, limits): (&RateLimits, &Limits),
    now: u64,
) -> Result<Vec<Outcome>, Stop> {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(texts.len());
    let mut kept = Vec::new();
    for (k, input) in texts.iter().enumerate() {
        let Input::Request { user, request, .. } = input else {
            outcomes.push(Some(Outcome::default()));
            continue;
        };
        // As `send` checks: the body first, then the sender's rate.
        let checked = match request {
            Request::Send { body, .. } => check_body(limits, body),
            _ => Ok(()),
        }
        .and_then(|()| {
            let allowance = ledger.allowance(first + k, rates);
            let allowed = allowance.check(user, Action::Send);
            ledger.note(first + k, allowance);
            allowed
        });
        match checked {
            Ok(()) => {
                kept.push(k);
                outcomes.push(None);
            }
            Err(failure) => outcomes.push(Some(Outcome {
                effects: vec![Effect::reply(
                    &failure.reply(request.id().map(|i| i.to_string())),
                )],
                notifications: Vec::new(),
            })),
        }
    }
    let mut convs: Vec<String> = Vec::with_capacity(kept.len());
    let mut columns: [Vec<&str>; 6] = Default::default();
    for &k in &kept {
        let Input::Request {
            user,
            device,
            request: Request::Send { id, conv, body, .. },
        } = &texts[k]
        else {
            continue;
        };
        let Some((a, b)) = conv.direct_members() else {
            continue;
        };
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        convs.push(conv.to_string());
        columns[0].push(lo.as_str());
        columns[1].push(hi.as_str());
        columns[2].push(user.as_str());
        columns[3].push(device.as_str());
        columns[4].push(id.as_str());
        columns[5].push(body.as_str());
    }
    let rows = db.rows(
        "WITH input AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                  $5::text[], $6::text[], $7::text[])
                 WITH ORDINALITY AS t(conv, lo, hi, sender, device, req_id, body, n)
         ), per_conv AS (
             SELECT conv, count(*) AS c FROM input GROUP BY conv
         ), s AS (
             UPDATE conversations SET last_seq = conversations.last_seq + p.c
             FROM per_conv p WHERE conversations.conv = p.conv AND NOT conversations.closed
             RETURNING conversations.conv, conversations.last_seq AS top, p.c
         ), numbered AS (
             SELECT i.*, s.top - s.c + row_number() OVER (PARTITION BY i.conv ORDER BY i.n) AS seq
             FROM input i JOIN s ON s.conv = i.conv
         ), deliveries AS (
             SELECT n, conv, seq, lo AS who FROM numbered
             UNION ALL SELECT n, conv, seq, hi FROM numbered
         ), per_user AS (
             SELECT who, count(*) AS c FROM deliveries GROUP BY who
         ), u AS (
             INSERT INTO user_seqs (\"user\", last_useq)
             SELECT who, c FROM per_user ORDER BY who COLLATE \"C\"
             ON CONFLICT (\"user\") DO UPDATE SET last_useq = user_seqs.last_useq + EXCLUDED.last_useq
             RETURNING \"user\", last_useq AS top
         ), useqs AS (
             SELECT d.n, d.conv, d.seq, d.who,
                    u.top - p.c + row_number() OVER (PARTITION BY d.who ORDER BY d.n) AS useq
             FROM deliveries d JOIN per_user p ON p.who = d.who JOIN u ON u.\"user\" = d.who
         ), stored AS (
             SELECT m.*, a.useq AS useq_lo, b.useq AS useq_hi
             FROM numbered m JOIN useqs a ON a.n = m.n AND a.who = m.lo
                             JOIN useqs b ON b.n = m.n AND b.who = m.hi
         ), e AS (
             INSERT INTO events (conv, seq, ts, kind, sender, device, req_id, body, useq_lo, useq_hi)
             SELECT conv, seq, $8, 'message', sender, device, req_id, body, useq_lo, useq_hi FROM stored
         ), r AS (
             INSERT INTO requests (sender, req_id, conv, seq) SELECT sender, req_id, conv, seq FROM stored
         ), mm AS (
             UPDATE members SET read_seq = x.seq,
                                delivered_seq = GREATEST(members.delivered_seq, x.seq)
             FROM (SELECT conv, sender, max(seq) AS seq FROM stored GROUP BY conv, sender) x
             WHERE members.conv = x.conv AND members.\"user\" = x.sender
         ), i AS (
             INSERT INTO inbox (\"user\", useq, conv, seq) SELECT who, useq, conv, seq FROM useqs
         )
         SELECT n, seq, useq_lo, useq_hi FROM stored",
        &[
            &convs,
            &columns[0],
            &columns[1],
            &columns[2],
            &columns[3],
            &columns[4],
            &columns[5],
            &int(now),
        ],
    )?;
    if rows.len() != kept.len() {
        return Err(Stop::NotOpen);
    }
    let mut numbers = HashMap::with_capacity(rows.len());
    for row in &rows {
        let n: i64 = row.try_get(0)?;
        numbers.insert(n, (nat(row, 1)?, nat(row, 2)?, nat(row, 3)?));
    }
    for (position, &k) in kept.iter().enumerate() {
        let Input::Request {
            user,
            device,
            request: Request::Send { id, conv, body, .. },
        } = &texts[k]
        else {
            continue;
        };
        let n = i64::try_from(position + 1).unwrap_or(i64::MAX);
        let Some(&(seq, useq_lo, useq_hi)) = numbers.get(&n) else {
            return Err(Stop::NotOpen);
        };
        let Some((a, b)) = conv.direct_members() else {
            continue;
        };
        let (lo, hi): (&UserId, &UserId) = if a < b { (a, b) } else { (b, a) };
        let event = |useq| Event::Message {
            conv: conv.clone(),
            seq,
            ts: now,
            from: user.clone(),
            device: device.to_string(),
            id: id.clone(),
            body: body.clone(),
            reply_to: None,
            attachments: Vec::new(),
            edited: None,
            deleted: false,
            reactions: Reactions::new(),
            useq: Some(useq),
        };
        outcomes[k] = Some(Outcome {
            effects: vec![
                Effect::event(lo, &event(useq_lo)),
                Effect::event(hi, &event(useq_hi)),
                Effect::reply(&Event::Ack {
                    id: id.clone(),
                    conv: Some(conv.clone()),
                    seq: Some(seq),
                    ts: Some(now),
                }),
            ],
            notifications: Vec::new(),
        });
    }
    Ok(outcomes
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect())
}
