//! `lb stats`: per service and per backend counters read from the pinned
//! maps of a running director, like `ipvsadm -L -n --stats`.

use std::{fmt::Write as _, net::IpAddr};

use lb_common::{
    BACKEND_STATE_DOWN, BACKEND_STATE_EMPTY, BACKEND_STATE_UP, NUM_REASONS, PROTO_TCP, PROTO_UDP,
    backend_index, reason_name,
};
use serde::Serialize;

use crate::{
    datapath::{Maps, addr_from_key, array_get},
    netlink::format_mac,
};

/// Everything `lb stats` shows.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Services, ordered by id.
    pub services: Vec<ServiceStats>,
    /// Frames per verdict reason, over all services.
    pub verdicts: Vec<VerdictStats>,
}

/// One virtual service.
#[derive(Debug, Serialize)]
pub struct ServiceStats {
    /// Service id (index in the maps).
    pub id: u32,
    /// Virtual IP.
    pub vip: IpAddr,
    /// Virtual port.
    pub port: u16,
    /// "tcp" or "udp".
    pub protocol: &'static str,
    /// Connections scheduled (IPVS Conns).
    pub conns: u64,
    /// Packets forwarded (InPkts).
    pub in_pkts: u64,
    /// IP-layer bytes forwarded (InBytes).
    pub in_bytes: u64,
    /// The real servers.
    pub backends: Vec<BackendStats>,
}

/// One real server of a service.
#[derive(Debug, Serialize)]
pub struct BackendStats {
    /// Slot within the service.
    pub slot: u32,
    /// Real server address.
    pub address: IpAddr,
    /// MAC frames are sent to.
    pub mac: String,
    /// WLC weight.
    pub weight: u32,
    /// "up" or "down" (health check failed, or MAC not resolved yet).
    pub state: &'static str,
    /// Flows in ESTABLISHED (ActiveConn).
    pub active_conns: u64,
    /// Flows in other states (InActConn).
    pub inactive_conns: u64,
    /// Connections scheduled to it (Conns).
    pub conns: u64,
    /// Packets forwarded to it (InPkts).
    pub in_pkts: u64,
    /// IP-layer bytes forwarded to it (InBytes).
    pub in_bytes: u64,
}

/// Frames that got one verdict reason.
#[derive(Debug, Serialize)]
pub struct VerdictStats {
    /// Reason name (`forwarded`, `pass_no_service`, `drop_malformed`, ...).
    pub reason: &'static str,
    /// Frames.
    pub packets: u64,
    /// IP-layer bytes.
    pub bytes: u64,
}

impl Snapshot {
    /// Reads every counter from the maps.
    pub fn read(maps: &Maps) -> anyhow::Result<Self> {
        let mut services = Vec::new();
        for entry in maps.services.iter() {
            let (key, service) = entry?;
            let totals = Maps::counters(&maps.service_stats, service.id)?;
            let set = array_get(&maps.backends, service.id)?;
            let conns = array_get(&maps.backend_conns, service.id)?;
            let mut backends = Vec::new();
            for (slot, b) in set.backends.iter().enumerate().take(set.len as usize) {
                if b.state == BACKEND_STATE_EMPTY {
                    continue;
                }
                let c =
                    Maps::counters(&maps.backend_stats, backend_index(service.id, slot as u32))?;
                backends.push(BackendStats {
                    slot: slot as u32,
                    address: addr_from_key(b.addr, key.family),
                    mac: format_mac(&b.mac),
                    weight: b.weight,
                    state: match b.state {
                        BACKEND_STATE_UP => "up",
                        BACKEND_STATE_DOWN => "down",
                        _ => "unknown",
                    },
                    // Transiently wrapped counters (a decrement racing the
                    // sweeper's reset) show as zero.
                    active_conns: nonnegative(conns.conns[slot].active),
                    inactive_conns: nonnegative(conns.conns[slot].inactive),
                    conns: c.new_conns,
                    in_pkts: c.packets,
                    in_bytes: c.bytes,
                });
            }
            services.push(ServiceStats {
                id: service.id,
                vip: addr_from_key(key.addr, key.family),
                port: key.port,
                protocol: match key.proto {
                    PROTO_TCP => "tcp",
                    PROTO_UDP => "udp",
                    _ => "unknown",
                },
                conns: totals.new_conns,
                in_pkts: totals.packets,
                in_bytes: totals.bytes,
                backends,
            });
        }
        services.sort_by_key(|s| s.id);
        let mut verdicts = Vec::new();
        for reason in 0..NUM_REASONS {
            let c = Maps::counters(&maps.verdict_stats, reason)?;
            verdicts.push(VerdictStats {
                reason: reason_name(reason),
                packets: c.packets,
                bytes: c.bytes,
            });
        }
        Ok(Self { services, verdicts })
    }

    /// The ipvsadm-style table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<4} {:<40} {:>6} {:>6} {:>10} {:>10} {:>10} {:>12} {:>14}",
            "Prot",
            "LocalAddress:Port / -> RemoteAddress",
            "Weight",
            "Health",
            "ActiveConn",
            "InActConn",
            "Conns",
            "InPkts",
            "InBytes"
        );
        for s in &self.services {
            let _ = writeln!(
                out,
                "{:<4} {:<40} {:>6} {:>6} {:>10} {:>10} {:>10} {:>12} {:>14}",
                s.protocol.to_uppercase(),
                endpoint(s.vip, s.port),
                "",
                "",
                s.backends.iter().map(|b| b.active_conns).sum::<u64>(),
                s.backends.iter().map(|b| b.inactive_conns).sum::<u64>(),
                s.conns,
                s.in_pkts,
                s.in_bytes
            );
            for b in &s.backends {
                let _ = writeln!(
                    out,
                    "{:<4} {:<40} {:>6} {:>6} {:>10} {:>10} {:>10} {:>12} {:>14}",
                    "",
                    format!("  -> {}", endpoint(b.address, s.port)),
                    b.weight,
                    b.state,
                    b.active_conns,
                    b.inactive_conns,
                    b.conns,
                    b.in_pkts,
                    b.in_bytes
                );
            }
        }
        let _ = writeln!(out, "\nVerdicts (all NICs):");
        for v in &self.verdicts {
            let _ = writeln!(
                out,
                "  {:<18} {:>12} pkts {:>14} bytes",
                v.reason, v.packets, v.bytes
            );
        }
        out
    }
}

/// A counter that may transiently read as negative (wrapped) shows as zero.
fn nonnegative(raw: u64) -> u64 {
    if (raw as i64) < 0 { 0 } else { raw }
}

/// `addr:port`, with brackets for IPv6.
fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}
