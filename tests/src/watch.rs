//! Held connections under load: a [`Watcher`] pings one connection from a
//! thread of its own while a test does something to lb (a flood, a
//! failover), and [`ping_each`] checks many at once, each failure told
//! apart by [`describe`].

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::client::HeldConn;

/// Pings one held connection in a loop from its own thread until stopped,
/// counting the answers from its real server; the first failure ends it.
pub struct Watcher {
    answers: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<(HeldConn, Result<(), String>)>,
}

impl Watcher {
    /// Starts pinging `conn` from a thread of its own.
    pub fn start(mut conn: HeldConn) -> Self {
        let answers = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let answers = answers.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let expected = conn.server().to_owned();
                while !stop.load(Ordering::Relaxed) {
                    match conn.ping() {
                        Ok(answer) if answer == expected => {
                            answers.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(answer) => {
                            let n = answers.load(Ordering::Relaxed);
                            return (
                                conn,
                                Err(format!(
                                    "after {n} answers from {expected}, answered by {answer}"
                                )),
                            );
                        }
                        Err(e) => {
                            let n = answers.load(Ordering::Relaxed);
                            return (
                                conn,
                                Err(format!(
                                    "after {n} answers from {expected}: {}",
                                    describe(&e)
                                )),
                            );
                        }
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                (conn, Ok(()))
            })
        };
        Self {
            answers,
            stop,
            thread,
        }
    }

    /// Answers from the connection's real server so far.
    pub fn answers(&self) -> u64 {
        self.answers.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` until the connection has been answered `n`
    /// times in all; returns whether it has.
    pub fn wait_answers(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.answers() < n {
            if Instant::now() >= deadline || self.thread.is_finished() {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Tells the thread to stop after its current ping.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops the thread, waits for it (its current ping may take up to the
    /// client's read timeout) and returns the connection and how it fared.
    pub fn finish(self) -> (HeldConn, Result<(), String>) {
        self.stop();
        self.thread
            .join()
            .unwrap_or_else(|_| panic!("the watcher thread panicked"))
    }
}

/// What a failed ping means for the connection: a reset, silence or a close.
pub fn describe(e: &anyhow::Error) -> String {
    let kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<io::Error>())
        .map(io::Error::kind);
    let what = match kind {
        Some(io::ErrorKind::ConnectionReset) => "RST",
        Some(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => "no answer",
        _ => "failed",
    };
    format!("{what} ({e:#})")
}

/// Pings every connection at once (each from its own thread, so silent ones
/// cost one read timeout in all, not one each) and returns, per
/// connection, `None` when its original real server answered, else what
/// went wrong.
pub fn ping_each(conns: &mut [HeldConn]) -> Vec<Option<String>> {
    thread::scope(|scope| {
        let pings: Vec<_> = conns
            .iter_mut()
            .map(|conn| {
                scope.spawn(move || {
                    let expected = conn.server().to_owned();
                    match conn.ping() {
                        Ok(answer) if answer == expected => None,
                        Ok(answer) => Some(format!("answered by {answer}")),
                        Err(e) => Some(describe(&e)),
                    }
                })
            })
            .collect();
        pings
            .into_iter()
            .map(|p| p.join().unwrap_or_else(|_| Some("ping panicked".into())))
            .collect()
    })
}
