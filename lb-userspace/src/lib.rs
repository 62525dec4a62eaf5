//! The `lb` control plane: loads the XDP data path, fills its maps from the
//! config, checks backend health, sweeps the connection table and reports
//! statistics.

pub mod config;
pub mod daemon;
pub mod datapath;
pub mod health;
pub mod netlink;
pub mod stats;
pub mod sweeper;
