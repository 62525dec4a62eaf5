//! The `lb` control plane: loads the XDP data path, fills its maps from the
//! config, checks backend health, sweeps the connection table and reports
//! statistics.

pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod director;
pub mod health;
pub mod host;
pub mod inspect;
pub mod keepalived;
pub mod sweeper;
