//! Pacing of a cycle's requests to one app (SPEC: "outgoing requests to one app are paced"). It is
//! GCRA on the bridge's clock, so the dispatcher is never put to sleep by it: it asks when the
//! next step may go and serves its immediate queue until then. Every request takes one cell: a
//! step that sent several (look-up, create, PATCH) is charged the rest after it, and the next
//! step waits until they are paid. It is not the admission window of R2, which must be exact
//! (see `window.rs`).

use crate::clock::{Millis, SharedClock};

const NANOS_PER_MS: i128 = 1_000_000;

pub struct Pacer {
    requests_per_second: u32,
    clock: SharedClock,
    /// One cell's time, in nanoseconds.
    interval: i128,
    /// How far ahead of now the theoretical arrival time may be (a burst of one second's cells).
    tolerance: i128,
    /// The theoretical arrival time of the next request, in nanoseconds of the bridge's clock.
    tat: i128,
}

impl Pacer {
    pub fn new(requests_per_second: u32, clock: SharedClock) -> Self {
        let rps = i128::from(requests_per_second.max(1));
        let interval = 1_000 * NANOS_PER_MS / rps;
        Self {
            requests_per_second,
            clock,
            interval,
            tolerance: interval * (rps - 1),
            tat: 0,
        }
    }

    pub fn requests_per_second(&self) -> u32 {
        self.requests_per_second
    }

    fn now(&self) -> i128 {
        i128::from(self.clock.now().max(0)) * NANOS_PER_MS
    }

    /// Takes a cell for one request now, or says when one will be there.
    pub fn take(&mut self) -> Result<(), Millis> {
        let now = self.now();
        let tat = self.tat.max(now);
        let allowed_at = tat - self.tolerance;
        if allowed_at > now {
            return Err(((allowed_at + NANOS_PER_MS - 1) / NANOS_PER_MS) as Millis);
        }
        self.tat = tat + self.interval;
        Ok(())
    }

    /// Charges `requests` more cells, sent already: the next `take` waits until they are paid.
    pub fn charge(&mut self, requests: u64) {
        let now = self.now();
        self.tat = self.tat.max(now) + self.interval * i128::from(requests);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn two_per_second_lets_two_through_then_one_every_half_second() {
        let clock = ManualClock::new(1_000_000);
        let mut pacer = Pacer::new(2, clock.clone());
        assert!(pacer.take().is_ok());
        assert!(pacer.take().is_ok());
        let next = pacer.take().unwrap_err();
        assert_eq!(next, 1_000_500);
        clock.advance(Duration::from_millis(500));
        assert!(pacer.take().is_ok());
        assert!(pacer.take().is_err());
    }

    #[test]
    fn a_step_that_sent_four_requests_pays_for_each_before_the_next_goes() {
        let clock = ManualClock::new(1_000_000);
        let mut pacer = Pacer::new(2, clock.clone());
        assert!(pacer.take().is_ok());
        pacer.charge(3);
        // Four cells of half a second from 1 000 000; the burst of two lets the next go at 1 001 500.
        assert_eq!(pacer.take(), Err(1_001_500));
        clock.advance(Duration::from_millis(1_500));
        assert!(pacer.take().is_ok());
        assert!(pacer.take().is_err());
    }
}
