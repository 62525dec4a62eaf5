//! Backend health checks, like keepalived's TCP_CHECK: a TCP connect to the
//! real server every `interval`, bounded by `timeout`, with rise/fall
//! hysteresis deciding when a backend goes down and comes back.

use std::{net::SocketAddr, time::Duration};

use tokio::{net::TcpStream, sync::mpsc, time};

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
        Self {
            up: true,
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

/// One check result, sent to the daemon.
#[derive(Clone, Copy, Debug)]
pub struct CheckResult {
    /// Service index in the running configuration.
    pub service: usize,
    /// Backend slot within the service.
    pub slot: usize,
    /// Whether the check passed.
    pub ok: bool,
}

/// What to check and how often.
#[derive(Clone, Copy, Debug)]
pub struct TcpCheck {
    /// Real server address and `connect_port`.
    pub target: SocketAddr,
    /// Time between checks (keepalived `delay_loop`).
    pub interval: Duration,
    /// Connect timeout (keepalived `connect_timeout`).
    pub timeout: Duration,
}

impl TcpCheck {
    /// Whether a TCP connection to the target completes within the timeout.
    pub async fn probe(&self) -> bool {
        matches!(
            time::timeout(self.timeout, TcpStream::connect(self.target)).await,
            Ok(Ok(_))
        )
    }

    /// Probes forever, reporting each result for (`service`, `slot`), the
    /// first at once. Ends when the receiver is gone.
    pub async fn run(self, service: usize, slot: usize, results: mpsc::Sender<CheckResult>) {
        let mut ticks = time::interval(self.interval);
        ticks.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let ok = self.probe().await;
            if results
                .send(CheckResult { service, slot, ok })
                .await
                .is_err()
            {
                return;
            }
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

    #[tokio::test]
    async fn tcp_probe_sees_a_listener_and_its_absence() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let check = TcpCheck {
            target,
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
        };
        assert!(check.probe().await);
        drop(listener);
        assert!(!check.probe().await);
    }
}
