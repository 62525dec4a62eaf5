//! The writer: an lb config file (TOML) from a [`Config`], with comments.
//!
//! What it writes parses back to the same [`Config`], in the layout of
//! `examples/lb.toml`. Which keys it writes:
//!
//! - `[director]`: `interfaces`, then each setting that differs from its
//!   default ([`DirectorConfig::new`]); `[director.timeouts]` only with the
//!   timeouts that differ from IPVS's.
//! - `[[service]]`: every key, `protocol` and `scheduler` included;
//!   `no_backend` when it is not `"drop"`, `sloppy_tcp` when true,
//!   `sorry_server` when set, `quorum` and `hysteresis` when not their
//!   defaults (1 and 0), `persistence_timeout` when set with
//!   `persistence_netmask` when it is not the whole address, `vlan` when
//!   set.
//! - `[service.health]`: `kind`. A check that runs (`tcp`, `http`, `exec`)
//!   writes out `interval`, `timeout`, `fall`, `rise` and
//!   `inhibit_on_failure`, and the checks that connect (`tcp`, `http`) their
//!   `port`; the others (`none`, and `port` of `exec`, which only passes it
//!   to its command) write these only where they differ from their default.
//!   `retry_delay` and `warmup`, whose default is the interval, are written
//!   when they differ from it, `notify` and `bind_to` when set; then the fields of
//!   the kind (`path` and `status`, `digest` and `host` when set;
//!   `command`).
//! - `[[service.backend]]`: `address`, `weight`, and `mac` when set.
//!
//! Durations are written in whole seconds, else milliseconds
//! ([`format_duration_in_seconds`]). Key names come from the `Raw*` structs
//! the parser reads them with.

use std::{fmt::Write as _, time::Duration};

use super::{
    BackendConfig, Config, DEFAULT_ANNOUNCE_DEVICE, DEFAULT_ANNOUNCE_TABLE, DEFAULT_FALL,
    DEFAULT_HEALTH_INTERVAL, DEFAULT_QUORUM, DEFAULT_RISE, DEFAULT_SYNC_PORT, DirectorConfig,
    HealthConfig, HealthKind, NoBackend, Ports, ServiceConfig, SyncConfig, SyncPeers,
    default_health_timeout,
    raw::key,
    values::{format_duration_in_seconds, format_mac, format_md5},
};

/// Comments for [`write_config`] to put in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notes {
    /// The comment at the top of the file, one line each, without the `#`
    /// (an empty line is a bare `#`).
    pub header: Vec<String>,
    /// A comment line before each `[[service]]`, by the service's index in
    /// [`Config::services`]; none past its end.
    pub services: Vec<String>,
}

/// `key = value` lines of a table, the values as TOML.
type Lines = Vec<(&'static str, String)>;

/// The config as TOML: the header comment, `[director]`, then each
/// `[[service]]` with its comment, `[service.health]` and
/// `[[service.backend]]`s.
pub fn write_config(config: &Config, notes: &Notes) -> String {
    let mut out = String::new();
    for line in &notes.header {
        write_comment(&mut out, line);
    }
    if !notes.header.is_empty() {
        out.push('\n');
    }
    write_table(
        &mut out,
        &format!("[{}]", key::DIRECTOR),
        &director_lines(&config.director),
    );
    let timeouts = timeout_lines(&config.director);
    if !timeouts.is_empty() {
        out.push('\n');
        let header = format!("[{}.{}]", key::DIRECTOR, key::TIMEOUTS);
        write_table(&mut out, &header, &timeouts);
    }
    for (index, service) in config.services.iter().enumerate() {
        out.push('\n');
        if let Some(note) = notes.services.get(index) {
            write_comment(&mut out, note);
        }
        let header = format!("[[{}]]", key::SERVICE);
        write_table(&mut out, &header, &service_lines(service));
        out.push('\n');
        let header = format!("[{}.{}]", key::SERVICE, key::HEALTH);
        write_table(
            &mut out,
            &header,
            &health_lines(&service.health, service.ports.first()),
        );
        for backend in &service.backends {
            out.push('\n');
            let header = format!("[[{}.{}]]", key::SERVICE, key::BACKEND);
            write_table(&mut out, &header, &backend_lines(backend));
        }
    }
    if let Some(sync) = &config.sync {
        out.push('\n');
        write_table(&mut out, &format!("[{}]", key::SYNC), &sync_lines(sync));
    }
    if let Some(announce) = &config.announce {
        out.push('\n');
        let mut lines: Lines = Vec::new();
        if announce.table != DEFAULT_ANNOUNCE_TABLE {
            lines.push((key::TABLE, announce.table.to_string()));
        }
        if announce.device != DEFAULT_ANNOUNCE_DEVICE {
            lines.push((key::DEVICE, string(&announce.device)));
        }
        write_table(&mut out, &format!("[{}]", key::ANNOUNCE), &lines);
    }
    out
}

/// `[sync]`: every field but a default port.
fn sync_lines(sync: &SyncConfig) -> Lines {
    let mut lines: Lines = vec![(key::INTERFACE, string(&sync.interface))];
    match &sync.peers {
        SyncPeers::Unicast(peers) => {
            let peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
            lines.push((key::PEERS, string_array(&peers)));
        }
        SyncPeers::Multicast(group) => lines.push((key::GROUP, string(&group.to_string()))),
    }
    if sync.port != DEFAULT_SYNC_PORT {
        lines.push((key::PORT, sync.port.to_string()));
    }
    lines.push((key::KEY_FILE, string(&sync.key_file.to_string_lossy())));
    lines
}

/// The `key = value` lines of a service's `[service.health]` table, in the
/// order they are written (`service_port` is the service's `port`, the
/// default of the check's).
pub fn health_lines(health: &HealthConfig, service_port: u16) -> Vec<(&'static str, String)> {
    let runs = health.kind != HealthKind::None;
    let connects = matches!(health.kind, HealthKind::Tcp | HealthKind::Http(_));
    let mut lines: Lines = vec![(key::KIND, string(&health.kind.to_string()))];
    if runs || health.interval != DEFAULT_HEALTH_INTERVAL {
        lines.push((key::INTERVAL, duration(health.interval)));
    }
    if runs || health.timeout != default_health_timeout(health.interval) {
        lines.push((key::TIMEOUT, duration(health.timeout)));
    }
    if connects || health.port != service_port {
        lines.push((key::PORT, health.port.to_string()));
    }
    if runs || health.fall != DEFAULT_FALL {
        lines.push((key::FALL, health.fall.to_string()));
    }
    if runs || health.rise != DEFAULT_RISE {
        lines.push((key::RISE, health.rise.to_string()));
    }
    if health.retry_delay != health.interval {
        lines.push((key::RETRY_DELAY, duration(health.retry_delay)));
    }
    if health.warmup != health.interval {
        lines.push((key::WARMUP, duration(health.warmup)));
    }
    if runs || health.inhibit_on_failure {
        let inhibit = health.inhibit_on_failure.to_string();
        lines.push((key::INHIBIT_ON_FAILURE, inhibit));
    }
    if !health.notify.is_empty() {
        lines.push((key::NOTIFY, string_array(&health.notify)));
    }
    if let Some(bind_to) = health.bind_to {
        lines.push((key::BIND_TO, string(&bind_to.to_string())));
    }
    match &health.kind {
        HealthKind::Tcp | HealthKind::None => {}
        HealthKind::Http(http) => {
            lines.push((key::PATH, string(&http.path)));
            lines.push((key::STATUS, int_array(&http.status)));
            if let Some(digest) = &http.digest {
                lines.push((key::DIGEST, string(&format_md5(digest))));
            }
            if let Some(host) = &http.host {
                lines.push((key::HOST, string(host)));
            }
        }
        HealthKind::Exec(exec) => lines.push((key::COMMAND, string_array(&exec.command))),
    }
    lines
}

/// `[director]`: `interfaces` and the settings that are not the default.
fn director_lines(director: &DirectorConfig) -> Lines {
    let default = DirectorConfig::new(Vec::new());
    let mut lines: Lines = vec![(key::INTERFACES, string_array(&director.interfaces))];
    if director.xdp_mode != default.xdp_mode {
        lines.push((key::XDP_MODE, string(&director.xdp_mode.to_string())));
    }
    if director.pin_path != default.pin_path {
        lines.push((key::PIN_PATH, string(&director.pin_path.to_string_lossy())));
    }
    if director.max_flows != default.max_flows {
        lines.push((key::MAX_FLOWS, director.max_flows.to_string()));
    }
    if director.max_flows_v6 != default.max_flows_v6 {
        lines.push((key::MAX_FLOWS_V6, director.max_flows_v6.to_string()));
    }
    if director.sweep_interval != default.sweep_interval {
        lines.push((key::SWEEP_INTERVAL, duration(director.sweep_interval)));
    }
    if director.control_socket != default.control_socket {
        let socket = director.control_socket.to_string_lossy();
        lines.push((key::CONTROL_SOCKET, string(&socket)));
    }
    if let Some(listen) = director.metrics_listen {
        lines.push((key::METRICS_LISTEN, string(&listen.to_string())));
    }
    if director.syn_flood_rate != default.syn_flood_rate {
        lines.push((key::SYN_FLOOD_RATE, director.syn_flood_rate.to_string()));
    }
    if director.expire_nodest_conn != default.expire_nodest_conn {
        let expire = director.expire_nodest_conn.to_string();
        lines.push((key::EXPIRE_NODEST_CONN, expire));
    }
    if !director.vrrp_vrids.is_empty() {
        let vrids: Vec<u16> = director.vrrp_vrids.iter().map(|&v| u16::from(v)).collect();
        lines.push((key::VRRP_VRIDS, int_array(&vrids)));
    }
    lines
}

/// `[director.timeouts]`: the timeouts that are not IPVS's.
fn timeout_lines(director: &DirectorConfig) -> Lines {
    let default = DirectorConfig::new(Vec::new()).timeouts;
    let timeouts = &director.timeouts;
    [
        (key::ESTABLISHED, timeouts.established, default.established),
        (key::SYN_RECV, timeouts.syn_recv, default.syn_recv),
        (key::FIN_WAIT, timeouts.fin_wait, default.fin_wait),
        (key::CLOSE, timeouts.close, default.close),
        (key::UDP, timeouts.udp, default.udp),
    ]
    .into_iter()
    .filter(|(_, secs, default)| secs != default)
    .map(|(key, secs, _)| {
        let value = duration(Duration::from_secs(secs));
        (key, value)
    })
    .collect()
}

/// `[[service]]`: every key; `no_backend`, `sloppy_tcp`, `sorry_server`,
/// `quorum`, `hysteresis`, persistence and `vlan` when they are not the
/// default.
fn service_lines(service: &ServiceConfig) -> Lines {
    let mut lines = vec![
        (key::NAME, string(&service.name)),
        (key::VIP, string(&service.vip.to_string())),
        port_line(&service.ports),
        (key::PROTOCOL, string(&service.protocol.to_string())),
        (key::SCHEDULER, string(&service.scheduler.to_string())),
    ];
    if service.no_backend != NoBackend::Drop {
        lines.push((key::NO_BACKEND, string(&service.no_backend.to_string())));
    }
    if service.sloppy_tcp {
        lines.push((key::SLOPPY_TCP, "true".to_owned()));
    }
    if let Some(sorry) = service.sorry_server {
        lines.push((key::SORRY_SERVER, string(&sorry.to_string())));
    }
    if service.quorum != DEFAULT_QUORUM {
        lines.push((key::QUORUM, service.quorum.to_string()));
    }
    if service.hysteresis != 0 {
        lines.push((key::HYSTERESIS, service.hysteresis.to_string()));
    }
    if let Some(persistence) = service.persistence {
        lines.push((key::PERSISTENCE_TIMEOUT, duration(persistence.timeout)));
        let whole = if service.vip.is_ipv4() { 32 } else { 128 };
        if persistence.prefix != whole {
            lines.push((key::PERSISTENCE_NETMASK, persistence.prefix.to_string()));
        }
    }
    match service.vlan.as_slice() {
        [] => {}
        [id] => lines.push((key::VLAN, id.to_string())),
        ids => lines.push((key::VLAN, int_array(ids))),
    }
    lines
}

/// `[[service.backend]]`: address, weight and a static MAC.
fn backend_lines(backend: &BackendConfig) -> Lines {
    let mut lines: Lines = vec![
        (key::ADDRESS, string(&backend.address.to_string())),
        (key::WEIGHT, backend.weight.to_string()),
    ];
    if let Some(mac) = &backend.mac {
        lines.push((key::MAC, string(&format_mac(mac))));
    }
    lines
}

/// A table: its header and its lines.
fn write_table(out: &mut String, header: &str, lines: &[(&str, String)]) {
    out.push_str(header);
    out.push('\n');
    for (key, value) in lines {
        let _ = writeln!(out, "{key} = {value}");
    }
}

/// A comment line; control characters become `?`.
fn write_comment(out: &mut String, text: &str) {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect();
    if text.is_empty() {
        out.push_str("#\n");
    } else {
        let _ = writeln!(out, "# {text}");
    }
}

/// A duration as a TOML string.
fn duration(d: Duration) -> String {
    string(&format_duration_in_seconds(d))
}

/// A TOML basic string.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `["a", "b"]`.
fn string_array(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| string(s)).collect();
    format!("[{}]", items.join(", "))
}

/// `[200, 204]`, or ten numbers a line for long lists.
/// `port = N` for one port (0: every port), else `ports = [...]` with
/// single ports as numbers and ranges as `"FIRST-LAST"`.
fn port_line(ports: &Ports) -> (&'static str, String) {
    match ports {
        Ports::Ranges(ranges) if !ports.is_single() => {
            let items: Vec<String> = ranges
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        string(&format!("{a}-{b}"))
                    }
                })
                .collect();
            (key::PORTS, format!("[{}]", items.join(", ")))
        }
        _ => (key::PORT, ports.first().to_string()),
    }
}

fn int_array(values: &[u16]) -> String {
    let values: Vec<String> = values.iter().map(u16::to_string).collect();
    if values.len() <= 10 {
        return format!("[{}]", values.join(", "));
    }
    let mut out = String::from("[\n");
    for chunk in values.chunks(10) {
        let _ = writeln!(out, "    {},", chunk.join(", "));
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dir`'s `.toml` files, with their paths.
    fn toml_files(dir: &str) -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "toml"))
            .map(|path| {
                let text = std::fs::read_to_string(&path).expect("a readable file");
                (path.display().to_string(), text)
            })
            .collect();
        files.sort();
        files
    }

    fn parse(text: &str, origin: &str) -> Config {
        Config::parse(text, origin).unwrap_or_else(|e| panic!("{e}\nin:\n{text}"))
    }

    /// Asserts that `config` written and parsed again is `config`.
    fn assert_round_trip(config: &Config, origin: &str) {
        let written = write_config(config, &Notes::default());
        let again = parse(&written, &format!("{origin} (written)"));
        assert_eq!(&again, config, "{origin}, written as:\n{written}");
        assert_eq!(
            write_config(&again, &Notes::default()),
            written,
            "{origin}: writing is not stable"
        );
    }

    /// Every setting away from its default, every kind of check.
    const EVERY_KEY: &str = include_str!("../../testdata/every-key.toml");

    /// The example configs and the importer's golden outputs parse back to
    /// what they are once written.
    #[test]
    fn written_configs_parse_back_to_themselves() {
        let mut files = toml_files("../examples");
        files.extend(toml_files("../dist"));
        files.extend(toml_files("../tests/golden/keepalived"));
        assert!(files.len() >= 5, "{files:?}");
        files.push(("EVERY_KEY".to_owned(), EVERY_KEY.to_owned()));
        for (origin, text) in files {
            assert_round_trip(&parse(&text, &origin), &origin);
        }
    }

    #[test]
    fn defaults_are_left_out() {
        let config = parse(EVERY_KEY, "EVERY_KEY");
        let text = write_config(&config, &Notes::default());
        // The tcp service without a [service.health] table.
        assert!(
            text.ends_with(
                "[[service]]\nname = \"plain\"\nvip = \"192.0.2.4\"\nport = 22\n\
                 protocol = \"tcp\"\nscheduler = \"wlc\"\n\n[service.health]\n\
                 kind = \"tcp\"\ninterval = \"10s\"\ntimeout = \"3s\"\nport = 22\nfall = 3\n\
                 rise = 2\ninhibit_on_failure = false\n\n[[service.backend]]\n\
                 address = \"198.51.100.4\"\nweight = 7\n\n[sync]\ninterface = \"eth1\"\n\
                 peers = [\"198.51.100.2\", \"198.51.100.3\"]\nport = 8849\n\
                 key_file = \"/etc/lb/sync.key\"\n\n[announce]\ntable = 201\n\
                 device = \"lbvip1\"\n"
            ),
            "{text}"
        );
        // The exec check's port differs from the service's.
        assert!(
            text.contains("kind = \"exec\"\ninterval = \"10s\"\ntimeout = \"3s\"\nport = 2812\n"),
            "{text}"
        );
        assert!(text.contains("[director.timeouts]\nestablished = \"5400s\"\nudp = \"60s\"\n\n"));
        let minimal = Config {
            director: DirectorConfig::new(vec!["eth0".to_owned()]),
            services: Vec::new(),
            sync: None,
            announce: None,
        };
        assert_eq!(
            write_config(&minimal, &Notes::default()),
            "[director]\ninterfaces = [\"eth0\"]\n"
        );
    }

    /// The comments of a golden file, as [`Notes`]: its header, and the
    /// line before each `[[service]]`.
    fn notes_of(text: &str) -> Notes {
        let lines: Vec<&str> = text.lines().collect();
        let header = lines
            .iter()
            .take_while(|l| l.starts_with('#'))
            .map(|l| {
                l.trim_start_matches('#')
                    .strip_prefix(' ')
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        let services = lines
            .windows(2)
            .filter(|pair| pair[1] == "[[service]]")
            .map(|pair| pair[0].strip_prefix("# ").expect("a comment").to_owned())
            .collect();
        Notes { header, services }
    }

    /// The writer lays out the importer's output byte for byte.
    #[test]
    fn golden_files_are_written_as_they_are() {
        for (origin, text) in toml_files("../tests/golden/keepalived") {
            let config = parse(&text, &origin);
            assert_eq!(write_config(&config, &notes_of(&text)), text, "{origin}");
        }
    }

    #[test]
    fn comments_and_strings() {
        assert_eq!(string("a\"b\\c\u{1}"), r#""a\"b\\c\u0001""#);
        let notes = Notes {
            header: vec!["one\nline".to_owned(), String::new()],
            services: Vec::new(),
        };
        let config = Config {
            director: DirectorConfig::new(vec!["eth0".to_owned()]),
            services: Vec::new(),
            sync: None,
            announce: None,
        };
        assert_eq!(
            write_config(&config, &notes),
            "# one?line\n#\n\n[director]\ninterfaces = [\"eth0\"]\n"
        );
    }
}
