//! Reading a running director from outside: `lb stats` ([`stats`]), `lb
//! conns` ([`conns`]) and the Prometheus metrics ([`metrics`]) read the
//! pinned maps, never write them.
//!
//! What they share lives here: [`InspectConfig`] resolves the config and pin
//! path of a read-only command, and [`ServiceNames`] names services. The maps
//! hold no service names: they come from the config file, and a service the
//! config does not name shows as `VIP:PORT/proto` (`VIP:PORT/proto vlan
//! 4001` on a VLAN).

pub mod conns;
pub mod metrics;
pub mod stats;
mod table;

use std::{collections::HashMap, net::IpAddr, path::PathBuf};

use anyhow::Context as _;
use lb_common::protocol_name;

use self::table::endpoint;
use crate::config::{Config, DEFAULT_PIN_PATH, values::vlan_suffix};

/// Config file the read-only commands use when `--config` is not given (and
/// it exists).
pub const DEFAULT_CONFIG: &str = "/etc/lb/lb.toml";

/// The config and pin path of a read-only command (`lb stats`, `lb conns`).
#[derive(Debug)]
pub struct InspectConfig {
    /// The config file, if one was given or [`DEFAULT_CONFIG`] exists.
    pub config: Option<Config>,
    /// `--pin-path`, else the config's `pin_path`, else [`DEFAULT_PIN_PATH`].
    pub pin_path: PathBuf,
}

impl InspectConfig {
    /// Loads `config` (or [`DEFAULT_CONFIG`] when it exists) and picks the
    /// pin path. A config that exists but is invalid is an error: its
    /// service names and pin path would otherwise be silently wrong.
    pub fn resolve(pin_path: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<Self> {
        let path = config.or_else(|| {
            let default = PathBuf::from(DEFAULT_CONFIG);
            default.exists().then_some(default)
        });
        let config = match path {
            Some(path) => Some(Config::load(&path).with_context(|| {
                format!(
                    "reading {} for service names and the pin path (give another with --config)",
                    path.display()
                )
            })?),
            None => None,
        };
        let pin_path = pin_path
            .or_else(|| config.as_ref().map(|c| c.director.pin_path.clone()))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_PATH));
        Ok(Self { config, pin_path })
    }

    /// The service names of the config (none without one).
    pub fn names(&self) -> ServiceNames {
        ServiceNames::from_config(self.config.as_ref())
    }
}

/// Service names by (VIP, port, protocol, VLAN path), from the config.
#[derive(Clone, Debug, Default)]
pub struct ServiceNames {
    by_key: HashMap<(IpAddr, u16, u8, u32), String>,
}

impl ServiceNames {
    /// The names of `config`'s services (none without a config).
    pub fn from_config(config: Option<&Config>) -> Self {
        let by_key = config
            .iter()
            .flat_map(|c| &c.services)
            .map(|s| {
                let key = (s.vip, s.ports.first(), s.protocol.number(), s.vlan_path());
                (key, s.name.clone())
            })
            .collect();
        Self { by_key }
    }

    /// The name of the service (`vip`, `port`, `proto`) on the VLAN path
    /// `vlan`: the config's, else `VIP:PORT/proto` (and ` vlan ID`).
    pub fn name(&self, vip: IpAddr, port: u16, proto: u8, vlan: u32) -> String {
        match self.by_key.get(&(vip, port, proto, vlan)) {
            Some(name) => name.clone(),
            None => format!(
                "{}/{}{}",
                endpoint(vip, port),
                protocol_name(proto),
                vlan_suffix(vlan)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use lb_common::{PROTO_TCP, PROTO_UDP};

    use super::*;

    #[test]
    fn service_names_come_from_the_config_else_the_address() {
        let config = Config::parse(
            r#"
[director]
interfaces = ["eth0"]

[[service]]
name = "gridftp"
vip = "192.0.2.200"
port = 2811
protocol = "tcp"

[[service.backend]]
address = "192.0.2.11"
weight = 1

[[service]]
name = "gridftp-4001"
vip = "192.0.2.200"
port = 2811
protocol = "tcp"
vlan = 4001

[[service.backend]]
address = "192.0.2.11"
weight = 1
"#,
            "test.toml",
        )
        .unwrap();
        let names = ServiceNames::from_config(Some(&config));
        let vip: IpAddr = "192.0.2.200".parse().unwrap();
        assert_eq!(names.name(vip, 2811, PROTO_TCP, 0), "gridftp");
        assert_eq!(names.name(vip, 2811, PROTO_TCP, 4001), "gridftp-4001");
        assert_eq!(names.name(vip, 2811, PROTO_UDP, 0), "192.0.2.200:2811/udp");
        assert_eq!(
            names.name(vip, 2811, PROTO_TCP, 4002),
            "192.0.2.200:2811/tcp vlan 4002"
        );
        let v6: IpAddr = "2001:db8::200".parse().unwrap();
        assert_eq!(
            ServiceNames::from_config(None).name(v6, 53, PROTO_UDP, 100 << 12 | 4001),
            "[2001:db8::200]:53/udp vlan 100.4001"
        );
    }

    #[test]
    fn inspect_config_picks_the_pin_path() {
        let dir = std::env::temp_dir().join(format!("lb-stats-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.toml");
        std::fs::write(
            &path,
            r#"
[director]
interfaces = ["eth0"]
pin_path = "/sys/fs/bpf/lb-test"

[[service]]
name = "web"
vip = "192.0.2.200"
port = 80
protocol = "tcp"

[[service.backend]]
address = "192.0.2.11"
weight = 1
"#,
        )
        .unwrap();
        let from_config = InspectConfig::resolve(None, Some(path.clone())).unwrap();
        assert_eq!(from_config.pin_path, Path::new("/sys/fs/bpf/lb-test"));
        let vip: IpAddr = "192.0.2.200".parse().unwrap();
        assert_eq!(from_config.names().name(vip, 80, PROTO_TCP, 0), "web");
        let explicit =
            InspectConfig::resolve(Some(PathBuf::from("/sys/fs/bpf/other")), Some(path.clone()))
                .unwrap();
        assert_eq!(explicit.pin_path, Path::new("/sys/fs/bpf/other"));
        std::fs::write(&path, "[director]\n").unwrap();
        let e = InspectConfig::resolve(None, Some(path.clone())).unwrap_err();
        assert!(format!("{e:#}").contains("--config"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
