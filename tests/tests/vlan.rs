//! End-to-end: services bound to VLANs on the real `lb`. This kernel has no
//! 802.1Q devices, so the client sends tagged frames through an `AF_PACKET`
//! socket and each real server captures what reaches its veth through
//! another (see `lb_tests::packet`); the bed's bridge carries tagged frames
//! as any others.
//!
//! Needs root; without it the test prints `SKIPPED (needs root)` and passes,
//! unless `CI` is set, where it fails.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use lb_common::conn_state::TCP_SYN;
use lb_tests::{
    Director, Health, NetNs, Protocol, Spec, VIP4, VIP6,
    conns::Conns,
    frame::{ETH_LEN, L4, Pkt, TAG_LEN, Tag},
    packet::PacketSocket,
    skip_unless_root,
    spoof::parse_mac,
};

/// The services' port (TCP and UDP, and the health check's).
const PORT: u16 = 8080;
/// Weights of rs1, rs2, rs3.
const WEIGHTS: [u32; 3] = [1000, 500, 800];
/// Allowed deviation from a server's weighted share.
const TOLERANCE: f64 = 0.10;
/// The VLAN of the services (`bond0.4001`).
const VLAN: u16 = 4001;
/// The QinQ service VLAN around [`VLAN`].
const OUTER: u16 = 100;
/// Frames sent to each service: new flows, each from its own client port.
const FLOWS: u16 = 230;
/// Frames sent in a burst before a pause: a veth with an XDP program queues
/// 256 frames at most.
const BURST: usize = 32;
/// How long the frames may take to reach the real servers once sent.
const SETTLE: Duration = Duration::from_secs(1);
/// How long a capture waits for one more frame before it is done.
const CAPTURE_QUIET: Duration = Duration::from_millis(100);
/// How long each capture is read at most (health checks keep coming).
const CAPTURE_LIMIT: Duration = Duration::from_secs(3);

/// One kind of frame the test sends: a service (or none) and how to build
/// its frames.
struct Kind {
    /// The service the frames are for (`None`: no service takes them).
    service: Option<&'static str>,
    /// Tags, outermost first.
    tags: Vec<Tag>,
    /// The VIP.
    vip: IpAddr,
    /// The transport protocol.
    protocol: Protocol,
    /// The first client port (each frame takes the next one).
    first_port: u16,
}

impl Kind {
    /// The frames of this kind from `client` (MAC `client_mac`) to the
    /// director's MAC `director_mac`.
    fn frames(&self, client: IpAddr, client_mac: [u8; 6], director_mac: [u8; 6]) -> Vec<Vec<u8>> {
        (0..FLOWS)
            .map(|i| {
                let sport = self.first_port + i;
                let l4 = match self.protocol {
                    Protocol::Tcp => L4::Tcp {
                        sport,
                        dport: PORT,
                        flags: TCP_SYN,
                    },
                    Protocol::Udp => L4::Udp { sport, dport: PORT },
                };
                let mut pkt = Pkt::between(client, self.vip, l4)
                    .with_tags(&self.tags)
                    .with_payload(b"vlan e2e");
                pkt.dst_mac = director_mac;
                pkt.src_mac = client_mac;
                pkt.build()
            })
            .collect()
    }
}

/// Sends `frames` from `iface` of `ns` through an `AF_PACKET` socket, in
/// bursts of [`BURST`] with a pause after each.
fn send_paced(ns: &NetNs, iface: &str, frames: Vec<Vec<u8>>) -> anyhow::Result<()> {
    let iface = iface.to_owned();
    ns.run(move || {
        let socket = PacketSocket::sender(&iface)?;
        for burst in frames.chunks(BURST) {
            for frame in burst {
                socket.send(frame)?;
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    })
}

/// Tagged TCP SYNs and UDP datagrams from the client reach the real servers
/// of the service of their VLAN (one tag, or a QinQ pair over IPv6), split
/// by weight by wlc, with their tags and every byte after the MAC addresses
/// as sent, from the director's MAC to the chosen server's; untagged frames
/// and frames of another VLAN reach no real server (no service takes them).
/// `lb stats` and `lb conns` show the services' VLANs, their flows and
/// their IP bytes (without the tags), and lb warns that the real servers
/// are reached through the untagged NIC.
#[test]
fn tagged_frames_reach_the_real_servers_of_their_vlan_with_their_tags() {
    const TEST: &str = "vlan_tagged_frames";
    if skip_unless_root(TEST) {
        return;
    }
    let spec = Spec {
        real_servers: WEIGHTS.len(),
        port: PORT,
        udp: &[],
        lb_args: &[],
    };
    let on_vlan = |mut service: lb_tests::ServiceConfig, vlan: &[u16]| {
        service.vlan = vlan.to_vec();
        service
    };
    let setup = Director::start(TEST, spec, |bed| {
        let tcp = |name, vip: IpAddr| {
            bed.service(name, vip, PORT, Protocol::Tcp, Health::tcp(PORT), &WEIGHTS)
        };
        let udp = bed.service(
            "dns-4001",
            VIP4.into(),
            PORT,
            Protocol::Udp,
            Health::tcp(PORT),
            &WEIGHTS,
        );
        vec![
            on_vlan(tcp("web-4001", VIP4.into()), &[VLAN]),
            on_vlan(udp, &[VLAN]),
            on_vlan(tcp("web6-qinq", VIP6.into()), &[OUTER, VLAN]),
        ]
    });
    let fail = |msg: &str| -> ! { setup.fail(msg) };
    let bed = &setup.bed;
    // The bridge takes a frame's outer tag off as it comes in, as a NIC
    // would; without transmit VLAN offload on the director's port it puts it
    // back in the frame, where lb's XDP program reads it.
    bed.switch()
        .exec(
            "ethtool",
            &["-K", "d0", "txvlan", "off", "tx-vlan-stag-hw-insert", "off"],
        )
        .unwrap_or_else(|e| fail(&format!("ethtool on d0: {e:#}")));

    let kinds = [
        Kind {
            service: Some("web-4001"),
            tags: vec![Tag::dot1q(VLAN)],
            vip: VIP4.into(),
            protocol: Protocol::Tcp,
            first_port: 20_000,
        },
        Kind {
            service: Some("dns-4001"),
            tags: vec![Tag::dot1q(VLAN)],
            vip: VIP4.into(),
            protocol: Protocol::Udp,
            first_port: 21_000,
        },
        Kind {
            service: Some("web6-qinq"),
            tags: vec![Tag::dot1ad(OUTER), Tag::dot1q(VLAN)],
            vip: VIP6.into(),
            protocol: Protocol::Tcp,
            first_port: 22_000,
        },
        Kind {
            service: None,
            tags: Vec::new(),
            vip: VIP4.into(),
            protocol: Protocol::Tcp,
            first_port: 23_000,
        },
        Kind {
            service: None,
            tags: Vec::new(),
            vip: VIP4.into(),
            protocol: Protocol::Udp,
            first_port: 24_000,
        },
        Kind {
            service: None,
            tags: vec![Tag::dot1q(VLAN + 1)],
            vip: VIP4.into(),
            protocol: Protocol::Tcp,
            first_port: 25_000,
        },
        Kind {
            service: None,
            tags: vec![Tag::dot1q(VLAN)],
            vip: VIP6.into(),
            protocol: Protocol::Tcp,
            first_port: 26_000,
        },
    ];

    let mac = |text: &str| parse_mac(text).unwrap_or_else(|e| fail(&format!("{e:#}")));
    let client = bed.client();
    let director_mac = mac(&bed.director().mac);
    let frames: Vec<Vec<Vec<u8>>> = kinds
        .iter()
        .map(|k| k.frames(client.addr_like(k.vip), mac(&client.mac), director_mac))
        .collect();
    // Every byte after the MAC addresses -> (kind, frame).
    let sent: HashMap<&[u8], (usize, usize)> = frames
        .iter()
        .enumerate()
        .flat_map(|(k, of_kind)| {
            of_kind
                .iter()
                .enumerate()
                .map(move |(i, f)| (&f[12..], (k, i)))
        })
        .collect();

    let captures: Vec<PacketSocket> = bed
        .real_servers()
        .iter()
        .map(|rs| {
            rs.ns
                .run(|| PacketSocket::capture("eth0", CAPTURE_QUIET))
                .unwrap_or_else(|e| fail(&format!("capturing on {}: {e:#}", rs.role)))
        })
        .collect();
    send_paced(&client.ns, &client.iface, frames.concat())
        .unwrap_or_else(|e| fail(&format!("sending from the client: {e:#}")));

    // (kind, frame) -> the real server that got it.
    let mut got: BTreeMap<(usize, usize), String> = BTreeMap::new();
    thread::sleep(SETTLE);
    for (rs, capture) in bed.real_servers().iter().zip(&captures) {
        let rs_mac = mac(&rs.mac);
        let deadline = Instant::now() + CAPTURE_LIMIT;
        while Instant::now() < deadline
            && let Some(frame) = capture
                .recv()
                .unwrap_or_else(|e| fail(&format!("capturing on {}: {e}", rs.role)))
        {
            let Some(&(k, i)) = frame.get(12..).and_then(|rest| sent.get(rest)) else {
                continue;
            };
            if frame[..6] != rs_mac || frame[6..12] != director_mac {
                fail(&format!(
                    "{}: frame {i} of kind {k} arrived with destination MAC {:02x?} and source \
                     MAC {:02x?} (expected its own, {rs_mac:02x?}, and the director's, \
                     {director_mac:02x?})",
                    rs.role,
                    &frame[..6],
                    &frame[6..12]
                ));
            }
            if let Some(first) = got.insert((k, i), rs.role.clone()) {
                fail(&format!(
                    "frame {i} of kind {k} reached both {first} and {}",
                    rs.role
                ));
            }
        }
    }

    let sum: u32 = WEIGHTS.iter().sum();
    for (k, kind) in kinds.iter().enumerate() {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for ((of_kind, _), role) in &got {
            if *of_kind == k {
                *counts.entry(role.as_str()).or_default() += 1;
            }
        }
        let what = format!(
            "{} frames with tags {:?} to {}",
            FLOWS,
            kind.tags,
            kind.service.unwrap_or("no service")
        );
        if kind.service.is_none() {
            if !counts.is_empty() {
                fail(&format!("{what}: reached real servers: {counts:?}"));
            }
            continue;
        }
        let arrived: usize = counts.values().sum();
        if arrived != usize::from(FLOWS) {
            fail(&format!(
                "{what}: {arrived} reached a real server: {counts:?}"
            ));
        }
        for (rs, weight) in bed.real_servers().iter().zip(WEIGHTS) {
            let share = f64::from(FLOWS) * f64::from(weight) / f64::from(sum);
            let n = counts.get(rs.role.as_str()).copied().unwrap_or(0);
            if (n as f64 - share).abs() > TOLERANCE * share {
                fail(&format!(
                    "{what}: {} (weight {weight}) got {n}, expected {share:.1}: {counts:?}",
                    rs.role
                ));
            }
        }
    }

    let stats = setup.stats();
    for (k, kind) in kinds.iter().enumerate() {
        let Some(name) = kind.service else { continue };
        let frame = &frames[k][0];
        let ip_len = (frame.len() - ETH_LEN - TAG_LEN * kind.tags.len()) as u64;
        let service = stats
            .services
            .iter()
            .find(|s| {
                (s.vip, s.protocol.as_str(), &s.vlan)
                    == (
                        kind.vip,
                        protocol_name(kind.protocol),
                        &vlan_ids(&kind.tags),
                    )
            })
            .unwrap_or_else(|| fail(&format!("lb stats has no service {name}: {stats:#?}")));
        let counted = (service.conns, service.in_pkts, service.in_bytes);
        let flows = u64::from(FLOWS);
        if counted != (flows, flows, flows * ip_len) {
            fail(&format!(
                "{name}: lb stats counts (conns, packets, bytes) {counted:?}, expected \
                 ({flows}, {flows}, {}): IP bytes, without the tags",
                flows * ip_len
            ));
        }
    }
    let config = setup.lb.config_path().display().to_string();
    let conns = Conns::query(setup.lb.binary(), &["--config", &config])
        .unwrap_or_else(|e| fail(&format!("lb conns: {e:#}")));
    for kind in &kinds {
        let Some(name) = kind.service else { continue };
        let flows: Vec<_> = conns.of_service(name).collect();
        let on_vlan = flows.iter().all(|c| c.vlan == vlan_ids(&kind.tags));
        if flows.len() != usize::from(FLOWS) || !on_vlan {
            fail(&format!(
                "lb conns: {} flows of {name}, expected {FLOWS} on VLAN {:?}: {:?}",
                flows.len(),
                vlan_ids(&kind.tags),
                flows.first()
            ));
        }
    }
    let table = setup
        .lb
        .stats_table()
        .unwrap_or_else(|e| fail(&format!("lb stats: {e:#}")));
    for line in [
        "192.0.2.200:8080 vlan 4001",
        "[2001:db8::200]:8080 vlan 100.4001",
    ] {
        if !table.contains(line) {
            fail(&format!("lb stats does not show {line:?}:\n{table}"));
        }
    }
    // A veth keeps the tags, but says it takes them off (as many NICs do).
    for warning in [
        "not through a device of the service's VLAN (vlan 4001)",
        "lbd0 takes VLAN tags off the frames it receives (rx-vlan-hw-parse, \
         rx-vlan-stag-hw-parse on)",
    ] {
        if !setup.lb.log().contains(warning) {
            fail(&format!("lb did not warn {warning:?}"));
        }
    }
    drop(captures);
    setup.finish();
}

/// The VLAN ids of `tags`, as `lb stats` and `lb conns` show them.
fn vlan_ids(tags: &[Tag]) -> Vec<u16> {
    tags.iter().map(|t| t.vid()).collect()
}

/// `tcp` or `udp`, as `lb stats` shows it.
fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}
