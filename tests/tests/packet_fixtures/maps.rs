//! The maps themselves: a service id past the backend map, and pinned maps
//! that reopen as the same maps and dump with field names.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
};

use lb::datapath::{
    Datapath,
    maps::{MAP_NAMES, Maps},
};
use lb_common::{
    Counters, FAMILY_IPV4, MAX_SERVICES, PROTO_TCP, REASON_INTERNAL, SERVICES_MAP, Service,
    ServiceKey, conn_state::TCP_SYN,
};
use lb_tests::{
    VIP4,
    frame::{PORT, Pkt},
    xdp_case::{CAPACITY, Case, Expect, SERVICE_ID, backend_set, loud, privileged, up},
};

/// A service whose id lies past the backend map (the maps disagree) is an
/// internal drop: counted, never forwarded, no flow recorded.
#[test]
fn service_id_past_the_backend_map_is_an_internal_drop() {
    let name = "service_id_out_of_range";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
    case.dp
        .maps
        .services
        .insert(
            ServiceKey::new(VIP4.into(), PORT, PROTO_TCP, 0),
            Service {
                id: MAX_SERVICES,
                ..Service::default()
            },
            0,
        )
        .unwrap_or_else(|e| panic!("{name}: rewriting the service: {e}"));
    let syn = Pkt::tcp4(40000, TCP_SYN);
    case.send("SYN", &syn.build(), Expect::Drop(REASON_INTERNAL));
    assert_eq!(case.flow_count(), 0, "{name}: no flow may be recorded");
    assert_eq!(
        case.service_stats(SERVICE_ID),
        Counters::default(),
        "{name}: service stats"
    );
}

/// Removes a pin directory (through [`Datapath::unpin`]) even when the test
/// fails half way.
struct Pinned(Datapath);

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Err(e) = self.0.unpin() {
            eprintln!("unpinning the fixture's maps: {e:#}");
        }
    }
}

/// `Datapath::load` with a pin directory pins every map, the pins reopen as
/// the same maps, and `bpftool map dump pinned DIR/SERVICES` prints the
/// key and value fields by name (BTF).
#[test]
fn pinned_maps_dump_with_field_names() {
    let name = "pinned_maps";
    if !privileged(name) {
        return;
    }
    let dir = PathBuf::from(format!("/sys/fs/bpf/lbfix-{}", std::process::id()));
    let dp = Datapath::load(CAPACITY, Some(&dir)).unwrap_or_else(|e| panic!("{name}: load: {e:#}"));
    let mut pinned = Pinned(dp);
    for map in MAP_NAMES {
        assert!(
            dir.join(map).exists(),
            "{name}: {map} not pinned in {}",
            dir.display()
        );
    }
    let key = ServiceKey::new(VIP4.into(), PORT, PROTO_TCP, 0);
    pinned
        .0
        .maps
        .set_service(
            &[key],
            Service {
                id: SERVICE_ID,
                persistence_timeout_s: 60,
                persistence_prefix: 24,
                ..Service::default()
            },
            &backend_set(SERVICE_ID, VIP4.into(), &[up(1)]),
        )
        .unwrap_or_else(|e| panic!("{name}: set_service: {e:#}"));
    let reopened = Maps::from_pins(&dir).unwrap_or_else(|e| panic!("{name}: from_pins: {e:#}"));
    assert_eq!(
        reopened.services.get(&key, 0).ok(),
        Some(Service {
            id: SERVICE_ID,
            flags: 0,
            persistence_timeout_s: 60,
            persistence_prefix: 24,
            ..Service::default()
        }),
        "{name}: the pinned SERVICES map is the loaded one"
    );
    drop(reopened);
    dump_shows_field_names(name, &dir.join(SERVICES_MAP));
    pinned
        .0
        .unpin()
        .unwrap_or_else(|e| panic!("{name}: unpin: {e:#}"));
    assert!(!dir.exists(), "{name}: {} left behind", dir.display());
}

/// Checks that `bpftool map dump pinned PATH` names the fields of the service
/// key and value (skipped loudly without bpftool, unless `CI` is set).
fn dump_shows_field_names(name: &str, path: &Path) {
    let output = match Command::new("bpftool")
        .arg("map")
        .arg("dump")
        .arg("pinned")
        .arg(path)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
            loud(&format!(
                "SKIPPED (needs bpftool): `{name}` bpftool dump check"
            ));
            return;
        }
        Err(e) => panic!("{name}: running bpftool: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{name}: bpftool failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    for field in [
        "\"addr\"".to_owned(),
        format!("\"port\": {PORT}"),
        format!("\"proto\": {PROTO_TCP}"),
        format!("\"family\": {FAMILY_IPV4}"),
        format!("\"id\": {SERVICE_ID}"),
        "\"flags\": 0".to_owned(),
    ] {
        assert!(
            stdout.contains(&field),
            "{name}: bpftool output lacks {field}:\n{stdout}"
        );
    }
}
