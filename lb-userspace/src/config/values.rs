//! The syntax of the config's values: parsers and formatters shared by the
//! validator, the writer, the keepalived importer and the command line.

use std::{net::SocketAddr, time::Duration};

use toml::Value;

/// Linux IFNAMSIZ - 1.
const IFNAME_MAX: usize = 15;

/// How messages show a TOML value of the wrong type.
pub fn describe_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(n) => format!("integer {n}"),
        Value::Float(x) => format!("float {x}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("date-time {d}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

/// Why a Linux interface name is invalid (as the kernel's `dev_valid_name`).
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("it is empty".to_owned())
    } else if name.len() > IFNAME_MAX {
        Err(format!("it is longer than {IFNAME_MAX} bytes"))
    } else if name == "." || name == ".." {
        Err("\".\" and \"..\" are reserved".to_owned())
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Err("it contains '/', ':' or whitespace".to_owned())
    } else {
        Ok(())
    }
}

/// A listen address: `ADDR:PORT`, or a bare `PORT` meaning 127.0.0.1:PORT
/// (port 0 parses; callers refuse it).
pub fn parse_listen(text: &str) -> Option<SocketAddr> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u16>()
            .ok()
            .map(|port| SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)))
    } else {
        text.parse().ok()
    }
}

/// ` vlan 4001`, ` vlan 100.4001` (outer id first, as Linux names the
/// device `bond0.100.4001`): what follows a service's address in messages
/// and tables, for the VLAN path `path`; empty for untagged frames.
pub fn vlan_suffix(path: u32) -> String {
    let ids: Vec<String> = lb_common::vlan_ids(path).map(|id| id.to_string()).collect();
    if ids.is_empty() {
        String::new()
    } else {
        format!(" vlan {}", ids.join("."))
    }
}

/// `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Why `path` cannot be the path of an HTTP check (what goes on its
/// request line), if it cannot.
pub fn http_path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        Some("does not start with '/'")
    } else if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains whitespace or a control character")
    } else if !path.is_ascii() {
        Some("contains a non-ASCII character (percent-encode it)")
    } else if path.parse::<hyper::http::uri::PathAndQuery>().is_err() || path.contains('#') {
        Some("is not a valid URI path")
    } else {
        None
    }
}

/// Whether `host` can be the `Host` header of an HTTP check: a host name or
/// address, optionally with `:port`.
pub fn is_valid_http_host(host: &str) -> bool {
    !host.is_empty()
        && !host.contains('@')
        && host.parse::<hyper::http::uri::Authority>().is_ok()
        && host_port_is_valid(host)
}

/// Whether the `:port` of a `host[:port]` (host possibly `[IPv6]`), if
/// there is one, is a port number.
fn host_port_is_valid(host: &str) -> bool {
    let port = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((_, "")) => return true,
            Some((_, after)) => match after.strip_prefix(':') {
                Some(port) => port,
                None => return false,
            },
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((_, port)) => port,
            None => return true,
        },
    };
    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()
}

/// 32 hex digits (either case).
pub fn parse_md5(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut digest = [0u8; 16];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

/// 32 lowercase hex digits, as md5sum prints them.
pub fn format_md5(digest: &[u8; 16]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A duration such as `500ms`, `10s`, `2m`, `1h`, `7d` or `1m30s`: one or
/// more whole numbers, each followed by a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("it is empty".to_owned());
    }
    let mut rest = text;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let (number, after) = rest.split_at(digits);
        let letters = after.len()
            - after
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let (unit, after) = after.split_at(letters);
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("{number} has no unit (ms, s, m, h or d)")),
            other => return Err(format!("unknown unit {other:?} (valid: ms, s, m, h, d)")),
        };
        total_ms = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_ms))
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| "it is too long".to_owned())?;
        rest = after;
    }
    Ok(Duration::from_millis(total_ms))
}

/// The shortest way to write a duration in the config's syntax, in its
/// largest whole unit (`1500ms`, `90s`, `2m`, `1h`, `1d`; `0ms`): how
/// messages about the config show durations and ranges.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// A duration in whole seconds, else in milliseconds (`60s`, `3600s`,
/// `1500ms`; `0s`), the way keepalived.conf counts timers: how the writer
/// writes durations and the keepalived importer shows them.
pub fn format_duration_in_seconds(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
        assert_eq!(
            format_duration_in_seconds(Duration::from_millis(1500)),
            "1500ms"
        );
        assert_eq!(format_duration_in_seconds(Duration::from_secs(60)), "60s");
        assert_eq!(
            format_duration_in_seconds(Duration::from_secs(3600)),
            "3600s"
        );
        assert_eq!(format_duration_in_seconds(Duration::ZERO), "0s");
    }

    #[test]
    fn md5_digests() {
        let text = "d41d8cd98f00b204e9800998ecf8427e";
        let digest = parse_md5(text).unwrap();
        assert_eq!(format_md5(&digest), text);
        assert_eq!(parse_md5(&text.to_ascii_uppercase()), Some(digest));
        assert_eq!(parse_md5(&text[1..]), None);
    }

    #[test]
    fn mac_format() {
        assert_eq!(
            format_mac(&[2, 0, 0, 0xab, 0xcd, 0xef]),
            "02:00:00:ab:cd:ef"
        );
    }
}
