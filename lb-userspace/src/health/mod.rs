//! Backend health: the [`probe`]s that check each backend, the
//! [`hysteresis`] that turns their results into up and down, and the
//! external [`command`]s they run (an `exec` check, the notify command).
//!
//! [`hysteresis`] is pure state, for the director's bookkeeping; the probes
//! and commands run on tokio, in the daemon.

pub mod command;
pub mod hysteresis;
pub mod probe;
