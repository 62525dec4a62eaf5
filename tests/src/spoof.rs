//! Floods of spoofed frames, sent from inside a namespace through an
//! `AF_PACKET` socket: TCP frames of many distinct client tuples that no
//! real client holds ([`Flood`]), for checking that a flood does not break
//! established connections, or any frames a test builds ([`send`]).
//!
//! Frames are built with [`crate::frame::Pkt`] (checksums included) and
//! addressed at the Ethernet layer to the director's NIC, so they take the
//! path a real client's frames take: the client's veth, the bridge, the
//! director's NIC and its XDP program.
//!
//! A flood reaches every CPU, as a real one does through a NIC's receive
//! queues: the sender moves between the CPUs it may run on every few dozen
//! tuples, and a veth runs the receiving XDP program on the sending CPU.
//! (Per-CPU state of the data path, such as its SYN windows or the kernel's
//! per-CPU lists of an LRU map, would otherwise see only one CPU's share of
//! the flood.) Spoofed sources come from
//! [`SPOOF_NET4`] (IPv4) or [`SPOOF_NET6`] (IPv6), documentation prefixes
//! distinct from the bed's own hosts; nothing routes back to them, so the
//! real servers' answers die in the real servers' namespaces.

use std::{
    io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lb_common::conn_state::{TCP_ACK, TCP_SYN};

use crate::{
    NetNs,
    frame::{L4, Pkt},
    packet::PacketSocket,
};

/// The IPv4 prefix spoofed sources come from (TEST-NET-3, 203.0.113.0/24):
/// the bed's hosts live in 192.0.2.0/24.
pub const SPOOF_NET4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 0);
/// The IPv6 prefix spoofed sources come from (2001:db8:5f00::/64): the bed's
/// hosts live in 2001:db8::/64.
pub const SPOOF_NET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x5f00, 0, 0, 0, 0, 0);

/// Hosts of the spoofed prefix used as sources: 203.0.113.1 to .250 (and
/// 2001:db8:5f00::1 to ::fa).
const SPOOF_HOSTS: u32 = 250;
/// The first spoofed source port; each host uses ports from here upwards.
const FIRST_PORT: u32 = 10_000;
/// Tuples sent from one CPU before the sender moves to the next.
const TUPLES_PER_CPU_TURN: usize = 32;

/// What each spoofed tuple sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloodKind {
    /// A SYN and nothing else: a half-open connection.
    Syn,
    /// A SYN and then an ACK, as if the three-way handshake completed (the
    /// ACK acknowledges nothing the real server sent).
    FakeHandshake,
    /// An ACK and nothing else, for a connection nobody opened.
    Ack,
}

impl FloodKind {
    /// The TCP flags of the frames each tuple sends, in order.
    pub const fn flags(self) -> &'static [u8] {
        match self {
            Self::Syn => &[TCP_SYN],
            Self::FakeHandshake => &[TCP_SYN, TCP_ACK],
            Self::Ack => &[TCP_ACK],
        }
    }
}

/// A flood: `tuples` distinct spoofed client tuples, numbered from `first`,
/// each sending [`FloodKind::flags`] to `target`.
///
/// Tuple `i` is [`spoofed`] tuple `i` in `target`'s family, so floods over
/// disjoint index ranges never share a tuple.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    /// What each tuple sends.
    pub kind: FloodKind,
    /// Index of the first tuple.
    pub first: u32,
    /// Number of distinct tuples.
    pub tuples: u32,
    /// The VIP and service port the frames go to.
    pub target: SocketAddr,
    /// Destination MAC: the director NIC's.
    pub dst_mac: [u8; 6],
    /// Source MAC: the sending interface's own, so the bridge learns nothing new.
    pub src_mac: [u8; 6],
}

impl Flood {
    /// Number of frames the flood sends.
    pub fn frames(&self) -> usize {
        self.tuples as usize * self.kind.flags().len()
    }

    /// The spoofed client address and port of tuple `i`, in `target`'s family.
    pub fn tuple(&self, i: u32) -> SocketAddr {
        spoofed(i, self.target.ip())
    }

    /// Every frame of the flood, in sending order: for each tuple, its
    /// frames one after the other (a fake handshake's SYN right before its ACK).
    pub fn build(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::with_capacity(self.frames());
        for i in self.first..self.first + self.tuples {
            let source = self.tuple(i);
            for &flags in self.kind.flags() {
                let mut pkt = Pkt::between(
                    source.ip(),
                    self.target.ip(),
                    L4::Tcp {
                        sport: source.port(),
                        dport: self.target.port(),
                        flags,
                    },
                );
                pkt.dst_mac = self.dst_mac;
                pkt.src_mac = self.src_mac;
                frames.push(pkt.build());
            }
        }
        frames
    }

    /// Sends the flood from interface `iface` of namespace `ns` and waits
    /// until every frame has been handed to the interface.
    pub fn send(&self, ns: &NetNs, iface: &str) -> anyhow::Result<Sent> {
        let per_turn = TUPLES_PER_CPU_TURN * self.kind.flags().len();
        send(ns, iface, self.build(), per_turn)
            .with_context(|| format!("sending a {:?} flood", self.kind))
    }
}

/// The spoofed client address and port of tuple `i`, in `like`'s family.
///
/// Tuple `i` is the spoofed host `i % 250 + 1` of [`SPOOF_NET4`] (or
/// [`SPOOF_NET6`]) with source port `10000 + i / 250`.
pub fn spoofed(i: u32, like: IpAddr) -> SocketAddr {
    let host = i % SPOOF_HOSTS + 1;
    let port = FIRST_PORT + i / SPOOF_HOSTS;
    let port = u16::try_from(port).expect("spoofed tuple index out of range");
    let addr = match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::from(SPOOF_NET4) | host)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(u128::from(SPOOF_NET6) | host as u128)),
    };
    SocketAddr::new(addr, port)
}

/// Sends `frames` in order from interface `iface` of namespace `ns`,
/// `per_turn` frames from each CPU in turn (see the module docs), and waits
/// until every frame has been handed to the interface.
pub fn send(
    ns: &NetNs,
    iface: &str,
    frames: Vec<Vec<u8>>,
    per_turn: usize,
) -> anyhow::Result<Sent> {
    let iface = iface.to_owned();
    ns.run(move || send_frames(&iface, &frames, per_turn))
        .with_context(|| format!("sending frames from {}", ns.name()))
}

/// What [`Flood::send`] did.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    /// Frames handed to the interface.
    pub frames: usize,
    /// Times the socket refused a frame for lack of buffer space and the
    /// frame was sent again after a short pause.
    pub retries: usize,
    /// Number of CPUs the frames were sent from.
    pub cpus: usize,
    /// How long sending took.
    pub elapsed: Duration,
}

/// `02:00:00:00:00:0a` as bytes.
pub fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts
            .next()
            .with_context(|| format!("MAC address {text:?} has fewer than 6 bytes"))?;
        *byte = u8::from_str_radix(part, 16)
            .with_context(|| format!("MAC address {text:?}: bad byte {part:?}"))?;
    }
    if parts.next().is_some() {
        bail!("MAC address {text:?} has more than 6 bytes");
    }
    Ok(mac)
}

/// Sends `frames` from `iface` of the calling thread's namespace through an
/// `AF_PACKET` socket bound to it, one `send` each, pausing briefly and
/// retrying when the socket is out of buffer space. The calling thread
/// (a thread of its own: [`NetNs::run`]) sends `per_turn` frames from each
/// CPU it may run on in turn.
fn send_frames(iface: &str, frames: &[Vec<u8>], per_turn: usize) -> anyhow::Result<Sent> {
    let socket = PacketSocket::sender(iface)?;
    let cpus = allowed_cpus()?;
    let started = Instant::now();
    let mut retries = 0;
    for (turn, batch) in frames.chunks(per_turn.max(1)).enumerate() {
        pin_to(cpus[turn % cpus.len()])?;
        for (k, frame) in batch.iter().enumerate() {
            let i = turn * per_turn + k;
            loop {
                match socket.send(frame) {
                    Ok(()) => break,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) => {
                        retries += 1;
                        if retries > 100_000 {
                            bail!("{iface}: frame {i}: out of buffer space too often: {e}");
                        }
                        thread::sleep(Duration::from_micros(50));
                    }
                    Err(e) => bail!("{iface}: sending frame {i} of {}: {e}", frames.len()),
                }
            }
        }
    }
    Ok(Sent {
        frames: frames.len(),
        retries,
        cpus: cpus.len().min(frames.len().div_ceil(per_turn.max(1))),
        elapsed: started.elapsed(),
    })
}

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a cpu_set_t of the size passed; 0 is the calling thread.
    if unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &raw mut set) } != 0 {
        return Err(io::Error::last_os_error()).context("sched_getaffinity");
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cpus.is_empty() {
        bail!("sched_getaffinity: no CPU allowed");
    }
    Ok(cpus)
}

/// Moves the calling thread to CPU `cpu` (and keeps it there).
fn pin_to(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `cpu` is an allowed CPU, so below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a cpu_set_t of the size passed; 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &raw const set) } != 0
    {
        return Err(io::Error::last_os_error()).with_context(|| format!("moving to CPU {cpu}"));
    }
    Ok(())
}
