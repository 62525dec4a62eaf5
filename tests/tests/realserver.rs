//! `lb realserver setup|check|teardown` run for real inside a network
//! namespace holding a veth pair to a second ("peer") namespace that plays
//! the director's side of the link.
//!
//! Every sysctl under net.ipv4.conf.* and every address touched belongs to
//! the test's own namespaces; the host's interfaces are never touched.

use std::{
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{NetNs, cmd, lb_binary, skip_unless_root, unique_tag};

const VIP4: &str = "192.0.2.200";
const VIP6: &str = "2001:db8::200";
/// The real server's address on its veth.
const RS4: &str = "198.51.100.1";
const RS6: &str = "2001:db8:100::1";
/// The peer's address on its veth.
const PEER4: &str = "198.51.100.2";
const PEER6: &str = "2001:db8:100::2";
/// MAC of the real server's veth.
const RS_MAC: &str = "02:00:00:00:01:01";

/// A real server namespace (`rs0`) wired to a peer namespace (`p0`).
struct Pair {
    rs: NetNs,
    peer: NetNs,
}

impl Pair {
    fn create() -> Self {
        let tag = unique_tag();
        let rs = NetNs::create(&format!("lbrs{tag}-rs")).expect("creating the real server netns");
        let peer = NetNs::create(&format!("lbrs{tag}-peer")).expect("creating the peer netns");
        for ns in [&rs, &peer] {
            // Before the veth exists, so it inherits them: IPv6 usable at once.
            ns.sysctls(&[
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ])
            .expect("DAD sysctls");
        }
        rs.ip(&[
            "link",
            "add",
            "rs0",
            "address",
            RS_MAC,
            "type",
            "veth",
            "peer",
            "name",
            "p0",
            "netns",
            peer.name(),
        ])
        .expect("creating the veth pair");
        rs.ip(&["addr", "add", &format!("{RS4}/24"), "dev", "rs0"])
            .unwrap();
        rs.ip(&["addr", "add", &format!("{RS6}/64"), "dev", "rs0", "nodad"])
            .unwrap();
        rs.ip(&["link", "set", "rs0", "up"]).unwrap();
        peer.ip(&["addr", "add", &format!("{PEER4}/24"), "dev", "p0"])
            .unwrap();
        peer.ip(&["addr", "add", &format!("{PEER6}/64"), "dev", "p0", "nodad"])
            .unwrap();
        peer.ip(&["link", "set", "p0", "up"]).unwrap();
        // The VIPs are on-link from the peer, as they are for a director
        // that rewrites MACs.
        peer.ip(&["route", "add", &format!("{VIP4}/32"), "dev", "p0"])
            .unwrap();
        peer.ip(&["-6", "route", "add", &format!("{VIP6}/128"), "dev", "p0"])
            .unwrap();
        Self { rs, peer }
    }

    /// Runs `lb realserver ARGS` inside the real server namespace.
    fn lb(&self, args: &[&str]) -> cmd::Finished {
        let mut c = self.rs.command(lb_binary().expect("lb binary"));
        c.arg("realserver").args(args);
        cmd::output(&mut c).expect("running lb")
    }

    fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.rs
            .run(move || Ok(std::fs::read_to_string(path)?))
            .expect("reading a sysctl")
            .trim()
            .to_owned()
    }

    fn set_sysctl(&self, key: &str, value: &str) {
        self.rs.sysctls(&[(key, value)]).expect("setting a sysctl");
    }

    fn lo_addresses(&self) -> String {
        self.rs
            .ip(&["-o", "addr", "show", "dev", "lo"])
            .expect("ip addr show dev lo")
    }

    /// The MAC the peer learned for `vip` on p0, if any: after sending a
    /// datagram there (which makes its kernel ARP/ND for the VIP), waits
    /// `wait` for an answer.
    fn peer_resolves(&self, vip: &str, wait: Duration) -> Option<String> {
        self.peer
            .ip(&["neigh", "flush", "dev", "p0"])
            .expect("flushing the peer's neighbours");
        let target = SocketAddr::new(vip.parse::<IpAddr>().unwrap(), 9);
        self.peer
            .run(move || {
                let bind: SocketAddr = if target.is_ipv4() {
                    "0.0.0.0:0".parse()?
                } else {
                    "[::]:0".parse()?
                };
                // The send itself may fail once resolution fails; only the
                // neighbour entry matters.
                let _ = UdpSocket::bind(bind)?.send_to(b"who has the VIP?", target);
                Ok(())
            })
            .expect("sending from the peer");
        let deadline = Instant::now() + wait;
        loop {
            let out = self
                .peer
                .ip(&["neigh", "show", "to", vip, "dev", "p0"])
                .expect("ip neigh show");
            if let Some(mac) = out.split_whitespace().skip_while(|w| *w != "lladdr").nth(1) {
                return Some(mac.to_owned());
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the real server answers a TCP SYN the peer sends to `vip`
    /// through the real server's MAC (as a DR director does): a refused
    /// connection is a RST from the VIP, a timeout means the packet was
    /// dropped.
    fn rs_answers_for(&self, vip: &str) -> bool {
        self.peer
            .ip(&[
                "neigh",
                "replace",
                vip,
                "lladdr",
                RS_MAC,
                "dev",
                "p0",
                "nud",
                "permanent",
            ])
            .expect("static neighbour on the peer");
        let target = SocketAddr::new(vip.parse::<IpAddr>().unwrap(), 7);
        let result = self
            .peer
            .run(move || {
                Ok(TcpStream::connect_timeout(&target, Duration::from_secs(2))
                    .map(drop)
                    .map_err(|e| e.kind()))
            })
            .expect("connecting from the peer");
        self.peer
            .ip(&["neigh", "del", vip, "dev", "p0"])
            .expect("removing the static neighbour");
        result == Err(std::io::ErrorKind::ConnectionRefused)
    }
}

fn problems(out: &cmd::Finished) -> Vec<&str> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("PROBLEM: "))
        .collect()
}

/// Asserts `check` fails and names exactly problems matching `expected`
/// (one substring per problem line, in order).
#[track_caller]
fn assert_check_fails(pair: &Pair, expected: &[&str]) {
    let out = pair.lb(&["check", "--vip", VIP4, "--vip", VIP6]);
    assert!(!out.success, "check passed:\n{}", out.stdout);
    let found = problems(&out);
    assert_eq!(
        found.len(),
        expected.len(),
        "problems:\n{}\nexpected: {expected:?}",
        out.stdout
    );
    for (line, want) in found.iter().zip(expected) {
        assert!(line.contains(want), "{line:?} does not name {want:?}");
        assert!(line.contains("; fix: "), "{line:?} names no fix");
    }
    assert!(out.stderr.contains("problem(s)"), "stderr: {}", out.stderr);
}

#[track_caller]
fn assert_check_passes(pair: &Pair) {
    let out = pair.lb(&["check", "--vip", VIP4, "--vip", VIP6]);
    assert!(out.success, "check failed:\n{}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("OK: "), "{}", out.stdout);
}

#[test]
fn setup_check_break_and_teardown() {
    if skip_unless_root("setup_check_break_and_teardown") {
        return;
    }
    let pair = Pair::create();

    // Before setup: the real server answers ARP for nothing (no VIP), and
    // check names every problem.
    assert_check_fails(
        &pair,
        &[
            "192.0.2.200 is not on lo",
            "2001:db8::200 is not on lo",
            "effective arp_ignore on rs0 is 0",
            "effective arp_announce on rs0 is 0",
        ],
    );

    let out = pair.lb(&["setup", "--vip", VIP4, "--vip", VIP6]);
    assert!(out.success, "setup failed:\n{}{}", out.stdout, out.stderr);
    for line in [
        "added 192.0.2.200/32 to lo",
        "added 2001:db8::200/128 to lo (nodad)",
        "set net.ipv4.conf.all.arp_ignore = 1 (was 0)",
        "set net.ipv4.conf.all.arp_announce = 2 (was 0)",
        "set net.ipv4.conf.lo.arp_ignore = 1 (was 0)",
        "set net.ipv4.conf.lo.arp_announce = 2 (was 0)",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{}",
            out.stdout
        );
    }
    let lo = pair.lo_addresses();
    assert!(lo.contains("inet 192.0.2.200/32 "), "{lo}");
    assert!(lo.contains("inet6 2001:db8::200/128 "), "{lo}");
    assert!(lo.contains("nodad"), "{lo}");
    assert_eq!(pair.sysctl("net.ipv4.conf.all.arp_ignore"), "1");
    assert_eq!(pair.sysctl("net.ipv4.conf.all.arp_announce"), "2");
    assert_eq!(pair.sysctl("net.ipv4.conf.lo.arp_ignore"), "1");
    assert_eq!(pair.sysctl("net.ipv4.conf.lo.arp_announce"), "2");
    assert_check_passes(&pair);

    // What direct routing needs on the wire: nobody answers ARP/ND for the
    // VIP, yet a frame sent to the real server's MAC is accepted and
    // answered from the VIP. The real server still answers ARP for its own
    // address.
    assert_eq!(
        pair.peer_resolves(RS4, Duration::from_secs(3)).as_deref(),
        Some(RS_MAC)
    );
    assert_eq!(pair.peer_resolves(VIP4, Duration::from_millis(1500)), None);
    assert_eq!(pair.peer_resolves(VIP6, Duration::from_millis(1500)), None);
    assert!(pair.rs_answers_for(VIP4), "no answer from {VIP4}");
    assert!(pair.rs_answers_for(VIP6), "no answer from {VIP6}");

    // Idempotent: a second setup changes nothing.
    let out = pair.lb(&["setup", "--vip", VIP4, "--vip", VIP6]);
    assert!(
        out.success,
        "second setup failed:\n{}{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout.lines().all(|l| l.starts_with("already set: ")),
        "second setup changed something:\n{}",
        out.stdout
    );
    assert_eq!(pair.lo_addresses().matches("192.0.2.200/32").count(), 1);

    // Break 1: arp_ignore back to 0 on all; the host answers ARP for the VIP.
    pair.set_sysctl("net.ipv4.conf.all.arp_ignore", "0");
    assert_check_fails(&pair, &["effective arp_ignore on rs0 is 0 (all=0, rs0=0"]);
    assert_eq!(
        pair.peer_resolves(VIP4, Duration::from_secs(3)).as_deref(),
        Some(RS_MAC),
        "with arp_ignore=0 the real server should answer ARP for the VIP"
    );
    pair.set_sysctl("net.ipv4.conf.all.arp_ignore", "1");
    assert_check_passes(&pair);

    // Break 2: the VIP also on the veth.
    pair.rs
        .ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "rs0"])
        .unwrap();
    assert_check_fails(
        &pair,
        &["192.0.2.200 is also on rs0 (/32): the host answers ARP for it there"],
    );
    let out = pair.lb(&["setup", "--vip", VIP4, "--vip", VIP6]);
    assert!(
        !out.success,
        "setup ignored the VIP on rs0:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("PROBLEM: 192.0.2.200 is also on rs0"),
        "{}",
        out.stdout
    );
    pair.rs
        .ip(&["addr", "del", &format!("{VIP4}/32"), "dev", "rs0"])
        .unwrap();
    assert_check_passes(&pair);

    // Break 3: the IPv6 VIP removed.
    pair.rs
        .ip(&["-6", "addr", "del", &format!("{VIP6}/128"), "dev", "lo"])
        .unwrap();
    assert_check_fails(&pair, &["2001:db8::200 is not on lo"]);

    // Break 4: the IPv4 VIP with a subnet prefix on lo; setup repairs it.
    pair.rs
        .ip(&["addr", "del", &format!("{VIP4}/32"), "dev", "lo"])
        .unwrap();
    pair.rs
        .ip(&["addr", "add", &format!("{VIP4}/24"), "dev", "lo"])
        .unwrap();
    assert_check_fails(
        &pair,
        &[
            "192.0.2.200/24 on lo has the wrong prefix length",
            "2001:db8::200 is not on lo",
        ],
    );
    let out = pair.lb(&["setup", "--vip", VIP4, "--vip", VIP6]);
    assert!(
        out.success,
        "repairing setup failed:\n{}{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout
            .contains("removed 192.0.2.200/24 from lo (wrong prefix length"),
        "{}",
        out.stdout
    );
    assert_check_passes(&pair);

    // Teardown removes everything it set, and check fails again.
    let out = pair.lb(&["teardown", "--vip", VIP4, "--vip", VIP6]);
    assert!(
        out.success,
        "teardown failed:\n{}{}",
        out.stdout, out.stderr
    );
    for line in [
        "removed 192.0.2.200/32 from lo",
        "removed 2001:db8::200/128 from lo",
        "set net.ipv4.conf.all.arp_ignore = 0 (was 1)",
        "set net.ipv4.conf.lo.arp_announce = 0 (was 2)",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{}",
            out.stdout
        );
    }
    let lo = pair.lo_addresses();
    assert!(
        !lo.contains("192.0.2.200") && !lo.contains("2001:db8::200"),
        "{lo}"
    );
    for key in [
        "all.arp_ignore",
        "all.arp_announce",
        "lo.arp_ignore",
        "lo.arp_announce",
    ] {
        assert_eq!(pair.sysctl(&format!("net.ipv4.conf.{key}")), "0", "{key}");
    }
    assert_check_fails(
        &pair,
        &[
            "192.0.2.200 is not on lo",
            "2001:db8::200 is not on lo",
            "effective arp_ignore on rs0 is 0",
            "effective arp_announce on rs0 is 0",
        ],
    );
    let out = pair.lb(&["teardown", "--vip", VIP4, "--vip", VIP6]);
    assert!(out.success, "second teardown failed: {}", out.stderr);
    assert!(
        out.stdout
            .contains("already absent: 192.0.2.200 is not on lo"),
        "{}",
        out.stdout
    );
}

#[test]
fn teardown_keeps_arp_sysctls_while_another_vip_stays() {
    if skip_unless_root("teardown_keeps_arp_sysctls_while_another_vip_stays") {
        return;
    }
    let pair = Pair::create();
    let out = pair.lb(&["setup", "--vip", VIP4, "--vip", "192.0.2.201"]);
    assert!(out.success, "setup failed:\n{}{}", out.stdout, out.stderr);
    let out = pair.lb(&["teardown", "--vip", VIP4]);
    assert!(
        out.success,
        "teardown failed:\n{}{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout.contains("removed 192.0.2.200/32 from lo"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("192.0.2.201/32 still on lo and needs them"),
        "{}",
        out.stdout
    );
    assert_eq!(pair.sysctl("net.ipv4.conf.all.arp_ignore"), "1");
    let out = pair.lb(&["check", "--vip", "192.0.2.201"]);
    assert!(
        out.success,
        "check of the remaining VIP failed:\n{}",
        out.stdout
    );
}

#[test]
fn bad_vips_are_named() {
    let lb = lb_binary().expect("lb binary");
    let run = |args: &[&str]| {
        cmd::output(Command::new(&lb).arg("realserver").args(args)).expect("running lb")
    };
    for sub in ["setup", "check", "teardown"] {
        let out = run(&[sub, "--vip", "not-an-ip"]);
        assert_eq!(out.code, Some(2), "{sub}: {}", out.stderr);
        assert!(
            out.stderr.contains("not-an-ip")
                && out.stderr.contains("not an IP address")
                && out.stderr.contains("192.0.2.200"),
            "{sub}: {}",
            out.stderr
        );

        let out = run(&[sub]);
        assert_eq!(out.code, Some(2), "{sub}: {}", out.stderr);
        assert!(out.stderr.contains("--vip <ADDR>"), "{sub}: {}", out.stderr);
    }
    let out = run(&["setup", "--vip", "192.0.2.200/32"]);
    assert!(
        !out.success && out.stderr.contains("no prefix length"),
        "{}",
        out.stderr
    );
    let out = run(&["setup", "--vip", "127.0.0.1"]);
    assert!(
        !out.success && out.stderr.contains("loopback"),
        "{}",
        out.stderr
    );
}

#[test]
fn setup_and_teardown_need_root() {
    let lb = lb_binary().expect("lb binary");
    // As root: drop to nobody, inside a namespace of our own so that even a
    // broken privilege check could not touch the host's lo.
    let ns = lb_tests::is_root()
        .then(|| NetNs::create(&format!("lbrs{}-unpriv", unique_tag())).expect("netns"));
    for sub in ["setup", "teardown"] {
        let mut c = if let Some(ns) = &ns {
            let mut c = ns.command("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--",
            ])
            .arg(&lb);
            c
        } else {
            Command::new(&lb)
        };
        c.args(["realserver", sub, "--vip", VIP4]);
        let out = cmd::output(&mut c).expect("running lb");
        assert!(!out.success, "{sub} ran unprivileged: {}", out.stdout);
        assert!(
            out.stderr.contains("needs root") && out.stderr.contains("CAP_NET_ADMIN"),
            "{sub}: {}",
            out.stderr
        );
        assert!(
            out.stdout.is_empty(),
            "{sub} changed something: {}",
            out.stdout
        );
    }
}
