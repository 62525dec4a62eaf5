//! The director's running state: every service with its backends in fixed
//! slots, their health and MACs, and how a config reload, a live change from
//! `lb backend ...` or a health transition turns into writes to the maps.
//!
//! Slots are the contract with the data path: a flow in the connection
//! table remembers its service id and backend slot, so a backend keeps its
//! slot for as long as it lives, and a slot is only reused once no flow can
//! point at it any more. This module is pure bookkeeping (no maps, no
//! netlink), so the reload rules are unit-tested; the daemon applies the
//! [`Change`]s it returns.
//!
//! A service's sorry server (keepalived's `sorry_server`) holds a slot like
//! a backend, is never health-checked, and takes new flows only while the
//! service has lost its quorum (keepalived's `quorum` and `hysteresis`:
//! [`ServiceRuntime::update_quorum`]); the backends then take none, and
//! every flow already running keeps its server.

use std::{collections::HashMap, net::IpAddr};

use anyhow::{Context as _, anyhow, bail};
use lb_common::{
    Attachment, BACKEND_STATE_DOWN, BACKEND_STATE_EMPTY, BACKEND_STATE_REMOVED,
    BACKEND_STATE_STANDBY, BACKEND_STATE_UP, Backend, BackendConnSet, BackendSet, MAX_BACKENDS,
    MAX_SERVICES, MAX_WEIGHT, ServiceKey, addr_from_key,
};

use crate::{
    config::{BackendConfig, Config, HealthKind, ServiceConfig},
    datapath::maps::InstalledService,
    health::hysteresis::Hysteresis,
    host::Nic,
};

/// A write the daemon must make to the maps after a change of state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Write service `id`'s backend set, then its key (a new service, or
    /// one whose backends changed; idempotent).
    SetService(u32),
    /// Forget service `id`: empty its backend set, delete its keys and its
    /// flows, zero its counters (its id may be reused later).
    RemoveService {
        /// The service id being freed.
        id: u32,
    },
    /// Zero the packet/byte/connection counters of a slot that a new
    /// backend now occupies.
    ResetBackendStats {
        /// Service id.
        id: u32,
        /// Backend slot.
        slot: u32,
    },
}

/// A real server in its slot.
#[derive(Clone, Debug)]
pub struct BackendRuntime {
    /// Its address.
    pub address: IpAddr,
    /// The weight asked for (config, or `lb backend set-weight`/`drain`).
    pub weight: u32,
    /// The MAC was given in the config: the neighbour table never replaces it.
    pub static_mac: bool,
    /// Its MAC, once known.
    pub mac: Option<[u8; 6]>,
    /// The director NIC it is on-link through.
    pub nic: Nic,
    /// Health-check state.
    pub health: Hysteresis,
    /// Removed from the service: no new flows, its flows finish on it, and
    /// the slot is freed when the sweeper finds none left.
    pub removed: bool,
    /// Removed with its flows moved (`--reschedule`, `expire_nodest_conn`):
    /// the data path sees an empty slot and schedules each of its flows
    /// again on its next packet, but the slot is only reused once the
    /// sweeper finds no flow pointing at it, so that a new backend never
    /// inherits its flows or counters. Only with `removed`.
    pub rescheduled: bool,
    /// The service's sorry server, not one of its backends.
    pub sorry: bool,
}

impl BackendRuntime {
    /// Whether new flows may go to it (weight aside).
    pub fn usable(&self) -> bool {
        !self.removed && self.health.is_up() && self.mac.is_some()
    }
}

/// A virtual service and its backend slots.
#[derive(Clone, Debug)]
pub struct ServiceRuntime {
    /// Its index in the maps.
    pub id: u32,
    /// Its config (the running one: live changes of backends are not
    /// written back here).
    pub config: ServiceConfig,
    /// Backend slots; `None` is free.
    pub slots: Vec<Option<BackendRuntime>>,
    /// The up backends' weight fell below the quorum (see
    /// [`ServiceRuntime::update_quorum`]).
    pub quorum_lost: bool,
}

impl ServiceRuntime {
    /// The key it is known by (see [`key_of`]).
    pub fn key(&self) -> ServiceKey {
        key_of(&self.config)
    }

    /// Its keys in the service map: one per port it covers.
    pub fn keys(&self) -> Vec<ServiceKey> {
        let c = &self.config;
        let (proto, vlan) = (c.protocol.number(), c.vlan_path());
        c.ports
            .key_ports()
            .map(|port| ServiceKey::new(c.vip, port, proto, vlan))
            .collect()
    }

    /// The occupied slots.
    pub fn backends(&self) -> impl Iterator<Item = (u32, &BackendRuntime)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, b)| b.as_ref().map(|b| (slot as u32, b)))
    }

    /// The slot of the backend at `address`.
    fn slot_of(&self, address: IpAddr) -> Option<usize> {
        self.slots
            .iter()
            .position(|b| b.as_ref().is_some_and(|b| b.address == address))
    }

    /// The backend at `address`, or an error naming the service's backends.
    fn backend_mut(&mut self, address: IpAddr) -> anyhow::Result<&mut BackendRuntime> {
        let Some(slot) = self.slot_of(address) else {
            let known: Vec<String> = self
                .backends()
                .map(|(_, b)| b.address.to_string())
                .collect();
            bail!(
                "service {} has no backend {address} (its backends: {})",
                self.config.name,
                known.join(", ")
            );
        };
        Ok(self.slots[slot].as_mut().expect("slot_of found it"))
    }

    /// Weight of the backends (the sorry server aside) that can take new
    /// flows.
    fn live_weight(&self) -> u64 {
        self.backends()
            .filter(|(_, b)| !b.sorry && b.usable())
            .map(|(_, b)| u64::from(b.weight))
            .sum()
    }

    /// Re-evaluates the quorum as keepalived does: it is lost when the
    /// weight of the backends that can take new flows drops below `quorum
    /// - hysteresis`, and regained when it reaches `quorum + hysteresis`.
    /// Returns the new state (`true`: lost) when it changed.
    pub fn update_quorum(&mut self) -> Option<bool> {
        let live = self.live_weight();
        let (quorum, hysteresis) = (
            u64::from(self.config.quorum),
            u64::from(self.config.hysteresis),
        );
        let lost = if self.quorum_lost {
            live < quorum + hysteresis
        } else {
            live < quorum.saturating_sub(hysteresis)
        };
        (lost != self.quorum_lost).then(|| {
            self.quorum_lost = lost;
            lost
        })
    }

    /// Whether new flows go to the sorry server: the quorum is lost and the
    /// sorry server can take them (its MAC is known).
    fn sorry_serves(&self) -> bool {
        self.quorum_lost && self.backends().any(|(_, b)| b.sorry && b.usable())
    }

    /// The backend set as the data path stores it.
    pub fn backend_set(&self) -> BackendSet {
        let mut set = BackendSet {
            len: self.slots.len() as u32,
            ..BackendSet::default()
        };
        let sorry_serves = self.sorry_serves();
        for (slot, b) in self.backends() {
            let inhibited = !b.health.is_up() && self.config.health.inhibit_on_failure;
            // A rescheduled slot keeps its address, which marks it as taken
            // for an adopting `lb` (see [`Director::adopt`]). The sorry
            // server and the backends take turns: each keeps its flows, and
            // only one side gets a weight for new ones.
            let (state, weight) = if b.rescheduled {
                (BACKEND_STATE_EMPTY, 0)
            } else if b.removed {
                (BACKEND_STATE_REMOVED, 0)
            } else if b.sorry {
                if sorry_serves {
                    (BACKEND_STATE_UP, 1)
                } else {
                    (BACKEND_STATE_STANDBY, 0)
                }
            } else if b.usable() {
                (BACKEND_STATE_UP, if sorry_serves { 0 } else { b.weight })
            } else {
                (
                    BACKEND_STATE_DOWN,
                    if inhibited || sorry_serves {
                        0
                    } else {
                        b.weight
                    },
                )
            };
            let attachment = Attachment {
                mac: b.mac.unwrap_or_default(),
                nic_mac: b.nic.mac,
                ifindex: b.nic.index,
            };
            set.backends[slot as usize] = Backend::new(b.address, attachment, weight, state);
        }
        set
    }

    /// Whether some backend, or the sorry server, can take new flows.
    pub fn has_usable_backend(&self) -> bool {
        self.backend_set()
            .backends
            .iter()
            .any(|b| b.state == BACKEND_STATE_UP && b.weight > 0)
    }

    /// Refuses a live change of the sorry server, which only the config sets.
    fn refuse_sorry_server(&self, address: IpAddr) -> anyhow::Result<()> {
        if self.config.sorry_server == Some(address) {
            bail!(
                "{address} is the sorry server of service {}, not a backend; change \
                 `sorry_server` in the config and reload",
                self.config.name
            );
        }
        Ok(())
    }

    /// Places a new backend in the lowest free slot; returns the slot.
    fn place(&mut self, backend: BackendRuntime) -> anyhow::Result<u32> {
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None if self.slots.len() < MAX_BACKENDS => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => bail!(
                "service {} already has {MAX_BACKENDS} backend slots in use (removed backends \
                 keep theirs until their flows finish)",
                self.config.name
            ),
        };
        self.slots[slot] = Some(backend);
        Ok(slot as u32)
    }

    /// Frees trailing empty slots so the data path scans fewer.
    fn trim(&mut self) {
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
    }
}

/// The key a configured service is known by: its VIP, first port (0 for
/// every port), protocol and VLAN. A reload that keeps it keeps the
/// service, its id and its flows; its other ports may change.
pub fn key_of(service: &ServiceConfig) -> ServiceKey {
    ServiceKey::new(
        service.vip,
        service.ports.first(),
        service.protocol.number(),
        service.vlan_path(),
    )
}

/// What a reload changed, for the log and the `lb reload` reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Services added.
    pub services_added: Vec<String>,
    /// Services removed.
    pub services_removed: Vec<String>,
    /// Backends added, as `service/address`.
    pub backends_added: Vec<String>,
    /// Backends removed, as `service/address`.
    pub backends_removed: Vec<String>,
    /// Backends whose weight changed, as `service/address old->new`.
    pub reweighted: Vec<String>,
}

impl std::fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            ("services added", &self.services_added),
            ("services removed", &self.services_removed),
            ("backends added", &self.backends_added),
            ("backends removed", &self.backends_removed),
            ("weights changed", &self.reweighted),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(what, v)| format!("{what}: {}", v.join(", ")))
        .collect();
        if parts.is_empty() {
            write!(f, "no change to services or backends")
        } else {
            write!(f, "{}", parts.join("; "))
        }
    }
}

/// The running state of every service.
#[derive(Debug, Default)]
pub struct Director {
    /// Services, in no particular order.
    pub services: Vec<ServiceRuntime>,
    /// Where the search for a free service id starts: ids are handed out
    /// round-robin, so a just-freed id is the last to be reused.
    next_id: u32,
}

impl Director {
    /// A director with no services.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the state a previous `lb` left in the maps: `found` are the
    /// services there (keys, value, backend set). Services the config
    /// still has keep their id and backends (slots, MACs, health, removed
    /// flags), so their flows continue; the rest are removed. Call
    /// [`Director::apply`] with the config next to bring backends and
    /// weights in line with it.
    pub fn adopt(
        found: Vec<InstalledService>,
        config: &Config,
        nic_by_index: &HashMap<u32, Nic>,
    ) -> (Self, Vec<Change>) {
        let mut director = Self::new();
        let mut changes = Vec::new();
        for InstalledService {
            service,
            keys,
            backends: set,
        } in found
        {
            let id = service.id;
            director.next_id = director.next_id.max(id + 1) % MAX_SERVICES;
            let Some(service) = config.services.iter().find(|s| keys.contains(&key_of(s))) else {
                changes.push(Change::RemoveService { id });
                continue;
            };
            let key = key_of(service);
            let health = &service.health;
            let mut slots = Vec::new();
            for b in set.backends.iter().take(set.len as usize) {
                // Empty with an address: a rescheduled backend's slot.
                let rescheduled = b.state == BACKEND_STATE_EMPTY && b.addr != [0; 16];
                if b.state == BACKEND_STATE_EMPTY && !rescheduled {
                    slots.push(None);
                    continue;
                }
                let nic = nic_by_index.get(&b.ifindex).cloned().unwrap_or(Nic {
                    name: format!("ifindex {}", b.ifindex),
                    index: b.ifindex,
                    mac: b.nic_mac,
                });
                slots.push(Some(BackendRuntime {
                    address: addr_from_key(b.addr, key.family),
                    weight: b.weight,
                    static_mac: false,
                    mac: Some(b.mac),
                    nic,
                    // Without a check nothing would bring a down backend
                    // back: a service with kind "none" has every backend up.
                    health: Hysteresis::starting(
                        b.state != BACKEND_STATE_DOWN || health.kind == HealthKind::None,
                        health.rise,
                        health.fall,
                    ),
                    removed: b.state == BACKEND_STATE_REMOVED || rescheduled,
                    rescheduled,
                    // `apply` marks the sorry server by its address.
                    sorry: false,
                }));
            }
            director.services.push(ServiceRuntime {
                id,
                config: service.clone(),
                slots,
                quorum_lost: false,
            });
        }
        (director, changes)
    }

    /// The service named `name`.
    pub fn service_mut(&mut self, name: &str) -> anyhow::Result<&mut ServiceRuntime> {
        let names: Vec<String> = self
            .services
            .iter()
            .map(|s| s.config.name.clone())
            .collect();
        self.services
            .iter_mut()
            .find(|s| s.config.name == name)
            .ok_or_else(|| anyhow!("no service named {name:?} (services: {})", names.join(", ")))
    }

    /// The service with id `id`.
    pub fn by_id(&mut self, id: u32) -> Option<&mut ServiceRuntime> {
        self.services.iter_mut().find(|s| s.id == id)
    }

    /// A free service id.
    fn allocate_id(&mut self) -> anyhow::Result<u32> {
        for step in 0..MAX_SERVICES {
            let id = (self.next_id + step) % MAX_SERVICES;
            if !self.services.iter().any(|s| s.id == id) {
                self.next_id = (id + 1) % MAX_SERVICES;
                return Ok(id);
            }
        }
        bail!("all {MAX_SERVICES} service ids are in use")
    }

    /// Brings the running state in line with `config`: services are matched
    /// by (VIP, port, protocol) and backends by address. Backends that stay
    /// keep their slot (their flows are untouched) and take the new weight;
    /// new backends get a free slot; removed ones finish their flows (or,
    /// with `expire_nodest_conn`, are rescheduled on their next packet).
    /// `nics` must hold the director NIC of every backend in `config`.
    /// On error nothing has changed.
    pub fn apply(
        &mut self,
        config: &Config,
        nics: &HashMap<IpAddr, Nic>,
    ) -> anyhow::Result<(Vec<Change>, ReloadSummary)> {
        for service in &config.services {
            for address in service.servers() {
                if !nics.contains_key(&address) {
                    bail!(
                        "service {}: server {address} has no director NIC",
                        service.name
                    );
                }
            }
        }
        // Work on a copy so that an error leaves the running state as it was.
        let mut next = Director {
            services: self.services.clone(),
            next_id: self.next_id,
        };
        let mut changes = Vec::new();
        let mut summary = ReloadSummary::default();
        let expire_nodest = config.director.expire_nodest_conn;

        let wanted: Vec<ServiceKey> = config.services.iter().map(key_of).collect();
        next.services.retain(|s| {
            if wanted.contains(&s.key()) {
                return true;
            }
            changes.push(Change::RemoveService { id: s.id });
            summary.services_removed.push(s.config.name.clone());
            false
        });

        for service in &config.services {
            let key = key_of(service);
            let position = next.services.iter().position(|s| s.key() == key);
            let runtime = match position {
                Some(at) => &mut next.services[at],
                None => {
                    let id = next.allocate_id()?;
                    next.services.push(ServiceRuntime {
                        id,
                        config: service.clone(),
                        slots: Vec::new(),
                        quorum_lost: false,
                    });
                    summary.services_added.push(service.name.clone());
                    next.services.last_mut().expect("just pushed")
                }
            };
            let id = runtime.id;
            let health = &service.health;
            let unchecked = health.kind == HealthKind::None;
            if unchecked
                || runtime.config.health.rise != health.rise
                || runtime.config.health.fall != health.fall
            {
                for b in runtime.slots.iter_mut().flatten() {
                    b.health = Hysteresis::starting(
                        unchecked || b.health.is_up(),
                        health.rise,
                        health.fall,
                    );
                }
            }
            runtime.config = service.clone();
            // Backends no longer configured.
            for slot in 0..runtime.slots.len() {
                let Some(b) = &mut runtime.slots[slot] else {
                    continue;
                };
                if b.removed || service.servers().any(|address| address == b.address) {
                    continue;
                }
                summary
                    .backends_removed
                    .push(format!("{}/{}", service.name, b.address));
                b.removed = true;
                b.rescheduled = expire_nodest;
            }
            // Configured backends and the sorry server: keep, revive or add.
            let sorry = service.sorry_server.map(|address| BackendConfig {
                address,
                weight: 1,
                mac: None,
            });
            for (c, is_sorry) in service
                .backends
                .iter()
                .map(|c| (c, false))
                .chain(sorry.iter().map(|c| (c, true)))
            {
                let nic = nics[&c.address].clone();
                match runtime.slot_of(c.address) {
                    Some(slot) => {
                        let b = runtime.slots[slot].as_mut().expect("slot_of found it");
                        if b.removed {
                            b.removed = false;
                            b.rescheduled = false;
                            summary
                                .backends_added
                                .push(format!("{}/{}", service.name, c.address));
                        } else if b.weight != c.weight {
                            summary.reweighted.push(format!(
                                "{}/{} {}->{}",
                                service.name, c.address, b.weight, c.weight
                            ));
                        }
                        b.weight = c.weight;
                        if let Some(mac) = c.mac {
                            b.mac = Some(mac);
                        }
                        b.static_mac = c.mac.is_some();
                        b.nic = nic;
                        b.sorry = is_sorry;
                        if is_sorry {
                            // Never checked: only its MAC decides.
                            b.health = Hysteresis::starting(true, health.rise, health.fall);
                        }
                    }
                    None => {
                        let slot = runtime.place(BackendRuntime {
                            address: c.address,
                            weight: c.weight,
                            static_mac: c.mac.is_some(),
                            mac: c.mac,
                            nic,
                            health: Hysteresis::new(health.rise, health.fall),
                            removed: false,
                            rescheduled: false,
                            sorry: is_sorry,
                        })?;
                        if position.is_some() {
                            summary
                                .backends_added
                                .push(format!("{}/{}", service.name, c.address));
                        }
                        changes.push(Change::ResetBackendStats { id, slot });
                    }
                }
            }
            runtime.trim();
            changes.push(Change::SetService(id));
        }
        *self = next;
        Ok((changes, summary))
    }

    /// `lb backend add`: a new backend in a free slot, or a removed one
    /// brought back into its own slot (its finishing flows stay on it).
    pub fn add_backend(
        &mut self,
        service: &str,
        address: IpAddr,
        weight: u32,
        mac: Option<[u8; 6]>,
        nic: Nic,
    ) -> anyhow::Result<Vec<Change>> {
        check_weight(weight)?;
        let runtime = self.service_mut(service)?;
        runtime.refuse_sorry_server(address)?;
        if address.is_ipv4() != runtime.config.vip.is_ipv4() {
            bail!(
                "backend {address} is not of the address family of service {service}'s VIP {}",
                runtime.config.vip
            );
        }
        let id = runtime.id;
        let mut changes = Vec::new();
        match runtime.slot_of(address) {
            Some(slot) => {
                let b = runtime.slots[slot].as_mut().expect("slot_of found it");
                if !b.removed {
                    bail!(
                        "service {service} already has backend {address} (weight {}); \
                         use `lb backend set-weight` to change it",
                        b.weight
                    );
                }
                b.removed = false;
                b.rescheduled = false;
                b.weight = weight;
                if mac.is_some() {
                    b.mac = mac;
                    b.static_mac = true;
                }
            }
            None => {
                let health = &runtime.config.health;
                let health = Hysteresis::new(health.rise, health.fall);
                let slot = runtime.place(BackendRuntime {
                    address,
                    weight,
                    static_mac: mac.is_some(),
                    mac,
                    nic,
                    health,
                    removed: false,
                    rescheduled: false,
                    sorry: false,
                })?;
                changes.push(Change::ResetBackendStats { id, slot });
            }
        }
        changes.push(Change::SetService(id));
        Ok(changes)
    }

    /// `lb backend remove`: no new flows; its flows finish on it, or with
    /// `reschedule` (IPVS `expire_nodest_conn`) move to another backend on
    /// their next packet.
    pub fn remove_backend(
        &mut self,
        service: &str,
        address: IpAddr,
        reschedule: bool,
    ) -> anyhow::Result<Vec<Change>> {
        let runtime = self.service_mut(service)?;
        runtime.refuse_sorry_server(address)?;
        let slot = runtime
            .slot_of(address)
            .with_context(|| format!("service {service} has no backend {address}"))?;
        let b = runtime.slots[slot].as_mut().expect("slot_of found it");
        if reschedule {
            b.removed = true;
            b.rescheduled = true;
        } else {
            if b.removed {
                bail!(
                    "backend {address} of service {service} is already removed and finishing \
                     its flows (add `--reschedule` to move them now)"
                );
            }
            b.removed = true;
        }
        Ok(vec![Change::SetService(runtime.id)])
    }

    /// `lb backend set-weight` (and `drain`, which is weight 0: no new
    /// flows, existing flows continue).
    pub fn set_weight(
        &mut self,
        service: &str,
        address: IpAddr,
        weight: u32,
    ) -> anyhow::Result<Vec<Change>> {
        check_weight(weight)?;
        let runtime = self.service_mut(service)?;
        runtime.refuse_sorry_server(address)?;
        let id = runtime.id;
        let b = runtime.backend_mut(address)?;
        if b.removed {
            bail!(
                "backend {address} of service {service} is removed; `lb backend add` brings it back"
            );
        }
        b.weight = weight;
        Ok(vec![Change::SetService(id)])
    }

    /// Frees the slots of removed backends that have no flow left, given
    /// the per-slot flow counts the sweeper found.
    pub fn free_finished(&mut self, counts: &HashMap<u32, BackendConnSet>) -> Vec<Change> {
        let mut changes = Vec::new();
        for s in &mut self.services {
            let mut freed = false;
            for (slot, b) in s.slots.iter_mut().enumerate() {
                let finished = b.as_ref().is_some_and(|b| b.removed)
                    && counts
                        .get(&s.id)
                        .is_none_or(|c| c.conns[slot].active + c.conns[slot].inactive == 0);
                if finished {
                    *b = None;
                    freed = true;
                }
            }
            if freed {
                s.trim();
                changes.push(Change::SetService(s.id));
            }
        }
        changes
    }
}

fn check_weight(weight: u32) -> anyhow::Result<()> {
    if weight > MAX_WEIGHT {
        bail!("weight {weight} is out of range (valid: 0..={MAX_WEIGHT})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const NIC: Nic = Nic {
        name: String::new(),
        index: 7,
        mac: [2, 0, 0, 0, 0, 7],
    };

    /// Service `id` under `key` with backend set `backends`, as an adopting
    /// lb finds it in the maps.
    fn installed(key: ServiceKey, id: u32, backends: BackendSet) -> InstalledService {
        InstalledService {
            service: lb_common::Service {
                id,
                ..lb_common::Service::default()
            },
            keys: vec![key],
            backends,
        }
    }

    /// A config with one TCP service "web" on 192.0.2.200:80, no health
    /// check, and `backends` as (last octet in 198.51.100.0/24, weight).
    fn config(backends: &[(u8, u32)], expire_nodest_conn: bool) -> Config {
        config_checked(backends, expire_nodest_conn, "none")
    }

    /// [`config`] with a health check of kind `kind`.
    fn config_checked(backends: &[(u8, u32)], expire_nodest_conn: bool, kind: &str) -> Config {
        let mut text = format!(
            "[director]\ninterfaces = [\"eth0\"]\nexpire_nodest_conn = {expire_nodest_conn}\n\
             [[service]]\nname = \"web\"\nvip = \"192.0.2.200\"\nport = 80\n\
             [service.health]\nkind = \"{kind}\"\n"
        );
        for (octet, weight) in backends {
            text += &format!(
                "[[service.backend]]\naddress = \"198.51.100.{octet}\"\nweight = {weight}\n"
            );
        }
        Config::parse(&text, "test.toml").unwrap()
    }

    fn nics(config: &Config) -> HashMap<IpAddr, Nic> {
        config
            .services
            .iter()
            .flat_map(|s| s.servers())
            .map(|address| (address, NIC))
            .collect()
    }

    fn addr(octet: u8) -> IpAddr {
        IpAddr::from([198, 51, 100, octet])
    }

    /// slot -> (last octet, weight, removed), for the one service.
    fn slots(d: &Director) -> BTreeMap<u32, (u8, u32, bool)> {
        d.services[0]
            .backends()
            .map(|(slot, b)| {
                let IpAddr::V4(v4) = b.address else {
                    unreachable!()
                };
                (slot, (v4.octets()[3], b.weight, b.removed))
            })
            .collect()
    }

    fn apply(d: &mut Director, c: &Config) -> (Vec<Change>, ReloadSummary) {
        d.apply(c, &nics(c)).unwrap()
    }

    /// The data path's (state, weight) of every slot of the one service.
    fn data_path_slots(d: &Director) -> Vec<(u32, u32)> {
        let set = d.services[0].backend_set();
        set.backends[..set.len as usize]
            .iter()
            .map(|b| (b.state, b.weight))
            .collect()
    }

    #[test]
    fn the_sorry_server_takes_new_flows_only_while_quorum_is_lost() {
        let mut d = Director::new();
        // Backends of weight 2, 1 and 1 (4 in all), quorum 3 with
        // hysteresis 1: lost below 2, regained at 4.
        let mut c = config(&[(1, 2), (2, 1), (3, 1)], false);
        let service = &mut c.services[0];
        service.sorry_server = Some(addr(99));
        service.quorum = 3;
        service.hysteresis = 1;
        let (changes, _) = apply(&mut d, &c);
        assert!(changes.contains(&Change::ResetBackendStats { id: 0, slot: 3 }));
        let s = &mut d.services[0];
        assert!(s.slots[3].as_ref().is_some_and(|b| b.sorry));
        for b in s.slots.iter_mut().flatten() {
            b.mac = Some([2, 0, 0, 0, 0, 1]);
        }
        const UP: u32 = BACKEND_STATE_UP;
        const DOWN: u32 = BACKEND_STATE_DOWN;
        const STANDBY: u32 = BACKEND_STATE_STANDBY;
        // Weight 4 up: quorum held, the sorry server takes nothing.
        assert_eq!(s.update_quorum(), None);
        assert_eq!(
            data_path_slots(&d),
            [(UP, 2), (UP, 1), (UP, 1), (STANDBY, 0)]
        );
        // Weight 2 up (>= 3 - 1): still held.
        let s = &mut d.services[0];
        s.slots[1].as_mut().unwrap().health = Hysteresis::starting(false, 1, 1);
        s.slots[2].as_mut().unwrap().health = Hysteresis::starting(false, 1, 1);
        assert_eq!(s.update_quorum(), None);
        assert!(s.has_usable_backend());
        // Weight 1 (< 2): lost; new flows go to the sorry server only.
        s.slots[0].as_mut().unwrap().weight = 1;
        assert_eq!(s.update_quorum(), Some(true));
        assert_eq!(
            data_path_slots(&d),
            [(UP, 0), (DOWN, 0), (DOWN, 0), (UP, 1)]
        );
        assert!(d.services[0].has_usable_backend());
        // Weight 3 (< 3 + 1): still lost; weight 4: regained.
        let s = &mut d.services[0];
        s.slots[0].as_mut().unwrap().weight = 2;
        s.slots[1].as_mut().unwrap().health = Hysteresis::starting(true, 1, 1);
        assert_eq!(s.update_quorum(), None);
        assert!(s.quorum_lost);
        s.slots[2].as_mut().unwrap().health = Hysteresis::starting(true, 1, 1);
        assert_eq!(s.update_quorum(), Some(false));
        assert_eq!(
            data_path_slots(&d),
            [(UP, 2), (UP, 1), (UP, 1), (STANDBY, 0)]
        );
        // The sorry server is never health-checked, and live changes leave
        // it alone.
        assert!(
            d.set_weight("web", addr(99), 5)
                .unwrap_err()
                .to_string()
                .contains("is the sorry server of service web")
        );
        assert!(d.remove_backend("web", addr(99), false).is_err());
        // Dropping it from the config removes it like a backend.
        c.services[0].sorry_server = None;
        let (_, summary) = apply(&mut d, &c);
        assert_eq!(summary.backends_removed, ["web/198.51.100.99"]);
    }

    #[test]
    fn without_a_sorry_server_a_lost_quorum_changes_no_weight() {
        let mut d = Director::new();
        let mut c = config(&[(1, 1), (2, 1)], false);
        c.services[0].quorum = 2;
        apply(&mut d, &c);
        let s = &mut d.services[0];
        for b in s.slots.iter_mut().flatten() {
            b.mac = Some([2, 0, 0, 0, 0, 1]);
        }
        s.slots[1].as_mut().unwrap().health = Hysteresis::starting(false, 1, 1);
        assert_eq!(s.update_quorum(), Some(true));
        assert_eq!(
            data_path_slots(&d),
            [(BACKEND_STATE_UP, 1), (BACKEND_STATE_DOWN, 1)]
        );
    }

    #[test]
    fn first_apply_adds_every_service_and_backend() {
        let mut d = Director::new();
        let c = config(&[(1, 100), (2, 50)], false);
        let (changes, summary) = apply(&mut d, &c);
        assert_eq!(summary.services_added, ["web"]);
        assert_eq!(
            changes,
            [
                Change::ResetBackendStats { id: 0, slot: 0 },
                Change::ResetBackendStats { id: 0, slot: 1 },
                Change::SetService(0)
            ]
        );
        assert_eq!(
            slots(&d),
            BTreeMap::from([(0, (1, 100, false)), (1, (2, 50, false))])
        );
    }

    #[test]
    fn reload_keeps_slots_of_backends_that_stay() {
        let mut d = Director::new();
        apply(&mut d, &config(&[(1, 100), (2, 50), (3, 80)], false));
        // Re-weight 1, remove 2, add 4.
        let (changes, summary) = apply(&mut d, &config(&[(4, 10), (3, 80), (1, 300)], false));
        assert_eq!(summary.reweighted, ["web/198.51.100.1 100->300"]);
        assert_eq!(summary.backends_removed, ["web/198.51.100.2"]);
        assert_eq!(summary.backends_added, ["web/198.51.100.4"]);
        // 2 keeps slot 1 while its flows finish, so 4 takes slot 3.
        assert_eq!(
            slots(&d),
            BTreeMap::from([
                (0, (1, 300, false)),
                (1, (2, 50, true)),
                (2, (3, 80, false)),
                (3, (4, 10, false)),
            ])
        );
        assert!(changes.contains(&Change::ResetBackendStats { id: 0, slot: 3 }));
        let set = d.services[0].backend_set();
        assert_eq!(set.len, 4);
        assert_eq!(set.backends[1].state, BACKEND_STATE_REMOVED);
        assert_eq!(set.backends[1].weight, 0);
        assert_eq!(set.backends[0].weight, 300);
    }

    #[test]
    fn expire_nodest_conn_empties_the_slot_for_the_data_path_at_once() {
        let mut d = Director::new();
        apply(&mut d, &config(&[(1, 100), (2, 50)], true));
        apply(&mut d, &config(&[(1, 100)], true));
        // Its flows are scheduled again on their next packet...
        let set = d.services[0].backend_set();
        assert_eq!(set.backends[1].state, BACKEND_STATE_EMPTY);
        // ...but the slot stays taken until none is left.
        assert_eq!(
            slots(&d),
            BTreeMap::from([(0, (1, 100, false)), (1, (2, 50, true))])
        );
        assert_eq!(
            d.free_finished(&HashMap::from([(0, BackendConnSet::default())])),
            [Change::SetService(0)]
        );
        assert_eq!(slots(&d), BTreeMap::from([(0, (1, 100, false))]));
        assert_eq!(d.services[0].backend_set().len, 1);
    }

    /// `lb backend remove --reschedule B` then `add C`: C gets a slot of
    /// its own, so B's flows (rescheduled on their next packet) and
    /// counters never land on C, also across an adoption; B's slot is
    /// freed once the sweeper finds no flow on it.
    #[test]
    fn a_rescheduled_slot_is_not_reused_while_flows_point_at_it() {
        let mut d = Director::new();
        apply(&mut d, &config(&[(1, 100), (2, 50)], false));
        d.remove_backend("web", addr(2), true).unwrap();
        let changes = d.add_backend("web", addr(3), 10, None, NIC).unwrap();
        assert_eq!(
            changes,
            [
                Change::ResetBackendStats { id: 0, slot: 2 },
                Change::SetService(0)
            ]
        );
        assert_eq!(
            slots(&d),
            BTreeMap::from([
                (0, (1, 100, false)),
                (1, (2, 50, true)),
                (2, (3, 10, false))
            ])
        );

        // An adopting lb sees the slot as taken, not free.
        let s = &d.services[0];
        let set = s.backend_set();
        assert_eq!(set.backends[1].state, BACKEND_STATE_EMPTY);
        let found = vec![installed(s.key(), s.id, set)];
        let c = config(&[(1, 100), (3, 10)], false);
        let (mut adopted, _) = Director::adopt(found, &c, &HashMap::from([(7, NIC)]));
        let b = adopted.services[0].slots[1].as_ref().unwrap();
        assert!(b.removed && b.rescheduled);

        // Flows still point at it: kept. None left: freed.
        let mut counts = HashMap::from([(0, BackendConnSet::default())]);
        counts.get_mut(&0).unwrap().conns[1].inactive = 2;
        assert!(adopted.free_finished(&counts).is_empty());
        counts.get_mut(&0).unwrap().conns[1].inactive = 0;
        assert_eq!(adopted.free_finished(&counts), [Change::SetService(0)]);
        assert!(adopted.services[0].slots[1].is_none());
    }

    #[test]
    fn removed_slot_is_freed_when_its_flows_are_gone() {
        let mut d = Director::new();
        apply(&mut d, &config(&[(1, 100), (2, 50)], false));
        apply(&mut d, &config(&[(1, 100)], false));
        let mut counts = HashMap::from([(0, BackendConnSet::default())]);
        counts.get_mut(&0).unwrap().conns[1].active = 3;
        assert!(d.free_finished(&counts).is_empty());
        assert!(slots(&d)[&1].2);
        counts.get_mut(&0).unwrap().conns[1].active = 0;
        assert_eq!(d.free_finished(&counts), [Change::SetService(0)]);
        assert_eq!(slots(&d), BTreeMap::from([(0, (1, 100, false))]));
    }

    #[test]
    fn a_removed_backend_added_again_gets_its_own_slot_back() {
        let mut d = Director::new();
        apply(&mut d, &config(&[(1, 100), (2, 50)], false));
        d.remove_backend("web", addr(1), false).unwrap();
        assert!(d.remove_backend("web", addr(1), false).is_err());
        let changes = d.add_backend("web", addr(1), 70, None, NIC).unwrap();
        assert_eq!(changes, [Change::SetService(0)]);
        assert_eq!(
            slots(&d),
            BTreeMap::from([(0, (1, 70, false)), (1, (2, 50, false))])
        );
    }

    #[test]
    fn live_changes_are_checked() {
        let mut d = Director::new();
        apply(&mut d, &config(&[(1, 100)], false));
        let err = d.set_weight("web", addr(9), 5).unwrap_err().to_string();
        assert!(err.contains("no backend 198.51.100.9"), "{err}");
        assert!(err.contains("198.51.100.1"), "{err}");
        let err = d.set_weight("nope", addr(1), 5).unwrap_err().to_string();
        assert!(
            err.contains("no service named \"nope\" (services: web)"),
            "{err}"
        );
        let err = d
            .set_weight("web", addr(1), 70_000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("valid: 0..=65535"), "{err}");
        let err = d
            .add_backend("web", "2001:db8::1".parse().unwrap(), 1, None, NIC)
            .unwrap_err()
            .to_string();
        assert!(err.contains("address family"), "{err}");
        let err = d.add_backend("web", addr(1), 1, None, NIC).unwrap_err();
        assert!(err.to_string().contains("already has backend"), "{err}");
        // Drain: weight 0 but still up, so its flows continue.
        d.services[0].slots[0].as_mut().unwrap().mac = Some([2, 0, 0, 0, 0, 1]);
        d.set_weight("web", addr(1), 0).unwrap();
        let set = d.services[0].backend_set();
        assert_eq!(
            (set.backends[0].state, set.backends[0].weight),
            (BACKEND_STATE_UP, 0)
        );
        // Rescheduling remove empties the slot for the data path at once.
        d.remove_backend("web", addr(1), true).unwrap();
        assert_eq!(slots(&d), BTreeMap::from([(0, (1, 0, true))]));
        assert_eq!(
            d.services[0].backend_set().backends[0].state,
            BACKEND_STATE_EMPTY
        );
    }

    #[test]
    fn removing_a_service_frees_its_id_and_new_ids_go_round_robin() {
        let mut d = Director::new();
        apply(&mut d, &config(&[(1, 100)], false));
        let empty = Config::parse("[director]\ninterfaces = [\"eth0\"]\n", "t").unwrap();
        let (changes, summary) = apply(&mut d, &empty);
        assert_eq!(summary.services_removed, ["web"]);
        assert!(matches!(changes[..], [Change::RemoveService { id: 0, .. }]));
        apply(&mut d, &config(&[(1, 100)], false));
        assert_eq!(d.services[0].id, 1, "a just-freed id is reused last");
    }

    #[test]
    fn a_failed_apply_changes_nothing() {
        let mut d = Director::new();
        apply(&mut d, &config(&[(1, 100)], false));
        let c = config(&[(1, 5), (2, 50)], false);
        assert!(d.apply(&c, &HashMap::new()).is_err());
        assert_eq!(slots(&d), BTreeMap::from([(0, (1, 100, false))]));
    }

    #[test]
    fn adoption_keeps_slots_macs_and_health_of_the_maps() {
        let mut first = Director::new();
        apply(
            &mut first,
            &config_checked(&[(1, 100), (2, 50), (3, 80)], false, "tcp"),
        );
        first.services[0].slots[0].as_mut().unwrap().mac = Some([2, 0, 0, 0, 0, 1]);
        first.services[0].slots[2].as_mut().unwrap().mac = Some([2, 0, 0, 0, 0, 3]);
        first.services[0].slots[2].as_mut().unwrap().health = Hysteresis::starting(false, 1, 1);
        first.remove_backend("web", addr(2), false).unwrap();
        let s = &first.services[0];
        let found = vec![
            installed(s.key(), s.id, s.backend_set()),
            installed(
                ServiceKey::new(IpAddr::from([192, 0, 2, 9]), 53, 17, 0),
                5,
                BackendSet::default(),
            ),
            // The configured service's VIP, port and protocol on a VLAN:
            // another service.
            installed(
                ServiceKey {
                    vlan: 4001,
                    ..s.key()
                },
                6,
                BackendSet::default(),
            ),
        ];
        let c = config_checked(&[(1, 100), (3, 80)], false, "tcp");
        let (mut d, changes) = Director::adopt(found, &c, &HashMap::from([(7, NIC)]));
        assert!(matches!(
            changes[..],
            [
                Change::RemoveService { id: 5, .. },
                Change::RemoveService { id: 6, .. }
            ]
        ));
        assert_eq!(
            slots(&d),
            BTreeMap::from([(0, (1, 100, false)), (1, (2, 0, true)), (2, (3, 80, false))])
        );
        let b = d.services[0].slots[2].as_ref().unwrap();
        assert_eq!(b.mac, Some([2, 0, 0, 0, 0, 3]));
        // Down in the map: it stays down until its checks pass `rise` times.
        assert!(!b.health.is_up());
        assert!(d.services[0].slots[0].as_ref().unwrap().health.is_up());
        let (_, summary) = apply(&mut d, &c);
        assert_eq!(summary, ReloadSummary::default());
        assert_eq!(d.allocate_id().unwrap(), 7);
    }

    /// Without a health check nothing would bring a down backend back: a
    /// service with kind "none" has every backend up, also when adopted
    /// down from the maps and after a reload that switches to "none".
    #[test]
    fn backends_without_a_check_are_up() {
        let checked = config_checked(&[(1, 100), (2, 50)], false, "tcp");
        let mut first = Director::new();
        apply(&mut first, &checked);
        first.services[0].slots[1].as_mut().unwrap().health = Hysteresis::starting(false, 2, 3);
        let s = &first.services[0];
        let found = vec![installed(s.key(), s.id, s.backend_set())];

        let unchecked = config(&[(1, 100), (2, 50)], false);
        let (adopted, _) = Director::adopt(found.clone(), &unchecked, &HashMap::from([(7, NIC)]));
        assert!(
            adopted.services[0].slots[1]
                .as_ref()
                .unwrap()
                .health
                .is_up()
        );
        let (adopted_checked, _) = Director::adopt(found, &checked, &HashMap::from([(7, NIC)]));
        assert!(
            !adopted_checked.services[0].slots[1]
                .as_ref()
                .unwrap()
                .health
                .is_up()
        );

        // Up also in the maps, once its MAC is known.
        first.services[0].slots[1].as_mut().unwrap().mac = Some([2, 0, 0, 0, 0, 2]);
        let (changes, _) = apply(&mut first, &unchecked);
        assert!(first.services[0].slots[1].as_ref().unwrap().health.is_up());
        assert!(changes.contains(&Change::SetService(0)));
        assert_eq!(
            first.services[0].backend_set().backends[1].state,
            BACKEND_STATE_UP
        );
    }
}
