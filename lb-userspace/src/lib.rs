//! The `lb` control plane: loads the XDP data path, fills its maps from the
//! config, checks backend health, sweeps the connection table and reports
//! statistics.
//!
//! How a change travels through the modules:
//!
//! ```text
//! config ──> director ──> datapath maps ──> XDP program ──> sweeper, inspect
//!              ^    ^
//!         health    host
//! ```
//!
//! - [`config`]: the config file `lb.toml`, parsed and validated.
//! - [`keepalived`]: `lb import-keepalived`, a keepalived.conf turned into a config.
//! - [`health`]: backend probes and the rise/fall rule that turns them into up/down.
//! - [`host`]: what `lb` asks of the host: NICs and neighbours, real-server set-up, privileges.
//! - [`director`]: services and their backend slots, and the map writes each change needs.
//! - [`schedule`]: the tables of the `rr`, `wrr`, `sh` and `mh` schedulers.
//! - [`datapath`]: the XDP object, its attachments to NICs, its maps, its pins.
//! - [`sweeper`]: expires idle flows and recounts each backend's connections.
//! - [`inspect`]: reads a running director's maps: `lb stats`, `lb conns`, metrics.
//! - [`daemon`]: `lb run`, driving all of the above.
//! - [`control`]: the socket that carries `lb reload`, `lb stop`, `lb backend` to `lb run`.
//! - [`sync`]: connection sync with other directors (`[sync]`).
//! - [`announce`]: VIPs announced to the routers through a BGP speaker (`[announce]`).
//!
//! No module imports one that imports it back.

pub mod announce;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod director;
pub mod health;
pub mod host;
pub mod inspect;
pub mod keepalived;
pub mod schedule;
pub mod sweeper;
pub mod sync;
