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
    net::IpAddr,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    Director, Health, Protocol, ServiceConfig, Spec, Stats, TestBed, VIP4,
    client::{self, HeldConn},
    daemon::ScratchDir,
    http::HttpResponder,
    skip_unless_root,
    stats::BackendStats,
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

/// What the health tests start besides the real servers: an
/// [`HttpResponder`] on [`HTTP_PORT`] per real server (when asked) and a
/// scratch directory of the test's own.
struct Extra {
    responders: Vec<HttpResponder>,
    scratch: ScratchDir,
}

/// Three real servers, their [`Extra`] and `lb run` on the director with
/// one TCP service on VIP4:[`PORT`].
type Setup = Director<Extra>;

/// Builds everything; `health` gets the scratch directory and returns the
/// service's health check.
fn start(test: &'static str, with_http: bool, health: impl FnOnce(&Path) -> Health) -> Setup {
    start_shaped(test, with_http, health, |_, service| service)
}

/// [`start`], with `shape` changing the service (given the bed) before lb
/// starts.
fn start_shaped(
    test: &'static str,
    with_http: bool,
    health: impl FnOnce(&Path) -> Health,
    shape: impl FnOnce(&TestBed, ServiceConfig) -> ServiceConfig,
) -> Setup {
    let spec = Spec::tcp(WEIGHTS.len(), PORT);
    Director::start_with(test, spec, |bed| {
        // Not `lbt-<tag>`: LbDaemon makes (and removes) that one.
        let scratch = ScratchDir::create(&format!("{}-health", bed.tag()))
            .unwrap_or_else(|e| panic!("{test}: creating a scratch directory: {e:#}"));
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
        let service = shape(
            bed,
            bed.service(
                SERVICE,
                VIP4.into(),
                PORT,
                Protocol::Tcp,
                health(scratch.path()),
                &WEIGHTS,
            ),
        );
        (
            Extra {
                responders,
                scratch,
            },
            vec![service],
        )
    })
}

/// The victim's name (`rs2`) and address.
fn victim(setup: &Setup) -> (String, IpAddr) {
    let host = &setup.bed.real_servers()[VICTIM];
    (host.role.clone(), host.addr_like(VIP4.into()))
}

/// Polls `lb stats --json` until the backend at `address` satisfies `want`
/// (described as `what`), at most `within`; returns it and how long it took,
/// or fails the test with the last stats.
fn wait_backend(
    setup: &Setup,
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
    let (stats, ok) = setup
        .lb
        .wait_stats(within, |s| backend(s).is_some_and(|b| want(&b)))
        .unwrap_or_else(|e| setup.fail(&format!("lb stats: {e:#}")));
    let took = start.elapsed();
    match backend(&stats) {
        Some(b) if ok => (b, took),
        Some(b) => setup.fail(&format!(
            "backend {address} is not {what} after {took:?} (bound {within:?}): {b:#?}"
        )),
        None => setup.fail(&format!(
            "backend {address} missing from lb stats: {stats:#?}"
        )),
    }
}

/// Opens [`N`] connections to the service from the client and returns them
/// with how many each real server answered.
fn open(setup: &Setup) -> (Vec<HeldConn>, BTreeMap<String, usize>) {
    let conns = setup.open(VIP4.into(), N);
    let counts = client::count_conns(&conns);
    (conns, counts)
}

/// Waits until `file` holds the line `line` (notify commands run
/// asynchronously), at most [`NOTIFY_WAIT`].
fn wait_notify(setup: &Setup, file: &Path, line: &str) {
    let deadline = Instant::now() + NOTIFY_WAIT;
    loop {
        let text = fs::read_to_string(file).unwrap_or_default();
        if text.lines().any(|l| l == line) {
            return;
        }
        if Instant::now() > deadline {
            setup.fail(&format!(
                "the notify command did not write {line:?} to {} within {NOTIFY_WAIT:?}; \
                 the file holds:\n{text}",
                file.display()
            ));
        }
        thread::sleep(Duration::from_millis(50));
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
    let test = setup.test();
    let (victim, address) = victim(setup);

    let (mut held, counts) = open(setup);
    eprintln!("{test}: before: {counts:?}");

    take_down();
    let bound = state_change_bound(FALL);
    let (_, took) = wait_backend(setup, address, "down", bound, |b| b.state == "down");
    eprintln!("{test}: {victim} went down after {took:?} (bound {bound:?})");
    let (during, counts) = open(setup);
    eprintln!("{test}: while {victim} is down: {counts:?}");
    if counts.contains_key(&victim) {
        setup.fail(&format!(
            "{victim} is down but got new connections: {counts:?}"
        ));
    }
    held.extend(during);
    if let Some(file) = notify_file {
        wait_notify(setup, file, &format!("{SERVICE} {address} down"));
    }

    bring_back();
    let bound = state_change_bound(RISE);
    let (_, took) = wait_backend(setup, address, "up", bound, |b| b.state == "up");
    eprintln!("{test}: {victim} came back up after {took:?} (bound {bound:?})");
    // The connections held to rs1 and rs3 make the idle victim wlc's choice.
    let (after, counts) = open(setup);
    eprintln!("{test}: after {victim} is back: {counts:?}");
    if !counts.contains_key(&victim) {
        setup.fail(&format!(
            "{victim} is up again but got no new connection: {counts:?}"
        ));
    }
    held.extend(after);
    if let Some(file) = notify_file {
        wait_notify(setup, file, &format!("{SERVICE} {address} up"));
    }
    held
}

/// The file whose existence fails `address`'s exec check.
fn down_file(scratch: &Path, address: IpAddr) -> PathBuf {
    scratch.join(format!("down-{address}"))
}

/// Creates (`down`) or removes the exec check's `flag` file.
fn set_down(setup: &Setup, flag: &Path, down: bool) {
    let (done, doing) = if down {
        (fs::write(flag, b""), "creating")
    } else {
        (fs::remove_file(flag), "removing")
    };
    done.unwrap_or_else(|e| setup.fail(&format!("{doing} {}: {e}", flag.display())));
}

#[test]
fn http_check_takes_a_backend_down_and_up() {
    const TEST: &str = "http_check_takes_a_backend_down_and_up";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = start(TEST, true, |scratch| {
        Health::Toml(format!(
            "kind = \"http\"\nport = {HTTP_PORT}\npath = \"/health\"\nstatus = [200]\n\
             host = {}\n{}{}",
            toml_str(HTTP_HOST),
            timing(),
            notify_line(&scratch.join("notify"))
        ))
    });
    let notify_file = setup.extra.scratch.path().join("notify");

    // Every responder is being probed before anything changes.
    let deadline = Instant::now() + state_change_bound(1);
    while setup.extra.responders.iter().any(|r| r.requests() == 0) {
        if Instant::now() > deadline {
            let seen: Vec<(&str, u64)> = setup
                .extra
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

    let responder = &setup.extra.responders[VICTIM];
    let held = down_and_up(
        &setup,
        Some(&notify_file),
        || responder.set_status(503),
        || responder.set_status(200),
    );

    for r in &setup.extra.responders {
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
    let setup = start(TEST, false, |scratch| exec_health(scratch, ""));
    let (_, address) = victim(&setup);
    let flag = down_file(setup.extra.scratch.path(), address);
    let held = down_and_up(
        &setup,
        None,
        || set_down(&setup, &flag, true),
        || set_down(&setup, &flag, false),
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
    let setup = start(TEST, false, |scratch| {
        exec_health(scratch, "inhibit_on_failure = true\n")
    });
    let (victim, address) = victim(&setup);
    let weight = WEIGHTS[VICTIM];
    let flag = down_file(setup.extra.scratch.path(), address);

    let (before, _) = wait_backend(&setup, address, "up", Duration::ZERO, |b| b.state == "up");
    if before.weight != weight {
        setup.fail(&format!(
            "{victim} starts with weight {} in lb stats, configured {weight}: {before:#?}",
            before.weight
        ));
    }

    set_down(&setup, &flag, true);
    let bound = state_change_bound(FALL);
    let (down, took) = wait_backend(&setup, address, "down", bound, |b| b.state == "down");
    eprintln!("{TEST}: {victim} went down after {took:?}: {down:?}");
    if down.weight != 0 {
        setup.fail(&format!(
            "{victim} is down with inhibit_on_failure, yet lb stats shows weight {}: {down:#?}",
            down.weight
        ));
    }
    let (during, counts) = open(&setup);
    eprintln!("{TEST}: while {victim} is inhibited: {counts:?}");
    if counts.contains_key(&victim) {
        setup.fail(&format!(
            "{victim} has weight 0 but got new connections: {counts:?}"
        ));
    }

    set_down(&setup, &flag, false);
    let bound = state_change_bound(RISE);
    let (up, took) = wait_backend(&setup, address, "up", bound, |b| b.state == "up");
    eprintln!("{TEST}: {victim} came back up after {took:?}: {up:?}");
    if up.weight != weight {
        setup.fail(&format!(
            "{victim} is up again, yet lb stats shows weight {} instead of the configured \
             {weight}: {up:#?}",
            up.weight
        ));
    }
    let (after, counts) = open(&setup);
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

/// A sorry server with a quorum (keepalived's `sorry_server` and `quorum`):
/// rs1 (1000) and rs2 (500) are the backends, rs3 the sorry server, and the
/// quorum is their full weight, 1500. While both are up rs3 gets nothing;
/// when rs2's check fails the quorum is lost: new connections go to rs3
/// alone, and the connections running on rs1 and rs2 keep their servers;
/// when rs2 is back the quorum is regained: new connections go to rs1 and
/// rs2 again and those on rs3 keep going. Checked again after the checks'
/// fall intervals.
#[test]
fn sorry_server_takes_over_while_quorum_is_lost() {
    const TEST: &str = "sorry_server_takes_over_while_quorum_is_lost";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = start_shaped(
        TEST,
        false,
        |scratch| exec_health(scratch, ""),
        |bed, mut service| {
            let sorry = &bed.real_servers()[2];
            service.backends.truncate(2);
            service.sorry_server = Some(sorry.addr_like(VIP4.into()));
            service.quorum = Some(WEIGHTS[0] + WEIGHTS[1]);
            service
        },
    );
    let sorry = setup.bed.real_servers()[2].role.clone();
    let sorry_address = setup.bed.real_servers()[2].addr_like(VIP4.into());
    let (victim, address) = victim(&setup);
    let flag = down_file(setup.extra.scratch.path(), address);

    let (_, standby) = wait_backend(&setup, sorry_address, "standing by", SLACK, |b| {
        b.state == "standby"
    });
    let (mut held, counts) = open(&setup);
    eprintln!("{TEST}: quorum held (sorry server standing by after {standby:?}): {counts:?}");
    if counts.contains_key(&sorry) || counts.len() != 2 {
        setup.fail(&format!(
            "with the quorum held, new connections must go to rs1 and rs2 only: {counts:?}"
        ));
    }

    set_down(&setup, &flag, true);
    let bound = state_change_bound(FALL);
    let (_, took) = wait_backend(&setup, sorry_address, "serving", bound, |b| {
        b.state == "up" && b.weight > 0
    });
    eprintln!("{TEST}: {victim} down, quorum lost; the sorry server serves after {took:?}");
    setup
        .lb
        .wait_log("quorum LOST", SLACK)
        .unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
    let (during, counts) = open(&setup);
    eprintln!("{TEST}: while the quorum is lost: {counts:?}");
    if counts.keys().collect::<Vec<_>>() != [&sorry] {
        setup.fail(&format!(
            "with the quorum lost, new connections must go to the sorry server {sorry} \
             only: {counts:?}"
        ));
    }
    setup.ping_all(&mut held, "connections opened before the quorum was lost");

    set_down(&setup, &flag, false);
    let bound = state_change_bound(RISE);
    let (_, took) = wait_backend(&setup, sorry_address, "standing by again", bound, |b| {
        b.state == "standby"
    });
    eprintln!("{TEST}: {victim} up, quorum regained after {took:?}");
    let (after, counts) = open(&setup);
    eprintln!("{TEST}: after the quorum is back: {counts:?}");
    if counts.contains_key(&sorry) || !counts.contains_key(&victim) {
        setup.fail(&format!(
            "with the quorum back, new connections must go to the backends: {counts:?}"
        ));
    }
    held.extend(during);
    held.extend(after);
    setup.ping_all(&mut held, "every connection after the quorum came back");

    // The checks keep running: after their fall intervals nothing moved.
    thread::sleep(INTERVAL * (FALL + 1));
    let (_, _) = wait_backend(&setup, sorry_address, "still standing by", SLACK, |b| {
        b.state == "standby"
    });
    setup.ping_all(&mut held, "after the checks' fall intervals");
    drop(held);
    setup.finish();
}
