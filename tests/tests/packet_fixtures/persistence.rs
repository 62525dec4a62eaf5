//! Client persistence: a persistent service's client (its address masked to
//! the service's prefix) keeps going to the backend of its template while
//! the template lives and its backend takes new flows; the sweeper
//! refreshes templates from live flows, expires and drops them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb::{datapath::maps::monotonic_ns, sweeper};
use lb_common::{
    PROTO_TCP, PersistKey, PersistTemplate, SERVICE_FLAG_SLOPPY_TCP, Service, ServiceKey,
    conn_state::{TCP_SYN, Timeouts},
    persist_key,
};
use lb_tests::{
    VIP4, VIP6,
    frame::{L4, PORT, Pkt},
    xdp_case::{Case, Real, SERVICE_ID, backend_set, up},
};

/// A SYN from `client`:`sport` to the service on `vip`.
fn syn(client: IpAddr, vip: IpAddr, sport: u16) -> Pkt {
    Pkt::between(
        client,
        vip,
        L4::Tcp {
            sport,
            dport: PORT,
            flags: TCP_SYN,
        },
    )
}

/// Installs a persistent TCP service on `vip` over `reals`: templates of
/// `timeout_s` seconds covering `prefix` bits.
fn persistent(case: &mut Case, vip: IpAddr, reals: &[Real], timeout_s: u32, prefix: u32) {
    case.dp
        .maps
        .set_service(
            &[ServiceKey::new(vip, PORT, PROTO_TCP, 0)],
            Service {
                id: SERVICE_ID,
                flags: SERVICE_FLAG_SLOPPY_TCP,
                persistence_timeout_s: timeout_s,
                persistence_prefix: prefix,
                ..Service::default()
            },
            &backend_set(SERVICE_ID, vip, reals),
        )
        .unwrap_or_else(|e| panic!("{}: set_service: {e:#}", case.name));
}

/// The template of `client` for the service.
fn template(case: &Case, client: IpAddr, prefix: u32) -> Option<PersistTemplate> {
    let (addr, _) = lb_common::addr_key(client);
    case.dp
        .maps
        .persist
        .get(&persist_key(addr, prefix, SERVICE_ID), 0)
        .ok()
}

/// Every connection of a client goes to the backend of its first one,
/// although wlc would spread them; a client of the same /24 (prefix 24)
/// shares the template; a client outside it is scheduled by wlc (and gets
/// a template of its own). IPv4 and IPv6 (prefix 64).
fn clients_stick_to_their_backend(name: &str, vip: IpAddr, clients: [IpAddr; 3], prefix: u32) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    persistent(&mut case, vip, &[up(1), up(1), up(1)], 600, prefix);
    let [first, neighbour, stranger] = clients;
    case.forward("first", &syn(first, vip, 40000), SERVICE_ID, 0);
    let t = template(&case, first, prefix).expect("a template for the first client");
    assert_eq!(t.backend_slot, 0, "{name}: template");
    // wlc alone would pick slots 1 and 2 next.
    for sport in 40001..40006 {
        case.forward("same client", &syn(first, vip, sport), SERVICE_ID, 0);
    }
    case.forward("same prefix", &syn(neighbour, vip, 40000), SERVICE_ID, 0);
    case.forward("other prefix", &syn(stranger, vip, 40000), SERVICE_ID, 1);
    assert_eq!(
        template(&case, stranger, prefix).map(|t| t.backend_slot),
        Some(1),
        "{name}: the stranger's template"
    );
    case.expect_conns("after", SERVICE_ID, 0, 0, 7);
}

#[test]
fn ipv4_clients_stick_to_their_backend() {
    clients_stick_to_their_backend(
        "persist4",
        VIP4.into(),
        [
            Ipv4Addr::new(203, 0, 113, 7).into(),
            Ipv4Addr::new(203, 0, 113, 200).into(),
            Ipv4Addr::new(203, 0, 114, 7).into(),
        ],
        24,
    );
}

#[test]
fn ipv6_clients_stick_to_their_backend() {
    let client =
        |last: u16, net: u16| IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, 0, net, 0, 0, 0, last));
    clients_stick_to_their_backend(
        "persist6",
        VIP6.into(),
        [client(7, 1), client(200, 1), client(7, 2)],
        64,
    );
}

/// A template whose backend is down, drained (weight 0) or removed, or
/// that outlived the timeout, is not followed: the connection is scheduled
/// afresh and the template rewritten. Without persistence no template is
/// written.
#[test]
fn dead_or_stale_templates_are_replaced() {
    let name = "persist_replaced";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let vip = IpAddr::from(VIP4);
    let client = IpAddr::from(Ipv4Addr::new(203, 0, 113, 7));
    persistent(&mut case, vip, &[up(1), up(1)], 600, 32);
    case.forward("first", &syn(client, vip, 40000), SERVICE_ID, 0);
    // Slot 0 drained: the next connection goes to slot 1, which becomes the
    // template.
    persistent(&mut case, vip, &[up(0), up(1)], 600, 32);
    case.forward("drained", &syn(client, vip, 40001), SERVICE_ID, 1);
    assert_eq!(template(&case, client, 32).map(|t| t.backend_slot), Some(1));
    // Slot 0 back: the template holds.
    persistent(&mut case, vip, &[up(1), up(1)], 600, 32);
    case.forward("template", &syn(client, vip, 40002), SERVICE_ID, 1);
    // A template older than the timeout is not followed.
    let key = persist_key(lb_common::addr_key(client).0, 32, SERVICE_ID);
    let stale = PersistTemplate {
        last_used_ns: monotonic_ns() - 601 * 1_000_000_000,
        backend_slot: 1,
        _pad: 0,
    };
    case.dp.maps.set_template(&key, &stale).unwrap();
    case.forward("stale", &syn(client, vip, 40003), SERVICE_ID, 0);
    assert_eq!(template(&case, client, 32).map(|t| t.backend_slot), Some(0));
    // Without persistence, nothing is written.
    case.service(SERVICE_ID, vip, PROTO_TCP, &[up(1), up(1)]);
    let other = IpAddr::from(Ipv4Addr::new(203, 0, 113, 8));
    case.forward("not persistent", &syn(other, vip, 40000), SERVICE_ID, 0);
    assert_eq!(
        template(&case, other, 32),
        None,
        "{name}: a template without persistence"
    );
}

/// The sweeper keeps a template whose client still has a live flow (as
/// IPVS keeps a template while it controls connections), refreshing it;
/// expires one without flows (here: deleted) past the timeout; and drops
/// one whose backend takes no new flows.
#[test]
fn the_sweeper_refreshes_expires_and_drops_templates() {
    let name = "persist_sweeper";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let vip = IpAddr::from(VIP4);
    let live = IpAddr::from(Ipv4Addr::new(203, 0, 113, 7));
    let gone = IpAddr::from(Ipv4Addr::new(203, 0, 113, 8));
    let drained = IpAddr::from(Ipv4Addr::new(203, 0, 113, 9));
    persistent(&mut case, vip, &[up(1), up(1), up(1)], 5, 32);
    case.forward("live", &syn(live, vip, 40000), SERVICE_ID, 0);
    case.forward("gone", &syn(gone, vip, 40000), SERVICE_ID, 1);
    assert!(case.dp.maps.remove_flow(&syn(gone, vip, 40000).flow_key()));
    case.forward("drained", &syn(drained, vip, 40000), SERVICE_ID, 2);
    // Every template is older than the timeout; the live client's flow was
    // seen just now.
    let old = monotonic_ns() - 6 * 1_000_000_000;
    let mut keys: Vec<PersistKey> = Vec::new();
    case.dp.maps.for_each_template(|k, _| keys.push(k)).unwrap();
    assert_eq!(keys.len(), 3, "{name}: templates");
    for key in &keys {
        let mut t = case.dp.maps.persist.get(key, 0).unwrap();
        t.last_used_ns = old;
        case.dp.maps.set_template(key, &t).unwrap();
    }
    // The third backend is drained.
    case.backends(SERVICE_ID, vip, &[up(1), up(1), up(0)]);
    let services = case.service_values();
    let report = sweeper::sweep(&mut case.dp.maps, &services, &Timeouts::IPVS)
        .unwrap_or_else(|e| panic!("{name}: sweep: {e:#}"));
    assert_eq!(report.templates, 1, "{name}: templates left");
    let kept = template(&case, live, 32).expect("the live client's template");
    assert!(
        kept.last_used_ns > old,
        "{name}: the template was not refreshed"
    );
    assert_eq!(template(&case, gone, 32), None, "{name}: expired");
    assert_eq!(template(&case, drained, 32), None, "{name}: dropped");
}
