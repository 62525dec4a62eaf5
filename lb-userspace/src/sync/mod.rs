//! Connection sync between directors (`[sync]`): each director sends the
//! flows of its connection tables to the others and installs theirs, so a
//! backup that takes over a VIP (keepalived's VRRP) or a director that
//! receives another's flows (ECMP) forwards every running connection to the
//! real server it already has, as IPVS's sync daemon does, but both ways at
//! once and authenticated.
//!
//! What is sent, batched (at most [`FLUSH`] late, [`wire::MAX_ENTRIES`]
//! flows a message), never per packet:
//! - a flow entering a connection table and each state change there, as the
//!   XDP program reports them in its `FLOW_CHANGES` ring (only while sync is
//!   on: `SYNC_ENABLED`);
//! - the flows the sweeper expires;
//! - every [`REFRESH`], the flows this director forwarded since the last
//!   refresh, so that the copies elsewhere, which see no packets, do not
//!   idle out while the connection lives;
//! - its whole table, to a director that asks for it: every director asks
//!   its peers when it starts, and asks a peer it hears for the first time
//!   (unless that was within [`SILENCE`] of its own start, when the peer
//!   had its start-up request) or again after [`SILENCE`] (what the peer
//!   sent while a link was cut is lost);
//! - an empty message every [`HEARTBEAT`] when there is nothing else.
//!
//! The backend is named by address (directors may number slots
//! differently). A received flow is installed only for a service and a
//! backend this director has; it never replaces a flow this director is
//! forwarding to another backend. It is marked `FLOW_SYNCED` until this
//! director forwards a packet of it, and only such a copy is removed when
//! its owner expires the flow. The client of a flow of a persistent
//! service gets a persistence template to its backend unless it has one,
//! so that its next connections follow. Messages carry an HMAC-SHA256 tag, a
//! sequence number and a send time ([`wire`]); unicast messages are taken
//! only from the configured peers. Everything refused is counted
//! ([`SyncStats`]).

pub mod wire;

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use lb_common::{
    ANY_PORT, FLOW_CARRIED_DATA, FLOW_SYNCED, Flow, FlowChange, FlowKey, FlowKey4, FlowKey6,
    PersistTemplate, ServiceKey, SyncCounters, addr_key,
    conn_state::{STATE_NONE, STATE_SYN_RECV},
    persist_key,
};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{io::unix::AsyncFd, net::UdpSocket, sync::mpsc, task::JoinHandle, time};
use tracing::{debug, info, warn};

use self::wire::{Entry, Key, Message, Refusal, ReplayWindow};
use crate::{
    config::{MIN_SYNC_KEY, SyncConfig, SyncPeers},
    datapath::maps::{FlowTable, Maps, monotonic_ns},
    director::Director,
};

/// The longest a flow change waits before it is sent.
pub const FLUSH: Duration = Duration::from_millis(100);
/// How often the flows this director forwarded are sent again (see the
/// module doc): well inside every state's timeout but `close`'s.
pub const REFRESH: Duration = Duration::from_secs(30);
/// A director with nothing to send sends an empty message this often, so
/// that its peers know it is there.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A peer not heard from for this long is asked for its whole table when
/// it is heard again: what it sent meanwhile (a cut link, a restart) was
/// lost.
pub const SILENCE: Duration = Duration::from_secs(3);
/// Messages of a bulk send (a refresh, a whole table) between two pauses
/// of [`BULK_PAUSE`], so that a peer's socket buffer keeps up.
const BULK_BURST: usize = 32;
/// The pause between two bursts of a bulk send.
const BULK_PAUSE: Duration = Duration::from_millis(1);

/// Reads the shared key from `path`: at least [`MIN_SYNC_KEY`] bytes (surrounding
/// whitespace ignored), in a file that neither group nor others may read.
pub fn read_key(path: &Path) -> anyhow::Result<Key> {
    let metadata = fs::metadata(path).with_context(|| {
        format!(
            "[sync] key_file {}: cannot read it (create it with e.g. `head -c 32 /dev/urandom \
             | base64 > {0}; chmod 600 {0}`, the same file on every director)",
            path.display()
        )
    })?;
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "[sync] key_file {}: mode {:o} lets group or others read the key (valid: 600 or \
             400, e.g. `chmod 600 {0}`)",
            path.display(),
            mode & 0o777
        );
    }
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let key = bytes.trim_ascii();
    if key.len() < MIN_SYNC_KEY {
        bail!(
            "[sync] key_file {}: the key has {} bytes (valid: at least {MIN_SYNC_KEY}, e.g. 32 \
             random bytes in base64)",
            path.display(),
            key.len()
        );
    }
    Ok(Key::new(key.to_vec()))
}

/// Where flows of each service go, by backend address: what translates
/// between this director's slots and the addresses the protocol carries.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// Service id by each of its keys.
    services: HashMap<ServiceKey, u32>,
    /// Backend addresses by service id and slot.
    backends: HashMap<u32, Vec<Option<IpAddr>>>,
    /// The client prefix length of each persistent service, by id.
    persistence: HashMap<u32, u32>,
}

impl Directory {
    /// The directory of `director`'s services and backends.
    pub fn of(director: &Director) -> Self {
        let mut directory = Self::default();
        for service in &director.services {
            for key in service.keys() {
                directory.services.insert(key, service.id);
            }
            let slots = service
                .slots
                .iter()
                .map(|b| b.as_ref().map(|b| b.address))
                .collect();
            directory.backends.insert(service.id, slots);
            let value = service.config.service_value(service.id);
            if value.persistence_timeout_s > 0 {
                directory
                    .persistence
                    .insert(service.id, value.persistence_prefix);
            }
        }
        directory
    }

    /// The service flow `key` belongs to (its port's key, else the VIP's
    /// every-port key).
    fn service_of(&self, key: &FlowKey) -> Option<u32> {
        let exact = ServiceKey::new(key.vip(), key.port(), key.proto(), key.vlan_path());
        let any = ServiceKey::new(key.vip(), ANY_PORT, key.proto(), key.vlan_path());
        self.services
            .get(&exact)
            .or_else(|| self.services.get(&any))
            .copied()
    }

    /// The address of backend `slot` of service `id`.
    fn backend(&self, id: u32, slot: u16) -> Option<IpAddr> {
        *self.backends.get(&id)?.get(usize::from(slot))?
    }

    /// The slot of the backend at `address` in service `id`.
    fn slot(&self, id: u32, address: IpAddr) -> Option<u16> {
        let slots = self.backends.get(&id)?;
        let slot = slots.iter().position(|b| *b == Some(address))?;
        u16::try_from(slot).ok()
    }
}

/// Sync counters, as `lb stats --json` and `/metrics` show them (from
/// `SYNC_STATS` while sync is on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStats {
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages received and accepted.
    pub messages_received: u64,
    /// Flows sent (new, changed, refreshed, expired, whole tables).
    pub flows_sent: u64,
    /// Flows in accepted messages.
    pub flows_received: u64,
    /// Received flows installed or refreshed in a connection table.
    pub flows_installed: u64,
    /// Received flow copies removed because their owner expired them.
    pub flows_expired: u64,
    /// Received flows not installed: a service or backend this director
    /// does not have, a flow it forwards to another backend, a full table.
    pub flows_rejected: u64,
    /// Datagrams refused for a wrong tag, or from an address that is not a
    /// peer.
    pub messages_rejected_auth: u64,
    /// Authenticated messages refused as replays (a sequence number seen
    /// before, or sent too long ago).
    pub messages_rejected_replay: u64,
    /// Datagrams refused as malformed.
    pub messages_rejected_malformed: u64,
    /// Whole tables asked of the peers (at start).
    pub tables_requested: u64,
    /// Whole tables sent to peers that asked.
    pub tables_sent: u64,
    /// Flow changes the data path could not hand to sync (its ring was
    /// full); those flows are sent at the next refresh.
    pub changes_lost: u64,
    /// Milliseconds between the sending and the receipt of the last
    /// accepted message (the directors' clocks must agree); `None` before
    /// the first.
    pub lag_ms: Option<u64>,
    /// Milliseconds since the last accepted message; `None` before the
    /// first.
    pub last_received_ms_ago: Option<u64>,
}

impl SyncStats {
    /// The stats of `counters`, with `changes_lost` from the data path.
    pub fn new(counters: &SyncCounters, changes_lost: u64) -> Self {
        Self {
            messages_sent: counters.messages_sent,
            messages_received: counters.messages_received,
            flows_sent: counters.flows_sent,
            flows_received: counters.flows_received,
            flows_installed: counters.flows_installed,
            flows_expired: counters.flows_expired,
            flows_rejected: counters.flows_rejected,
            messages_rejected_auth: counters.rejected_auth,
            messages_rejected_replay: counters.rejected_replay,
            messages_rejected_malformed: counters.rejected_malformed,
            tables_requested: counters.tables_requested,
            tables_sent: counters.tables_sent,
            changes_lost,
            lag_ms: (counters.lag_ms != u64::MAX).then_some(counters.lag_ms),
            last_received_ms_ago: (counters.last_received_unix_ms != 0)
                .then(|| unix_ms().saturating_sub(counters.last_received_unix_ms)),
        }
    }
}

/// The counters behind `SYNC_STATS`, shared by the sync tasks and written
/// to the map by the sync task.
#[derive(Debug, Default)]
struct Counters {
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
    flows_sent: AtomicU64,
    flows_received: AtomicU64,
    flows_installed: AtomicU64,
    flows_expired: AtomicU64,
    flows_rejected: AtomicU64,
    rejected_auth: AtomicU64,
    rejected_replay: AtomicU64,
    rejected_malformed: AtomicU64,
    tables_requested: AtomicU64,
    tables_sent: AtomicU64,
    lag_ms: AtomicU64,
    last_received_unix_ms: AtomicU64,
}

impl Counters {
    /// Counters going on from `c` (a previous `lb run`'s, when adopted).
    fn from(c: &SyncCounters) -> Self {
        Self {
            messages_sent: c.messages_sent.into(),
            messages_received: c.messages_received.into(),
            flows_sent: c.flows_sent.into(),
            flows_received: c.flows_received.into(),
            flows_installed: c.flows_installed.into(),
            flows_expired: c.flows_expired.into(),
            flows_rejected: c.flows_rejected.into(),
            rejected_auth: c.rejected_auth.into(),
            rejected_replay: c.rejected_replay.into(),
            rejected_malformed: c.rejected_malformed.into(),
            tables_requested: c.tables_requested.into(),
            tables_sent: c.tables_sent.into(),
            lag_ms: c.lag_ms.into(),
            last_received_unix_ms: c.last_received_unix_ms.into(),
        }
    }

    /// The counters now.
    fn read(&self) -> SyncCounters {
        SyncCounters {
            messages_sent: self.messages_sent.load(Relaxed),
            messages_received: self.messages_received.load(Relaxed),
            flows_sent: self.flows_sent.load(Relaxed),
            flows_received: self.flows_received.load(Relaxed),
            flows_installed: self.flows_installed.load(Relaxed),
            flows_expired: self.flows_expired.load(Relaxed),
            flows_rejected: self.flows_rejected.load(Relaxed),
            rejected_auth: self.rejected_auth.load(Relaxed),
            rejected_replay: self.rejected_replay.load(Relaxed),
            rejected_malformed: self.rejected_malformed.load(Relaxed),
            tables_requested: self.tables_requested.load(Relaxed),
            tables_sent: self.tables_sent.load(Relaxed),
            lag_ms: self.lag_ms.load(Relaxed),
            last_received_unix_ms: self.last_received_unix_ms.load(Relaxed),
        }
    }
}

/// Connection sync, running: the handle `lb run` keeps.
pub struct FlowSync {
    directory: Arc<RwLock<Directory>>,
    expired: mpsc::UnboundedSender<Vec<Entry>>,
    task: JoinHandle<()>,
}

impl FlowSync {
    /// Opens the sync socket on `config.interface` (from `source`, the
    /// director's own address there), turns the data path's flow-change
    /// ring on, asks the peers for their tables and starts sending and
    /// receiving. `maps` are the daemon's (the ring is taken from them);
    /// the sync task opens its own handles on the pins under `pin_path`.
    pub async fn start(
        config: &SyncConfig,
        key: Key,
        source: IpAddr,
        ifindex: u32,
        maps: &mut Maps,
        pin_path: &Path,
        directory: Directory,
    ) -> anyhow::Result<Self> {
        let socket = open_socket(config, source, ifindex)?;
        let ring = maps
            .take_flow_changes()
            .context("the flow-change ring is already being read")?;
        // SAFETY: the ring owns its map's descriptor, open and the same for
        // as long as the AsyncFd holds the ring.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("polling the flow-change ring")?;
        let table = Maps::from_pins(pin_path)?;
        let destinations: Vec<SocketAddr> = match &config.peers {
            SyncPeers::Unicast(peers) => peers
                .iter()
                .map(|p| SocketAddr::new(*p, config.port))
                .collect(),
            SyncPeers::Multicast(group) => vec![SocketAddr::new(*group, config.port)],
        };
        let allowed: Option<HashSet<IpAddr>> = match &config.peers {
            SyncPeers::Unicast(peers) => Some(peers.iter().copied().collect()),
            SyncPeers::Multicast(_) => None,
        };
        let mut earlier = crate::datapath::maps::array_get(&maps.sync_stats, 0)?;
        if earlier == SyncCounters::default() {
            earlier.lag_ms = u64::MAX;
        }
        let counters = Arc::new(Counters::from(&earlier));
        let directory = Arc::new(RwLock::new(directory));
        let sender = Arc::new(Sender {
            socket: Arc::new(socket),
            key,
            id: fastrand::u64(1..),
            sequence: AtomicU64::new(0),
            destinations,
            counters: counters.clone(),
        });
        maps.set_sync_enabled(true)?;
        let (expired, expired_rx) = mpsc::unbounded_channel();
        let worker = Worker {
            sender,
            allowed,
            ring,
            table,
            pin_path: pin_path.to_owned(),
            directory: directory.clone(),
            counters: counters.clone(),
            replay: ReplayWindow::default(),
            pending: Vec::new(),
            last_refresh_ns: monotonic_ns(),
            published: earlier,
            last_sent: time::Instant::now(),
            heard: HashMap::new(),
            started: time::Instant::now(),
        };
        let task = tokio::spawn(worker.run(expired_rx));
        info!(
            "sync: on {} from {source} port {}, to {}",
            config.interface,
            config.port,
            describe_peers(&config.peers)
        );
        Ok(Self {
            directory,
            expired,
            task,
        })
    }

    /// Replaces the directory after the services or backends changed.
    pub fn set_directory(&self, directory: Directory) {
        *self.directory.write().unwrap_or_else(|e| e.into_inner()) = directory;
    }

    /// Tells the peers that the sweeper expired these flows.
    pub fn expired(&self, keys: &[(FlowKey, Flow)]) {
        let entries: Vec<Entry> = keys
            .iter()
            .filter(|(_, flow)| !matches!(u32::from(flow.state), STATE_NONE | STATE_SYN_RECV))
            .map(|(key, _)| Entry {
                op: wire::EXPIRE,
                key: *key,
                state: 0,
                flags: 0,
                backend: unspecified(key.vip()),
            })
            .collect();
        if !entries.is_empty() {
            let _ = self.expired.send(entries);
        }
    }

    /// Stops syncing: the data path stops writing the ring.
    pub fn stop(self, maps: &mut Maps) {
        self.task.abort();
        if let Err(e) = maps.set_sync_enabled(false) {
            warn!("sync: turning the flow-change ring off: {e:#}");
        }
    }
}

/// "192.0.2.3, 192.0.2.4" or "group 239.0.0.81".
fn describe_peers(peers: &SyncPeers) -> String {
    match peers {
        SyncPeers::Unicast(peers) => peers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        SyncPeers::Multicast(group) => format!("group {group}"),
    }
}

/// The unspecified address of `like`'s family.
fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// Now, in Unix milliseconds.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The UDP socket: bound to `source` and the port for unicast; for a
/// multicast group, bound to the group's port, joined on `ifindex` (whose
/// address is `source`), with loopback off and a TTL of 1.
fn open_socket(config: &SyncConfig, source: IpAddr, ifindex: u32) -> anyhow::Result<UdpSocket> {
    let domain = if source.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    let bind = match config.peers {
        SyncPeers::Unicast(_) => SocketAddr::new(source, config.port),
        SyncPeers::Multicast(group) => SocketAddr::new(unspecified(group), config.port),
    };
    if let SyncPeers::Multicast(group) = config.peers {
        socket.bind_device(Some(config.interface.as_bytes()))?;
        match (group, source) {
            (IpAddr::V4(group), IpAddr::V4(source)) => {
                socket.join_multicast_v4(&group, &source)?;
                socket.set_multicast_if_v4(&source)?;
                socket.set_multicast_loop_v4(false)?;
                socket.set_multicast_ttl_v4(1)?;
            }
            (IpAddr::V6(group), IpAddr::V6(_)) => {
                socket.join_multicast_v6(&group, ifindex)?;
                socket.set_multicast_if_v6(ifindex)?;
                socket.set_multicast_loop_v6(false)?;
                socket.set_multicast_hops_v6(1)?;
            }
            _ => bail!("[sync] group {group} and source {source} are of different families"),
        }
    }
    socket.bind(&bind.into()).map_err(|e| {
        let why = if e.kind() == ErrorKind::AddrInUse {
            " (is another lb syncing on this port?)"
        } else {
            ""
        };
        anyhow::anyhow!("[sync] binding the sync socket to {bind}: {e}{why}")
    })?;
    Ok(UdpSocket::from_std(socket.into())?)
}

/// Signs and sends messages: one sequence of numbers for every message of
/// this `lb run`, whichever task sends it.
struct Sender {
    socket: Arc<UdpSocket>,
    key: Key,
    /// This `lb run`'s random sender id.
    id: u64,
    sequence: AtomicU64,
    destinations: Vec<SocketAddr>,
    counters: Arc<Counters>,
}

impl Sender {
    /// Sends one message of `kind` with `entries` (at most
    /// `wire::MAX_ENTRIES`) to `to`.
    async fn send(&self, kind: u8, entries: Vec<Entry>, to: &[SocketAddr]) {
        let flows = entries.len() as u64;
        let message = Message {
            kind,
            sender: self.id,
            sequence: self.sequence.fetch_add(1, Relaxed) + 1,
            sent_ms: unix_ms(),
            entries,
        };
        let datagram = wire::encode(&message, &self.key);
        for destination in to {
            match self.socket.send_to(&datagram, destination).await {
                Ok(_) => {
                    self.counters.messages_sent.fetch_add(1, Relaxed);
                    self.counters.flows_sent.fetch_add(flows, Relaxed);
                }
                Err(e) => debug!("sync: sending to {destination}: {e}"),
            }
        }
    }

    /// Sends `entries` in full messages to `to`, pausing between bursts.
    async fn send_all(&self, entries: Vec<Entry>, to: &[SocketAddr]) {
        for (n, chunk) in entries.chunks(wire::MAX_ENTRIES).enumerate() {
            if n > 0 && n % BULK_BURST == 0 {
                time::sleep(BULK_PAUSE).await;
            }
            self.send(wire::FLOWS, chunk.to_vec(), to).await;
        }
    }
}

/// Whether a peer just heard may have sent changes this director never
/// received, and so must be asked for its whole table: `Some("again")` when
/// it was last heard `since_heard` ago, at least [`SILENCE`]; `Some("for the
/// first time")` when it was never heard and this director started
/// (`since_start`) at least [`SILENCE`] ago. A peer first heard right after
/// this director's own request at start had that request: it answers it.
/// Whatever the message is, a table request included: a peer asking after a
/// cut link lost this director's changes, and this director lost its own.
fn lost_changes_of(since_heard: Option<Duration>, since_start: Duration) -> Option<&'static str> {
    match since_heard {
        Some(silent) if silent >= SILENCE => Some("again"),
        Some(_) => None,
        None if since_start >= SILENCE => Some("for the first time"),
        None => None,
    }
}

/// The sync task's state.
struct Worker {
    sender: Arc<Sender>,
    /// Unicast: the only source addresses accepted.
    allowed: Option<HashSet<IpAddr>>,
    ring: AsyncFd<RingBuf<MapData>>,
    /// Handles on the connection tables, to install received flows.
    table: Maps,
    pin_path: PathBuf,
    directory: Arc<RwLock<Directory>>,
    counters: Arc<Counters>,
    replay: ReplayWindow,
    /// Changes not sent yet.
    pending: Vec<Entry>,
    /// When the last refresh walk started (CLOCK_MONOTONIC ns).
    last_refresh_ns: u64,
    /// The counters last written to `SYNC_STATS`.
    published: SyncCounters,
    /// When this task last sent a message (for [`HEARTBEAT`]).
    last_sent: time::Instant,
    /// When each peer was last heard from (for [`SILENCE`]).
    heard: HashMap<IpAddr, time::Instant>,
    /// When this director asked its peers for their tables at start.
    started: time::Instant,
}

impl Worker {
    async fn run(mut self, mut expired: mpsc::UnboundedReceiver<Vec<Entry>>) {
        let request_to = self.sender.destinations.clone();
        self.counters.tables_requested.fetch_add(1, Relaxed);
        self.sender
            .send(wire::TABLE_REQUEST, Vec::new(), &request_to)
            .await;
        let mut flush = time::interval(FLUSH);
        let mut refresh = time::interval_at(time::Instant::now() + REFRESH, REFRESH);
        let socket = self.sender.socket.clone();
        let mut buffer = vec![0u8; wire::MAX_MESSAGE + 1];
        loop {
            tokio::select! {
                ready = self.ring.readable_mut() => match ready {
                    Ok(mut guard) => {
                        guard.clear_ready();
                        self.drain_ring();
                    }
                    Err(e) => {
                        warn!("sync: polling the flow-change ring failed, sync stops: {e}");
                        return;
                    }
                },
                _ = flush.tick() => {
                    self.flush().await;
                    self.publish_counters();
                }
                Some(entries) = expired.recv() => {
                    self.pending.extend(entries);
                    if self.pending.len() >= wire::MAX_ENTRIES {
                        self.flush().await;
                    }
                }
                received = socket.recv_from(&mut buffer) => match received {
                    Ok((len, from)) => self.receive(&buffer[..len], from),
                    Err(e) => debug!("sync: receiving: {e}"),
                },
                _ = refresh.tick() => self.refresh(),
            }
        }
    }

    /// Turns every change in the ring into a pending UPDATE.
    fn drain_ring(&mut self) {
        let directory = self.directory.read().unwrap_or_else(|e| e.into_inner());
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            let change = match item.len() {
                n if n == size_of::<FlowChange<FlowKey4>>() => {
                    // SAFETY: the ring item holds a FlowChange<FlowKey4> the
                    // data path wrote (its size says which); read unaligned.
                    let c = unsafe {
                        item.as_ptr()
                            .cast::<FlowChange<FlowKey4>>()
                            .read_unaligned()
                    };
                    (FlowKey::V4(c.key), c.flow)
                }
                n if n == size_of::<FlowChange<FlowKey6>>() => {
                    // SAFETY: as above, a FlowChange<FlowKey6>.
                    let c = unsafe {
                        item.as_ptr()
                            .cast::<FlowChange<FlowKey6>>()
                            .read_unaligned()
                    };
                    (FlowKey::V6(c.key), c.flow)
                }
                _ => continue,
            };
            if let Some(entry) = update_entry(&directory, change.0, &change.1) {
                self.pending.push(entry);
            }
        }
    }

    /// Writes the counters to `SYNC_STATS` when they changed.
    fn publish_counters(&mut self) {
        let now = self.counters.read();
        if now == self.published {
            return;
        }
        match self.table.sync_stats.set(0, now, 0) {
            Ok(()) => self.published = now,
            Err(e) => debug!("sync: writing the counters: {e}"),
        }
    }

    /// Sends the pending changes, or a heartbeat when nothing was sent for
    /// [`HEARTBEAT`].
    async fn flush(&mut self) {
        let to = self.sender.destinations.clone();
        if self.pending.is_empty() {
            if self.last_sent.elapsed() >= HEARTBEAT {
                self.sender.send(wire::FLOWS, Vec::new(), &to).await;
                self.last_sent = time::Instant::now();
            }
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        self.sender.send_all(pending, &to).await;
        self.last_sent = time::Instant::now();
    }

    /// Starts a refresh: a walk (off this task) of the connection tables
    /// for the flows forwarded here since the last one, sent in bulk.
    fn refresh(&mut self) {
        let since = std::mem::replace(&mut self.last_refresh_ns, monotonic_ns());
        self.send_table(Some(since), self.sender.destinations.clone());
    }

    /// Walks the connection tables in a blocking task and sends their flows
    /// to `to`: those this director forwarded since `since` (a refresh), or
    /// all of them (`None`: a whole table).
    fn send_table(&self, since: Option<u64>, to: Vec<SocketAddr>) {
        let pin_path = self.pin_path.clone();
        let directory = self.directory.clone();
        let sender = self.sender.clone();
        tokio::spawn(async move {
            let walked = tokio::task::spawn_blocking(move || {
                let maps = Maps::from_pins(&pin_path)?;
                let directory = directory.read().unwrap_or_else(|e| e.into_inner());
                let mut entries = Vec::new();
                maps.for_each_flow_in_batches(
                    crate::datapath::maps::LOOKUP_BATCH,
                    |table, key, flow| {
                        let own = flow.flags & FLOW_SYNCED == 0;
                        let wanted = match since {
                            Some(since) => own && flow.last_seen_ns >= since,
                            None => true,
                        };
                        if table == FlowTable::Confirmed
                            && wanted
                            && let Some(entry) = update_entry(&directory, key, &flow)
                        {
                            entries.push(entry);
                        }
                    },
                )?;
                anyhow::Ok(entries)
            })
            .await;
            match walked {
                Ok(Ok(entries)) => {
                    debug!("sync: sending {} flow(s) to {to:?}", entries.len());
                    sender.send_all(entries, &to).await;
                }
                Ok(Err(e)) => warn!("sync: walking the connection tables: {e:#}"),
                Err(e) => warn!("sync: the table walk failed: {e}"),
            }
        });
    }

    /// One datagram from `from`.
    fn receive(&mut self, datagram: &[u8], from: SocketAddr) {
        let counters = self.counters.clone();
        if let Some(allowed) = &self.allowed
            && !allowed.contains(&from.ip())
        {
            counters.rejected_auth.fetch_add(1, Relaxed);
            debug!("sync: a message from {from}, which is not a peer, refused");
            return;
        }
        let message = match wire::decode(datagram, &self.sender.key) {
            Ok(message) => message,
            Err(refusal) => {
                let counter = match refusal {
                    Refusal::Malformed => &counters.rejected_malformed,
                    Refusal::Unauthenticated => &counters.rejected_auth,
                };
                counter.fetch_add(1, Relaxed);
                debug!("sync: a message from {from} refused: {refusal:?}");
                return;
            }
        };
        if message.sender == self.sender.id {
            return;
        }
        let now = unix_ms();
        if !self.replay.accept(&message, now) {
            counters.rejected_replay.fetch_add(1, Relaxed);
            debug!(
                "sync: a replayed message from {from} refused (sequence {})",
                message.sequence
            );
            return;
        }
        counters.messages_received.fetch_add(1, Relaxed);
        counters
            .lag_ms
            .store(now.saturating_sub(message.sent_ms), Relaxed);
        counters.last_received_unix_ms.store(now, Relaxed);
        let heard = self.heard.insert(from.ip(), time::Instant::now());
        if let Some(why) = lost_changes_of(heard.map(|at| at.elapsed()), self.started.elapsed()) {
            // What the peer sent while it was not heard is lost.
            info!("sync: {from} heard {why}: asking for its whole connection table");
            counters.tables_requested.fetch_add(1, Relaxed);
            let sender = self.sender.clone();
            tokio::spawn(async move {
                sender.send(wire::TABLE_REQUEST, Vec::new(), &[from]).await;
            });
        }
        if message.kind == wire::TABLE_REQUEST {
            info!("sync: {from} asked for the whole connection table");
            counters.tables_sent.fetch_add(1, Relaxed);
            let to = match self.allowed {
                Some(_) => vec![from],
                None => self.sender.destinations.clone(),
            };
            self.send_table(None, to);
            return;
        }
        counters
            .flows_received
            .fetch_add(message.entries.len() as u64, Relaxed);
        for entry in &message.entries {
            let counter = match self.apply(entry) {
                Applied::Installed => &counters.flows_installed,
                Applied::Expired => &counters.flows_expired,
                Applied::Ignored => continue,
                Applied::Rejected => &counters.flows_rejected,
            };
            counter.fetch_add(1, Relaxed);
        }
    }

    /// Installs, refreshes or removes the flow of `entry`.
    fn apply(&mut self, entry: &Entry) -> Applied {
        let local = match self.table.flow_in(&entry.key) {
            Ok(Some((FlowTable::Confirmed, flow))) => Some(flow),
            Ok(_) => None,
            Err(_) => return Applied::Rejected,
        };
        if entry.op == wire::EXPIRE {
            return match local {
                Some(flow) if flow.flags & FLOW_SYNCED != 0 => {
                    if self.table.remove_flow(&entry.key) {
                        Applied::Expired
                    } else {
                        Applied::Ignored
                    }
                }
                _ => Applied::Ignored,
            };
        }
        let directory = self.directory.read().unwrap_or_else(|e| e.into_inner());
        let Some(service_id) = directory.service_of(&entry.key) else {
            return Applied::Rejected;
        };
        let Some(slot) = directory.slot(service_id, entry.backend) else {
            return Applied::Rejected;
        };
        let persistence = directory.persistence.get(&service_id).copied();
        drop(directory);
        if let Some(prefix) = persistence {
            self.keep_template(&entry.key, prefix, service_id, slot);
        }
        let now = monotonic_ns();
        let flow = match local {
            // This director forwards it: it only lives longer.
            Some(mine) if mine.flags & FLOW_SYNCED == 0 => {
                if u32::from(mine.service_id) != service_id || mine.backend_slot != slot {
                    return Applied::Rejected;
                }
                Flow {
                    last_seen_ns: mine.last_seen_ns.max(now),
                    ..mine
                }
            }
            _ => Flow {
                last_seen_ns: now,
                service_id: service_id as u16,
                backend_slot: slot,
                state: u16::from(entry.state),
                flags: FLOW_SYNCED
                    | if entry.flags & wire::FLOW_CARRIED_DATA != 0 {
                        FLOW_CARRIED_DATA
                    } else {
                        0
                    },
            },
        };
        match self.table.insert_flow(&entry.key, &flow) {
            Ok(()) => Applied::Installed,
            Err(_) => Applied::Rejected,
        }
    }

    /// Gives the client of flow `key` of persistent service `service_id`
    /// (client prefix `prefix`) a template to `slot` unless it has one, so
    /// that its next connection here goes where its synced ones go (a
    /// GridFTP data connection after a failover follows its control
    /// connection). The sweeper keeps it while the client's flows live.
    fn keep_template(&mut self, key: &FlowKey, prefix: u32, service_id: u32, slot: u16) {
        let template = persist_key(addr_key(key.client()).0, prefix, service_id);
        if self.table.persist.get(&template, 0).is_ok() {
            return;
        }
        let value = PersistTemplate {
            last_used_ns: monotonic_ns(),
            backend_slot: u32::from(slot),
            _pad: 0,
        };
        if let Err(e) = self.table.set_template(&template, &value) {
            debug!("sync: {e:#}");
        }
    }
}

/// What became of one received entry.
enum Applied {
    /// Installed or refreshed.
    Installed,
    /// A copy removed on its owner's expiry.
    Expired,
    /// Nothing to do (an expiry of a flow this director does not hold as a
    /// copy).
    Ignored,
    /// Not installed (see [`SyncStats::flows_rejected`]).
    Rejected,
}

/// The UPDATE entry of flow `key` (as `flow`), if its backend is known.
fn update_entry(directory: &Directory, key: FlowKey, flow: &Flow) -> Option<Entry> {
    let backend = directory.backend(u32::from(flow.service_id), flow.backend_slot)?;
    Some(Entry {
        op: wire::UPDATE,
        key,
        state: flow.state as u8,
        flags: if flow.flags & FLOW_CARRIED_DATA != 0 {
            wire::FLOW_CARRIED_DATA
        } else {
            0
        },
        backend,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// A key file with `content` and `mode` in a fresh temporary directory.
    fn key_file(name: &str, content: &[u8], mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-sync-key-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sync.key");
        fs::File::create(&path).unwrap().write_all(content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_peer_heard_after_silence_is_asked_for_its_table_whatever_it_sent() {
        let moment = Duration::from_millis(200);
        // A cut link: the first message heard again, a table request among
        // them, means the peer's changes meanwhile were lost.
        assert_eq!(lost_changes_of(Some(SILENCE), SILENCE * 10), Some("again"));
        assert_eq!(lost_changes_of(Some(SILENCE * 5), moment), Some("again"));
        assert_eq!(lost_changes_of(Some(moment), SILENCE * 10), None);
        // A peer that starts after this director: its start was not seen.
        assert_eq!(lost_changes_of(None, SILENCE), Some("for the first time"));
        // A peer first heard just after this director's own request at start.
        assert_eq!(lost_changes_of(None, moment), None);
    }

    #[test]
    fn keys_must_be_long_and_private() {
        let good = key_file("good", b"c2VjcmV0LXNoYXJlZC1ieS1ib3Ro\n", 0o600);
        let key = read_key(&good).expect("a good key");
        assert_eq!(format!("{key:?}"), "Key(28 bytes)");
        let open = key_file("open", b"c2VjcmV0LXNoYXJlZC1ieS1ib3Ro\n", 0o644);
        let e = read_key(&open).unwrap_err().to_string();
        assert!(
            e.contains("mode 644 lets group or others read the key"),
            "{e}"
        );
        let short = key_file("short", b"  short \n", 0o400);
        let e = read_key(&short).unwrap_err().to_string();
        assert!(e.contains("the key has 5 bytes (valid: at least 16"), "{e}");
        let e = read_key(Path::new("/nonexistent/lb/sync.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read it"), "{e}");
        for path in [good, open, short] {
            let _ = fs::remove_dir_all(path.parent().unwrap());
        }
    }
}
