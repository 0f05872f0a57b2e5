//! The admission window of R2: at most N immediate pushes in ANY rolling window of W.
//!
//! This is a sliding log, not a token bucket. GCRA (governor) with a burst of 5 and a cell back
//! every 2 s admits up to 9 pushes in some 10-second window, so it cannot keep "the sixth inside
//! ten seconds is deferred". The dispatcher owns one `Window` per app and passes `now` in, so the
//! structure needs no lock and tests drive it with any clock.

use std::collections::VecDeque;

use crate::clock::Millis;

#[derive(Debug, Clone)]
pub struct Window {
    limit: usize,
    span: Millis,
    admitted: VecDeque<Millis>,
}

impl Window {
    pub fn new(limit: u32, span: Millis) -> Self {
        Self {
            limit: limit.max(1) as usize,
            span: span.max(1),
            admitted: VecDeque::new(),
        }
    }

    /// A window that remembers pushes made at `times` (ascending), e.g. before a restart.
    pub fn with_history(limit: u32, span: Millis, times: impl IntoIterator<Item = Millis>) -> Self {
        let mut w = Self::new(limit, span);
        w.admitted = times.into_iter().collect();
        w
    }

    pub fn reconfigure(&mut self, limit: u32, span: Millis) {
        self.limit = limit.max(1) as usize;
        self.span = span.max(1);
    }

    fn forget_old(&mut self, now: Millis) {
        while self.admitted.front().is_some_and(|&t| t + self.span <= now) {
            self.admitted.pop_front();
        }
    }

    /// Admits one push at `now`, or says when the window will next have room.
    pub fn try_admit(&mut self, now: Millis) -> Result<(), Millis> {
        self.forget_old(now);
        if self.admitted.len() < self.limit {
            self.admitted.push_back(now);
            Ok(())
        } else {
            Err(self.next_free_at(now))
        }
    }

    pub fn has_room(&mut self, now: Millis) -> bool {
        self.forget_old(now);
        self.admitted.len() < self.limit
    }

    /// When the next push can be admitted (`now` if there is room).
    pub fn next_free_at(&mut self, now: Millis) -> Millis {
        self.forget_old(now);
        if self.admitted.len() < self.limit {
            return now;
        }
        let oldest_that_matters = self.admitted[self.admitted.len() - self.limit];
        oldest_that_matters + self.span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_go_at_once_and_the_sixth_waits_for_the_first_to_leave() {
        let mut w = Window::new(5, 10_000);
        for _ in 0..5 {
            assert!(w.try_admit(0).is_ok());
        }
        assert_eq!(w.try_admit(3_000), Err(10_000));
        assert_eq!(w.try_admit(9_999), Err(10_000));
        for _ in 0..5 {
            assert!(w.try_admit(10_500).is_ok());
        }
        assert_eq!(w.try_admit(10_500), Err(20_500));
    }

    #[test]
    fn no_ten_second_span_ever_holds_more_than_five() {
        // A greedy client asking every 100 ms for a minute.
        let mut w = Window::new(5, 10_000);
        let mut admitted = Vec::new();
        for t in (0..60_000).step_by(100) {
            if w.try_admit(t).is_ok() {
                admitted.push(t);
            }
        }
        for (i, &t) in admitted.iter().enumerate() {
            let inside = admitted[i..].iter().take_while(|&&u| u < t + 10_000).count();
            assert!(inside <= 5, "{inside} admitted in the 10 s after {t}");
        }
        assert_eq!(admitted.len(), 30);
    }

    #[test]
    fn a_window_rebuilt_from_history_counts_the_pushes_before_a_restart() {
        let mut w = Window::with_history(5, 10_000, [1_000, 2_000, 3_000, 4_000]);
        assert!(w.try_admit(5_000).is_ok());
        assert_eq!(w.try_admit(5_000), Err(11_000));
    }
}
