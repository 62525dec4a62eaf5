//! The file as written: the `Raw*` shapes serde builds from the TOML, and
//! the rewriting of serde's errors for people.
//!
//! Every leaf is kept as a [`toml::Spanned`] [`toml::Value`], so that serde
//! itself only ever fails on an unknown field or a misplaced table; the
//! validator checks the values.

use serde::{Deserialize, de::IgnoredAny};
use toml::{Spanned, Value};

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
    pub(super) protocol: Field,
    pub(super) scheduler: Field,
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
        (Some("director"), _) => "at the top level".to_owned(),
        (Some("interfaces"), _) => "in [director]".to_owned(),
        (Some("established"), _) => "in [director.timeouts]".to_owned(),
        (Some("name"), Some((label, _))) => format!("in {label}"),
        (Some("kind"), Some((label, _))) => format!("in {}", health_label(&label)),
        (Some("address"), Some((label, Some(b)))) => format!("in {}", backend_label(&label, b)),
        (Some("name"), _) => "in [[service]]".to_owned(),
        (Some("kind"), _) => "in [service.health]".to_owned(),
        (Some("address"), _) => "in [[service.backend]]".to_owned(),
        _ => "here".to_owned(),
    }
}
