//! `lb import-keepalived`: turns the `virtual_server` blocks of a
//! keepalived.conf into an lb config file (TOML).
//!
//! [`convert`] maps each LVS-DR `virtual_server` to a `[[service]]`, its
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
//!   is written only when keepalived.conf sets it;
//! - `weight` 1, or the virtual server's `weight`; `connect_port` the real
//!   server's port.
//!
//! A keepalived checker marks a real server down after the first failed
//! check plus `retry` failed retries, and up again after one good check:
//! lb's `fall` is `retry + 1`, `rise` is 1, and `retry_delay` is
//! `delay_before_retry`.

use std::{
    collections::{BTreeSet, HashSet},
    fmt::{self, Write as _},
    net::IpAddr,
    path::Path,
    time::Duration,
};

use anyhow::Context as _;

/// Converts the keepalived.conf at `file` and writes the TOML to `output`
/// (stdout when `None`); diagnostics go to stderr as `FILE:LINE: warning:
/// ...`.
///
/// `interfaces` are the director's NICs for `[director] interfaces`; when
/// empty, `eth0` is written with a warning. Only errors (an unreadable
/// file, a syntax error, an unwritable output) fail, not warnings.
pub fn run(file: &Path, interfaces: &[String], output: Option<&Path>) -> anyhow::Result<()> {
    let origin = file.display().to_string();
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("{origin}: cannot read keepalived config: {e}"))?;
    let conversion = convert(&text, &origin, interfaces)?;
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

/// Converts keepalived.conf text; `origin` is the file name used in
/// messages and in the header comment of the TOML, `interfaces` the
/// director NICs (`eth0` with a warning when empty).
pub fn convert(text: &str, origin: &str, interfaces: &[String]) -> Result<Conversion, ImportError> {
    let error = |e: SyntaxError| ImportError {
        origin: origin.to_owned(),
        line: e.line,
        message: e.message,
    };
    let statements = parse(tokenize(text).map_err(error)?).map_err(error)?;
    let mut converter = Converter::default();
    let mut services = Vec::new();
    for stmt in &statements {
        if let Some(service) = converter.top_level(stmt).map_err(error)? {
            services.push(service);
        }
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
    if services.is_empty() {
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
    let mut toml = render(origin, &interfaces, &services, &converter.diagnostics);
    // A safety net: say so if lb would reject what was written (e.g. a bad
    // --interface name).
    if !services.is_empty()
        && let Err(e) = crate::config::Config::parse(&toml, "<output>")
    {
        for problem in e.to_string().lines() {
            converter.diagnostics.push(Diagnostic {
                line: None,
                severity: Severity::Warning,
                message: format!("the generated config does not pass `lb check`: {problem}"),
            });
        }
        toml = render(origin, &interfaces, &services, &converter.diagnostics);
    }
    Ok(Conversion {
        toml,
        diagnostics: converter.diagnostics,
    })
}

/// What [`convert`] made of a keepalived.conf.
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

// ---------------------------------------------------------------------------
// Tokenizer and parser

/// A problem that stops the conversion, at a line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SyntaxError {
    line: usize,
    message: String,
}

impl SyntaxError {
    fn new(line: usize, message: impl Into<String>) -> Self {
        SyntaxError {
            line,
            message: message.into(),
        }
    }
}

/// A token of keepalived.conf.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// A keyword or an argument (quotes removed).
    Word(String),
    /// `{`
    Open,
    /// `}`
    Close,
    /// The end of a statement's line (after `\` continuations).
    End,
}

/// Splits keepalived.conf text into tokens, each with its 1-based line.
fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, SyntaxError> {
    let mut tokens = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let mut word = String::new();
        // A word has started (it may be an empty quoted string "").
        let mut in_word = false;
        let mut in_quote = false;
        let mut continued = false;
        let flush = |word: &mut String, in_word: &mut bool, tokens: &mut Vec<_>| {
            if *in_word {
                tokens.push((line, Token::Word(std::mem::take(word))));
                *in_word = false;
            }
        };
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            if in_quote {
                match c {
                    '"' => in_quote = false,
                    '\\' if matches!(chars.peek(), Some('"' | '\\')) => {
                        word.extend(chars.next());
                    }
                    _ => word.push(c),
                }
                continue;
            }
            match c {
                '"' => {
                    in_quote = true;
                    in_word = true;
                }
                '#' | '!' => break,
                '\\' => match chars.peek() {
                    None => continued = true,
                    Some('#' | '!') => {
                        word.extend(chars.next());
                        in_word = true;
                    }
                    // keepalived keeps other escapes as written.
                    Some(_) => {
                        word.push('\\');
                        word.extend(chars.next());
                        in_word = true;
                    }
                },
                '{' | '}' => {
                    flush(&mut word, &mut in_word, &mut tokens);
                    let token = if c == '{' { Token::Open } else { Token::Close };
                    tokens.push((line, token));
                }
                c if c.is_whitespace() => flush(&mut word, &mut in_word, &mut tokens),
                _ => {
                    word.push(c);
                    in_word = true;
                }
            }
        }
        if in_quote {
            return Err(SyntaxError::new(
                line,
                "unterminated quote: a '\"' without its closing '\"' on the same line",
            ));
        }
        flush(&mut word, &mut in_word, &mut tokens);
        if !continued {
            tokens.push((line, Token::End));
        }
    }
    Ok(tokens)
}

/// One keepalived statement: a keyword, its arguments and its block.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stmt {
    /// Line of the keyword.
    line: usize,
    keyword: String,
    args: Vec<String>,
    /// The `{ ... }` after it, if any.
    block: Option<Vec<Stmt>>,
}

impl Stmt {
    /// The statements of its block (none without a block).
    fn children(&self) -> &[Stmt] {
        self.block.as_deref().unwrap_or_default()
    }

    /// Its first argument, if any.
    fn arg(&self) -> Option<&str> {
        self.args.first().map(String::as_str)
    }
}

/// Builds the statement tree from the tokens.
fn parse(tokens: Vec<(usize, Token)>) -> Result<Vec<Stmt>, SyntaxError> {
    /// An open block: the statement that owns it and what is in it so far.
    struct Frame {
        owner: Option<Stmt>,
        stmts: Vec<Stmt>,
    }
    let mut stack = vec![Frame {
        owner: None,
        stmts: Vec::new(),
    }];
    let mut current: Option<Stmt> = None;
    for (line, token) in tokens {
        let top = stack.len() - 1;
        match token {
            Token::Word(word) => match &mut current {
                Some(stmt) => stmt.args.push(word),
                None => {
                    current = Some(Stmt {
                        line,
                        keyword: word,
                        args: Vec::new(),
                        block: None,
                    });
                }
            },
            Token::End => stack[top].stmts.extend(current.take()),
            Token::Open => {
                // `keyword {`, or `keyword` with the `{` on the next line.
                let owner = match current.take() {
                    Some(stmt) => stmt,
                    None => match stack[top].stmts.pop() {
                        Some(stmt) if stmt.block.is_none() => stmt,
                        _ => return Err(SyntaxError::new(line, "'{' without a keyword before it")),
                    },
                };
                stack.push(Frame {
                    owner: Some(owner),
                    stmts: Vec::new(),
                });
            }
            Token::Close => {
                stack[top].stmts.extend(current.take());
                let Some(Frame {
                    owner: Some(mut owner),
                    stmts,
                }) = stack.pop().filter(|_| top > 0)
                else {
                    return Err(SyntaxError::new(line, "'}' without a matching '{'"));
                };
                owner.block = Some(stmts);
                stack[top - 1].stmts.push(owner);
            }
        }
    }
    let top = stack.len() - 1;
    stack[top].stmts.extend(current.take());
    if let Some(owner) = stack.last().and_then(|frame| frame.owner.as_ref()) {
        return Err(SyntaxError::new(
            owner.line,
            format!(
                "the block of `{}` is never closed: a '}}' is missing",
                owner.keyword
            ),
        ));
    }
    Ok(stack.pop().map(|frame| frame.stmts).unwrap_or_default())
}

// ---------------------------------------------------------------------------
// What keepalived.conf says

/// Transport protocol of a virtual server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn keyword(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Checker timers that keepalived inherits from virtual server to real
/// server to checker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Timers {
    delay_loop: Option<Duration>,
    connect_timeout: Option<Duration>,
    retry: Option<u32>,
    delay_before_retry: Option<Duration>,
    warmup: Option<Duration>,
}

impl Timers {
    /// The first set value of `self`, then `parents` in order.
    fn pick<T: Copy>(
        &self,
        parents: &[&Timers],
        field: impl Fn(&Timers) -> Option<T>,
    ) -> Option<T> {
        std::iter::once(self)
            .chain(parents.iter().copied())
            .find_map(field)
    }
}

/// What a checker checks.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CheckType {
    /// TCP connect (TCP_CHECK, and SSL_GET / SMTP_CHECK reduced to it).
    Tcp,
    /// HTTP_GET with the first `url`.
    Http {
        path: String,
        /// Inclusive ranges; empty: keepalived's default 200-299.
        status: Vec<(u16, u16)>,
        digest: Option<String>,
        /// The url's `virtualhost`.
        host: Option<String>,
    },
    /// MISC_CHECK.
    Exec {
        command: String,
        timeout: Option<Duration>,
    },
}

/// One checker block of a real server.
#[derive(Clone, Debug)]
struct Checker {
    line: usize,
    check: CheckType,
    /// keepalived's `retry` when none is set at any level.
    default_retry: u32,
    /// keepalived's `delay_before_retry` when none is set at any level.
    default_retry_delay: Duration,
    connect_port: Option<u16>,
    /// The checker's `virtualhost` (HTTP_GET).
    host: Option<String>,
    timers: Timers,
}

/// One `real_server`.
#[derive(Clone, Debug)]
struct RealServer {
    line: usize,
    address: IpAddr,
    port: u16,
    weight: Option<u32>,
    inhibit: Option<bool>,
    host: Option<String>,
    timers: Timers,
    checkers: Vec<Checker>,
}

/// One `virtual_server`, as far as lb can use it.
#[derive(Clone, Debug)]
struct VirtualServer {
    line: usize,
    vip: IpAddr,
    port: u16,
    proto: Proto,
    weight: Option<u32>,
    inhibit: bool,
    host: Option<String>,
    snmp_name: Option<String>,
    timers: Timers,
    real_servers: Vec<RealServer>,
}

// ---------------------------------------------------------------------------
// What lb gets

/// A `[[service]]` ready to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Service {
    /// Line of the `virtual_server` and how it was written, for a comment.
    line: usize,
    source: String,
    name: String,
    vip: IpAddr,
    port: u16,
    proto: Proto,
    health: Option<Health>,
    backends: Vec<(IpAddr, u32)>,
}

/// A `[service.health]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Health {
    /// Line of the checker it comes from.
    line: usize,
    kind: HealthKind,
    interval: Duration,
    timeout: Duration,
    port: u16,
    fall: u32,
    retry_delay: Duration,
    warmup: Option<Duration>,
    inhibit: bool,
}

/// The kind of a [`Health`] check, with its own fields.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HealthKind {
    Tcp,
    Http {
        path: String,
        status: BTreeSet<u16>,
        digest: Option<String>,
        host: Option<String>,
    },
    Exec {
        command: String,
    },
}

impl Health {
    /// The table's `key = value` lines, in the order they are written.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![(
            "kind",
            toml_string(match self.kind {
                HealthKind::Tcp => "tcp",
                HealthKind::Http { .. } => "http",
                HealthKind::Exec { .. } => "exec",
            }),
        )];
        fields.push(("interval", toml_string(&fmt_duration(self.interval))));
        fields.push(("timeout", toml_string(&fmt_duration(self.timeout))));
        if !matches!(self.kind, HealthKind::Exec { .. }) {
            fields.push(("port", self.port.to_string()));
        }
        fields.push(("fall", self.fall.to_string()));
        fields.push(("rise", "1".to_owned()));
        // Without retries there is nothing to delay.
        if self.fall > 1 {
            fields.push(("retry_delay", toml_string(&fmt_duration(self.retry_delay))));
        }
        if let Some(warmup) = self.warmup {
            fields.push(("warmup", toml_string(&fmt_duration(warmup))));
        }
        fields.push(("inhibit_on_failure", self.inhibit.to_string()));
        match &self.kind {
            HealthKind::Tcp => {}
            HealthKind::Http {
                path,
                status,
                digest,
                host,
            } => {
                fields.push(("path", toml_string(path)));
                fields.push(("status", toml_int_array(status)));
                if let Some(digest) = digest {
                    fields.push(("digest", toml_string(digest)));
                }
                if let Some(host) = host {
                    fields.push(("host", toml_string(host)));
                }
            }
            HealthKind::Exec { command } => {
                let argv = ["/bin/sh", "-c", command.as_str()];
                let quoted: Vec<String> = argv.iter().map(|a| toml_string(a)).collect();
                fields.push(("command", format!("[{}]", quoted.join(", "))));
            }
        }
        fields
    }
}

// ---------------------------------------------------------------------------
// Conversion

/// lb's limits (as `config.rs` checks them).
const LB_INTERVAL_MIN: Duration = Duration::from_millis(100);
const LB_INTERVAL_MAX: Duration = Duration::from_secs(3600);
const LB_FALL_MAX: u32 = 100;
const LB_NAME_MAX: usize = 32;

// keepalived's defaults, from its sources (acassen/keepalived,
// keepalived/check/ and keepalived/include/).
/// `KEEPALIVED_DEFAULT_DELAY` (include/check_data.h).
const KA_DELAY_LOOP: Duration = Duration::from_secs(60);
/// `alloc_vs`: `connection_to = 5 * TIMER_HZ` (check_data.c).
const KA_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `default_retry = 1` for every checker (check_api.c)...
const KA_RETRY: u32 = 1;
/// ...but `default_retry = 0` for MISC_CHECK (`misc_check_handler`,
/// check_misc.c).
const KA_MISC_RETRY: u32 = 0;
/// `default_delay_before_retry = 1 * TIMER_HZ` (check_api.c)...
const KA_DELAY_BEFORE_RETRY: Duration = Duration::from_secs(1);
/// ...and `3 * TIMER_HZ` for HTTP_GET and SSL_GET (`http_get_handler`,
/// check_http.c).
const KA_HTTP_DELAY_BEFORE_RETRY: Duration = Duration::from_secs(3);
/// `HTTP_DEFAULT_STATUS_CODE_MIN/MAX` (include/check_http.h), used when a
/// url has no `status_code`.
const KA_HTTP_STATUS: (u16, u16) = (200, 299);
/// A real server's weight without `weight` (IPVS's default).
const KA_WEIGHT: u32 = 1;

/// Walks the statement tree and collects diagnostics.
#[derive(Default)]
struct Converter {
    diagnostics: Vec<Diagnostic>,
    /// The VRRP note was given.
    vrrp_noted: bool,
    /// Service names used so far.
    names: HashSet<String>,
    /// (VIP, port, protocol) of the services so far, with their lines.
    services: Vec<(IpAddr, u16, Proto, usize)>,
}

impl Converter {
    fn warn(&mut self, line: usize, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            line: Some(line),
            severity: Severity::Warning,
            message: message.into(),
        });
    }

    /// Warns that a keyword is not carried over, and why.
    fn dropped(&mut self, stmt: &Stmt, why: &str) {
        let message = format!("{} is not carried over: {why}", describe(stmt));
        self.warn(stmt.line, message);
    }

    fn unknown(&mut self, stmt: &Stmt, block: &str) {
        let message = format!(
            "unknown keyword `{}` in {block}: not carried over",
            stmt.keyword
        );
        self.warn(stmt.line, message);
    }

    /// One statement at the top of the file.
    fn top_level(&mut self, stmt: &Stmt) -> Result<Option<Service>, SyntaxError> {
        let keyword = stmt.keyword.as_str();
        match keyword {
            "virtual_server" => return self.virtual_server(stmt),
            "virtual_server_group" => self.dropped(
                stmt,
                "lb has no groups of VIP:ports; write one [[service]] per VIP and port",
            ),
            "include" => self.dropped(
                stmt,
                "included files are not read; convert each of them with `lb import-keepalived` \
                 and merge their [[service]] tables",
            ),
            _ if keyword.starts_with('$') || keyword.starts_with('@') => self.dropped(
                stmt,
                "keepalived's $VARIABLES and @conditional lines are not expanded; \
                 expand them by hand first",
            ),
            _ if keyword.starts_with("vrrp_") && !self.vrrp_noted => {
                self.vrrp_noted = true;
                self.diagnostics.push(Diagnostic {
                    line: Some(stmt.line),
                    severity: Severity::Note,
                    message: format!(
                        "{keyword} and the other VRRP blocks are not converted: VIP failover \
                         between directors is not lb's job and stays with keepalived (keep \
                         them, without the virtual_server blocks)"
                    ),
                });
            }
            // global_defs, static_ipaddress, more vrrp_*...: not lb's business.
            _ => {}
        }
        Ok(None)
    }

    /// A `virtual_server` block; `None` when it is skipped (with a warning).
    fn virtual_server(&mut self, stmt: &Stmt) -> Result<Option<Service>, SyntaxError> {
        match stmt.arg() {
            Some("fwmark") => {
                self.dropped(
                    stmt,
                    "lb matches packets by VIP, port and protocol, not by firewall mark; \
                     write one [[service]] per VIP and port; virtual_server skipped",
                );
                return Ok(None);
            }
            Some("group") => {
                self.dropped(
                    stmt,
                    "lb has no groups of VIP:ports; write one [[service]] per VIP and port; \
                     virtual_server skipped",
                );
                return Ok(None);
            }
            _ => {}
        }
        let (Some(address), Some(port)) = (stmt.args.first(), stmt.args.get(1)) else {
            return Err(SyntaxError::new(
                stmt.line,
                "virtual_server needs an address and a port (e.g. `virtual_server 192.0.2.10 2811 {`)",
            ));
        };
        let vip = parse_address(address).ok_or_else(|| {
            SyntaxError::new(
                stmt.line,
                format!("virtual_server address {address:?} is not an IP address"),
            )
        })?;
        let port = match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(SyntaxError::new(
                    stmt.line,
                    format!("virtual_server port {port:?} is not a port (valid: 1 to 65535)"),
                ));
            }
        };
        if stmt.args.len() > 2 {
            self.warn(
                stmt.line,
                format!(
                    "extra words after the virtual_server port are ignored: {}",
                    stmt.args[2..].join(" ")
                ),
            );
        }
        let mut vs = VirtualServer {
            line: stmt.line,
            vip,
            port,
            proto: Proto::Tcp,
            weight: None,
            inhibit: false,
            host: None,
            snmp_name: None,
            timers: Timers::default(),
            real_servers: Vec::new(),
        };
        // A virtual server lb cannot balance at all is skipped with that
        // reason only, not a warning for every setting in it.
        let mut skip = false;
        for child in stmt.children() {
            match child.keyword.as_str() {
                "lb_kind" | "lvs_method" if !self.forwarding(child, "virtual_server skipped") => {
                    skip = true;
                }
                "protocol" => match child.arg().map(str::to_ascii_uppercase).as_deref() {
                    Some("TCP") => vs.proto = Proto::Tcp,
                    Some("UDP") => vs.proto = Proto::Udp,
                    _ => {
                        self.dropped(
                            child,
                            "lb balances TCP and UDP only; virtual_server skipped",
                        );
                        skip = true;
                    }
                },
                _ => {}
            }
        }
        if skip {
            return Ok(None);
        }
        for child in stmt.children() {
            if self.timer(child, &mut vs.timers) {
                continue;
            }
            match child.keyword.as_str() {
                // Seen above.
                "lb_kind" | "lvs_method" | "protocol" => {}
                "lb_algo" | "lvs_sched" => self.scheduler(child),
                "weight" => vs.weight = self.weight(child),
                "inhibit_on_failure" => {
                    if let Some(inhibit) = self.flag(child) {
                        vs.inhibit = inhibit;
                    }
                }
                "virtualhost" => vs.host = self.string(child),
                "snmp_name" => vs.snmp_name = self.string(child),
                "ip_family" => {
                    let matches = match child.arg() {
                        Some("inet") => vip.is_ipv4(),
                        Some("inet6") => vip.is_ipv6(),
                        _ => false,
                    };
                    if !matches {
                        self.dropped(child, "the VIP's own address family is used");
                    }
                }
                "real_server" => {
                    if let Some(rs) = self.real_server(child, &vs)? {
                        vs.real_servers.push(rs);
                    }
                }
                "persistence_timeout" | "persistence_granularity" | "persistence_engine" => self
                    .dropped(
                        child,
                        "lb has no client persistence yet: every new connection is scheduled \
                         on its own, so one client's connections (e.g. GridFTP control and data \
                         channels) may reach different real servers",
                    ),
                "quorum" | "quorum_up" | "quorum_down" | "hysteresis" => self.dropped(
                    child,
                    "lb has no quorum: a service stays up while any backend is up",
                ),
                "sorry_server" | "sorry_server_inhibit" | "sorry_server_lvs_method" => self
                    .dropped(
                        child,
                        "lb has no sorry server: when every backend is down, new connections \
                         to the service are dropped",
                    ),
                "alpha" => self.dropped(
                    child,
                    "lb has no alpha mode: a backend starts up and goes down after `fall` failed checks",
                ),
                "omega" => self.dropped(child, "lb has no omega mode (no quorum scripts)"),
                "ha_suspend" => self.dropped(
                    child,
                    "lb checks backends whether or not the VIP is on this director",
                ),
                "smtp_alert" => self.dropped(
                    child,
                    "lb sends no e-mail; use a `notify` command in [service.health]",
                ),
                "hashed" | "ops" | "flag-1" | "flag-2" | "flag-3" | "sh-port" | "sh-fallback"
                | "mh-port" | "mh-fallback" => self.dropped(
                    child,
                    "an IPVS scheduler flag; lb's wlc scheduler has no flags",
                ),
                _ => self.unknown(child, "virtual_server"),
            }
        }
        Ok(self.service(stmt, vs))
    }

    /// A `real_server` block; `None` when it is skipped (with a warning).
    fn real_server(
        &mut self,
        stmt: &Stmt,
        vs: &VirtualServer,
    ) -> Result<Option<RealServer>, SyntaxError> {
        let Some(address) = stmt.arg() else {
            return Err(SyntaxError::new(
                stmt.line,
                "real_server needs an address (e.g. `real_server 198.51.100.11 2811 {`)",
            ));
        };
        let address = parse_address(address).ok_or_else(|| {
            SyntaxError::new(
                stmt.line,
                format!("real_server address {address:?} is not an IP address"),
            )
        })?;
        let port = match stmt.args.get(1) {
            None => vs.port,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => {
                    return Err(SyntaxError::new(
                        stmt.line,
                        format!("real_server port {port:?} is not a port (valid: 1 to 65535)"),
                    ));
                }
            },
        };
        let mut rs = RealServer {
            line: stmt.line,
            address,
            port,
            weight: None,
            inhibit: None,
            host: None,
            timers: Timers::default(),
            checkers: Vec::new(),
        };
        let mut skip = false;
        for child in stmt.children() {
            if self.timer(child, &mut rs.timers) {
                continue;
            }
            match child.keyword.as_str() {
                "weight" => rs.weight = self.weight(child),
                "inhibit_on_failure" => rs.inhibit = self.flag(child),
                "virtualhost" => rs.host = self.string(child),
                "lvs_method" => {
                    if !self.forwarding(child, "real_server skipped") {
                        skip = true;
                    }
                }
                "notify_up" | "notify_down" => self.dropped(
                    child,
                    "lb runs one `notify` command per service, with the service, the backend \
                     and its new state appended; set `notify` in [service.health] by hand",
                ),
                "alpha" => self.dropped(
                    child,
                    "lb has no alpha mode: a backend starts up and goes down after `fall` failed checks",
                ),
                "uthreshold" | "lthreshold" => {
                    self.dropped(child, "lb has no per-backend connection thresholds")
                }
                "smtp_alert" => self.dropped(
                    child,
                    "lb sends no e-mail; use a `notify` command in [service.health]",
                ),
                "snmp_name" => self.dropped(child, "lb has no SNMP agent"),
                "TCP_CHECK" | "HTTP_GET" | "MISC_CHECK" | "SSL_GET" | "SMTP_CHECK" => {
                    if let Some(checker) = self.checker(child) {
                        rs.checkers.push(checker);
                    }
                }
                "DNS_CHECK" | "UDP_CHECK" | "PING_CHECK" | "FILE_CHECK" | "BFD_CHECK" => self
                    .dropped(
                        child,
                        "lb checks with TCP connect, HTTP GET or a command (exec) only",
                    ),
                _ => self.unknown(child, "real_server"),
            }
        }
        if skip {
            return Ok(None);
        }
        Ok(Some(rs))
    }

    /// A checker block.
    fn checker(&mut self, stmt: &Stmt) -> Option<Checker> {
        let kind = stmt.keyword.as_str();
        let mut checker = Checker {
            line: stmt.line,
            check: CheckType::Tcp,
            default_retry: KA_RETRY,
            default_retry_delay: KA_DELAY_BEFORE_RETRY,
            connect_port: None,
            host: None,
            timers: Timers::default(),
        };
        let mut urls = Vec::new();
        let mut misc_path = None;
        let mut misc_timeout = None;
        match kind {
            "HTTP_GET" => checker.default_retry_delay = KA_HTTP_DELAY_BEFORE_RETRY,
            "SSL_GET" => {
                checker.default_retry_delay = KA_HTTP_DELAY_BEFORE_RETRY;
                self.warn(
                    stmt.line,
                    "SSL_GET is carried over as a TCP connect check of the same port: \
                     lb does not check over TLS",
                );
            }
            "SMTP_CHECK" => self.warn(
                stmt.line,
                "SMTP_CHECK is carried over as a TCP connect check of the same port: \
                 lb does not speak SMTP",
            ),
            "MISC_CHECK" => checker.default_retry = KA_MISC_RETRY,
            _ => {}
        }
        let http = kind == "HTTP_GET";
        for child in stmt.children() {
            if self.timer(child, &mut checker.timers) {
                continue;
            }
            match child.keyword.as_str() {
                "connect_port" => {
                    checker.connect_port = match child.arg().map(str::parse::<u16>) {
                        Some(Ok(port)) if port > 0 => Some(port),
                        _ => {
                            self.invalid(child, "a port, 1 to 65535");
                            None
                        }
                    }
                }
                "nb_get_retry" if http || kind == "SSL_GET" => {
                    checker.timers.retry = self.count(child);
                }
                "virtualhost" if http || kind == "SSL_GET" => checker.host = self.string(child),
                "url" if http || kind == "SSL_GET" => urls.push(child),
                "misc_path" if kind == "MISC_CHECK" => {
                    if child.args.is_empty() {
                        self.invalid(child, "a command");
                    } else {
                        misc_path = Some(child.args.join(" "));
                    }
                }
                "misc_timeout" if kind == "MISC_CHECK" => misc_timeout = self.duration(child),
                "misc_dynamic" if kind == "MISC_CHECK" => self.dropped(
                    child,
                    "lb does not take weights from the exit status: 0 is up, anything else \
                     is down",
                ),
                "user" if kind == "MISC_CHECK" => {
                    self.dropped(child, "lb runs the command as its own user")
                }
                "connect_ip" => self.dropped(child, "lb checks the backend's own address"),
                "bindto" | "bind_port" | "bind_if" => self.dropped(
                    child,
                    "lb lets the kernel choose the source address, port and interface of checks",
                ),
                "fwmark" => self.dropped(child, "lb does not mark check packets"),
                "alpha" => self.dropped(
                    child,
                    "lb has no alpha mode: a backend starts up and goes down after `fall` failed checks",
                ),
                "log_all_failures" => {
                    self.dropped(child, "lb logs every state change, not every failure")
                }
                "http_protocol" | "enable_sni" | "sni_name" | "fast_recovery" | "tls_compliant"
                    if http || kind == "SSL_GET" =>
                {
                    self.dropped(child, "lb's HTTP check has no such option");
                }
                _ => self.unknown(child, kind),
            }
        }
        match kind {
            "HTTP_GET" => {
                let Some((first, rest)) = urls.split_first() else {
                    self.warn(
                        stmt.line,
                        "HTTP_GET without a url block checks nothing in keepalived; \
                         not carried over",
                    );
                    return None;
                };
                for url in rest {
                    self.warn(
                        url.line,
                        "only the first url of an HTTP_GET is carried over: lb's HTTP check \
                         gets one path",
                    );
                }
                checker.check = self.url(first)?;
            }
            "MISC_CHECK" => {
                let Some(command) = misc_path else {
                    self.warn(
                        stmt.line,
                        "MISC_CHECK without misc_path is skipped by keepalived; not carried over",
                    );
                    return None;
                };
                checker.check = CheckType::Exec {
                    command,
                    timeout: misc_timeout,
                };
            }
            _ => {}
        }
        Some(checker)
    }

    /// The `url` block of an HTTP_GET.
    fn url(&mut self, stmt: &Stmt) -> Option<CheckType> {
        let mut path = None;
        let mut status = Vec::new();
        let mut digest = None;
        let mut host = None;
        for child in stmt.children() {
            match child.keyword.as_str() {
                "path" => path = self.string(child),
                "status_code" => {
                    for code in &child.args {
                        match parse_status(code) {
                            Some(range) => status.push(range),
                            None => self.warn(
                                child.line,
                                format!(
                                    "status_code {code:?} is not a status or a range of them \
                                     (100 to 599, e.g. 200 or 200-299); ignored, as keepalived \
                                     does"
                                ),
                            ),
                        }
                    }
                }
                "digest" => match child.arg() {
                    Some(d) if d.len() == 32 && d.bytes().all(|b| b.is_ascii_hexdigit()) => {
                        digest = Some(d.to_ascii_lowercase());
                    }
                    _ => self.invalid(child, "an MD5 digest, 32 hex digits"),
                },
                "virtualhost" => host = self.string(child),
                "regex" | "regex_no_match" | "regex_options" | "regex_min_offset"
                | "regex_max_offset" | "regex_stack" => self.dropped(
                    child,
                    "lb's HTTP check compares the status and the body's MD5 digest only",
                ),
                "tls_compliant" => self.dropped(child, "lb's HTTP check has no such option"),
                _ => self.unknown(child, "url"),
            }
        }
        let Some(path) = path else {
            self.warn(
                stmt.line,
                "url without path is ignored by keepalived; HTTP_GET not carried over",
            );
            return None;
        };
        Some(CheckType::Http {
            path,
            status,
            digest,
            host,
        })
    }

    /// `delay_loop`, `connect_timeout`, `retry`, `delay_before_retry`,
    /// `warmup`: true when `stmt` was one of them.
    fn timer(&mut self, stmt: &Stmt, timers: &mut Timers) -> bool {
        match stmt.keyword.as_str() {
            "delay_loop" => timers.delay_loop = self.duration(stmt).or(timers.delay_loop),
            "connect_timeout" => {
                timers.connect_timeout = self.duration(stmt).or(timers.connect_timeout);
            }
            "retry" => timers.retry = self.count(stmt).or(timers.retry),
            "delay_before_retry" => {
                timers.delay_before_retry = self.duration(stmt).or(timers.delay_before_retry);
            }
            "warmup" => timers.warmup = self.duration(stmt).or(timers.warmup),
            _ => return false,
        }
        true
    }

    /// `lb_algo` / `lvs_sched`.
    fn scheduler(&mut self, stmt: &Stmt) {
        let algo = stmt.arg().unwrap_or("");
        let why = match algo {
            "wlc" => return,
            "rr" | "wrr" => "not round robin",
            "lc" => "lc ignores the weights, wlc does not",
            "sh" | "dh" | "mh" => "not hashing: a client is not kept on one real server",
            _ => "",
        };
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(", {why}")
        };
        self.warn(
            stmt.line,
            format!(
                "{} {algo}: lb only schedules with wlc (weighted least-connection, as IPVS){why}; \
                 using wlc",
                stmt.keyword
            ),
        );
    }

    /// `lb_kind` / `lvs_method`: true for DR; otherwise a warning saying
    /// what is skipped.
    fn forwarding(&mut self, stmt: &Stmt, skipped: &str) -> bool {
        let method = stmt.arg().unwrap_or("").to_ascii_uppercase();
        if method == "DR" {
            return true;
        }
        self.warn(
            stmt.line,
            format!(
                "{} {}: lb only does direct routing (DR); {skipped}",
                stmt.keyword,
                stmt.arg().unwrap_or("")
            ),
        );
        false
    }

    /// A real server or virtual server `weight`.
    fn weight(&mut self, stmt: &Stmt) -> Option<u32> {
        let weight = self.count(stmt)?;
        if weight > lb_common::MAX_WEIGHT {
            self.warn(
                stmt.line,
                format!(
                    "weight {weight} is above lb's maximum {}; using {}",
                    lb_common::MAX_WEIGHT,
                    lb_common::MAX_WEIGHT
                ),
            );
            return Some(lb_common::MAX_WEIGHT);
        }
        Some(weight)
    }

    /// A keyword with an optional true/false argument (absent: true).
    fn flag(&mut self, stmt: &Stmt) -> Option<bool> {
        match stmt.arg().map(str::to_ascii_lowercase).as_deref() {
            None | Some("true" | "on" | "yes") => Some(true),
            Some("false" | "off" | "no") => Some(false),
            Some(_) => {
                self.invalid(stmt, "true or false");
                None
            }
        }
    }

    /// A keyword's single string argument.
    fn string(&mut self, stmt: &Stmt) -> Option<String> {
        let value = stmt.arg();
        if value.is_none() {
            self.invalid(stmt, "a value");
        }
        self.extra_words(stmt, 1);
        value.map(str::to_owned)
    }

    /// A keyword's unsigned integer argument.
    fn count(&mut self, stmt: &Stmt) -> Option<u32> {
        let value = stmt.arg().and_then(|v| v.parse::<u32>().ok());
        if value.is_none() {
            self.invalid(stmt, "a whole number");
        }
        self.extra_words(stmt, 1);
        value
    }

    /// A keyword's timer argument: seconds, possibly with decimals.
    fn duration(&mut self, stmt: &Stmt) -> Option<Duration> {
        let Some(micros) = stmt.arg().and_then(parse_seconds) else {
            self.invalid(stmt, "seconds, e.g. 10 or 0.5");
            return None;
        };
        self.extra_words(stmt, 1);
        let millis = micros.div_ceil(1000);
        if millis * 1000 != micros {
            self.warn(
                stmt.line,
                format!(
                    "{} {}: lb counts milliseconds; using {}",
                    stmt.keyword,
                    stmt.args[0],
                    fmt_duration(Duration::from_millis(millis))
                ),
            );
        }
        Some(Duration::from_millis(millis))
    }

    /// Warns about arguments after the `expected` ones: keepalived reads a
    /// keyword per line and ignores them (e.g. `connect_timeout 3
    /// connect_port 2811` on one line sets no port).
    fn extra_words(&mut self, stmt: &Stmt, expected: usize) {
        if stmt.args.len() > expected {
            let message = format!(
                "{}: keepalived ignores the words after the first value ({}), so does this \
                 conversion; write one keyword per line",
                stmt.keyword,
                stmt.args[expected..].join(" ")
            );
            self.warn(stmt.line, message);
        }
    }

    /// Warns about a value keepalived would reject (and ignore).
    fn invalid(&mut self, stmt: &Stmt, valid: &str) {
        let message = format!(
            "{}: invalid value (valid: {valid}); ignored, as keepalived does",
            describe(stmt)
        );
        self.warn(stmt.line, message);
    }

    /// Turns a parsed virtual server into a service: backends, the one
    /// health check, the name.
    fn service(&mut self, stmt: &Stmt, vs: VirtualServer) -> Option<Service> {
        if let Some(&(.., line)) = self
            .services
            .iter()
            .find(|(vip, port, proto, _)| (*vip, *port, *proto) == (vs.vip, vs.port, vs.proto))
        {
            self.warn(
                vs.line,
                format!(
                    "the same VIP, port and protocol as the virtual_server at line {line}; skipped"
                ),
            );
            return None;
        }
        // Backends.
        let mut backends: Vec<(IpAddr, u32)> = Vec::new();
        let mut used: Vec<&RealServer> = Vec::new();
        for rs in &vs.real_servers {
            if rs.address.is_ipv4() != vs.vip.is_ipv4() {
                self.warn(
                    rs.line,
                    format!(
                        "real_server {} is not of the VIP's address family; skipped (so does \
                         keepalived for DR)",
                        rs.address
                    ),
                );
                continue;
            }
            if backends.iter().any(|(address, _)| *address == rs.address) {
                self.warn(
                    rs.line,
                    format!(
                        "real_server {} is listed twice; lb has one backend per address, the \
                         second is skipped",
                        rs.address
                    ),
                );
                continue;
            }
            if backends.len() == lb_common::MAX_BACKENDS {
                self.warn(
                    rs.line,
                    format!(
                        "lb takes at most {} backends per service; real_server {} skipped",
                        lb_common::MAX_BACKENDS,
                        rs.address
                    ),
                );
                continue;
            }
            if rs.port != vs.port {
                self.warn(
                    rs.line,
                    format!(
                        "real_server {} port {} is not the VIP's port {}: direct routing cannot \
                         translate ports, so it gets the connections on port {}",
                        rs.address, rs.port, vs.port, vs.port
                    ),
                );
            }
            backends.push((rs.address, rs.weight.or(vs.weight).unwrap_or(KA_WEIGHT)));
            used.push(rs);
        }
        if backends.is_empty() {
            self.warn(
                vs.line,
                "virtual_server has no usable real_server; skipped (lb needs at least one backend)",
            );
            return None;
        }
        if self.services.len() == lb_common::MAX_SERVICES as usize {
            self.warn(
                vs.line,
                format!(
                    "lb takes at most {} services; virtual_server skipped",
                    lb_common::MAX_SERVICES
                ),
            );
            return None;
        }
        let health = self.health(&vs, &used);
        let name = self.name(&vs);
        self.services.push((vs.vip, vs.port, vs.proto, vs.line));
        Some(Service {
            line: vs.line,
            source: format!("{} {}", stmt.keyword, stmt.args.join(" ")),
            name,
            vip: vs.vip,
            port: vs.port,
            proto: vs.proto,
            health,
            backends,
        })
    }

    /// The one check of a service: the first checker of the first real
    /// server that has one, with a warning for each real server whose
    /// check differs.
    fn health(&mut self, vs: &VirtualServer, real_servers: &[&RealServer]) -> Option<Health> {
        let (first, chosen) = real_servers
            .iter()
            .find_map(|rs| Some((*rs, rs.checkers.first()?)))?;
        let health = resolve(vs, first, chosen);
        let base = health.fields();
        for rs in real_servers {
            let Some(checker) = rs.checkers.first() else {
                self.warn(
                    rs.line,
                    format!(
                        "real_server {} has no checker, but lb checks every backend of a \
                         service with the service's one check (from real_server {}, line {})",
                        rs.address, first.address, chosen.line
                    ),
                );
                continue;
            };
            for extra in &rs.checkers[1..] {
                self.warn(
                    extra.line,
                    format!(
                        "real_server {} has more than one checker; lb runs one check per \
                         service: this one is not carried over",
                        rs.address
                    ),
                );
            }
            if std::ptr::eq(checker, chosen) {
                continue;
            }
            let fields = resolve(vs, rs, checker).fields();
            let differences = describe_differences(&base, &fields);
            if !differences.is_empty() {
                self.warn(
                    checker.line,
                    format!(
                        "real_server {} is checked differently from real_server {} ({}); \
                         lb runs one check per service and uses the one at line {}",
                        rs.address, first.address, differences, chosen.line
                    ),
                );
            }
        }
        Some(self.fit(health))
    }

    /// Brings a check within lb's limits, with a warning for each change.
    fn fit(&mut self, mut health: Health) -> Health {
        let line = health.line;
        let clamped = health.interval.clamp(LB_INTERVAL_MIN, LB_INTERVAL_MAX);
        if clamped != health.interval {
            self.warn(
                line,
                format!(
                    "delay_loop {} is outside lb's range {}..={}; using {}",
                    fmt_duration(health.interval),
                    fmt_duration(LB_INTERVAL_MIN),
                    fmt_duration(LB_INTERVAL_MAX),
                    fmt_duration(clamped)
                ),
            );
            health.interval = clamped;
        }
        let what = match health.kind {
            HealthKind::Exec { .. } => "misc_timeout",
            _ => "connect_timeout",
        };
        if health.timeout < LB_INTERVAL_MIN {
            self.warn(
                line,
                format!(
                    "{what} {} is below lb's minimum {}; using {}",
                    fmt_duration(health.timeout),
                    fmt_duration(LB_INTERVAL_MIN),
                    fmt_duration(LB_INTERVAL_MIN)
                ),
            );
            health.timeout = LB_INTERVAL_MIN;
        }
        if health.timeout > health.interval {
            self.warn(
                line,
                format!(
                    "{what} {} is longer than delay_loop {}, which lb does not allow; \
                     using {}",
                    fmt_duration(health.timeout),
                    fmt_duration(health.interval),
                    fmt_duration(health.interval)
                ),
            );
            health.timeout = health.interval;
        }
        if health.fall > LB_FALL_MAX {
            self.warn(
                line,
                format!(
                    "retry {} is above lb's maximum {}; using fall = {LB_FALL_MAX}",
                    health.fall - 1,
                    LB_FALL_MAX - 1
                ),
            );
            health.fall = LB_FALL_MAX;
        }
        let clamped = health.retry_delay.clamp(LB_INTERVAL_MIN, LB_INTERVAL_MAX);
        if health.fall > 1 && clamped != health.retry_delay {
            self.warn(
                line,
                format!(
                    "delay_before_retry {} is outside lb's range {}..={}; using {}",
                    fmt_duration(health.retry_delay),
                    fmt_duration(LB_INTERVAL_MIN),
                    fmt_duration(LB_INTERVAL_MAX),
                    fmt_duration(clamped)
                ),
            );
            health.retry_delay = clamped;
        }
        if let Some(warmup) = health.warmup.filter(|w| *w > LB_INTERVAL_MAX) {
            self.warn(
                line,
                format!(
                    "warmup {} is above lb's maximum {}; using {}",
                    fmt_duration(warmup),
                    fmt_duration(LB_INTERVAL_MAX),
                    fmt_duration(LB_INTERVAL_MAX)
                ),
            );
            health.warmup = Some(LB_INTERVAL_MAX);
        }
        if let HealthKind::Http { path, host, .. } = &mut health.kind {
            // What lb's config checker accepts (hyper's URI types).
            if !path.starts_with('/')
                || path.chars().any(|c| c.is_whitespace() || c.is_control())
                || path.contains('#')
                || path.parse::<hyper::http::uri::PathAndQuery>().is_err()
            {
                let message = format!(
                    "url path {path:?} is not an absolute path lb can request; using \"/\""
                );
                self.warn(line, message);
                *path = "/".to_owned();
            }
            if let Some(name) = host.take_if(|h| {
                h.is_empty() || h.contains('@') || h.parse::<hyper::http::uri::Authority>().is_err()
            }) {
                let message = format!(
                    "virtualhost {name:?} is not a valid Host header; lb sends the backend's \
                     address instead"
                );
                self.warn(line, message);
            }
        }
        health
    }

    /// `snmp_name` when it is a valid, unused lb name, else
    /// `vs-<vip>-<port>` (with `-udp` for UDP), shortened to 32
    /// characters and made unique.
    fn name(&mut self, vs: &VirtualServer) -> String {
        if let Some(name) = &vs.snmp_name
            && valid_name(name)
            && !self.names.contains(name)
        {
            self.names.insert(name.clone());
            return name.clone();
        }
        let address = vs.vip.to_string().replace(':', "-");
        let suffix = match vs.proto {
            Proto::Tcp => format!("-{}", vs.port),
            Proto::Udp => format!("-{}-udp", vs.port),
        };
        for n in 1.. {
            let unique = if n == 1 {
                String::new()
            } else {
                format!("-{n}")
            };
            let room = LB_NAME_MAX - "vs-".len() - suffix.len() - unique.len();
            // Keep the end of a long (IPv6) address: it tells VIPs apart.
            let tail = &address[address.len().saturating_sub(room)..];
            let name = format!("vs-{}{suffix}{unique}", tail.trim_start_matches('-'));
            if self.names.insert(name.clone()) {
                return name;
            }
        }
        unreachable!("names are finite")
    }
}

/// The check a real server's checker amounts to, with keepalived's
/// inheritance (checker, then real server, then virtual server, then
/// keepalived's default).
fn resolve(vs: &VirtualServer, rs: &RealServer, checker: &Checker) -> Health {
    let parents = [&rs.timers, &vs.timers];
    let timers = &checker.timers;
    let interval = timers
        .pick(&parents, |t| t.delay_loop)
        .unwrap_or(KA_DELAY_LOOP);
    let connect_timeout = timers
        .pick(&parents, |t| t.connect_timeout)
        .unwrap_or(KA_CONNECT_TIMEOUT);
    let retry = timers
        .pick(&parents, |t| t.retry)
        .unwrap_or(checker.default_retry);
    let retry_delay = timers
        .pick(&parents, |t| t.delay_before_retry)
        .unwrap_or(checker.default_retry_delay);
    let warmup = timers.pick(&parents, |t| t.warmup);
    let (kind, timeout) = match &checker.check {
        CheckType::Tcp => (HealthKind::Tcp, connect_timeout),
        CheckType::Http {
            path,
            status,
            digest,
            host,
        } => {
            let ranges = if status.is_empty() {
                std::slice::from_ref(&KA_HTTP_STATUS)
            } else {
                status.as_slice()
            };
            let status = ranges.iter().flat_map(|&(lo, hi)| lo..=hi).collect();
            let host = host
                .clone()
                .or_else(|| checker.host.clone())
                .or_else(|| rs.host.clone())
                .or_else(|| vs.host.clone());
            (
                HealthKind::Http {
                    path: path.clone(),
                    status,
                    digest: digest.clone(),
                    host,
                },
                connect_timeout,
            )
        }
        CheckType::Exec { command, timeout } => (
            HealthKind::Exec {
                command: command.clone(),
            },
            // keepalived: misc_timeout, else the virtual server's delay_loop.
            timeout.unwrap_or(vs.timers.delay_loop.unwrap_or(KA_DELAY_LOOP)),
        ),
    };
    Health {
        line: checker.line,
        kind,
        interval,
        timeout,
        port: checker.connect_port.unwrap_or(rs.port),
        fall: retry.saturating_add(1),
        retry_delay,
        warmup,
        inhibit: rs.inhibit.unwrap_or(vs.inhibit),
    }
}

/// `timeout "3s" here, "5s" there; ...` for the fields two checks differ in.
fn describe_differences(base: &[(&str, String)], other: &[(&str, String)]) -> String {
    let value = |fields: &[(&str, String)], key: &str| {
        fields
            .iter()
            .find(|(k, _)| *k == key)
            .map_or_else(|| "(none)".to_owned(), |(_, v)| shorten(v))
    };
    let mut keys: Vec<&str> = base.iter().map(|(k, _)| *k).collect();
    for (key, _) in other {
        if !keys.contains(key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .filter(|key| value(base, key) != value(other, key))
        .map(|key| format!("{key} {} vs {}", value(other, key), value(base, key)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value for a one-line message: long arrays are cut.
fn shorten(value: &str) -> String {
    let flat = value.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 40 {
        let cut: String = flat.chars().take(37).collect();
        format!("{cut}...")
    } else {
        flat
    }
}

/// `weight 1000` or `TCP_CHECK`: a statement as written, for messages.
fn describe(stmt: &Stmt) -> String {
    if stmt.args.is_empty() {
        stmt.keyword.clone()
    } else {
        format!("{} {}", stmt.keyword, stmt.args.join(" "))
    }
}

/// An IPv4 or IPv6 address, IPv6 possibly in brackets.
fn parse_address(text: &str) -> Option<IpAddr> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse().ok()
}

/// keepalived's timer syntax (seconds, up to 6 decimals) in microseconds.
fn parse_seconds(text: &str) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 6
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let fraction: u64 = format!("{fraction:0<6}").parse().ok()?;
    whole.checked_mul(1_000_000)?.checked_add(fraction)
}

/// `200` or `200-299`, within 100..=599.
fn parse_status(text: &str) -> Option<(u16, u16)> {
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let (lo, hi) = (lo.parse::<u16>().ok()?, hi.parse::<u16>().ok()?);
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}

/// A valid lb service name: 1 to 32 of `A-Z a-z 0-9 _ . -`.
fn valid_name(name: &str) -> bool {
    (1..=LB_NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

// ---------------------------------------------------------------------------
// Writing the TOML

/// `"10s"`, `"500ms"`: lb's duration syntax.
fn fmt_duration(d: Duration) -> String {
    let millis = d.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
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

/// `[200]`, or ten numbers a line for long lists.
fn toml_int_array(values: &BTreeSet<u16>) -> String {
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

/// A comment line: no control characters.
fn comment(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

/// The whole lb config.
fn render(
    origin: &str,
    interfaces: &[String],
    services: &[Service],
    diagnostics: &[Diagnostic],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Generated from {} by `lb import-keepalived`.",
        comment(origin)
    );
    out.push_str("# Review it, then validate it with `lb check --config FILE`.\n#\n");
    if diagnostics.is_empty() {
        out.push_str("# Everything was carried over: no warnings.\n");
    } else {
        out.push_str("# Warnings and notes (also printed on stderr):\n");
        for diagnostic in diagnostics {
            let _ = writeln!(
                out,
                "#   {}",
                comment(&diagnostic.display(origin).to_string())
            );
        }
    }
    out.push_str("\n[director]\n");
    let interfaces: Vec<String> = interfaces.iter().map(|i| toml_string(i)).collect();
    let _ = writeln!(out, "interfaces = [{}]", interfaces.join(", "));
    for service in services {
        let _ = writeln!(
            out,
            "\n# {} ({}:{})",
            comment(&service.source),
            comment(origin),
            service.line
        );
        out.push_str("[[service]]\n");
        let _ = writeln!(out, "name = {}", toml_string(&service.name));
        let _ = writeln!(out, "vip = {}", toml_string(&service.vip.to_string()));
        let _ = writeln!(out, "port = {}", service.port);
        let _ = writeln!(out, "protocol = {}", toml_string(service.proto.keyword()));
        out.push_str("scheduler = \"wlc\"\n");
        out.push_str("\n[service.health]\n");
        match &service.health {
            Some(health) => {
                for (key, value) in health.fields() {
                    let _ = writeln!(out, "{key} = {value}");
                }
            }
            None => out.push_str("kind = \"none\"\n"),
        }
        for (address, weight) in &service.backends {
            out.push_str("\n[[service.backend]]\n");
            let _ = writeln!(out, "address = {}", toml_string(&address.to_string()));
            let _ = writeln!(out, "weight = {weight}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: usize, words: &[&str]) -> Vec<(usize, Token)> {
        words
            .iter()
            .map(|w| match *w {
                "{" => (line, Token::Open),
                "}" => (line, Token::Close),
                w => (line, Token::Word(w.to_owned())),
            })
            .chain([(line, Token::End)])
            .collect()
    }

    fn conv(text: &str) -> Conversion {
        convert(text, "k.conf", &["eth1".to_owned()]).expect("converts")
    }

    fn warnings(text: &str) -> Vec<String> {
        conv(text)
            .diagnostics
            .iter()
            .map(|d| d.display("k.conf").to_string())
            .collect()
    }

    fn err(text: &str) -> String {
        convert(text, "k.conf", &[]).unwrap_err().to_string()
    }

    /// A DR virtual server around `body` (real servers and settings).
    fn vs(body: &str) -> String {
        format!("virtual_server 192.0.2.10 2811 {{\n  lb_kind DR\n{body}\n}}\n")
    }

    fn has(warnings: &[String], needle: &str) -> bool {
        warnings.iter().any(|w| w.contains(needle))
    }

    // --- tokenizer and parser

    #[test]
    fn tokenizer_comments_quotes_braces_and_lines() {
        let tokens = tokenize(
            "# comment\nkw a \"b c\" ! more\nx{y}\n  \\#lit \"q # not\" ''\nlast \\\n  cont\n",
        )
        .unwrap();
        let mut expected = vec![(1, Token::End)];
        expected.extend(words(2, &["kw", "a", "b c"]));
        expected.extend(words(3, &["x", "{", "y", "}"]));
        expected.extend(words(4, &["#lit", "q # not", "''"]));
        expected.extend([
            (5, Token::Word("last".into())),
            (6, Token::Word("cont".into())),
            (6, Token::End),
        ]);
        assert_eq!(tokens, expected);
    }

    #[test]
    fn tokenizer_escapes_in_quotes_and_empty_strings() {
        let tokens = tokenize(r#"p "a \"b\" \\ c" """#).unwrap();
        assert_eq!(
            tokens,
            words(1, &["p", r#"a "b" \ c"#, ""]),
            "quoted escapes and the empty string"
        );
    }

    #[test]
    fn tokenizer_rejects_an_unterminated_quote() {
        assert_eq!(
            tokenize("a\nb \"open\n").unwrap_err().line,
            2,
            "the line of the quote"
        );
    }

    #[test]
    fn parser_builds_nested_blocks_with_lines() {
        let text = "a 1 {\n  b 2\n  c\n  {\n    d\n  }\n} e\nf { g } h\n";
        let stmts = parse(tokenize(text).unwrap()).unwrap();
        assert_eq!(stmts.len(), 4, "{stmts:#?}");
        assert_eq!((stmts[0].keyword.as_str(), stmts[0].line), ("a", 1));
        assert_eq!(stmts[0].args, ["1"]);
        let a = stmts[0].children();
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].keyword.as_str(), a[0].line), ("b", 2));
        assert_eq!((a[1].keyword.as_str(), a[1].line), ("c", 3));
        assert_eq!(a[1].children()[0].keyword, "d");
        assert_eq!(a[1].children()[0].line, 5);
        assert_eq!((stmts[1].keyword.as_str(), stmts[1].line), ("e", 7));
        assert_eq!(stmts[2].children()[0].keyword, "g");
        assert_eq!((stmts[3].keyword.as_str(), stmts[3].line), ("h", 8));
    }

    #[test]
    fn parser_reports_unbalanced_braces_with_lines() {
        let e = parse(tokenize("a {\n}\n}\n").unwrap()).unwrap_err();
        assert_eq!(e, SyntaxError::new(3, "'}' without a matching '{'"));
        let e = parse(tokenize("x\na {\n  b {\n}\n").unwrap()).unwrap_err();
        assert_eq!(e.line, 2, "{e:?}");
        assert!(e.message.contains("`a` is never closed"), "{e:?}");
        let e = parse(tokenize("a { }\n{\n").unwrap()).unwrap_err();
        assert_eq!(e, SyntaxError::new(2, "'{' without a keyword before it"));
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
        let e = run(Path::new("/nonexistent/keepalived.conf"), &[], None)
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
        let mut converter = Converter::default();
        let vs = VirtualServer {
            line: 1,
            vip: "2001:db8:1234:5678:9abc:def0:1234:5678".parse().unwrap(),
            port: 2811,
            proto: Proto::Tcp,
            weight: None,
            inhibit: false,
            host: None,
            snmp_name: Some("bad name".into()),
            timers: Timers::default(),
            real_servers: Vec::new(),
        };
        let first = converter.name(&vs);
        let second = converter.name(&vs);
        assert_eq!(first, "vs-5678-9abc-def0-1234-5678-2811");
        assert_eq!(second, "vs-78-9abc-def0-1234-5678-2811-2");
        assert!(valid_name(&second) && second.len() <= 32);
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
        let c = convert(GRIDFTP, "k.conf", &[]).unwrap();
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
        let c = convert(GRIDFTP, "k.conf", &["eth0".into(), "eth1".into()]).unwrap();
        assert!(c.toml.contains("interfaces = [\"eth0\", \"eth1\"]"));
    }

    #[test]
    fn durations_and_values() {
        assert_eq!(parse_seconds("10"), Some(10_000_000));
        assert_eq!(parse_seconds("0.5"), Some(500_000));
        assert_eq!(parse_seconds("1.000001"), Some(1_000_001));
        for bad in ["", "-1", "1.2.3", "1e3", ".5", "1.0000001", "ten"] {
            assert_eq!(parse_seconds(bad), None, "{bad}");
        }
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fmt_duration(Duration::from_secs(60)), "60s");
        assert_eq!(parse_status("200-299"), Some((200, 299)));
        assert_eq!(parse_status("299-200"), None);
        assert_eq!(parse_status("99"), None);
        assert_eq!(toml_string("a\"b\\c\u{1}"), r#""a\"b\\c\u0001""#);
        assert_eq!(parse_address("[2001:db8::1]"), "2001:db8::1".parse().ok());
    }

    // --- warnings

    #[test]
    fn each_unsupported_virtual_server_setting_warns() {
        let cases = [
            ("lb_algo rr", "lb_algo rr: lb only schedules with wlc"),
            ("lb_algo wrr", "lb_algo wrr: lb only schedules with wlc"),
            ("lvs_sched sh", "not hashing"),
            (
                "persistence_timeout 600",
                "persistence_timeout 600 is not carried over: lb has no client persistence",
            ),
            (
                "persistence_granularity 255.255.255.0",
                "persistence_granularity",
            ),
            ("quorum 2", "quorum 2 is not carried over: lb has no quorum"),
            ("hysteresis 1", "hysteresis 1 is not carried over"),
            (
                "sorry_server 192.0.2.99 2811",
                "sorry_server 192.0.2.99 2811 is not carried over: lb has no sorry server",
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
            w[2].starts_with("k.conf:5: warning: virtual_server_group doors is not carried over"),
            "{w:?}"
        );
        assert!(
            w[3].starts_with(
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
                "the same VIP, port and protocol as the virtual_server at line 1; skipped"
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
        let c = convert(GRIDFTP, "k.conf", &["bad nic".to_owned()]).unwrap();
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

    #[test]
    fn header_lists_the_warnings() {
        let c = conv(&vs("  lb_algo rr\n  real_server 198.51.100.11 {\n  }"));
        assert!(c.toml.contains("# Warnings and notes (also printed on stderr):\n#   k.conf:3: warning: lb_algo rr: lb only schedules with wlc"), "{}", c.toml);
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
