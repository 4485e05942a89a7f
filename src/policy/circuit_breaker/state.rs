//! The breaker's state machine, with time passed in: no lock, no clock, no metrics.
//!
//! ```text
//!   Closed --(trip: N failures in a row, or failure rate over the window)--> Open
//!   Open ----(open_for has passed)-----------------------------------------> HalfOpen
//!   HalfOpen --(half_open_requests probes succeeded)------------------------> Closed
//!   HalfOpen --(a probe failed: open twice as long, up to max_open_for)------> Open
//! ```
//!
//! Each state has one method saying what it waits for ([`Breaker::closed`],
//! [`Breaker::open`], [`Breaker::half_open`]). The owners ([`super::service`],
//! [`super::endpoint`]) hold a [`Breaker`] under a mutex, feed it calls and outcomes, and
//! report the [`Transition`]s it returns.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::window::RollingWindow;
use super::BreakerConfig;

/// Where a breaker is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls flow; failures are counted.
    Closed,
    /// Calls are refused until the open duration has passed.
    Open,
    /// A few probe calls decide whether to close or open again.
    HalfOpen,
}

impl BreakerState {
    /// The name the admin page and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }

    /// The value of the state gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// A change of state, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    /// How long the breaker stays open, when it just opened.
    pub open_for: Option<Duration>,
}

/// Leave to make one call, and the state it was given in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket {
    /// The breaker's generation when the call was admitted: an outcome reported under
    /// another generation belongs to a state that is gone and is ignored.
    generation: u64,
    /// Whether the call holds one of half-open's probe slots.
    probe: bool,
}

impl Ticket {
    /// A ticket for a call admitted while closed in `generation` (the lock-free path).
    pub fn closed(generation: u64) -> Self {
        Self {
            generation,
            probe: false,
        }
    }

    /// The breaker generation the call was admitted in.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the call holds a probe slot (and must give it back if it ends unheard).
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// The state and what each state keeps.
#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open {
        /// When probing may start.
        until: Instant,
    },
    HalfOpen {
        /// When probing started: attempts that started earlier are not probes.
        since: Instant,
        /// Probes admitted and not yet answered.
        probes_in_flight: u32,
        /// Probes that succeeded.
        probes_succeeded: u32,
    },
}

/// One breaker's state machine.
#[derive(Debug)]
pub(super) struct Breaker {
    config: Arc<BreakerConfig>,
    state: State,
    /// Bumped on every transition (see [`Ticket`]). Fits in 62 bits for any real run.
    generation: u64,
    /// Failures in a row while closed; reset by a success and on closing.
    consecutive_failures: u32,
    /// Calls over the rolling window, when a failure rate is configured; cleared on
    /// closing.
    window: Option<RollingWindow>,
    /// The duration of the current (or last) open period: `open_for` on a trip from
    /// closed, doubled on every failed probe up to `max_open_for`.
    open_for: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: Arc<BreakerConfig>, now: Instant) -> Self {
        let window = config
            .failure_rate
            .map(|rate| RollingWindow::new(rate.window, now));
        Self {
            open_for: config.open_for,
            config,
            state: State::Closed,
            generation: 0,
            consecutive_failures: 0,
            window,
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// The current generation (see [`Ticket`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When an open breaker may start probing; `None` unless open.
    pub fn reopens_at(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Lets time act: an open breaker whose time has passed becomes half-open.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        match self.state {
            State::Open { until } => self.open(until, now),
            State::Closed | State::HalfOpen { .. } => None,
        }
    }

    /// Admits a call (a probe, when half-open), or refuses it: open, or half-open with
    /// every probe slot taken. Call [`tick`](Self::tick) first.
    pub fn try_admit(&mut self) -> Option<Ticket> {
        let generation = self.generation;
        match &mut self.state {
            State::Closed => Some(Ticket::closed(generation)),
            State::Open { .. } => None,
            State::HalfOpen {
                probes_in_flight,
                probes_succeeded,
                ..
            } => {
                let taken = *probes_in_flight + *probes_succeeded;
                if taken >= self.config.half_open_requests {
                    return None;
                }
                *probes_in_flight += 1;
                Some(Ticket {
                    generation,
                    probe: true,
                })
            }
        }
    }

    /// Gives back the probe slot of a call that ended without an outcome (its caller went
    /// away), so another call can probe.
    pub fn release(&mut self, ticket: Ticket) {
        if ticket.generation != self.generation || !ticket.probe {
            return;
        }
        if let State::HalfOpen {
            probes_in_flight, ..
        } = &mut self.state
        {
            *probes_in_flight = probes_in_flight.saturating_sub(1);
        }
    }

    /// Records the outcome of a call this breaker admitted.
    pub fn record(&mut self, ticket: Ticket, failed: bool, now: Instant) -> Option<Transition> {
        if ticket.generation != self.generation {
            return None;
        }
        self.release(ticket);
        self.outcome(failed, now)
    }

    /// Records the outcome of an attempt that started at `started` without asking this
    /// breaker (endpoint breakers: the balancer sends the traffic). While open, outcomes
    /// are of attempts begun before the breaker opened; while half-open, only attempts
    /// begun since count as probes.
    pub fn observe(&mut self, started: Instant, failed: bool, now: Instant) -> Option<Transition> {
        match self.state {
            State::Open { .. } => None,
            State::HalfOpen { since, .. } if started < since => None,
            State::Closed | State::HalfOpen { .. } => self.outcome(failed, now),
        }
    }

    /// Whether a success recorded now would change nothing: closed, no failure counted
    /// in a row, and no rolling window to count it in.
    pub fn settled(&self) -> bool {
        matches!(self.state, State::Closed)
            && self.consecutive_failures == 0
            && self.window.is_none()
    }

    /// Failures in a row counted while closed.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The failure rate over the window at `now`, when one is configured and not empty.
    pub fn failure_rate(&self, now: Instant) -> Option<f64> {
        self.window.as_ref()?.totals(now).failure_rate()
    }

    /// The duration of the current open period; `None` while closed.
    pub fn opened_for(&self) -> Option<Duration> {
        match self.state {
            State::Closed => None,
            State::Open { .. } | State::HalfOpen { .. } => Some(self.open_for),
        }
    }

    /// Hands an outcome to the state it happened in.
    fn outcome(&mut self, failed: bool, now: Instant) -> Option<Transition> {
        match self.state {
            State::Closed => self.closed(failed, now),
            State::Open { .. } => None,
            State::HalfOpen { .. } => self.half_open(failed, now),
        }
    }

    /// Closed waits for the failures that trip it: `consecutive_failures` in a row, or a
    /// failure rate at or above the threshold once the window holds `min_requests` calls.
    fn closed(&mut self, failed: bool, now: Instant) -> Option<Transition> {
        self.consecutive_failures = if failed {
            self.consecutive_failures.saturating_add(1)
        } else {
            0
        };
        let in_a_row = self
            .config
            .consecutive_failures
            .is_some_and(|limit| self.consecutive_failures >= limit);
        let by_rate = match (&mut self.window, &self.config.failure_rate) {
            (Some(window), Some(rate)) => {
                window.record(failed, now);
                let totals = window.totals(now);
                totals.requests >= u64::from(rate.min_requests)
                    && totals.failure_rate().is_some_and(|r| r >= rate.threshold)
            }
            _ => false,
        };
        if !(in_a_row || by_rate) {
            return None;
        }
        self.open_for = self.config.open_for;
        Some(self.enter(State::Open {
            until: now + self.open_for,
        }))
    }

    /// Open waits for its time to pass, then lets probes through.
    fn open(&mut self, until: Instant, now: Instant) -> Option<Transition> {
        if now < until {
            return None;
        }
        Some(self.enter(State::HalfOpen {
            since: now,
            probes_in_flight: 0,
            probes_succeeded: 0,
        }))
    }

    /// Half-open waits for `half_open_requests` probes to succeed (closing, with every
    /// counter and the backoff reset) or for one to fail (opening again, twice as long as
    /// last time, up to `max_open_for`).
    fn half_open(&mut self, failed: bool, now: Instant) -> Option<Transition> {
        if failed {
            self.open_for = self
                .open_for
                .saturating_mul(2)
                .min(self.config.max_open_for);
            return Some(self.enter(State::Open {
                until: now + self.open_for,
            }));
        }
        let State::HalfOpen {
            probes_succeeded, ..
        } = &mut self.state
        else {
            return None;
        };
        *probes_succeeded += 1;
        if *probes_succeeded < self.config.half_open_requests {
            return None;
        }
        self.consecutive_failures = 0;
        if let Some(window) = &mut self.window {
            window.clear();
        }
        self.open_for = self.config.open_for;
        Some(self.enter(State::Closed))
    }

    /// Moves to `next`, starting a new generation.
    fn enter(&mut self, next: State) -> Transition {
        let from = self.state();
        self.state = next;
        self.generation += 1;
        let to = self.state();
        Transition {
            from,
            to,
            open_for: (to == BreakerState::Open).then_some(self.open_for),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::outcome::Conditions;
    use crate::policy::circuit_breaker::FailureRate;

    const SECOND: Duration = Duration::from_secs(1);

    fn config(consecutive: Option<u32>, rate: Option<FailureRate>) -> Arc<BreakerConfig> {
        let failure_on = Conditions {
            gateway_error: true,
            ..Default::default()
        };
        Arc::new(
            BreakerConfig::try_new(consecutive, rate, SECOND, 4 * SECOND, 2, failure_on).unwrap(),
        )
    }

    #[test]
    fn stale_outcomes_are_ignored() {
        let now = Instant::now();
        let mut breaker = Breaker::new(config(Some(1), None), now);
        let before = breaker.try_admit().unwrap();
        let tripper = breaker.try_admit().unwrap();
        assert!(breaker.record(tripper, true, now).is_some());
        assert_eq!(breaker.state(), BreakerState::Open);
        let later = now + SECOND;
        assert!(breaker.tick(later).is_some());
        // A call admitted while closed ends during half-open: it is not a probe.
        assert_eq!(breaker.record(before, false, later), None);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        // Observed attempts that began before half-open are not probes either.
        assert_eq!(breaker.observe(now, false, later), None);
        let first = breaker.observe(later, false, later);
        assert_eq!(first, None);
        let second = breaker.observe(later, false, later).unwrap();
        assert_eq!(second.to, BreakerState::Closed);
    }

    #[test]
    fn trips_on_whichever_condition_comes_first() {
        let rate = FailureRate::try_new(0.5, 4, 10 * SECOND).unwrap();
        let now = Instant::now();
        let mut breaker = Breaker::new(config(Some(3), Some(rate)), now);
        for failed in [true, false, true] {
            let ticket = breaker.try_admit().unwrap();
            assert_eq!(breaker.record(ticket, failed, now), None);
        }
        // Four calls, two failed: 50% reaches the threshold before three in a row.
        let ticket = breaker.try_admit().unwrap();
        let transition = breaker.record(ticket, false, now);
        assert_eq!(breaker.failure_rate(now), Some(0.5));
        assert_eq!(
            transition,
            Some(Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open,
                open_for: Some(SECOND),
            })
        );
        assert_eq!(breaker.reopens_at(), Some(now + SECOND));
    }
}
