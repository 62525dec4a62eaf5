//! The output of `lb conns --json`, typed.

use std::{
    ffi::OsStr,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
};

use anyhow::Context as _;
use serde::Deserialize;

use crate::cmd;

/// Everything `lb conns --json` reports.
#[derive(Clone, Debug, Deserialize)]
pub struct Conns {
    /// The flows, sorted by VIP, protocol and client.
    pub connections: Vec<Conn>,
}

/// One flow of the connection table.
#[derive(Clone, Debug, Deserialize)]
pub struct Conn {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `ESTABLISHED`, `SYN_RECV`, `FIN_WAIT`, `CLOSE` or `UDP`.
    pub state: String,
    /// Seconds until the flow idles out.
    pub expires_s: u64,
    /// Client address.
    pub client: IpAddr,
    /// Client port.
    pub client_port: u16,
    /// The VIP.
    pub vip: IpAddr,
    /// The VIP's port.
    pub port: u16,
    /// The VLAN ids of its frames, outermost first (none: untagged).
    pub vlan: Vec<u16>,
    /// The real server (`None`: its backend slot is empty).
    pub real_server: Option<IpAddr>,
    /// The real server's port (the VIP's, in direct routing).
    pub real_server_port: u16,
    /// Service name (`None`: the service is gone from the maps).
    pub service: Option<String>,
    /// Service id in the maps.
    pub service_id: u32,
    /// Backend slot in the service.
    pub backend_slot: u32,
}

impl Conn {
    /// The client's address and port.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.client, self.client_port)
    }
}

impl Conns {
    /// Runs `LB conns ARGS... --json` (e.g. `--config FILE --service web`)
    /// and parses it.
    pub fn query<S: AsRef<OsStr>>(lb: &Path, args: &[S]) -> anyhow::Result<Self> {
        let out = cmd::run(Command::new(lb).arg("conns").args(args).arg("--json"))?;
        serde_json::from_str(&out).with_context(|| format!("parsing `lb conns --json`: {out}"))
    }

    /// The flows of service `name`.
    pub fn of_service<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Conn> + 'a {
        self.connections
            .iter()
            .filter(move |c| c.service.as_deref() == Some(name))
    }
}
