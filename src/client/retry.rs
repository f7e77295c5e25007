//! The bounds of a routed call's retries: [`RetryOptions`] (how long, how many attempts,
//! how far apart), [`Backoff`] (exponential with jitter) and [`Attempts`], the course of
//! one operation (attempts made, time spent, nodes tried) from which the final error's
//! message is written.
//!
//! This module owns the arithmetic only: it never sleeps, connects or decides whether a
//! status is retried (that is [`super::hint::classify`]). Invariant: an [`Attempts`] never
//! allows more than `attempts_max` attempts nor an attempt that starts after its budget.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tonic::Status;

/// Distinct addresses an [`Attempts`] remembers for its final message.
const TRIED_SHOWN_MAX: usize = 8;

/// How a routed client retries. The defaults: 30 s, 64 attempts, backoff from 50 ms
/// doubling to 1 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOptions {
    /// Total time one operation may spend on attempts and backoff, from its first attempt
    /// (for a stream: from its last progress). It also bounds how long one attempt may
    /// wait for an answer.
    pub budget: Duration,
    /// Most attempts per operation, the first included (1 = never retry).
    pub attempts_max: u32,
    /// First backoff; each backoff doubles it, up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Seed of the jitter; `None`: a random seed per operation.
    pub jitter_seed: Option<u64>,
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            budget: Duration::from_secs(30),
            attempts_max: 64,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            jitter_seed: None,
        }
    }
}

impl RetryOptions {
    /// The defaults with another time budget.
    pub fn with_budget(budget: Duration) -> RetryOptions {
        RetryOptions {
            budget,
            ..RetryOptions::default()
        }
    }

    /// One attempt, no retry.
    pub fn no_retry() -> RetryOptions {
        RetryOptions {
            attempts_max: 1,
            ..RetryOptions::default()
        }
    }

    /// Checks the bounds the retry loop relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.attempts_max == 0 {
            return Err("attempts_max must be at least 1".into());
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            return Err(format!(
                "backoff must start above 0 and at most at its cap ({:?} vs {:?})",
                self.backoff_initial, self.backoff_max
            ));
        }
        Ok(())
    }
}

/// Exponential backoff with "equal jitter": each delay is half the current step plus a
/// random part of the other half, so retries from many clients spread out but never come
/// back at once.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
    max: Duration,
    rng: SmallRng,
}

impl Backoff {
    pub fn new(options: &RetryOptions) -> Backoff {
        let seed = options.jitter_seed.unwrap_or_else(rand::random);
        Backoff {
            step: options.backoff_initial,
            max: options.backoff_max,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The next delay, in `[step / 2, step]`; the step then doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let half = self.step / 2;
        let jitter_ns = self.rng.random_range(0..=half.as_nanos() as u64);
        let delay = half + Duration::from_nanos(jitter_ns);
        self.step = (self.step * 2).min(self.max);
        delay
    }
}

/// One operation's course: what was tried, how long it took, what is left.
#[derive(Debug)]
pub struct Attempts {
    options: RetryOptions,
    started: Instant,
    /// Attempts begun (the first included).
    made: u32,
    /// Hint-following hops since the last backoff.
    pub(super) hops_in_row: u32,
    pub(super) backoff: Backoff,
    tried: Vec<String>,
    /// Where a write's answer was lost (a transport failure after the request went out):
    /// from then on the operation's outcome is unknown, whatever a later attempt answers.
    /// Kept through [`Attempts::reset`]: an answer that came later does not say what the
    /// lost one would have.
    answer_lost_at: Option<String>,
}

impl Attempts {
    pub fn new(options: RetryOptions) -> Attempts {
        Attempts {
            options,
            started: Instant::now(),
            made: 1,
            hops_in_row: 0,
            backoff: Backoff::new(&options),
            tried: Vec::new(),
            answer_lost_at: None,
        }
    }

    /// Starts the budget and the count afresh: the operation made progress (a stream got
    /// an answer), so the next failure is a new outage.
    /// Cheap when nothing failed since the last reset (a stream calls it per answer).
    pub fn reset(&mut self) {
        self.started = Instant::now();
        if self.made > 1 || self.hops_in_row > 0 {
            self.made = 1;
            self.hops_in_row = 0;
            self.backoff = Backoff::new(&self.options);
        }
        self.tried.clear();
    }

    /// Time left in the budget.
    pub fn remaining(&self) -> Duration {
        self.options.budget.saturating_sub(self.started.elapsed())
    }

    /// Attempts made so far.
    pub fn made(&self) -> u32 {
        self.made
    }

    /// Notes that an attempt went to `addr` (kept for the final message).
    pub(super) fn tried(&mut self, addr: &str) {
        if self.tried.len() < TRIED_SHOWN_MAX && !self.tried.iter().any(|a| a == addr) {
            self.tried.push(addr.to_string());
        }
    }

    /// Whether another attempt may start after waiting `delay`.
    pub(super) fn may_retry_after(&self, delay: Duration) -> bool {
        self.made < self.options.attempts_max && delay < self.remaining()
    }

    /// Counts the attempt about to start.
    pub(super) fn begin_next(&mut self) {
        assert!(
            self.made < self.options.attempts_max,
            "attempt {} over the maximum {}",
            self.made + 1,
            self.options.attempts_max
        );
        self.made += 1;
    }

    /// Notes that a write sent to `addr` may have been carried out but its answer was lost.
    pub(super) fn answer_lost(&mut self, addr: &str) {
        self.answer_lost_at.get_or_insert_with(|| addr.to_string());
    }

    /// Whether a write of this operation may have been carried out unanswered.
    pub fn outcome_unknown(&self) -> bool {
        self.answer_lost_at.is_some()
    }

    /// The error to return for `status`, a final answer: unchanged, unless an earlier
    /// attempt's answer was lost. Then a refusal says nothing of whether the write
    /// happened (the first attempt may have written it; the retry then meets a deleted
    /// topic, a rejoining node or a moved window), so the error is `UNKNOWN`, never the
    /// refusal's own code, which callers take as "not written".
    pub fn final_error(&self, status: Status) -> Status {
        let Some(addr) = &self.answer_lost_at else {
            return status;
        };
        Status::unknown(format!(
            "{}; a later attempt was refused with {:?}: {}. Read the partition to find out \
             whether it was written, or send appends with a producer id and sequence, whose \
             retries are answered with the first attempt's offsets",
            outcome_unknown_at(addr),
            status.code(),
            status.message()
        ))
    }

    /// The status to return when giving up after `last`: its code and metadata, and a
    /// message that says what was tried; `UNKNOWN` when a write's answer was lost on the
    /// way (see [`Attempts::final_error`]).
    pub fn give_up(&self, last: &Status) -> Status {
        let message = format!(
            "gave up after {} attempt{} in {} ms (retry budget {} ms, at most {} attempts) on {}; last error: {}",
            self.made,
            if self.made == 1 { "" } else { "s" },
            self.started.elapsed().as_millis(),
            self.options.budget.as_millis(),
            self.options.attempts_max,
            if self.tried.is_empty() {
                "no node".to_string()
            } else {
                self.tried.join(", ")
            },
            last.message()
        );
        match &self.answer_lost_at {
            Some(addr) => Status::unknown(format!("{}; {message}", outcome_unknown_at(addr))),
            None => Status::with_metadata(last.code(), message, last.metadata().clone()),
        }
    }
}

/// How an error whose write's answer was lost at `addr` begins.
fn outcome_unknown_at(addr: &str) -> String {
    format!(
        "the outcome is unknown: an attempt on {addr} may have been carried out, but its answer was lost"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_bounded_jitter() {
        let options = RetryOptions {
            jitter_seed: Some(7),
            ..RetryOptions::default()
        };
        let mut backoff = Backoff::new(&options);
        let mut step = options.backoff_initial;
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} vs step {step:?}"
            );
            step = (step * 2).min(options.backoff_max);
        }
        assert_eq!(step, Duration::from_secs(1));
        // The same seed gives the same delays.
        let delays = |seed| {
            let mut b = Backoff::new(&RetryOptions {
                jitter_seed: Some(seed),
                ..options
            });
            (0..5).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(delays(3), delays(3));
    }

    #[test]
    fn attempts_stop_at_the_count_and_the_budget() {
        let options = RetryOptions {
            attempts_max: 3,
            budget: Duration::from_secs(60),
            ..RetryOptions::default()
        };
        let mut attempts = Attempts::new(options);
        assert!(attempts.may_retry_after(Duration::ZERO));
        attempts.begin_next();
        attempts.begin_next();
        assert!(!attempts.may_retry_after(Duration::ZERO));
        attempts.reset();
        assert_eq!(attempts.made(), 1);
        // A delay past the budget is refused.
        assert!(!attempts.may_retry_after(Duration::from_secs(61)));

        attempts.tried("a:1");
        attempts.tried("a:1");
        attempts.tried("b:2");
        let status = attempts.give_up(&Status::unavailable("down"));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().contains("a:1, b:2"),
            "{}",
            status.message()
        );
        assert!(status.message().contains("last error: down"));
        assert!(!attempts.outcome_unknown());
        let refused = Status::not_found("unknown topic");
        assert_eq!(
            attempts.final_error(refused.clone()).code(),
            tonic::Code::NotFound
        );

        // Once a write's answer is lost, no later answer is taken for a definite one.
        attempts.answer_lost("c:3");
        attempts.reset();
        assert!(attempts.outcome_unknown());
        let status = attempts.final_error(refused);
        assert_eq!(status.code(), tonic::Code::Unknown);
        assert!(status.message().contains("on c:3"), "{}", status.message());
        assert!(status.message().contains("NotFound: unknown topic"));
        let status = attempts.give_up(&Status::unavailable("down"));
        assert_eq!(status.code(), tonic::Code::Unknown);
        assert!(status.message().contains("gave up after"));
        assert!(RetryOptions::default().validate().is_ok());
        assert!(
            RetryOptions {
                attempts_max: 0,
                ..options
            }
            .validate()
            .is_err()
        );
    }
}
