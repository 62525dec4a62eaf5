//! End-to-end tests of the health check kinds beyond `tcp`: the real `lb`
//! binary on a director namespace checks three real servers with `http` and
//! `exec` checks, and the tests watch `lb stats`, the notify command's output
//! and where new connections from the client go (see `lb_tests::bed`).
//!
//! They need root; without it they print `SKIPPED (needs root)` and pass,
//! unless `CI` is set, where they fail. `LB_BIN` names the `lb` binary
//! (default: `target/release/lb`).

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    DIRECTOR_IFACE, Health, LbConfig, LbDaemon, Protocol, RealServer, Stats, TestBed, VIP4,
    client::{self, HeldConn},
    daemon::ScratchDir,
    http::HttpResponder,
    lb_binary, pin_path_for, skip_unless_root,
    stats::BackendStats,
    unique_tag,
};

/// The service name, as lb passes it to notify commands.
const SERVICE: &str = "door";
/// The service port (the real servers' TCP servers).
const PORT: u16 = 8080;
/// The port of the real servers' HTTP responders (the `http` check's).
const HTTP_PORT: u16 = 8081;
/// Weights of rs1, rs2, rs3.
const WEIGHTS: [u32; 3] = [1000, 500, 800];
/// The real server the tests take down and bring back (rs2).
const VICTIM: usize = 1;
const INTERVAL: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_millis(200);
const FALL: u32 = 2;
const RISE: u32 = 2;
/// Added to every bound derived from the check timing: stats polling, a
/// loaded machine, process start-up of `exec` checks.
const SLACK: Duration = Duration::from_secs(2);
/// New connections opened to see where lb sends them.
const N: usize = 30;
/// The Host header the `http` check sends.
const HTTP_HOST: &str = "door.example.org";
/// How long an asynchronous notify command may take to leave its line.
const NOTIFY_WAIT: Duration = Duration::from_secs(5);

/// The longest a backend may take to change state after its check starts
/// failing (`checks` = fall) or passing (`checks` = rise): one interval until
/// the next probe, then `checks` probes each lasting up to the timeout and
/// spaced by the interval (retry_delay defaults to it), plus [`SLACK`].
fn state_change_bound(checks: u32) -> Duration {
    INTERVAL * (checks + 1) + TIMEOUT * checks + SLACK
}

/// A TOML string (basic string, escaped like Rust's `Debug` of ASCII text).
fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

/// The check timing shared by all tests (warmup 0: probe at once).
fn timing() -> String {
    format!(
        "interval = \"{}ms\"\ntimeout = \"{}ms\"\nfall = {FALL}\nrise = {RISE}\nwarmup = \"0s\"\n",
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    )
}

/// The notify command: appends "SERVICE BACKEND STATE" to `file`.
fn notify_line(file: &Path) -> String {
    let script = format!("echo \"$@\" >> {}", file.display());
    format!(
        "notify = [\"/bin/sh\", \"-c\", {}, \"notify\"]\n",
        toml_str(&script)
    )
}

/// The `exec` check: up unless `<scratch>/down-<backend address>` exists.
fn exec_health(scratch: &Path, extra: &str) -> Health {
    let script = format!("test ! -e {}/down-$LB_BACKEND", scratch.display());
    Health::Toml(format!(
        "kind = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", {}]\n{}{extra}",
        toml_str(&script),
        timing()
    ))
}

/// A bed with three real servers (each with an [`HttpResponder`] on
/// [`HTTP_PORT`] when asked), a scratch directory of the test's own, and
/// `lb run` on the director with one TCP service on VIP4:[`PORT`].
/// Field order is drop order: lb stops first, the namespaces go last.
struct Setup {
    test: &'static str,
    lb: LbDaemon,
    responders: Vec<HttpResponder>,
    servers: Vec<RealServer>,
    scratch: ScratchDir,
    bed: TestBed,
}

impl Setup {
    /// Builds everything; `health` gets the scratch directory and returns
    /// the service's health check.
    fn new(test: &'static str, with_http: bool, health: impl FnOnce(&Path) -> Health) -> Self {
        let tag = unique_tag();
        let bed = TestBed::build(&tag, WEIGHTS.len())
            .unwrap_or_else(|e| panic!("{test}: building the test bed: {e:#}"));
        // Not `lbt-<tag>`: LbDaemon makes (and removes) that one.
        let scratch = ScratchDir::create(&format!("{tag}-health"))
            .unwrap_or_else(|e| panic!("{test}: creating a scratch directory: {e:#}"));
        let servers = bed
            .real_servers()
            .iter()
            .map(|h| {
                RealServer::start(&h.ns, &h.role, PORT, &[])
                    .unwrap_or_else(|e| panic!("{test}: starting {}: {e:#}", h.role))
            })
            .collect();
        let responders = if with_http {
            bed.real_servers()
                .iter()
                .map(|h| {
                    HttpResponder::start(&h.ns, &h.role, HTTP_PORT).unwrap_or_else(|e| {
                        panic!("{test}: starting the HTTP responder of {}: {e:#}", h.role)
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let vip = IpAddr::from(VIP4);
        let config = LbConfig {
            interfaces: vec![DIRECTOR_IFACE.to_owned()],
            pin_path: pin_path_for(&tag),
            max_flows: 65_536,
            services: vec![bed.service(
                SERVICE,
                vip,
                PORT,
                Protocol::Tcp,
                health(scratch.path()),
                &WEIGHTS,
            )],
        };
        let lb_bin = lb_binary().unwrap_or_else(|e| panic!("{test}: {e:#}"));
        let lb = LbDaemon::start(&lb_bin, &bed.director().ns, &config, &tag, &[])
            .unwrap_or_else(|e| panic!("{test}: lb run: {e:#}"));
        let setup = Self {
            test,
            lb,
            responders,
            servers,
            scratch,
            bed,
        };
        let (stats, all_up) = setup
            .lb
            .wait_stats(Duration::from_secs(15), |s| {
                s.services
                    .iter()
                    .all(|svc| svc.backends.iter().all(|b| b.state == "up"))
            })
            .unwrap_or_else(|e| setup.fail(&format!("lb stats: {e:#}")));
        if !all_up {
            setup.fail(&format!(
                "backends not all up 15 s after lb was ready: {stats:#?}"
            ));
        }
        setup
    }

    /// Panics with `msg` and everything lb printed.
    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{}: {msg}\n----- lb output -----\n{}",
            self.test,
            self.lb.log()
        )
    }

    /// The victim's name (`rs2`) and address.
    fn victim(&self) -> (String, IpAddr) {
        let host = &self.bed.real_servers()[VICTIM];
        (host.role.clone(), host.addr_like(VIP4.into()))
    }

    /// Polls `lb stats --json` until the backend at `address` satisfies
    /// `want` (described as `what`), at most `within`; returns it and how
    /// long it took, or fails the test with the last stats.
    fn wait_backend(
        &self,
        address: IpAddr,
        what: &str,
        within: Duration,
        want: impl Fn(&BackendStats) -> bool,
    ) -> (BackendStats, Duration) {
        let start = Instant::now();
        let backend = |s: &Stats| {
            s.service(VIP4.into(), PORT)
                .and_then(|svc| svc.backend(address))
                .cloned()
        };
        let (stats, ok) = self
            .lb
            .wait_stats(within, |s| backend(s).is_some_and(|b| want(&b)))
            .unwrap_or_else(|e| self.fail(&format!("lb stats: {e:#}")));
        let took = start.elapsed();
        match backend(&stats) {
            Some(b) if ok => (b, took),
            Some(b) => self.fail(&format!(
                "backend {address} is not {what} after {took:?} (bound {within:?}): {b:#?}"
            )),
            None => self.fail(&format!(
                "backend {address} missing from lb stats: {stats:#?}"
            )),
        }
    }

    /// Opens [`N`] connections to the service from the client and returns
    /// them with how many each real server answered.
    fn open(&self) -> (Vec<HeldConn>, BTreeMap<String, usize>) {
        let conns = client::open_tcp(&self.bed.client().ns, SocketAddr::new(VIP4.into(), PORT), N)
            .unwrap_or_else(|e| self.fail(&format!("opening {N} TCP connections: {e:#}")));
        let counts = client::count_by_server(conns.iter().map(HeldConn::server));
        (conns, counts)
    }

    /// Waits until `file` holds the line `line` (notify commands run
    /// asynchronously), at most [`NOTIFY_WAIT`].
    fn wait_notify(&self, file: &Path, line: &str) {
        let deadline = Instant::now() + NOTIFY_WAIT;
        loop {
            let text = fs::read_to_string(file).unwrap_or_default();
            if text.lines().any(|l| l == line) {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "the notify command did not write {line:?} to {} within {NOTIFY_WAIT:?}; \
                     the file holds:\n{text}",
                    file.display()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops lb with SIGTERM; asserts it exits 0 and removes its pins; then
    /// removes everything else.
    fn finish(self) {
        let Self {
            test,
            lb,
            responders,
            servers,
            scratch,
            bed,
        } = self;
        let pins = lb.pin_path().to_owned();
        let (status, log) = lb
            .stop()
            .unwrap_or_else(|e| panic!("{test}: stopping lb: {e:#}"));
        assert!(
            status.success(),
            "{test}: lb exited with {status} after SIGTERM; its output:\n{log}"
        );
        assert!(
            !pins.exists(),
            "{test}: lb left its pin directory {} behind; its output:\n{log}",
            pins.display()
        );
        drop(responders);
        drop(servers);
        drop(scratch);
        drop(bed);
    }
}

/// Takes the victim down with `take_down`, checks lb's state, new
/// connections and (when `notify_file` is set) the notify line, then brings
/// it back with `bring_back` and checks the same. Returns the held
/// connections.
fn down_and_up(
    setup: &Setup,
    notify_file: Option<&Path>,
    take_down: impl FnOnce(),
    bring_back: impl FnOnce(),
) -> Vec<HeldConn> {
    let test = setup.test;
    let (victim, address) = setup.victim();

    let (mut held, counts) = setup.open();
    eprintln!("{test}: before: {counts:?}");

    take_down();
    let bound = state_change_bound(FALL);
    let (_, took) = setup.wait_backend(address, "down", bound, |b| b.state == "down");
    eprintln!("{test}: {victim} went down after {took:?} (bound {bound:?})");
    let (during, counts) = setup.open();
    eprintln!("{test}: while {victim} is down: {counts:?}");
    if counts.contains_key(&victim) {
        setup.fail(&format!(
            "{victim} is down but got new connections: {counts:?}"
        ));
    }
    held.extend(during);
    if let Some(file) = notify_file {
        setup.wait_notify(file, &format!("{SERVICE} {address} down"));
    }

    bring_back();
    let bound = state_change_bound(RISE);
    let (_, took) = setup.wait_backend(address, "up", bound, |b| b.state == "up");
    eprintln!("{test}: {victim} came back up after {took:?} (bound {bound:?})");
    // The connections held to rs1 and rs3 make the idle victim wlc's choice.
    let (after, counts) = setup.open();
    eprintln!("{test}: after {victim} is back: {counts:?}");
    if !counts.contains_key(&victim) {
        setup.fail(&format!(
            "{victim} is up again but got no new connection: {counts:?}"
        ));
    }
    held.extend(after);
    if let Some(file) = notify_file {
        setup.wait_notify(file, &format!("{SERVICE} {address} up"));
    }
    held
}

/// Creates the file that fails `address`'s exec check.
fn down_file(scratch: &Path, address: IpAddr) -> PathBuf {
    scratch.join(format!("down-{address}"))
}

#[test]
fn http_check_takes_a_backend_down_and_up() {
    const TEST: &str = "http_check_takes_a_backend_down_and_up";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = Setup::new(TEST, true, |scratch| {
        Health::Toml(format!(
            "kind = \"http\"\nport = {HTTP_PORT}\npath = \"/health\"\nstatus = [200]\n\
             host = {}\n{}{}",
            toml_str(HTTP_HOST),
            timing(),
            notify_line(&scratch.join("notify"))
        ))
    });
    let notify_file = setup.scratch.path().join("notify");

    // Every responder is being probed before anything changes.
    let deadline = Instant::now() + state_change_bound(1);
    while setup.responders.iter().any(|r| r.requests() == 0) {
        if Instant::now() > deadline {
            let seen: Vec<(&str, u64)> = setup
                .responders
                .iter()
                .map(|r| (r.name(), r.requests()))
                .collect();
            setup.fail(&format!(
                "the http check did not reach every responder: requests {seen:?}"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }

    let responder = &setup.responders[VICTIM];
    let held = down_and_up(
        &setup,
        Some(&notify_file),
        || responder.set_status(503),
        || responder.set_status(200),
    );

    for r in &setup.responders {
        let host = r.last_host();
        if host.as_deref() != Some(HTTP_HOST) {
            setup.fail(&format!(
                "{}'s responder saw Host {host:?}, expected {HTTP_HOST:?}",
                r.name()
            ));
        }
    }
    let notified = fs::read_to_string(&notify_file).unwrap_or_default();
    eprintln!("{TEST}: notify lines:\n{notified}");
    drop(held);
    setup.finish();
}

#[test]
fn exec_check_takes_a_backend_down_and_up() {
    const TEST: &str = "exec_check_takes_a_backend_down_and_up";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = Setup::new(TEST, false, |scratch| exec_health(scratch, ""));
    let (_, address) = setup.victim();
    let flag = down_file(setup.scratch.path(), address);
    let held = down_and_up(
        &setup,
        None,
        || {
            fs::write(&flag, b"")
                .unwrap_or_else(|e| setup.fail(&format!("creating {}: {e}", flag.display())))
        },
        || {
            fs::remove_file(&flag)
                .unwrap_or_else(|e| setup.fail(&format!("removing {}: {e}", flag.display())))
        },
    );
    drop(held);
    setup.finish();
}

#[test]
fn inhibit_on_failure_sets_weight_zero() {
    const TEST: &str = "inhibit_on_failure_sets_weight_zero";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = Setup::new(TEST, false, |scratch| {
        exec_health(scratch, "inhibit_on_failure = true\n")
    });
    let (victim, address) = setup.victim();
    let weight = WEIGHTS[VICTIM];
    let flag = down_file(setup.scratch.path(), address);

    let (before, _) = setup.wait_backend(address, "up", Duration::ZERO, |b| b.state == "up");
    if before.weight != weight {
        setup.fail(&format!(
            "{victim} starts with weight {} in lb stats, configured {weight}: {before:#?}",
            before.weight
        ));
    }

    fs::write(&flag, b"")
        .unwrap_or_else(|e| setup.fail(&format!("creating {}: {e}", flag.display())));
    let bound = state_change_bound(FALL);
    let (down, took) = setup.wait_backend(address, "down", bound, |b| b.state == "down");
    eprintln!("{TEST}: {victim} went down after {took:?}: {down:?}");
    if down.weight != 0 {
        setup.fail(&format!(
            "{victim} is down with inhibit_on_failure, yet lb stats shows weight {}: {down:#?}",
            down.weight
        ));
    }
    let (during, counts) = setup.open();
    eprintln!("{TEST}: while {victim} is inhibited: {counts:?}");
    if counts.contains_key(&victim) {
        setup.fail(&format!(
            "{victim} has weight 0 but got new connections: {counts:?}"
        ));
    }

    fs::remove_file(&flag)
        .unwrap_or_else(|e| setup.fail(&format!("removing {}: {e}", flag.display())));
    let bound = state_change_bound(RISE);
    let (up, took) = setup.wait_backend(address, "up", bound, |b| b.state == "up");
    eprintln!("{TEST}: {victim} came back up after {took:?}: {up:?}");
    if up.weight != weight {
        setup.fail(&format!(
            "{victim} is up again, yet lb stats shows weight {} instead of the configured \
             {weight}: {up:#?}",
            up.weight
        ));
    }
    let (after, counts) = setup.open();
    eprintln!("{TEST}: after {victim} is back: {counts:?}");
    if !counts.contains_key(&victim) {
        setup.fail(&format!(
            "{victim} is up again but got no new connection: {counts:?}"
        ));
    }
    drop(after);
    drop(during);
    setup.finish();
}
