//! `lb conns`: the connection table of a running director, like
//! `ipvsadm -L -c -n`: protocol, time to expiry, state, client, VIP (and
//! VLAN), real server and service of every flow, and the persistence
//! templates (state `PERSIST`, the client's masked address with port 0, as
//! IPVS lists its templates).
//!
//! The tables are read by walking the pinned maps once, in batches of
//! thousands of flows a system call (`Maps::for_each_flow`,
//! `Maps::for_each_template`; the pending tables through their mappings);
//! a read from user space refreshes no entry. Services and their backend slots are
//! read once beforehand, so each flow is resolved in constant time and the
//! whole read is linear in the table size (plus the sort).

use std::{
    collections::{BTreeSet, HashMap},
    io,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context as _, bail};
use lb_common::{
    BACKEND_STATE_EMPTY, FAMILY_IPV4, FAMILY_IPV6, Flow, FlowKey, PersistKey, PersistTemplate,
    addr_from_key,
    conn_state::{Timeouts, state_name},
    protocol_name, vlan_ids,
};
use serde::Serialize;

use super::{
    ServiceNames,
    table::{Align, Columns, endpoint},
};
use crate::{
    config::values::vlan_suffix,
    datapath::maps::{Maps, monotonic_ns},
};

/// A service as `lb conns` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Service id (index in the maps).
    pub id: u32,
    /// Name from the config, else `VIP:PORT/proto`.
    pub name: String,
    /// Backend addresses by slot (`None`: an empty slot).
    pub backends: Vec<Option<IpAddr>>,
    /// What its persistence templates' rows show.
    pub persistence: TemplateScope,
}

/// The service fields a persistence template's row shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemplateScope {
    /// The service's VIP and port.
    pub vip: SocketAddr,
    /// Its protocol.
    pub proto: u8,
    /// Its VLAN path.
    pub vlan: u32,
    /// Its persistence timeout in seconds (0: none).
    pub timeout_s: u32,
}

impl ServiceInfo {
    /// Every service in the maps, with its backend slots, named by `names`.
    pub fn read_all(maps: &Maps, names: &ServiceNames) -> anyhow::Result<Vec<Self>> {
        let mut services = Vec::new();
        for installed in maps.services_by_id()? {
            let (key, service, set) = (installed.keys[0], installed.service, installed.backends);
            let backends = set
                .backends
                .iter()
                .take(set.len as usize)
                .map(|b| {
                    (b.state != BACKEND_STATE_EMPTY).then(|| addr_from_key(b.addr, key.family))
                })
                .collect();
            services.push(Self {
                id: service.id,
                name: names.name(
                    addr_from_key(key.addr, key.family),
                    key.port,
                    key.proto,
                    key.vlan,
                ),
                backends,
                persistence: TemplateScope {
                    vip: SocketAddr::new(addr_from_key(key.addr, key.family), key.port),
                    proto: key.proto,
                    vlan: key.vlan,
                    timeout_s: service.persistence_timeout_s,
                },
            });
        }
        services.sort_by_key(|s| s.id);
        Ok(services)
    }
}

/// One flow of the connection table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    /// IP protocol number (`PROTO_TCP` or `PROTO_UDP`).
    pub proto: u8,
    /// One of the `conn_state::STATE_*` constants.
    pub state: u32,
    /// Seconds until the flow idles out (0: due for the next sweep).
    pub expires_s: u64,
    /// Client address and port.
    pub client: SocketAddr,
    /// VIP and port.
    pub vip: SocketAddr,
    /// The VLAN path of its frames (see `lb_common::vlan`).
    pub vlan: u32,
    /// Service id the flow is bound to.
    pub service_id: u32,
    /// Backend slot the flow is bound to.
    pub backend_slot: u32,
    /// A persistence template, not a flow (`client` is the masked address
    /// with port 0; `state` is unused).
    pub template: bool,
}

impl Conn {
    /// The flow of a connection-table entry, `now_ns` on the flows' clock.
    pub fn new(key: &FlowKey, flow: &Flow, now_ns: u64, timeouts: &Timeouts) -> Self {
        let state = u32::from(flow.state);
        let idle_ns = now_ns.saturating_sub(flow.last_seen_ns);
        let timeout_ns = timeouts.for_state(state).saturating_mul(1_000_000_000);
        Self {
            proto: key.proto(),
            state,
            expires_s: timeout_ns.saturating_sub(idle_ns) / 1_000_000_000,
            client: SocketAddr::new(key.client(), key.client_port()),
            vip: SocketAddr::new(key.vip(), key.port()),
            vlan: key.vlan_path(),
            service_id: u32::from(flow.service_id),
            backend_slot: u32::from(flow.backend_slot),
            template: false,
        }
    }

    /// The row of persistence template `template` under `key` of `service`.
    pub fn of_template(
        key: &PersistKey,
        template: &PersistTemplate,
        service: &ServiceInfo,
        now_ns: u64,
    ) -> Self {
        let TemplateScope {
            vip,
            proto,
            vlan,
            timeout_s,
        } = service.persistence;
        let idle_ns = now_ns.saturating_sub(template.last_used_ns);
        let timeout_ns = u64::from(timeout_s).saturating_mul(1_000_000_000);
        let family = if vip.is_ipv4() {
            FAMILY_IPV4
        } else {
            FAMILY_IPV6
        };
        Self {
            proto,
            state: 0,
            expires_s: timeout_ns.saturating_sub(idle_ns) / 1_000_000_000,
            client: SocketAddr::new(addr_from_key(key.addr, family), 0),
            vip,
            vlan,
            service_id: key.service_id,
            backend_slot: template.backend_slot,
            template: true,
        }
    }

    /// Its state's name: the flow's, or `PERSIST` for a template.
    fn state_name(&self) -> &'static str {
        if self.template {
            "PERSIST"
        } else {
            state_name(self.state)
        }
    }

    /// Sort key: VIP, protocol, VLAN, client.
    fn order(&self) -> (SocketAddr, u8, u32, SocketAddr) {
        (self.vip, self.proto, self.vlan, self.client)
    }
}

/// The connection table as `lb conns` shows it: flows sorted by VIP,
/// protocol, VLAN and client.
#[derive(Clone, Debug)]
pub struct ConnTable {
    services: HashMap<u32, ServiceInfo>,
    /// The flows, sorted.
    pub conns: Vec<Conn>,
}

/// One flow as JSON.
#[derive(Serialize)]
struct ConnJson<'a> {
    protocol: &'static str,
    state: &'static str,
    expires_s: u64,
    client: IpAddr,
    client_port: u16,
    vip: IpAddr,
    port: u16,
    vlan: Vec<u16>,
    real_server: Option<IpAddr>,
    real_server_port: u16,
    service: Option<&'a str>,
    service_id: u32,
    backend_slot: u32,
}

impl ConnTable {
    /// Reads both connection tables, resolving services with `names`, expiry
    /// with `timeouts`; with `service`, only that service's flows (an
    /// unknown name is an error listing the valid ones).
    pub fn read(
        maps: &Maps,
        names: &ServiceNames,
        timeouts: &Timeouts,
        service: Option<&str>,
    ) -> anyhow::Result<Self> {
        let services = ServiceInfo::read_all(maps, names)?;
        let only = service_filter(&services, service)?;
        let now_ns = monotonic_ns();
        let mut conns = Vec::new();
        maps.for_each_flow(|key, flow| {
            if only.is_none_or(|id| id == u32::from(flow.service_id)) {
                conns.push(Conn::new(&key, &flow, now_ns, timeouts));
            }
        })
        .context("reading the connection tables")?;
        let by_id: HashMap<u32, &ServiceInfo> = services.iter().map(|s| (s.id, s)).collect();
        maps.for_each_template(|key, template| {
            if let Some(service) = by_id.get(&key.service_id)
                && only.is_none_or(|id| id == key.service_id)
            {
                conns.push(Conn::of_template(&key, &template, service, now_ns));
            }
        })?;
        Ok(Self::new(services, conns))
    }

    /// A table of `conns` (in any order, duplicates allowed) over `services`.
    pub fn new(services: Vec<ServiceInfo>, mut conns: Vec<Conn>) -> Self {
        conns.sort_unstable_by_key(Conn::order);
        conns.dedup_by_key(|c| c.order());
        Self {
            services: services.into_iter().map(|s| (s.id, s)).collect(),
            conns,
        }
    }

    /// The name of the service `conn` belongs to (`None`: the service is no
    /// longer in the maps).
    pub fn service_name(&self, conn: &Conn) -> Option<&str> {
        self.services.get(&conn.service_id).map(|s| s.name.as_str())
    }

    /// The real server `conn` goes to: its backend's address and the VIP's
    /// port (direct routing keeps the port). `None` when the slot is empty.
    pub fn real_server(&self, conn: &Conn) -> Option<SocketAddr> {
        self.services
            .get(&conn.service_id)?
            .backends
            .get(conn.backend_slot as usize)
            .copied()
            .flatten()
            .map(|addr| SocketAddr::new(addr, conn.vip.port()))
    }

    /// Writes the table, columns sized to their content.
    pub fn write_table(&self, out: &mut impl io::Write) -> io::Result<()> {
        use Align::{Left, Right};
        let mut columns = Columns::new(&[
            ("Pro", Left),
            ("Expire", Right),
            ("State", Left),
            ("Source", Left),
            ("Virtual", Left),
            ("Destination", Left),
            ("Service", Left),
        ]);
        for conn in &self.conns {
            columns.measure(&self.cells(conn));
        }
        columns.write_row(
            out,
            &[
                "Pro",
                "Expire",
                "State",
                "Source",
                "Virtual",
                "Destination",
                "Service",
            ],
        )?;
        for conn in &self.conns {
            columns.write_row(out, &self.cells(conn))?;
        }
        Ok(())
    }

    /// Writes `{"connections": [...]}`, one flow per line.
    pub fn write_json(&self, out: &mut impl io::Write) -> io::Result<()> {
        out.write_all(b"{\"connections\": [")?;
        for (i, conn) in self.conns.iter().enumerate() {
            out.write_all(if i == 0 { b"\n  " } else { b",\n  " })?;
            let real_server = self.real_server(conn);
            serde_json::to_writer(
                &mut *out,
                &ConnJson {
                    protocol: protocol_name(conn.proto),
                    state: conn.state_name(),
                    expires_s: conn.expires_s,
                    client: conn.client.ip(),
                    client_port: conn.client.port(),
                    vip: conn.vip.ip(),
                    port: conn.vip.port(),
                    vlan: vlan_ids(conn.vlan).collect(),
                    real_server: real_server.map(|r| r.ip()),
                    real_server_port: conn.vip.port(),
                    service: self.service_name(conn),
                    service_id: conn.service_id,
                    backend_slot: conn.backend_slot,
                },
            )?;
        }
        out.write_all(b"\n]}\n")
    }

    /// The table cells of one flow.
    fn cells(&self, conn: &Conn) -> [String; 7] {
        [
            protocol_name(conn.proto).to_uppercase(),
            mm_ss(conn.expires_s),
            conn.state_name().to_owned(),
            endpoint(conn.client.ip(), conn.client.port()),
            endpoint(conn.vip.ip(), conn.vip.port()) + &vlan_suffix(conn.vlan),
            self.real_server(conn)
                .map_or_else(|| "-".to_owned(), |r| endpoint(r.ip(), r.port())),
            self.service_name(conn).unwrap_or("-").to_owned(),
        ]
    }
}

/// The service id `name` selects (`None`: no filter), or an error naming
/// the valid names.
fn service_filter(services: &[ServiceInfo], name: Option<&str>) -> anyhow::Result<Option<u32>> {
    let Some(name) = name else {
        return Ok(None);
    };
    match services.iter().find(|s| s.name == name) {
        Some(s) => Ok(Some(s.id)),
        None => {
            let valid: BTreeSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
            if valid.is_empty() {
                bail!("no service named {name:?}: the data path has no services");
            }
            bail!(
                "no service named {name:?} (valid: {})",
                valid.into_iter().collect::<Vec<_>>().join(", ")
            )
        }
    }
}

/// Seconds as `mm:ss` (minutes not wrapped into hours, as ipvsadm).
fn mm_ss(seconds: u64) -> String {
    format!("{:02}:{:02}", seconds / 60, seconds % 60)
}

#[cfg(test)]
mod tests {
    use lb_common::{
        PROTO_TCP, PROTO_UDP,
        conn_state::{STATE_CLOSE, STATE_ESTABLISHED, STATE_UDP},
    };

    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(client: &str, client_port: u16, vip: &str, port: u16, proto: u8) -> FlowKey {
        key_on(client, client_port, vip, port, proto, 0)
    }

    fn key_on(
        client: &str,
        client_port: u16,
        vip: &str,
        port: u16,
        proto: u8,
        vlan: u32,
    ) -> FlowKey {
        FlowKey::new(
            client.parse().unwrap(),
            client_port,
            vip.parse().unwrap(),
            port,
            proto,
            vlan,
        )
        .expect("client and VIP of one family")
    }

    fn flow(state: u32, last_seen_s: u64, service_id: u16, backend_slot: u16) -> Flow {
        Flow {
            last_seen_ns: last_seen_s * S,
            service_id,
            backend_slot,
            state: state as u16,
            flags: 0,
        }
    }

    fn services() -> Vec<ServiceInfo> {
        vec![
            ServiceInfo {
                id: 0,
                name: "web".to_owned(),
                backends: vec![
                    Some("192.0.2.11".parse().unwrap()),
                    None,
                    Some("192.0.2.13".parse().unwrap()),
                ],
                persistence: TemplateScope {
                    vip: "192.0.2.200:80".parse().unwrap(),
                    proto: PROTO_TCP,
                    vlan: 0,
                    timeout_s: 0,
                },
            },
            ServiceInfo {
                id: 1,
                name: "[2001:db8::200]:53/udp".to_owned(),
                backends: vec![Some("2001:db8::11".parse().unwrap())],
                persistence: TemplateScope {
                    vip: "[2001:db8::200]:53".parse().unwrap(),
                    proto: PROTO_UDP,
                    vlan: 0,
                    timeout_s: 0,
                },
            },
            ServiceInfo {
                id: 2,
                name: "web-4001".to_owned(),
                backends: vec![Some("198.51.100.11".parse().unwrap())],
                persistence: TemplateScope {
                    vip: "192.0.2.200:80".parse().unwrap(),
                    proto: PROTO_TCP,
                    vlan: 4001,
                    timeout_s: 0,
                },
            },
        ]
    }

    #[test]
    fn expiry_follows_state_and_idle_time() {
        let t = Timeouts::IPVS;
        let k = key("192.0.2.10", 40000, "192.0.2.200", 80, PROTO_TCP);
        let c = Conn::new(&k, &flow(STATE_ESTABLISHED, 1000, 0, 0), 1100 * S, &t);
        assert_eq!(c.expires_s, 800);
        // Half a second idle: 899.5 s left, shown as 899 (rounded down).
        let c = Conn::new(
            &k,
            &flow(STATE_ESTABLISHED, 1000, 0, 0),
            1000 * S + S / 2,
            &t,
        );
        assert_eq!(c.expires_s, 899);
        let c = Conn::new(&k, &flow(STATE_CLOSE, 1000, 0, 0), 1100 * S, &t);
        assert_eq!(c.expires_s, 0, "past its timeout, not swept yet");
        // Stamped "after" now (coarse clock): the full timeout.
        let c = Conn::new(&k, &flow(STATE_UDP, 1001, 0, 0), 1000 * S, &t);
        assert_eq!(c.expires_s, 300);
        assert_eq!(c.client, "192.0.2.10:40000".parse().unwrap());
        assert_eq!(c.vip, "192.0.2.200:80".parse().unwrap());
        let custom = Timeouts {
            established: 60,
            ..Timeouts::IPVS
        };
        let c = Conn::new(&k, &flow(STATE_ESTABLISHED, 1000, 0, 0), 1010 * S, &custom);
        assert_eq!(c.expires_s, 50);
    }

    #[test]
    fn ipv6_keys_decode() {
        let k = key("2001:db8::10", 5353, "2001:db8::200", 53, PROTO_UDP);
        assert!(matches!(k, FlowKey::V6(_)), "{k:?}");
        let c = Conn::new(&k, &flow(STATE_UDP, 0, 1, 0), 0, &Timeouts::IPVS);
        assert_eq!(c.client, "[2001:db8::10]:5353".parse().unwrap());
        assert_eq!(c.vip, "[2001:db8::200]:53".parse().unwrap());
    }

    fn sample_table() -> ConnTable {
        let t = Timeouts::IPVS;
        let now = 10_000 * S;
        let mk = |client: &str, port: u16, state, slot| {
            Conn::new(
                &key(client, port, "192.0.2.200", 80, PROTO_TCP),
                &flow(state, 10_000 - 1, 0, slot),
                now,
                &t,
            )
        };
        let a = mk("192.0.2.10", 40002, STATE_ESTABLISHED, 2);
        let b = mk("192.0.2.10", 40001, STATE_CLOSE, 0);
        let gone = mk("192.0.2.9", 1, STATE_ESTABLISHED, 1);
        let udp = Conn::new(
            &key("2001:db8::10", 5353, "2001:db8::200", 53, PROTO_UDP),
            &flow(STATE_UDP, 10_000, 1, 0),
            now,
            &t,
        );
        let mut orphan = a;
        orphan.client = "192.0.2.99:9".parse().unwrap();
        orphan.service_id = 7;
        // The same 5-tuple as `a` on VLAN 4001: another flow.
        let tagged = Conn::new(
            &key_on("192.0.2.10", 40002, "192.0.2.200", 80, PROTO_TCP, 4001),
            &flow(STATE_ESTABLISHED, 10_000 - 1, 2, 0),
            now,
            &t,
        );
        // A duplicate from a restarted walk is dropped.
        ConnTable::new(services(), vec![udp, a, b, a, gone, tagged, orphan])
    }

    #[test]
    fn table_is_sorted_deduplicated_and_resolved() {
        let table = sample_table();
        let clients: Vec<String> = table.conns.iter().map(|c| c.client.to_string()).collect();
        assert_eq!(
            clients,
            [
                "192.0.2.9:1",
                "192.0.2.10:40001",
                "192.0.2.10:40002",
                "192.0.2.99:9",
                "192.0.2.10:40002",
                "[2001:db8::10]:5353"
            ]
        );
        assert_eq!(table.conns[4].vlan, 4001);
        assert_eq!(table.service_name(&table.conns[4]), Some("web-4001"));
        let c = &table.conns[2];
        assert_eq!(table.real_server(c), Some("192.0.2.13:80".parse().unwrap()));
        assert_eq!(table.service_name(c), Some("web"));
        assert_eq!(table.real_server(&table.conns[0]), None, "empty slot");
        assert_eq!(table.service_name(&table.conns[3]), None, "unknown service");
    }

    #[test]
    fn table_and_json_output() {
        let table = sample_table();
        let mut out = Vec::new();
        table.write_table(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "Pro  Expire  State        Source               Virtual                   Destination        Service",
                "TCP   14:59  ESTABLISHED  192.0.2.9:1          192.0.2.200:80            -                  web",
                "TCP   00:09  CLOSE        192.0.2.10:40001     192.0.2.200:80            192.0.2.11:80      web",
                "TCP   14:59  ESTABLISHED  192.0.2.10:40002     192.0.2.200:80            192.0.2.13:80      web",
                "TCP   14:59  ESTABLISHED  192.0.2.99:9         192.0.2.200:80            -                  -",
                "TCP   14:59  ESTABLISHED  192.0.2.10:40002     192.0.2.200:80 vlan 4001  198.51.100.11:80   web-4001",
                "UDP   05:00  UDP          [2001:db8::10]:5353  [2001:db8::200]:53        [2001:db8::11]:53  [2001:db8::200]:53/udp",
            ]
        );

        let mut out = Vec::new();
        table.write_json(&mut out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let conns = json["connections"].as_array().unwrap();
        assert_eq!(conns.len(), 6);
        assert_eq!(
            conns[2],
            serde_json::json!({
                "protocol": "tcp", "state": "ESTABLISHED", "expires_s": 899,
                "client": "192.0.2.10", "client_port": 40002,
                "vip": "192.0.2.200", "port": 80, "vlan": [],
                "real_server": "192.0.2.13", "real_server_port": 80,
                "service": "web", "service_id": 0, "backend_slot": 2,
            })
        );
        assert_eq!(conns[4]["vlan"], serde_json::json!([4001]));
        assert_eq!(conns[3]["service"], serde_json::Value::Null);

        let empty = ConnTable::new(services(), Vec::new());
        let mut out = Vec::new();
        empty.write_json(&mut out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["connections"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn service_filter_names_the_valid_services() {
        let s = services();
        assert_eq!(service_filter(&s, None).unwrap(), None);
        assert_eq!(service_filter(&s, Some("web")).unwrap(), Some(0));
        assert_eq!(
            service_filter(&s, Some("[2001:db8::200]:53/udp")).unwrap(),
            Some(1)
        );
        let e = service_filter(&s, Some("nope")).unwrap_err().to_string();
        assert_eq!(
            e,
            "no service named \"nope\" (valid: [2001:db8::200]:53/udp, web, web-4001)"
        );
        let e = service_filter(&[], Some("web")).unwrap_err().to_string();
        assert!(e.contains("no services"), "{e}");
    }

    #[test]
    fn minutes_and_seconds() {
        assert_eq!(mm_ss(0), "00:00");
        assert_eq!(mm_ss(59), "00:59");
        assert_eq!(mm_ss(900), "15:00");
        assert_eq!(mm_ss(7 * 86_400), "10080:00");
    }
}
