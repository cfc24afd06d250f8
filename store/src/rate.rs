//! Per-user rate limits: sends (every request that stores a timeline event),
//! group creations and `token` requests, each a GCRA limiter keyed by user
//! (governor), configured by `limits.*`.
//!
//! The limiters live in the memory of the process that owns the store (the
//! bridge's writer thread): several bridges sharing one database each keep
//! their own, so a user spread over N bridges gets up to N times the rate.
//! A request over its limit is answered `rate_limited` with `retry_after_ms` and
//! stores nothing. A repeat of a request already stored is answered before the
//! limiter is asked (see the handlers), so a device's retry always gets its ack.

use std::cell::RefCell;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use messenger_protocol::UserId;

use crate::config::Limits;
use crate::Failure;

/// How often idle users' limiter state is forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// What a limited request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// A request that stores a timeline event: `send`, `edit`, `delete`, `react`,
    /// `group_add`, `group_remove`, `group_leave` (`limits.sends_per_sec`, `limits.sends_burst`).
    Send,
    /// `group_create` (`limits.group_creates_per_hour`).
    GroupCreate,
    /// `token` (`limits.token_requests_per_min`).
    Token,
}

/// The limiters of one store; a limit set to 0 is off.
pub(crate) struct RateLimits {
    sends: Option<DefaultKeyedRateLimiter<UserId>>,
    groups: Option<DefaultKeyedRateLimiter<UserId>>,
    tokens: Option<DefaultKeyedRateLimiter<UserId>>,
    clock: DefaultClock,
    /// When idle users were last forgotten.
    forgotten: Instant,
}

/// `quota` with its burst set, when one is given (a quota's own burst is its rate).
fn burst(quota: Quota, burst: Option<u32>) -> Quota {
    match burst.and_then(NonZeroU32::new) {
        Some(burst) => quota.allow_burst(burst),
        None => quota,
    }
}

/// A limiter for `quota`, or none when its rate is 0.
fn keyed(quota: Option<Quota>) -> Option<DefaultKeyedRateLimiter<UserId>> {
    quota.map(RateLimiter::keyed)
}

impl RateLimits {
    /// The limiters `limits` asks for.
    pub(crate) fn new(limits: &Limits) -> Self {
        let sends = NonZeroU32::new(limits.sends_per_sec).map(|rate| {
            let burst = NonZeroU32::new(limits.sends_burst).unwrap_or(rate);
            Quota::per_second(rate).allow_burst(burst)
        });
        let groups = NonZeroU32::new(limits.group_creates_per_hour)
            .map(|rate| burst(Quota::per_hour(rate), limits.group_creates_burst));
        let tokens = NonZeroU32::new(limits.token_requests_per_min)
            .map(|rate| burst(Quota::per_minute(rate), limits.token_requests_burst));
        Self {
            sends: keyed(sends),
            groups: keyed(groups),
            tokens: keyed(tokens),
            clock: DefaultClock::default(),
            forgotten: Instant::now(),
        }
    }

    /// Takes one request of `action` from `user`'s allowance, or refuses it with
    /// `rate_limited` and how long until it would be allowed (at least 1 ms).
    pub(crate) fn check(&self, user: &UserId, action: Action) -> Result<(), Failure> {
        let (limiter, what) = match action {
            Action::Send => (&self.sends, "sends"),
            Action::GroupCreate => (&self.groups, "group creations"),
            Action::Token => (&self.tokens, "token requests"),
        };
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter.check_key(user).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
            Failure::rate_limited(format!("too many {what}; retry in {ms} ms"), ms)
        })
    }

    /// Forgets the state of users whose allowance is full again, at most once a
    /// [`FORGET_EVERY`] (the maps would otherwise hold every user ever limited).
    pub(crate) fn forget_idle(&mut self) {
        if self.forgotten.elapsed() < FORGET_EVERY {
            return;
        }
        self.forgotten = Instant::now();
        for limiter in [&self.sends, &self.groups, &self.tokens]
            .into_iter()
            .flatten()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The limiters' answers to each request of one batch, by the request's place in
/// it. A batch may run twice (see `sqlite`: a request that failed after writing
/// sends it round again with a savepoint per request); the second run hears the
/// answers of the first, so each request is counted against its user once.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    answers: Vec<Vec<Result<(), Failure>>>,
}

impl Ledger {
    /// The limiters as the request at `place` sees them: the answers noted for
    /// it in an earlier run first, then the limiters themselves.
    pub(crate) fn allowance<'a>(&mut self, place: usize, limits: &'a RateLimits) -> Allowance<'a> {
        let mut heard = self
            .answers
            .get_mut(place)
            .map(std::mem::take)
            .unwrap_or_default();
        heard.reverse();
        Allowance {
            limits,
            heard: RefCell::new(heard),
            noted: RefCell::new(Vec::new()),
        }
    }

    /// Keeps the answers the request at `place` was given.
    pub(crate) fn note(&mut self, place: usize, allowance: Allowance<'_>) {
        if self.answers.len() <= place {
            self.answers.resize_with(place + 1, Vec::new);
        }
        self.answers[place] = allowance.noted.into_inner();
    }
}

/// One request's view of the limiters (see [`Ledger`]).
pub(crate) struct Allowance<'a> {
    limits: &'a RateLimits,
    /// Answers from an earlier run, last first.
    heard: RefCell<Vec<Result<(), Failure>>>,
    /// Answers the limiters gave in this run, in order.
    noted: RefCell<Vec<Result<(), Failure>>>,
}

impl<'a> Allowance<'a> {
    /// A view with no earlier run (a request handled outside a batch).
    pub(crate) fn new(limits: &'a RateLimits) -> Self {
        Self {
            limits,
            heard: RefCell::new(Vec::new()),
            noted: RefCell::new(Vec::new()),
        }
    }

    /// [`RateLimits::check`], or the answer an earlier run got to the same question.
    pub(crate) fn check(&self, user: &UserId, action: Action) -> Result<(), Failure> {
        if let Some(answer) = self.heard.borrow_mut().pop() {
            return answer;
        }
        let answer = self.limits.check(user, action);
        self.noted.borrow_mut().push(answer.clone());
        answer
    }
}

#[cfg(test)]
mod tests {
    use messenger_protocol::wire::ErrorCode;

    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).expect("valid user id")
    }

    #[test]
    fn a_burst_then_refusals_with_a_wait_per_user_and_action() {
        let limits = Limits {
            sends_per_sec: 1,
            sends_burst: 3,
            group_creates_per_hour: 2,
            token_requests_per_min: 0,
            token_requests_burst: Some(5),
            ..Limits::default()
        };
        let rates = RateLimits::new(&limits);
        let ann = user("ann");
        for _ in 0..3 {
            assert!(rates.check(&ann, Action::Send).is_ok());
        }
        let refused = rates.check(&ann, Action::Send).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        let wait = refused.retry_after_ms.expect("a wait");
        assert!((1..=1000).contains(&wait), "{wait}");
        assert!(rates.check(&user("bob"), Action::Send).is_ok(), "per user");
        assert!(rates.check(&ann, Action::GroupCreate).is_ok(), "per action");
        assert!(rates.check(&ann, Action::GroupCreate).is_ok());
        let refused = rates.check(&ann, Action::GroupCreate).unwrap_err();
        assert!(
            refused.retry_after_ms.unwrap_or(0) > 60_000,
            "an hour's quota"
        );
        for _ in 0..100 {
            assert!(rates.check(&ann, Action::Token).is_ok(), "0 turns it off");
        }
        let limits = Limits {
            token_requests_per_min: 60,
            token_requests_burst: Some(1),
            ..Limits::default()
        };
        let rates = RateLimits::new(&limits);
        assert!(rates.check(&ann, Action::Token).is_ok());
        let wait = rates.check(&ann, Action::Token).unwrap_err().retry_after_ms;
        assert!(wait.is_some_and(|ms| (1..=1000).contains(&ms)), "{wait:?}");
    }
}
