//! The file as written: the `Raw*` shapes serde builds from the TOML, the
//! key names they spell, and the rewriting of serde's errors for people.
//!
//! Every leaf is kept as a [`toml::Spanned`] [`toml::Value`], so that serde
//! itself only ever fails on an unknown field or a misplaced table; the
//! validator checks the values.

use serde::{Deserialize, de::IgnoredAny};
use toml::{Spanned, Value};

/// The keys of the file, as the `Raw*` structs spell them (serde takes the
/// names from their fields; a test checks that the two agree). The
/// validator's messages and the writer use these.
pub(super) mod key {
    // The top level.
    pub(crate) const DIRECTOR: &str = "director";
    pub(crate) const SERVICE: &str = "service";
    pub(crate) const SYNC: &str = "sync";
    pub(crate) const ANNOUNCE: &str = "announce";

    // [director]
    pub(crate) const INTERFACES: &str = "interfaces";
    pub(crate) const XDP_MODE: &str = "xdp_mode";
    pub(crate) const PIN_PATH: &str = "pin_path";
    pub(crate) const MAX_FLOWS: &str = "max_flows";
    pub(crate) const MAX_FLOWS_V6: &str = "max_flows_v6";
    pub(crate) const SWEEP_INTERVAL: &str = "sweep_interval";
    pub(crate) const CONTROL_SOCKET: &str = "control_socket";
    pub(crate) const METRICS_LISTEN: &str = "metrics_listen";
    pub(crate) const EXPIRE_NODEST_CONN: &str = "expire_nodest_conn";
    pub(crate) const VRRP_VRIDS: &str = "vrrp_vrids";
    pub(crate) const SYN_FLOOD_RATE: &str = "syn_flood_rate";
    pub(crate) const TIMEOUTS: &str = "timeouts";

    // [sync]
    pub(crate) const INTERFACE: &str = "interface";
    pub(crate) const PEERS: &str = "peers";
    pub(crate) const GROUP: &str = "group";
    pub(crate) const KEY_FILE: &str = "key_file";

    // [announce]
    pub(crate) const TABLE: &str = "table";
    pub(crate) const DEVICE: &str = "device";

    // [director.timeouts]
    pub(crate) const ESTABLISHED: &str = "established";
    pub(crate) const SYN_RECV: &str = "syn_recv";
    pub(crate) const FIN_WAIT: &str = "fin_wait";
    pub(crate) const CLOSE: &str = "close";
    pub(crate) const UDP: &str = "udp";

    // [[service]]
    pub(crate) const NAME: &str = "name";
    pub(crate) const VIP: &str = "vip";
    pub(crate) const PORT: &str = "port";
    pub(crate) const PORTS: &str = "ports";
    pub(crate) const PROTOCOL: &str = "protocol";
    pub(crate) const SCHEDULER: &str = "scheduler";
    pub(crate) const NO_BACKEND: &str = "no_backend";
    pub(crate) const SLOPPY_TCP: &str = "sloppy_tcp";
    pub(crate) const SORRY_SERVER: &str = "sorry_server";
    pub(crate) const QUORUM: &str = "quorum";
    pub(crate) const HYSTERESIS: &str = "hysteresis";
    pub(crate) const PERSISTENCE_TIMEOUT: &str = "persistence_timeout";
    pub(crate) const PERSISTENCE_NETMASK: &str = "persistence_netmask";
    pub(crate) const VLAN: &str = "vlan";
    pub(crate) const HEALTH: &str = "health";
    pub(crate) const BACKEND: &str = "backend";

    // [service.health]
    pub(crate) const KIND: &str = "kind";
    pub(crate) const INTERVAL: &str = "interval";
    pub(crate) const TIMEOUT: &str = "timeout";
    pub(crate) const FALL: &str = "fall";
    pub(crate) const RISE: &str = "rise";
    pub(crate) const RETRY_DELAY: &str = "retry_delay";
    pub(crate) const WARMUP: &str = "warmup";
    pub(crate) const INHIBIT_ON_FAILURE: &str = "inhibit_on_failure";
    pub(crate) const NOTIFY: &str = "notify";
    pub(crate) const BIND_TO: &str = "bind_to";
    pub(crate) const PATH: &str = "path";
    pub(crate) const STATUS: &str = "status";
    pub(crate) const DIGEST: &str = "digest";
    pub(crate) const HOST: &str = "host";
    pub(crate) const COMMAND: &str = "command";

    // [[service.backend]]
    pub(crate) const ADDRESS: &str = "address";
    pub(crate) const WEIGHT: &str = "weight";
    pub(crate) const MAC: &str = "mac";
}

/// A leaf value with its position; its type is checked by the
/// validator.
pub(super) type Field = Option<Spanned<Value>>;

/// The whole file. Tables that may be implicit in TOML (`[director]` when
/// only `[director.timeouts]` is written, dotted keys) carry no span: toml
/// cannot give them one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) director: Option<RawDirector>,
    pub(super) service: Option<Vec<Spanned<RawService>>>,
    pub(super) sync: Option<RawSync>,
    pub(super) announce: Option<RawAnnounce>,
}

/// `[announce]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnounce {
    pub(super) table: Field,
    pub(super) device: Field,
}

/// `[sync]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    pub(super) interface: Field,
    pub(super) peers: Field,
    pub(super) group: Field,
    pub(super) port: Field,
    pub(super) key_file: Field,
}

/// `[director]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDirector {
    pub(super) interfaces: Field,
    pub(super) xdp_mode: Field,
    pub(super) pin_path: Field,
    pub(super) max_flows: Field,
    pub(super) max_flows_v6: Field,
    pub(super) sweep_interval: Field,
    pub(super) control_socket: Field,
    pub(super) metrics_listen: Field,
    pub(super) expire_nodest_conn: Field,
    pub(super) vrrp_vrids: Field,
    pub(super) syn_flood_rate: Field,
    pub(super) timeouts: Option<RawTimeouts>,
}

/// `[director.timeouts]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) established: Field,
    pub(super) syn_recv: Field,
    pub(super) fin_wait: Field,
    pub(super) close: Field,
    pub(super) udp: Field,
}

/// One `[[service]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Field,
    pub(super) vip: Field,
    pub(super) port: Field,
    pub(super) ports: Field,
    pub(super) protocol: Field,
    pub(super) scheduler: Field,
    pub(super) no_backend: Field,
    pub(super) sloppy_tcp: Field,
    pub(super) sorry_server: Field,
    pub(super) quorum: Field,
    pub(super) hysteresis: Field,
    pub(super) persistence_timeout: Field,
    pub(super) persistence_netmask: Field,
    pub(super) vlan: Field,
    pub(super) health: Option<RawHealth>,
    pub(super) backend: Option<Vec<Spanned<RawBackend>>>,
}

/// `[service.health]`, with the fields of every kind.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) kind: Field,
    pub(super) interval: Field,
    pub(super) timeout: Field,
    pub(super) port: Field,
    pub(super) fall: Field,
    pub(super) rise: Field,
    pub(super) retry_delay: Field,
    pub(super) warmup: Field,
    pub(super) inhibit_on_failure: Field,
    pub(super) notify: Field,
    pub(super) bind_to: Field,
    // kind "http"
    pub(super) path: Field,
    pub(super) status: Field,
    pub(super) digest: Field,
    pub(super) host: Field,
    // kind "exec"
    pub(super) command: Field,
}

/// One `[[service.backend]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: Field,
    pub(super) weight: Field,
    pub(super) mac: Field,
}

/// Where the services and backends are, to name the section of an error
/// that serde reports (unknown field) when [`RawConfig`] cannot be built.
#[derive(Deserialize)]
struct Skeleton {
    #[serde(default)]
    service: Vec<Spanned<SkeletonService>>,
}

#[derive(Deserialize)]
struct SkeletonService {
    name: Option<Value>,
    #[serde(default)]
    backend: Vec<Spanned<IgnoredAny>>,
}

/// How messages name a service: `service "gridftp"`, or `service 2` (its
/// position in the file) when it has no usable name.
pub(super) fn service_label(index: usize, name: Option<&Value>) -> String {
    match name {
        Some(Value::String(name)) => format!("service {name:?}"),
        _ => format!("service {}", index + 1),
    }
}

/// How messages name the health check of `service`.
pub(super) fn health_label(service: &str) -> String {
    format!("{service}, health check")
}

/// How messages name backend `index` (0-based) of `service`.
pub(super) fn backend_label(service: &str, index: usize) -> String {
    format!("{service}, backend {}", index + 1)
}

/// 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Rewrites a serde error from building [`RawConfig`] for people.
pub(super) fn shape_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message();
    if message.starts_with("unknown field `") {
        // serde: "unknown field `x`, expected one of `a`, `b`" (or "expected
        // `a` or `b`", "expected `a`", "there are no fields").
        let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
        if let Some((field, valid)) = quoted.split_first() {
            let place = err
                .span()
                .map_or_else(String::new, |s| section_at(text, s.start, valid.first()));
            return format!(
                "unknown field {field:?} {place} (valid: {})",
                valid.join(", ")
            );
        }
    }
    if let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        let what = match expected {
            "struct RawDirector" => "director must be a table ([director])",
            "struct RawTimeouts" => "timeouts must be a table ([director.timeouts])",
            "struct RawHealth" => "health must be a table ([service.health])",
            "struct RawService" => "each service must be a table ([[service]])",
            "struct RawBackend" => "each backend must be a table ([[service.backend]])",
            "a sequence" => {
                "service and backend must be arrays of tables: write [[service]] and \
                     [[service.backend]] with double brackets"
            }
            _ => return message.to_owned(),
        };
        let found = if found == "map" { "a table" } else { found };
        return format!("{what} (found {found})");
    }
    message.to_owned()
}

/// `in [director]`, `in service "gridftp", backend 2`...: the section an
/// unknown field at `offset` is in, told by the first field serde lists as
/// valid there (each section has a different one).
fn section_at(text: &str, offset: usize, first_valid: Option<&&str>) -> String {
    let skeleton = toml::from_str::<Skeleton>(text).ok();
    // The last service (and backend) starting before the field holds it.
    let service = skeleton.as_ref().and_then(|sk| {
        let index = sk.service.iter().rposition(|s| s.span().start <= offset)?;
        let service = &sk.service[index];
        let label = service_label(index, service.get_ref().name.as_ref());
        let backend = service
            .get_ref()
            .backend
            .iter()
            .rposition(|b| b.span().start <= offset);
        Some((label, backend))
    });
    match (first_valid.copied(), service) {
        (Some(key::DIRECTOR), _) => "at the top level".to_owned(),
        (Some(key::INTERFACES), _) => "in [director]".to_owned(),
        (Some(key::ESTABLISHED), _) => "in [director.timeouts]".to_owned(),
        (Some(key::INTERFACE), _) => "in [sync]".to_owned(),
        (Some(key::TABLE), _) => "in [announce]".to_owned(),
        (Some(key::NAME), Some((label, _))) => format!("in {label}"),
        (Some(key::KIND), Some((label, _))) => format!("in {}", health_label(&label)),
        (Some(key::ADDRESS), Some((label, Some(b)))) => format!("in {}", backend_label(&label, b)),
        (Some(key::NAME), _) => "in [[service]]".to_owned(),
        (Some(key::KIND), _) => "in [service.health]".to_owned(),
        (Some(key::ADDRESS), _) => "in [[service.backend]]".to_owned(),
        _ => "here".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;

    use super::*;

    /// The fields serde knows for `T`, from its unknown-field error.
    fn fields<T: DeserializeOwned>() -> Vec<String> {
        let Err(e) = toml::from_str::<T>("not_a_key = 1") else {
            panic!("an unknown field was accepted");
        };
        let message = e.message();
        assert!(
            message.starts_with("unknown field `not_a_key`"),
            "{message}"
        );
        message
            .split('`')
            .skip(1)
            .step_by(2)
            .skip(1)
            .map(str::to_owned)
            .collect()
    }

    /// The key names are the fields of the `Raw*` structs, in order.
    #[test]
    fn keys_are_the_raw_field_names() {
        assert_eq!(
            fields::<RawConfig>(),
            [key::DIRECTOR, key::SERVICE, key::SYNC, key::ANNOUNCE]
        );
        assert_eq!(fields::<RawAnnounce>(), [key::TABLE, key::DEVICE]);
        assert_eq!(
            fields::<RawSync>(),
            [
                key::INTERFACE,
                key::PEERS,
                key::GROUP,
                key::PORT,
                key::KEY_FILE,
            ]
        );
        assert_eq!(
            fields::<RawDirector>(),
            [
                key::INTERFACES,
                key::XDP_MODE,
                key::PIN_PATH,
                key::MAX_FLOWS,
                key::MAX_FLOWS_V6,
                key::SWEEP_INTERVAL,
                key::CONTROL_SOCKET,
                key::METRICS_LISTEN,
                key::EXPIRE_NODEST_CONN,
                key::VRRP_VRIDS,
                key::SYN_FLOOD_RATE,
                key::TIMEOUTS,
            ]
        );
        assert_eq!(
            fields::<RawTimeouts>(),
            [
                key::ESTABLISHED,
                key::SYN_RECV,
                key::FIN_WAIT,
                key::CLOSE,
                key::UDP,
            ]
        );
        assert_eq!(
            fields::<RawService>(),
            [
                key::NAME,
                key::VIP,
                key::PORT,
                key::PORTS,
                key::PROTOCOL,
                key::SCHEDULER,
                key::NO_BACKEND,
                key::SLOPPY_TCP,
                key::SORRY_SERVER,
                key::QUORUM,
                key::HYSTERESIS,
                key::PERSISTENCE_TIMEOUT,
                key::PERSISTENCE_NETMASK,
                key::VLAN,
                key::HEALTH,
                key::BACKEND,
            ]
        );
        assert_eq!(
            fields::<RawHealth>(),
            [
                key::KIND,
                key::INTERVAL,
                key::TIMEOUT,
                key::PORT,
                key::FALL,
                key::RISE,
                key::RETRY_DELAY,
                key::WARMUP,
                key::INHIBIT_ON_FAILURE,
                key::NOTIFY,
                key::BIND_TO,
                key::PATH,
                key::STATUS,
                key::DIGEST,
                key::HOST,
                key::COMMAND,
            ]
        );
        assert_eq!(
            fields::<RawBackend>(),
            [key::ADDRESS, key::WEIGHT, key::MAC]
        );
    }
}
