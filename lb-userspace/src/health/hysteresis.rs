//! Rise/fall hysteresis over health-check results: when a backend goes down
//! and comes back. Pure state (no I/O), so the director's bookkeeping holds
//! one per backend and the rules are unit-tested.

/// Rise/fall hysteresis over check results. A backend starts up (as in
/// keepalived); it goes down after `fall` consecutive failures and comes
/// back after `rise` consecutive successes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hysteresis {
    up: bool,
    streak: u32,
    rise: u32,
    fall: u32,
}

impl Hysteresis {
    /// A backend that is up, with the given thresholds (each at least 1).
    pub fn new(rise: u32, fall: u32) -> Self {
        Self::starting(true, rise, fall)
    }

    /// A backend that starts up or down (adopted from the maps, or keeping
    /// its state across a change of thresholds).
    pub fn starting(up: bool, rise: u32, fall: u32) -> Self {
        Self {
            up,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// Whether the backend is currently considered up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one check result; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            // A result agreeing with the current state breaks any streak.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut h = Hysteresis::new(2, 3);
        assert!(h.is_up());
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(true));
        assert!(h.is_up());
    }

    #[test]
    fn an_agreeing_result_breaks_the_streak() {
        let mut h = Hysteresis::new(2, 2);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), Some(false));
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(true));
    }

    #[test]
    fn thresholds_of_one_switch_at_once() {
        let mut h = Hysteresis::new(1, 1);
        assert_eq!(h.observe(false), Some(false));
        assert_eq!(h.observe(true), Some(true));
    }
}
