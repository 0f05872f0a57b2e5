//! Pacing of a cycle's requests to one app (SPEC: "outgoing requests to one app are paced"). It is
//! GCRA (governor) on the bridge's clock, so the dispatcher is never put to sleep by it: it asks
//! when the next step may go and serves its immediate queue until then. It is not the admission
//! window of R2, which must be exact (see `window.rs`).

use std::num::NonZeroU32;

use governor::clock::Clock as GovernorClock;
use governor::nanos::Nanos;
use governor::{Quota, RateLimiter};

use crate::clock::{Millis, SharedClock};

#[derive(Clone)]
struct BridgeClock(SharedClock);

impl GovernorClock for BridgeClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.0.now().max(0) as u64 * 1_000_000)
    }
}

pub struct Pacer {
    requests_per_second: u32,
    limiter: RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        BridgeClock,
        governor::middleware::NoOpMiddleware<Nanos>,
    >,
}

impl Pacer {
    pub fn new(requests_per_second: u32, clock: SharedClock) -> Self {
        let rps = NonZeroU32::new(requests_per_second.max(1)).expect("non-zero");
        Self {
            requests_per_second,
            limiter: RateLimiter::direct_with_clock(Quota::per_second(rps), BridgeClock(clock)),
        }
    }

    pub fn requests_per_second(&self) -> u32 {
        self.requests_per_second
    }

    /// Takes a cell for one request now, or says when one will be there.
    pub fn take(&self) -> Result<(), Millis> {
        self.limiter.check().map_err(|not_until| {
            let at: u64 = not_until.earliest_possible().into();
            at.div_ceil(1_000_000) as Millis
        })
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
        let pacer = Pacer::new(2, clock.clone());
        assert!(pacer.take().is_ok());
        assert!(pacer.take().is_ok());
        let next = pacer.take().unwrap_err();
        assert_eq!(next, 1_000_500);
        clock.advance(Duration::from_millis(500));
        assert!(pacer.take().is_ok());
        assert!(pacer.take().is_err());
    }
}
