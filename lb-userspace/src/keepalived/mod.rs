//! `lb import-keepalived`: turns the `virtual_server` blocks of a
//! keepalived.conf into an lb config file (TOML).
//!
//! [`convert()`] maps each LVS-DR `virtual_server` to a `[[service]]`, its
//! `real_server`s to `[[service.backend]]`s and their `TCP_CHECK`,
//! `HTTP_GET` or `MISC_CHECK` to the service's `[service.health]`. Every
//! setting it cannot carry over becomes a [`Diagnostic`] with the line it is
//! on: it is printed as `FILE:LINE: warning: ...` on stderr and listed again
//! in the header comment of the generated TOML. Blocks outside
//! `virtual_server` (`global_defs`, `vrrp_instance`, ...) are skipped, with
//! one note that VRRP (VIP failover) stays with keepalived.
//!
//! # Parsing
//!
//! There is no maintained Rust crate for keepalived's configuration syntax,
//! so this module has its own small tokenizer and parser. They follow
//! keepalived's `lib/parser.c`:
//!
//! - a statement is a keyword and its arguments, up to the end of the line or
//!   up to a `{` or `}`; a `{` opens the block of the statement before it,
//!   which may also be on the previous line;
//! - `#` and `!` start a comment anywhere outside double quotes (`\#` and
//!   `\!` are literal);
//! - double quotes group words with spaces into one argument;
//! - a `\` at the very end of a line continues the statement on the next.
//!
//! Statements keep their line numbers for the messages. Errors (unbalanced
//! braces, an unterminated quote, a `virtual_server` without address and
//! port, a file that cannot be read) name the file and the line.
//!
//! # keepalived's defaults
//!
//! Values not written in keepalived.conf are converted as keepalived itself
//! would use them (keepalived sources, `keepalived/check/`):
//!
//! - `delay_loop` 60 s (`KEEPALIVED_DEFAULT_DELAY`, `include/check_data.h`);
//! - `connect_timeout` 5 s (`alloc_vs`, `check_data.c`);
//! - `retry` 1 for TCP_CHECK and HTTP_GET (`default_retry = 1`,
//!   `check_api.c`), 0 for MISC_CHECK (`misc_check_handler`,
//!   `check_misc.c`);
//! - `delay_before_retry` 1 s (`default_delay_before_retry`, `check_api.c`),
//!   3 s for HTTP_GET and SSL_GET (`http_get_handler`, `check_http.c`);
//! - `misc_timeout` the virtual server's `delay_loop` (`misc_check_thread`);
//! - HTTP `status_code` 200 to 299 (`HTTP_DEFAULT_STATUS_CODE_MIN/MAX`,
//!   `include/check_http.h`);
//! - `warmup` the checker's `delay_loop`, which is also lb's default, so it
//!   is written only when keepalived.conf sets it to something else;
//! - `weight` 1, or the virtual server's `weight`; `connect_port` the real
//!   server's port.
//!
//! A keepalived checker marks a real server down after the first failed
//! check plus `retry` failed retries, and up again after one good check:
//! lb's `fall` is `retry + 1`, `rise` is 1, and `retry_delay` is
//! `delay_before_retry` (the interval when there are no retries).
//!
//! `syntax` holds the tokenizer and the parser, `convert` the conversion
//! into lb's model ([`crate::config`]), which [`crate::config::write`]
//! writes as TOML.

mod convert;
mod syntax;

use std::{fmt, net::IpAddr, path::Path, str::FromStr};

use anyhow::Context as _;

use self::{
    convert::Converter,
    syntax::{SyntaxError, parse, tokenize},
};
use crate::config::{
    Config, DirectorConfig, Ports,
    write::{Notes, write_config},
};

/// Converts the keepalived.conf at `file` and writes the TOML to `output`
/// (stdout when `None`); diagnostics go to stderr as `FILE:LINE: warning:
/// ...`.
///
/// `interfaces` are the director's NICs for `[director] interfaces`; when
/// empty, `eth0` is written with a warning. Only errors (an unreadable
/// file, a syntax error, an unwritable output) fail, not warnings.
pub fn run(
    file: &Path,
    interfaces: &[String],
    fwmarks: &[Fwmark],
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let origin = file.display().to_string();
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("{origin}: cannot read keepalived config: {e}"))?;
    let conversion = convert(&text, &origin, interfaces, fwmarks)?;
    for diagnostic in &conversion.diagnostics {
        eprintln!("{}", diagnostic.display(&origin));
    }
    match output {
        Some(path) => std::fs::write(path, &conversion.toml)
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{}", conversion.toml),
    }
    Ok(())
}

/// What a firewall mark selects (`--fwmark MARK=VIP:PORTS`): keepalived's
/// fwmark services leave that to an iptables or nftables rule, which is
/// not in keepalived.conf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fwmark {
    /// The mark.
    pub mark: u32,
    /// The VIP the rule matches.
    pub vip: IpAddr,
    /// The ports it matches (0: every port).
    pub ports: Ports,
}

impl FromStr for Fwmark {
    type Err = String;

    /// `1=192.0.2.10:2811,50000-51000`, `2=[2001:db8::10]:0`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const VALID: &str = "valid: MARK=VIP:PORTS, e.g. 1=192.0.2.10:2811,50000-51000 or \
                             2=[2001:db8::10]:0 for every port";
        let parse = || -> Option<Fwmark> {
            let (mark, target) = text.split_once('=')?;
            let (vip, ports) = target.rsplit_once(':')?;
            let vip = vip
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()?;
            let ranges = ports
                .split(',')
                .map(|item| match item.split_once('-') {
                    Some((a, b)) => Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)),
                    None => item.parse::<u16>().ok().map(|p| (p, p)),
                })
                .collect::<Option<Vec<_>>>()?;
            let ports = match ranges.as_slice() {
                [(0, 0)] => Ports::Every,
                _ if ranges.iter().all(|&(a, b)| 1 <= a && a <= b) => {
                    Ports::from_ranges(ranges).ok()?
                }
                _ => return None,
            };
            Some(Fwmark {
                mark: mark.parse().ok()?,
                vip,
                ports,
            })
        };
        parse().ok_or_else(|| format!("{text:?} is not a firewall mark's VIP and ports ({VALID})"))
    }
}

/// Converts keepalived.conf text; `origin` is the file name used in
/// messages and in the header comment of the TOML, `interfaces` the
/// director NICs (`eth0` with a warning when empty), `fwmarks` what the
/// firewall marks of fwmark services select.
pub fn convert(
    text: &str,
    origin: &str,
    interfaces: &[String],
    fwmarks: &[Fwmark],
) -> Result<Conversion, ImportError> {
    let error = |e: SyntaxError| ImportError {
        origin: origin.to_owned(),
        line: e.line,
        message: e.message,
    };
    let statements = parse(tokenize(text).map_err(error)?).map_err(error)?;
    let mut converter = Converter::default();
    converter.fwmarks = fwmarks
        .iter()
        .map(|f| (f.mark, (f.vip, f.ports.clone())))
        .collect();
    for group in statements
        .iter()
        .filter(|s| s.keyword == "virtual_server_group")
    {
        converter.group(group).map_err(error)?;
    }
    let mut imported = Vec::new();
    for stmt in &statements {
        imported.extend(converter.top_level(stmt).map_err(error)?);
    }
    let interfaces = if interfaces.is_empty() {
        converter.diagnostics.push(Diagnostic {
            line: None,
            severity: Severity::Warning,
            message: "the director's NICs are not in keepalived.conf: wrote \
                      interfaces = [\"eth0\"]; edit it, or pass --interface NIC"
                .to_owned(),
        });
        vec!["eth0".to_owned()]
    } else {
        interfaces.to_vec()
    };
    if imported.is_empty() {
        converter.diagnostics.push(Diagnostic {
            line: None,
            severity: Severity::Warning,
            message: "no virtual_server could be converted: the output has no [[service]], \
                      which `lb check` rejects"
                .to_owned(),
        });
    }
    // File order; messages without a line (about the whole output) last.
    converter
        .diagnostics
        .sort_by_key(|d| (d.line.is_none(), d.line));
    // A comment before each service: the virtual_server it comes from.
    let sources: Vec<String> = imported
        .iter()
        .map(|i| format!("{} ({origin}:{})", i.source, i.line))
        .collect();
    let mut director = DirectorConfig::new(interfaces);
    director.vrrp_vrids = std::mem::take(&mut converter.vmac_router_ids);
    director.vrrp_vrids.sort_unstable();
    let config = Config {
        director,
        services: imported.into_iter().map(|i| i.service).collect(),
        sync: converter.sync.take(),
        announce: None,
    };
    let write = |diagnostics: &[Diagnostic]| {
        let notes = Notes {
            header: header(origin, diagnostics),
            services: sources.clone(),
        };
        write_config(&config, &notes)
    };
    let mut toml = write(&converter.diagnostics);
    // A safety net: say so if lb would reject what was written (e.g. a bad
    // --interface name).
    if !config.services.is_empty()
        && let Err(e) = Config::parse(&toml, "<output>")
    {
        for problem in e.to_string().lines() {
            converter.diagnostics.push(Diagnostic {
                line: None,
                severity: Severity::Warning,
                message: format!("the generated config does not pass `lb check`: {problem}"),
            });
        }
        toml = write(&converter.diagnostics);
    }
    Ok(Conversion {
        toml,
        diagnostics: converter.diagnostics,
    })
}

/// The header comment of the TOML: where it comes from and the
/// diagnostics.
fn header(origin: &str, diagnostics: &[Diagnostic]) -> Vec<String> {
    let mut lines = vec![
        format!("Generated from {origin} by `lb import-keepalived`."),
        "Review it, then validate it with `lb check --config FILE`.".to_owned(),
        String::new(),
    ];
    if diagnostics.is_empty() {
        lines.push("Everything was carried over: no warnings.".to_owned());
    } else {
        lines.push("Warnings and notes (also printed on stderr):".to_owned());
        lines.extend(
            diagnostics
                .iter()
                .map(|d| format!("  {}", d.display(origin))),
        );
    }
    lines
}

/// What [`convert()`] made of a keepalived.conf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversion {
    /// The lb config, with a header comment naming the source and listing
    /// the diagnostics.
    pub toml: String,
    /// Everything not carried over, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

/// A message about the keepalived.conf: something not carried over (a
/// warning) or left to keepalived (a note).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line in keepalived.conf, if the message is about one.
    pub line: Option<usize>,
    /// Warning or note.
    pub severity: Severity,
    /// What was not carried over, and why.
    pub message: String,
}

/// How serious a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// A setting that is not carried over, or carried over differently.
    Warning,
    /// Information: something that stays with keepalived.
    Note,
}

impl Diagnostic {
    /// `FILE:LINE: warning: message` (or `FILE: note: ...` without a line).
    pub fn display<'a>(&'a self, origin: &'a str) -> impl fmt::Display + 'a {
        DiagnosticDisplay {
            diagnostic: self,
            origin,
        }
    }
}

struct DiagnosticDisplay<'a> {
    diagnostic: &'a Diagnostic,
    origin: &'a str,
}

impl fmt::Display for DiagnosticDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.diagnostic.severity {
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        match self.diagnostic.line {
            Some(line) => write!(f, "{}:{line}: {severity}: ", self.origin)?,
            None => write!(f, "{}: {severity}: ", self.origin)?,
        }
        f.write_str(&self.diagnostic.message)
    }
}

/// Why a keepalived.conf could not be converted; displayed as
/// `FILE:LINE: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportError {
    origin: String,
    line: usize,
    message: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.origin, self.line, self.message)
    }
}

impl std::error::Error for ImportError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(text: &str) -> Conversion {
        convert(text, "k.conf", &["eth1".to_owned()], &[]).expect("converts")
    }

    fn warnings(text: &str) -> Vec<String> {
        conv(text)
            .diagnostics
            .iter()
            .map(|d| d.display("k.conf").to_string())
            .collect()
    }

    fn err(text: &str) -> String {
        convert(text, "k.conf", &[], &[]).unwrap_err().to_string()
    }

    /// A DR virtual server around `body` (real servers and settings).
    fn vs(body: &str) -> String {
        format!("virtual_server 192.0.2.10 2811 {{\n  lb_kind DR\n{body}\n}}\n")
    }

    fn has(warnings: &[String], needle: &str) -> bool {
        warnings.iter().any(|w| w.contains(needle))
    }

    // --- errors

    #[test]
    fn errors_name_file_and_line() {
        assert_eq!(
            err("virtual_server 192.0.2.10 {\n}\n"),
            "k.conf:1: virtual_server needs an address and a port (e.g. `virtual_server 192.0.2.10 2811 {`)"
        );
        assert_eq!(
            err("\nvirtual_server 192.0.2 80 {\n}\n"),
            "k.conf:2: virtual_server address \"192.0.2\" is not an IP address"
        );
        assert_eq!(
            err("virtual_server 192.0.2.1 0 {\n}\n"),
            "k.conf:1: virtual_server port \"0\" is not a port (valid: 1 to 65535)"
        );
        assert_eq!(
            err(&vs("real_server nope 2811 {\n}")),
            "k.conf:3: real_server address \"nope\" is not an IP address"
        );
        assert_eq!(
            err("global_defs {\n"),
            "k.conf:1: the block of `global_defs` is never closed: a '}' is missing"
        );
    }

    #[test]
    fn run_names_an_unreadable_file() {
        let e = run(Path::new("/nonexistent/keepalived.conf"), &[], &[], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/keepalived.conf: cannot read keepalived config: "),
            "{e}"
        );
    }

    // --- mappings

    const GRIDFTP: &str = "\
virtual_server 192.0.2.10 2811 {
    delay_loop 10
    lb_algo wlc
    lb_kind DR
    protocol TCP
    real_server 198.51.100.11 2811 {
        weight 1000
        TCP_CHECK {
            connect_timeout 3
            connect_port 2811
        }
    }
    real_server 198.51.100.12 2811 {
        weight 500
        TCP_CHECK {
            connect_timeout 3
            connect_port 2811
        }
    }
}
";

    #[test]
    fn tcp_check_maps_with_keepalived_defaults() {
        let c = conv(GRIDFTP);
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
        let expected = "\
[[service]]
name = \"vs-192.0.2.10-2811\"
vip = \"192.0.2.10\"
port = 2811
protocol = \"tcp\"
scheduler = \"wlc\"

[service.health]
kind = \"tcp\"
interval = \"10s\"
timeout = \"3s\"
port = 2811
fall = 2
rise = 1
retry_delay = \"1s\"
inhibit_on_failure = false

[[service.backend]]
address = \"198.51.100.11\"
weight = 1000

[[service.backend]]
address = \"198.51.100.12\"
weight = 500
";
        assert!(c.toml.ends_with(expected), "{}", c.toml);
        assert!(c.toml.contains("interfaces = [\"eth1\"]"), "{}", c.toml);
        assert!(
            c.toml
                .starts_with("# Generated from k.conf by `lb import-keepalived`.")
        );
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let c = conv(&vs(
            "  real_server 198.51.100.11 2811 {\n    TCP_CHECK {\n    }\n  }",
        ));
        for line in [
            "interval = \"60s\"",
            "timeout = \"5s\"",
            "port = 2811\nfall = 2",
            "retry_delay = \"1s\"",
            "weight = 1\n",
        ] {
            assert!(c.toml.contains(line), "{line}: {}", c.toml);
        }
        assert!(!c.toml.contains("warmup"), "{}", c.toml);
    }

    #[test]
    fn inheritance_from_virtual_and_real_server() {
        let c = conv(&vs("  delay_loop 5
  connect_timeout 2
  retry 4
  delay_before_retry 0.5
  warmup 7
  weight 3
  inhibit_on_failure
  real_server 198.51.100.11 {
    connect_timeout 1.5
    TCP_CHECK {
      retry 2
    }
  }"));
        for line in [
            "interval = \"5s\"",
            "timeout = \"1500ms\"",
            "port = 2811",
            "fall = 3",
            "retry_delay = \"500ms\"",
            "warmup = \"7s\"",
            "inhibit_on_failure = true",
            "weight = 3\n",
        ] {
            assert!(c.toml.contains(line), "{line}: {}", c.toml);
        }
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    }

    #[test]
    fn http_get_maps_path_status_digest_host() {
        let c = conv(&vs("  virtualhost door.example.org
  real_server 198.51.100.11 2811 {
    HTTP_GET {
      connect_port 8080
      nb_get_retry 2
      url {
        path /health?x=1
        status_code 200 204
        digest 0123456789ABCDEF0123456789abcdef
      }
    }
  }"));
        for line in [
            "kind = \"http\"",
            "port = 8080",
            "fall = 3",
            "retry_delay = \"3s\"",
            "path = \"/health?x=1\"",
            "status = [200, 204]",
            "digest = \"0123456789abcdef0123456789abcdef\"",
            "host = \"door.example.org\"",
        ] {
            assert!(c.toml.contains(line), "{line}: {}", c.toml);
        }
    }

    #[test]
    fn http_status_ranges_and_default_are_expanded() {
        let c = conv(&vs(
            "  real_server 198.51.100.11 {\n    HTTP_GET {\n      url {\n        path /\n      }\n    }\n  }",
        ));
        assert!(
            c.toml
                .contains("status = [\n    200, 201, 202, 203, 204, 205, 206, 207, 208, 209,\n"),
            "{}",
            c.toml
        );
        assert!(
            c.toml
                .contains("    290, 291, 292, 293, 294, 295, 296, 297, 298, 299,\n]\n")
        );
        let c = conv(&vs(
            "  real_server 198.51.100.11 {\n    HTTP_GET {\n      url {\n        path /\n        status_code 301-302 200\n      }\n    }\n  }",
        ));
        assert!(c.toml.contains("status = [200, 301, 302]"), "{}", c.toml);
        let w = warnings(&vs(
            "  real_server 198.51.100.11 {\n    HTTP_GET {\n      url {\n        path /\n        status_code 200 2xx 700\n      }\n    }\n  }",
        ));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("k.conf:7: warning: status_code \"2xx\""),
            "{w:?}"
        );
    }

    #[test]
    fn misc_check_maps_to_exec() {
        let c = conv(&vs("  delay_loop 20
  real_server 198.51.100.11 2811 {
    MISC_CHECK {
      misc_path \"/usr/local/bin/check_door 198.51.100.11 \\\"x\\\"\"
    }
  }"));
        for line in [
            "kind = \"exec\"",
            "interval = \"20s\"",
            "timeout = \"20s\"",
            "fall = 1\nrise = 1\ninhibit_on_failure = false",
            r#"command = ["/bin/sh", "-c", "/usr/local/bin/check_door 198.51.100.11 \"x\""]"#,
        ] {
            assert!(c.toml.contains(line), "{line}: {}", c.toml);
        }
        assert!(!c.toml.contains("port = 2811\nfall"), "{}", c.toml);
        let c = conv(&vs(
            "  real_server 198.51.100.11 {\n    MISC_CHECK {\n      misc_path /bin/true\n      misc_timeout 4\n      retry 2\n    }\n  }",
        ));
        assert!(c.toml.contains("timeout = \"4s\""), "{}", c.toml);
        assert!(
            c.toml.contains("fall = 3\nrise = 1\nretry_delay = \"1s\""),
            "{}",
            c.toml
        );
    }

    #[test]
    fn no_checker_is_kind_none() {
        let c = conv(&vs("  real_server 198.51.100.11 2811 {\n    weight 2\n  }"));
        assert!(
            c.toml
                .contains("[service.health]\nkind = \"none\"\n\n[[service.backend]]"),
            "{}",
            c.toml
        );
    }

    #[test]
    fn udp_and_ipv6_names() {
        let c = conv(
            "virtual_server 2001:db8::10 53 {\n  lb_kind DR\n  protocol UDP\n  real_server 2001:db8:1::11 53 {\n  }\n}\n",
        );
        assert!(
            c.toml.contains("name = \"vs-2001-db8--10-53-udp\""),
            "{}",
            c.toml
        );
        assert!(c.toml.contains("protocol = \"udp\""), "{}", c.toml);
        let long = "virtual_server [2001:db8:1234:5678:9abc:def0:1234:5678] 2811 {\n  real_server 2001:db8::11 {\n  }\n}\n";
        let c = conv(&format!("{long}{}", long.replace("2811", "2812")));
        assert!(
            c.toml
                .contains("name = \"vs-5678-9abc-def0-1234-5678-2811\""),
            "{}",
            c.toml
        );
        assert!(
            c.toml
                .contains("name = \"vs-5678-9abc-def0-1234-5678-2812\""),
            "{}",
            c.toml
        );
    }

    #[test]
    fn snmp_name_becomes_the_service_name() {
        let c = conv(&vs(
            "  snmp_name gridftp\n  real_server 198.51.100.11 {\n  }",
        ));
        assert!(c.toml.contains("name = \"gridftp\""), "{}", c.toml);
    }

    #[test]
    fn interfaces_default_to_eth0_with_a_warning() {
        let c = convert(GRIDFTP, "k.conf", &[], &[]).unwrap();
        assert!(c.toml.contains("interfaces = [\"eth0\"]"));
        let w: Vec<String> = c
            .diagnostics
            .iter()
            .map(|d| d.display("k.conf").to_string())
            .collect();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("k.conf: warning: the director's NICs"),
            "{w:?}"
        );
        let c = convert(GRIDFTP, "k.conf", &["eth0".into(), "eth1".into()], &[]).unwrap();
        assert!(c.toml.contains("interfaces = [\"eth0\", \"eth1\"]"));
    }

    // --- warnings

    #[test]
    fn each_unsupported_virtual_server_setting_warns() {
        let cases = [
            (
                "lb_algo lc",
                "lb_algo lc: lb schedules with wlc, rr, wrr, sh or mh, not lc",
            ),
            ("lvs_sched dh", "hashing by destination"),
            (
                "persistence_granularity 255.255.255.0",
                "persistence_granularity is not carried over: the virtual_server has no \
                 persistence_timeout",
            ),
            (
                "persistence_granularity 255.0.255.0",
                "not a contiguous IPv4 netmask",
            ),
            (
                "persistence_engine sip",
                "persistence_engine sip is not carried over: lb's persistence is by client",
            ),
            (
                "quorum_up /bin/up.sh",
                "quorum_up /bin/up.sh is not carried over",
            ),
            ("quorum 0", "quorum 0 is not a quorum; using 1"),
            (
                "hysteresis 1",
                "hysteresis 1 is not below the quorum 1; using 0",
            ),
            (
                "sorry_server 192.0.2.99 21",
                "sorry_server 192.0.2.99 port 21 is not the VIP's port 2811",
            ),
            (
                "sorry_server 2001:db8::99 2811",
                "is not carried over: it is not of the VIP's address family",
            ),
            (
                "sorry_server 198.51.100.11 2811",
                "sorry_server 198.51.100.11 is also a real_server",
            ),
            (
                "sorry_server_inhibit",
                "sorry_server_inhibit is not carried over",
            ),
            ("alpha", "alpha is not carried over: lb has no alpha mode"),
            ("omega", "omega is not carried over"),
            ("ha_suspend", "ha_suspend is not carried over"),
            ("ops", "ops is not carried over: an IPVS scheduler flag"),
            ("smtp_alert", "smtp_alert is not carried over"),
            ("ip_family inet6", "ip_family inet6 is not carried over"),
            (
                "frobnicate 1",
                "unknown keyword `frobnicate` in virtual_server",
            ),
        ];
        for (setting, expected) in cases {
            let w = warnings(&vs(&format!(
                "  {setting}\n  real_server 198.51.100.11 2811 {{\n  }}"
            )));
            assert_eq!(w.len(), 1, "{setting}: {w:?}");
            assert!(w[0].starts_with("k.conf:3: warning: "), "{setting}: {w:?}");
            assert!(w[0].contains(expected), "{setting}: {w:?}");
        }
        assert!(warnings(&vs("  ip_family inet\n  real_server 198.51.100.11 {\n  }")).is_empty());
    }

    #[test]
    fn schedulers_carry_over() {
        for algo in ["wlc", "rr", "wrr", "sh", "mh"] {
            let c = conv(&vs(&format!(
                "  lb_algo {algo}\n  real_server 198.51.100.11 2811 {{\n  }}"
            )));
            assert!(
                c.toml.contains(&format!("scheduler = \"{algo}\"")),
                "{}",
                c.toml
            );
        }
    }

    #[test]
    fn firewall_marks_name_a_vip_and_its_ports() {
        let mark: Fwmark = "7=192.0.2.20:2811,50000-51000".parse().unwrap();
        assert_eq!(
            mark,
            Fwmark {
                mark: 7,
                vip: "192.0.2.20".parse().unwrap(),
                ports: Ports::from_ranges(vec![(2811, 2811), (50000, 51000)]).unwrap(),
            }
        );
        let every: Fwmark = "8=[2001:db8::20]:0".parse().unwrap();
        assert_eq!(every.ports, Ports::Every);
        for bad in [
            "7",
            "7=192.0.2.20",
            "x=192.0.2.20:80",
            "7=192.0.2.20:90-80",
            "7=nowhere:80",
        ] {
            let e = bad.parse::<Fwmark>().unwrap_err();
            assert!(e.contains("valid: MARK=VIP:PORTS"), "{bad}: {e}");
        }
    }

    #[test]
    fn groups_become_services_over_their_ports() {
        let text = "virtual_server_group g {\n  192.0.2.20 2811\n  192.0.2.20 50000\n  \
                    fwmark 7\n  192.0.2.30-31 1094\n}\nvirtual_server group g {\n  \
                    lb_kind DR\n  real_server 198.51.100.11 2811 {\n  }\n}\n";
        let mark = Fwmark {
            mark: 7,
            vip: "192.0.2.20".parse().unwrap(),
            ports: Ports::from_ranges(vec![(50001, 50100)]).unwrap(),
        };
        let c = convert(text, "k.conf", &["eth0".into()], &[mark]).unwrap();
        let config = Config::parse(&c.toml, "out.toml").unwrap();
        let services: Vec<(String, String)> = config
            .services
            .iter()
            .map(|s| (s.vip.to_string(), s.ports.to_string()))
            .collect();
        assert_eq!(
            services,
            [
                ("192.0.2.20".to_owned(), "2811,50000-50100".to_owned()),
                ("192.0.2.30".to_owned(), "1094".to_owned()),
                ("192.0.2.31".to_owned(), "1094".to_owned()),
            ]
        );
        let without = convert(text, "k.conf", &["eth0".into()], &[]).unwrap();
        assert!(
            without
                .diagnostics
                .iter()
                .any(|d| d.message.contains("--fwmark 7=VIP:PORTS")),
            "{:?}",
            without.diagnostics
        );
    }

    #[test]
    fn sorry_server_quorum_and_hysteresis_carry_over() {
        let c = convert(
            &vs(
                "  sorry_server 192.0.2.99 2811\n  quorum 3\n  hysteresis 1\n  \
                 real_server 198.51.100.11 2811 {\n  }",
            ),
            "k.conf",
            &["eth0".into()],
            &[],
        )
        .unwrap();
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
        for line in [
            "sorry_server = \"192.0.2.99\"",
            "quorum = 3",
            "hysteresis = 1",
        ] {
            assert!(c.toml.lines().any(|l| l == line), "{line} in\n{}", c.toml);
        }
        let config = crate::config::Config::parse(&c.toml, "lb.toml").unwrap();
        let service = &config.services[0];
        assert_eq!(
            (service.sorry_server, service.quorum, service.hysteresis),
            (Some("192.0.2.99".parse().unwrap()), 3, 1)
        );
    }

    #[test]
    fn persistence_carries_over() {
        let c = convert(
            &vs(
                "  persistence_timeout 600\n  persistence_granularity 255.255.255.0\n  \
                 real_server 198.51.100.11 2811 {\n  }",
            ),
            "k.conf",
            &["eth0".into()],
            &[],
        )
        .unwrap();
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
        let config = crate::config::Config::parse(&c.toml, "lb.toml").unwrap();
        assert_eq!(
            config.services[0].persistence,
            Some(crate::config::Persistence {
                timeout: std::time::Duration::from_secs(600),
                prefix: 24,
            }),
            "{}",
            c.toml
        );
        // keepalived's default without a value, and the whole address.
        let c = convert(
            &vs("  persistence_timeout\n  real_server 198.51.100.11 2811 {\n  }"),
            "k.conf",
            &["eth0".into()],
            &[],
        )
        .unwrap();
        let config = crate::config::Config::parse(&c.toml, "lb.toml").unwrap();
        assert_eq!(
            config.services[0]
                .persistence
                .map(|p| (p.timeout.as_secs(), p.prefix)),
            Some((360, 32))
        );
    }

    #[test]
    fn each_unsupported_real_server_and_checker_setting_warns() {
        let cases = [
            (
                "notify_up \"/bin/up.sh\"",
                "notify_up /bin/up.sh is not carried over: lb runs one `notify` command",
            ),
            (
                "notify_down /bin/down.sh",
                "notify_down /bin/down.sh is not carried over",
            ),
            ("uthreshold 100", "uthreshold 100 is not carried over"),
            ("DNS_CHECK {\n    }", "DNS_CHECK is not carried over"),
            (
                "TCP_CHECK {\n      bindto 192.0.2.1\n    }",
                "bindto 192.0.2.1 is not carried over",
            ),
            (
                "TCP_CHECK {\n      connect_ip 198.51.100.99\n    }",
                "connect_ip",
            ),
            (
                "TCP_CHECK {\n      fwmark 3\n    }",
                "fwmark 3 is not carried over",
            ),
            (
                "TCP_CHECK {\n      weird 3\n    }",
                "unknown keyword `weird` in TCP_CHECK",
            ),
            (
                "MISC_CHECK {\n      misc_path /bin/true\n      misc_dynamic\n    }",
                "misc_dynamic is not carried over",
            ),
            (
                "MISC_CHECK {\n      misc_path /bin/true\n      user nobody\n    }",
                "user nobody is not carried over",
            ),
            (
                "HTTP_GET {\n      url {\n        path /\n        regex ok\n      }\n    }",
                "regex ok is not carried over",
            ),
            (
                "SSL_GET {\n      url {\n        path /\n      }\n    }",
                "SSL_GET is carried over as a TCP connect check",
            ),
            ("HTTP_GET {\n    }", "HTTP_GET without a url block"),
            ("MISC_CHECK {\n    }", "MISC_CHECK without misc_path"),
            (
                "lvs_method NAT",
                "lvs_method NAT: lb only does direct routing (DR); real_server skipped",
            ),
            ("weight 70000", "weight 70000 is above lb's maximum 65535"),
            ("weight lots", "weight lots: invalid value"),
            (
                "TCP_CHECK {\n      connect_timeout 3 connect_port 2811\n    }",
                "keepalived ignores the words after the first value (connect_port 2811)",
            ),
            (
                "delay_loop 0.0005",
                "delay_loop 0.0005: lb counts milliseconds; using 1ms",
            ),
        ];
        for (setting, expected) in cases {
            let text = vs(&format!(
                "  real_server 198.51.100.11 2811 {{\n    {setting}\n  }}\n  real_server 198.51.100.12 2811 {{\n  }}"
            ));
            let w = warnings(&text);
            assert!(has(&w, expected), "{setting}: {w:?}");
        }
    }

    #[test]
    fn skipped_virtual_servers_warn() {
        let cases = [
            (
                "lb_kind NAT",
                "lb_kind NAT: lb only does direct routing (DR); virtual_server skipped",
            ),
            ("lb_kind TUN", "lb_kind TUN: lb only does direct routing"),
            (
                "protocol SCTP",
                "protocol SCTP is not carried over: lb balances TCP and UDP only",
            ),
        ];
        for (setting, expected) in cases {
            let c = conv(&format!(
                "virtual_server 192.0.2.10 2811 {{\n  {setting}\n  real_server 198.51.100.11 {{\n  }}\n}}\n"
            ));
            assert!(!c.toml.contains("\n[[service]]\n"), "{setting}: {}", c.toml);
            let w: Vec<String> = c
                .diagnostics
                .iter()
                .map(|d| d.display("k.conf").to_string())
                .collect();
            assert!(w[0].starts_with("k.conf:2: warning: "), "{w:?}");
            assert!(w[0].contains(expected), "{setting}: {w:?}");
            assert!(has(&w, "no virtual_server could be converted"), "{w:?}");
        }
        let w = warnings(
            "virtual_server fwmark 1 {\n}\nvirtual_server group doors {\n}\nvirtual_server_group doors {\n}\ninclude /etc/keepalived/more.conf\n",
        );
        assert!(
            w[0].starts_with("k.conf:1: warning: virtual_server fwmark 1 is not carried over"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("k.conf:3: warning: virtual_server group doors is not carried over"),
            "{w:?}"
        );
        assert!(
            w[1].contains("virtual_server_group doors (line 5) has no entry"),
            "{w:?}"
        );
        assert!(
            w[2].starts_with(
                "k.conf:7: warning: include /etc/keepalived/more.conf is not carried over"
            ),
            "{w:?}"
        );
        let w = warnings(&vs(
            "  real_server 198.51.100.11 {\n    lvs_method TUN\n  }",
        ));
        assert!(
            has(&w, "virtual_server has no usable real_server; skipped"),
            "{w:?}"
        );
    }

    #[test]
    fn real_server_problems_warn() {
        let w = warnings(&vs(
            "  real_server 198.51.100.11 8080 {\n  }\n  real_server 198.51.100.11 {\n  }\n  real_server 2001:db8::1 {\n  }",
        ));
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w[0].contains(
                "port 8080 is not the VIP's port 2811: direct routing cannot translate ports"
            ),
            "{w:?}"
        );
        assert!(
            w[1].contains("real_server 198.51.100.11 is listed twice"),
            "{w:?}"
        );
        assert!(
            w[2].contains("real_server 2001:db8::1 is not of the VIP's address family"),
            "{w:?}"
        );
        let w = warnings(&format!(
            "{}{}",
            vs("  real_server 198.51.100.11 {\n  }"),
            vs("  real_server 198.51.100.12 {\n  }")
        ));
        assert!(
            has(
                &w,
                "a port of the same VIP and protocol as the virtual_server at line 1; skipped"
            ),
            "{w:?}"
        );
    }

    #[test]
    fn differing_checks_warn_and_the_first_wins() {
        let c = conv(&vs("  real_server 198.51.100.11 {
    TCP_CHECK {
      connect_timeout 3
    }
    HTTP_GET {
      url {
        path /
      }
    }
  }
  real_server 198.51.100.12 {
    inhibit_on_failure
    TCP_CHECK {
      connect_timeout 4
    }
  }
  real_server 198.51.100.13 {
  }"));
        let w: Vec<String> = c
            .diagnostics
            .iter()
            .map(|d| d.display("k.conf").to_string())
            .collect();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w[0].starts_with(
                "k.conf:7: warning: real_server 198.51.100.11 has more than one checker"
            ),
            "{w:?}"
        );
        assert!(w[1].starts_with("k.conf:15: warning: real_server 198.51.100.12 is checked differently from real_server 198.51.100.11 (timeout \"4s\" vs \"3s\", inhibit_on_failure true vs false); lb runs one check per service and uses the one at line 4"), "{w:?}");
        assert!(
            w[2].starts_with("k.conf:19: warning: real_server 198.51.100.13 has no checker"),
            "{w:?}"
        );
        assert!(c.toml.contains("timeout = \"3s\""), "{}", c.toml);
    }

    #[test]
    fn out_of_range_checks_are_fitted_with_warnings() {
        let w = warnings(&vs(
            "  delay_loop 7200\n  connect_timeout 9000\n  retry 500\n  warmup 4000\n  real_server 198.51.100.11 {\n    TCP_CHECK {\n      delay_before_retry 5000\n    }\n  }",
        ));
        for expected in [
            "delay_loop 7200s is outside lb's range 100ms..=3600s; using 3600s",
            "connect_timeout 9000s is longer than delay_loop 3600s",
            "retry 500 is above lb's maximum 99",
            "delay_before_retry 5000s is outside lb's range 100ms..=3600s; using 3600s",
            "warmup 4000s is above lb's maximum 3600s",
        ] {
            assert!(has(&w, expected), "{expected}: {w:?}");
        }
        let w = warnings(&vs(
            "  delay_loop 5\n  real_server 198.51.100.11 {\n    MISC_CHECK {\n      misc_path /bin/true\n      misc_timeout 10\n    }\n  }",
        ));
        assert!(
            has(&w, "misc_timeout 10s is longer than delay_loop 5s"),
            "{w:?}"
        );
    }

    #[test]
    fn too_short_timers_and_bad_http_fields_are_fitted() {
        let c = conv(&vs("  real_server 198.51.100.11 {
    HTTP_GET {
      connect_timeout 0.01
      delay_before_retry 0
      virtualhost \"bad host\"
      url {
        path health
      }
    }
  }"));
        let w: Vec<String> = c
            .diagnostics
            .iter()
            .map(|d| d.display("k.conf").to_string())
            .collect();
        for expected in [
            "connect_timeout 10ms is below lb's minimum 100ms; using 100ms",
            "delay_before_retry 0s is outside lb's range 100ms..=3600s; using 100ms",
            "url path \"health\" is not an absolute path lb can request; using \"/\"",
            "virtualhost \"bad host\" is not a valid Host header",
        ] {
            assert!(has(&w, expected), "{expected}: {w:?}");
        }
        assert!(c.toml.contains("path = \"/\"\n"), "{}", c.toml);
        assert!(!c.toml.contains("host ="), "{}", c.toml);
        assert!(
            crate::config::Config::parse(&c.toml, "out.toml").is_ok(),
            "{}",
            c.toml
        );
    }

    #[test]
    fn output_rejected_by_lb_check_is_a_warning() {
        let c = convert(GRIDFTP, "k.conf", &["bad nic".to_owned()], &[]).unwrap();
        let last = c.diagnostics.last().unwrap().display("k.conf").to_string();
        assert!(
            last.starts_with(
                "k.conf: warning: the generated config does not pass `lb check`: <output>:"
            ),
            "{last}"
        );
        assert!(last.contains("\"bad nic\""), "{last}");
        assert!(c.toml.contains(&format!("#   {last}\n")), "{}", c.toml);
    }

    #[test]
    fn other_blocks_are_silent_except_one_vrrp_note() {
        let c = conv(&format!(
            "global_defs {{\n  router_id lb1\n}}\nvrrp_script chk {{\n}}\nvrrp_instance VI_1 {{\n  state MASTER\n}}\n{GRIDFTP}"
        ));
        assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
        assert_eq!(c.diagnostics[0].severity, Severity::Note);
        assert!(c.diagnostics[0].display("k.conf").to_string().starts_with(
            "k.conf:4: note: vrrp_script and the other VRRP blocks are not converted"
        ));
        let w = warnings("@main virtual_server 192.0.2.1 80 {\n}\n$PORT=80\n");
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w[0].contains(
                "@main virtual_server 192.0.2.1 80 is not carried over: keepalived's $VARIABLES"
            ),
            "{w:?}"
        );
    }

    /// A `vrrp_instance` with `use_vmac` puts its router id in
    /// `[director] vrrp_vrids`, so the NICs accept its virtual MAC; one
    /// without a usable id is a warning.
    #[test]
    fn use_vmac_instances_give_vrrp_vrids() {
        let c = conv(&format!(
            "vrrp_instance VI_1 {{\n  virtual_router_id 52\n  use_vmac\n}}\n\
             vrrp_instance VI_2 {{\n  virtual_router_id 51\n  use_vmac vrrp.51\n}}\n\
             vrrp_instance VI_3 {{\n  virtual_router_id 53\n}}\n{GRIDFTP}"
        ));
        assert!(c.toml.contains("vrrp_vrids = [51, 52]\n"), "{}", c.toml);
        assert!(
            c.diagnostics
                .iter()
                .any(|d| d.display("k.conf").to_string().starts_with(
                    "k.conf:1: note: vrrp_instance VI_1 uses use_vmac: wrote vrrp_vrids"
                )),
            "{:?}",
            c.diagnostics
        );
        let w = warnings("vrrp_instance VI_1 {\n  use_vmac\n}\n");
        assert!(
            w.iter()
                .any(|w| w.contains("uses use_vmac without a virtual_router_id")),
            "{w:?}"
        );
    }

    #[test]
    fn header_lists_the_warnings() {
        let c = conv(&vs("  lb_algo lc\n  real_server 198.51.100.11 {\n  }"));
        assert!(c.toml.contains("# Warnings and notes (also printed on stderr):\n#   k.conf:3: warning: lb_algo lc: lb schedules with wlc, rr, wrr, sh or mh"), "{}", c.toml);
        assert!(
            conv(GRIDFTP)
                .toml
                .contains("# Everything was carried over: no warnings.\n")
        );
    }

    /// Every generated config is accepted by lb's own config checker.
    #[test]
    fn output_passes_the_config_checker() {
        for text in [
            GRIDFTP.to_owned(),
            vs(
                "  real_server 198.51.100.11 {\n    HTTP_GET {\n      url {\n        path /\n        digest 0123456789abcdef0123456789abcdef\n      }\n    }\n  }",
            ),
            vs(
                "  real_server 198.51.100.11 {\n    MISC_CHECK {\n      misc_path \"/bin/true\"\n    }\n  }",
            ),
            vs("  real_server 198.51.100.11 {\n  }"),
        ] {
            let toml = conv(&text).toml;
            if let Err(e) = crate::config::Config::parse(&toml, "out.toml") {
                panic!("{e}\n{toml}");
            }
        }
    }
}
