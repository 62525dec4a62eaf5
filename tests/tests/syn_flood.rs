//! End-to-end test of the SYN-flood guard (`lb_common::flood`). The real
//! `lb` binary runs on a director namespace with small tables and
//! `syn_flood_rate = 1000` (100 SYNs in a 100 ms window on one CPU start
//! flood mode). The client holds idle connections through the VIP, and one
//! more that it keeps pinging, while a generator in the client's namespace
//! sends a SYN flood from twenty times more distinct spoofed tuples than
//! the tables hold, in chunks over about six seconds. While the flood runs
//! (and `lb stats` says flood mode is on), the client opens new real
//! connections: their SYNs are forwarded by the hash of their tuple without
//! a table entry, and their handshakes' ACKs repeat the pick and confirm
//! them. Every connection must work and stay with its real server; lb's
//! counters must say that the flood's SYNs went unrecorded (the pending
//! table did not churn) and that the new connections were picked up by
//! their ACKs. Once flood mode and its ACK grace period are over (and the
//! health checks' fall intervals after them), the connections opened
//! during the flood must still be answered by their real servers from the
//! connection table, and new connections are scheduled as usual.
//!
//! A second test floods a director whose guard is off (`syn_flood_rate =
//! 0`): flood mode never starts and the SYNs churn the pending table as
//! before the guard; then `lb reload` turns the guard on and the data path
//! has the new rate at once.
//!
//! They need root; without it they print `SKIPPED (needs root)` and pass,
//! unless `CI` is set, where they fail. `LB_BIN` names the `lb` binary
//! (default: `target/release/lb`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb::inspect::stats::{FloodStats, FlowTableStats};
use lb_common::{FLOOD_ACK_GRACE_NS, FLOOD_HOLD_NS, FLOOD_WINDOW_NS};
use lb_tests::{
    Director, Health, NetNs, Protocol, Spec, Stats, VIP4,
    client::{self, HeldConn},
    conns::Conns,
    skip_unless_root,
    spoof::{Flood, FloodKind, SPOOF_NET4, parse_mac},
    watch::{Watcher, ping_each},
};

/// The service port (and the health check's).
const PORT: u16 = 8080;
/// Weights of rs1, rs2, rs3.
const WEIGHTS: [u32; 3] = [1000, 2000, 1000];
/// Size of each connection table: the config's minimum (its pending table
/// holds 1,024 flows too).
const MAX_FLOWS: u32 = 1024;
/// `syn_flood_rate` in the first test: new TCP flows per second on one CPU.
const SYN_FLOOD_RATE: u32 = 1000;
/// SYNs in one window of one CPU that start flood mode at that rate.
const WINDOW_LIMIT: u64 = SYN_FLOOD_RATE as u64 * FLOOD_WINDOW_NS / 1_000_000_000;
/// Distinct spoofed tuples in each chunk of the flood: a table's worth.
const CHUNK: u32 = MAX_FLOWS;
/// Chunks of the flood.
const CHUNKS: u32 = 20;
/// Distinct spoofed tuples in all: twenty times the table.
const TUPLES: u32 = CHUNK * CHUNKS;
/// A chunk starts every this often: well within [`FLOOD_HOLD`], so flood
/// mode lasts from the first chunk to one hold after the last (each chunk
/// brings every CPU's window over the limit several times over).
const CHUNK_PERIOD: Duration = Duration::from_millis(300);
/// Idle connections opened before the flood.
const IDLE: usize = 20;
/// New connections opened during the flood.
const NEW: usize = 30;
/// Times each new connection is pinged during the flood.
const PINGS_DURING: usize = 3;
/// New connections opened after flood mode and its grace period.
const LATER: usize = 10;
/// Flood mode must start within this time after the flood does.
const FLOOD_MODE_WITHIN: Duration = Duration::from_secs(3);
/// `lb stats` is sampled this often during the flood.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Within this time after the flood, the connection pinged during it must
/// have been answered twice more than when the flood started.
const WATCH_WITHIN: Duration = Duration::from_secs(2);
/// Frames of a flood that may go missing on the way to lb's counters (veth
/// queues): 1 %.
const LOSS_DIVISOR: u64 = 100;
const INTERVAL: Duration = Health::TCP_INTERVAL;
const FALL: u32 = Health::TCP_FALL;
const FLOOD_HOLD: Duration = Duration::from_nanos(FLOOD_HOLD_NS);
const FLOOD_WINDOW: Duration = Duration::from_nanos(FLOOD_WINDOW_NS);
const ACK_GRACE: Duration = Duration::from_nanos(FLOOD_ACK_GRACE_NS);

/// The tests of this file run one at a time: each floods its director from
/// both CPUs, and a flood of one would slow the other's.
static SERIAL: Mutex<()> = Mutex::new(());

/// `n` less the frames a flood of `n` may lose.
fn at_least(n: u64) -> u64 {
    n - n / LOSS_DIVISOR
}

/// The CPUs online: each counts its own window of SYNs.
fn cpus() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u64::try_from(n).unwrap_or(1).max(1)
}

/// The `flood` object of `stats`, failing the test without one.
fn flood_of(setup: &Director, stats: &Stats) -> FloodStats {
    *stats
        .flood()
        .unwrap_or_else(|e| setup.fail(&format!("{e:#}")))
}

/// `lb conns --json` of the director.
fn conns(setup: &Director) -> Conns {
    let config = setup.lb.config_path().display().to_string();
    Conns::query(setup.lb.binary(), &["--config", &config])
        .unwrap_or_else(|e| setup.fail(&format!("lb conns: {e:#}")))
}

/// The client addresses of `held`.
fn clients(setup: &Director, held: &[HeldConn]) -> Vec<SocketAddr> {
    held.iter()
        .map(|c| {
            c.local_addr()
                .unwrap_or_else(|e| setup.fail(&format!("{e:#}")))
        })
        .collect()
}

/// What is wrong with the flows `lb conns` lists for `held` (named `what`):
/// each must be listed, ESTABLISHED, with the real server that answers it.
fn listing_errors(setup: &Director, listed: &Conns, held: &[HeldConn], what: &str) -> Vec<String> {
    let vip = IpAddr::from(VIP4);
    held.iter()
        .zip(clients(setup, held))
        .enumerate()
        .filter_map(|(i, (conn, client))| {
            let server = setup.address_of(conn.server(), vip);
            let Some(flow) = listed
                .connections
                .iter()
                .find(|f| f.client_addr() == client)
            else {
                return Some(format!("{what} {i} ({client} to {server}): not listed"));
            };
            (flow.state != "ESTABLISHED" || flow.real_server != Some(server)).then(|| {
                format!(
                    "{what} {i} ({client} to {server}): listed {} to {:?}",
                    flow.state, flow.real_server
                )
            })
        })
        .collect()
}

/// One reading of `lb stats` during a flood.
struct Sample {
    /// Since the flood started.
    at: Duration,
    flood: FloodStats,
    ipv4: FlowTableStats,
}

/// Reads `lb stats` every [`SAMPLE_EVERY`] until `stop` is set.
fn sample_until(
    setup: &Director,
    stop: &AtomicBool,
    start: Instant,
) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let stats = setup.lb.stats().map_err(|e| format!("lb stats: {e:#}"))?;
        let flood = *stats.flood().map_err(|e| format!("{e:#}"))?;
        samples.push(Sample {
            at: start.elapsed(),
            flood,
            ipv4: stats.flows.ipv4,
        });
        thread::sleep(SAMPLE_EVERY);
    }
    Ok(samples)
}

/// What [`send_chunked`] did.
#[derive(Debug)]
struct FloodRun {
    /// Frames handed to the interface.
    frames: usize,
    /// Times the socket was out of buffer space.
    retries: usize,
    /// The most CPUs a chunk was sent from.
    cpus: usize,
    /// The longest a chunk took to send.
    longest_chunk: Duration,
    /// When the last frame was handed to the interface.
    ended: Instant,
}

/// Sends `chunks` floods like `flood` (each of `flood.tuples` tuples, the
/// next chunk's tuples following the last's), one starting every `period`,
/// from `iface` of `ns`.
fn send_chunked(
    flood: Flood,
    chunks: u32,
    period: Duration,
    ns: &NetNs,
    iface: &str,
) -> anyhow::Result<FloodRun> {
    let started = Instant::now();
    let mut run = FloodRun {
        frames: 0,
        retries: 0,
        cpus: 0,
        longest_chunk: Duration::ZERO,
        ended: started,
    };
    for c in 0..chunks {
        if c > 0 {
            let due = started + period * c;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        let chunk = Flood {
            first: flood.first + c * flood.tuples,
            ..flood
        };
        let sent = chunk.send(ns, iface)?;
        run.ended = Instant::now();
        run.frames += sent.frames;
        run.retries += sent.retries;
        run.cpus = run.cpus.max(sent.cpus);
        run.longest_chunk = run.longest_chunk.max(sent.elapsed);
    }
    Ok(run)
}

/// The flood of [`TUPLES`] spoofed SYNs' first chunk, towards the service
/// on `vip`, from the bed's client to the director.
fn syn_flood(setup: &Director, vip: IpAddr, tuples: u32) -> Flood {
    let mac = |text: &str| parse_mac(text).unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
    Flood {
        kind: FloodKind::Syn,
        first: 0,
        tuples,
        target: SocketAddr::new(vip, PORT),
        dst_mac: mac(&setup.bed.director().mac),
        src_mac: mac(&setup.bed.client().mac),
    }
}

/// Whether `addr` is one of the flood's spoofed clients.
fn spoofed(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => u32::from(a) & 0xffff_ff00 == u32::from(SPOOF_NET4),
        IpAddr::V6(_) => false,
    }
}

#[test]
fn syn_flood_mode_forwards_syns_unrecorded_and_picks_up_acks() {
    const TEST: &str = "syn_flood_mode_forwards_syns_unrecorded_and_picks_up_acks";
    if skip_unless_root(TEST) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let vip = IpAddr::from(VIP4);
    let setup = Director::start_configured(
        TEST,
        Spec::tcp(WEIGHTS.len(), PORT),
        |config| {
            config.max_flows = MAX_FLOWS;
            config.max_flows_v6 = MAX_FLOWS;
            config.syn_flood_rate = Some(SYN_FLOOD_RATE);
        },
        |bed| vec![bed.service("web", vip, PORT, Protocol::Tcp, Health::tcp(PORT), &WEIGHTS)],
    );
    let cpus = cpus();
    let start = setup.stats();
    let guard = flood_of(&setup, &start);
    if guard.syn_flood_rate != SYN_FLOOD_RATE || guard.active || guard.picking_up_acks {
        setup.fail(&format!("before the flood: {guard:?}"));
    }

    // Idle connections: each carries data once, then waits out the flood.
    let mut idle = setup.open(vip, IDLE);
    setup.ping_all(&mut idle, "before the flood");
    eprintln!(
        "{TEST}: {IDLE} idle connections: {:?}",
        client::count_conns(&idle)
    );
    // One more connection keeps pinging while the flood runs.
    let mut watched = setup.open(vip, 1);
    let watched_server = watched[0].server().to_owned();
    let watched_client = clients(&setup, &watched)[0];
    let watcher = Watcher::start(watched.pop().expect("one connection"));
    // Every SYN window the real connections' SYNs began (the watched one's
    // just now) ends before the flood starts, so that each CPU's first
    // window of the flood is the flood's own: a window that began before
    // the flood and ended in its first milliseconds would give its CPU a
    // second window of SYNs to record before flood mode (seen: one sender's
    // turn of 32 SYNs more, in about one run of ten).
    thread::sleep(2 * FLOOD_WINDOW);

    let client = setup.bed.client();
    let flood = syn_flood(&setup, vip, CHUNK);
    let before = setup.stats();
    let answers_before = watcher.answers();
    let flood_over = AtomicBool::new(false);
    let flood_start = Instant::now();
    let (run, samples, during, entered, opened) = thread::scope(|scope| {
        let flooder = scope.spawn(|| {
            let run = send_chunked(flood, CHUNKS, CHUNK_PERIOD, &client.ns, &client.iface);
            flood_over.store(true, Ordering::Relaxed);
            run
        });
        let sampler = scope.spawn(|| sample_until(&setup, &flood_over, flood_start));
        // New connections, once flood mode is on.
        let deadline = flood_start + FLOOD_MODE_WITHIN;
        let entered = loop {
            if flood_of(&setup, &setup.stats()).active {
                break Some(flood_start.elapsed());
            }
            if Instant::now() > deadline || flood_over.load(Ordering::Relaxed) {
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut during = Vec::new();
        let mut opened = None;
        if entered.is_some() {
            during = setup.open(vip, NEW);
            for round in 1..=PINGS_DURING {
                setup.ping_all(
                    &mut during,
                    &format!("new connections during the flood, ping {round}"),
                );
            }
            let active = flood_of(&setup, &setup.stats()).active;
            opened = Some((
                flood_start.elapsed(),
                active,
                !flood_over.load(Ordering::Relaxed),
            ));
        }
        let run = flooder.join().expect("the flood thread panicked");
        let samples = sampler.join().expect("the sampler thread panicked");
        (run, samples, during, entered, opened)
    });
    let run = run.unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
    let flood_end = run.ended;
    let flood_took = flood_end - flood_start;
    let samples = samples.unwrap_or_else(|e| setup.fail(&e));
    let watch_ok = watcher.wait_answers(answers_before + 2, WATCH_WITHIN);
    let watch_answers = watcher.answers() - answers_before;
    let after = setup.stats();
    let (was, now) = (before.flows.ipv4, after.flows.ipv4);
    let stateless = now.stateless_syns - was.stateless_syns;
    let hashed = now.hashed_acks - was.hashed_acks;
    let evicted = now.evictions - was.evictions;
    let active_samples = samples.iter().filter(|s| s.flood.active).count();
    let first_active = samples.iter().find(|s| s.flood.active).map(|s| s.at);
    let max_pending = samples.iter().map(|s| s.ipv4.pending).max().unwrap_or(0);
    let split = client::count_conns(&during);
    eprintln!(
        "{TEST}: flood: {TUPLES} spoofed SYNs ({CHUNKS} chunks of {CHUNK}, one every \
         {CHUNK_PERIOD:?}) in {flood_took:?}: {} frames, {} retries, up to {} CPUs, the \
         longest chunk {:?}; flood mode seen by the test {entered:?} after the start, in \
         {active_samples} of {} samples (the first at {first_active:?}); the {NEW} new \
         connections opened and pinged {PINGS_DURING} times by {:?} (flood mode on then, \
         flood still sent: {:?}): {split:?}; the watched connection answered \
         {watch_answers} times",
        run.frames,
        run.retries,
        run.cpus,
        run.longest_chunk,
        samples.len(),
        opened.map(|o| o.0),
        opened.map(|o| (o.1, o.2)),
    );
    eprintln!(
        "{TEST}: lb: +{stateless} SYNs forwarded unrecorded, +{hashed} ACKs picked up, \
         +{evicted} pending evictions, pending table at most {max_pending} during the \
         flood; tables {was:?} -> {now:?}; flood {:?}",
        after.flood
    );

    // Flood mode started, and the new connections were opened in it.
    let Some(entered) = entered else {
        setup.fail(&format!(
            "flood mode did not start within {FLOOD_MODE_WITHIN:?} of a flood of {TUPLES} \
             SYNs at {SYN_FLOOD_RATE} SYNs/s: samples {:?}",
            samples.iter().map(|s| s.flood).collect::<Vec<_>>()
        ));
    };
    let (_, active_then, flooding_then) = opened.expect("opened in flood mode");
    if !active_then || !flooding_then {
        setup.fail(&format!(
            "the {NEW} new connections did not complete while the flood ran in flood mode \
             (flood mode {active_then}, still sending {flooding_then}): make the flood longer"
        ));
    }
    if active_samples == 0 {
        setup.fail(&format!(
            "no sample of lb stats during the flood says flood mode (entered {entered:?})"
        ));
    }
    if !watch_ok {
        setup.fail(&format!(
            "the watched connection answered {watch_answers} times since the flood started, \
             and not twice more {WATCH_WITHIN:?} after its end"
        ));
    }
    // The flood's SYNs went unrecorded, but those of each CPU's first
    // window (which started flood mode) and the frames lost on the way.
    let tuples = u64::from(TUPLES);
    let first_windows = cpus * WINDOW_LIMIT;
    if stateless < at_least(tuples) - first_windows || stateless > tuples + 2 * NEW as u64 {
        setup.fail(&format!(
            "{stateless} SYNs forwarded unrecorded for {tuples} spoofed SYNs (and {NEW} real \
             connections): expected at least {} ({cpus} CPUs' first windows of {WINDOW_LIMIT} \
             and 1 % may go to the pending table or be lost): {was:?} -> {now:?}",
            at_least(tuples) - first_windows
        ));
    }
    // The pending table did not churn: it held at most the first windows.
    if evicted > first_windows || max_pending > was.pending + first_windows + NEW as u64 {
        setup.fail(&format!(
            "the pending table churned through the flood: {evicted} evictions, up to \
             {max_pending} pending flows (at most {first_windows} of the flood's first windows \
             may be recorded): {was:?} -> {now:?}"
        ));
    }
    // Every new connection was confirmed by its picked-up ACK.
    if hashed < NEW as u64 {
        setup.fail(&format!(
            "{hashed} ACKs picked up for {NEW} connections opened in flood mode: {was:?} -> \
             {now:?}"
        ));
    }
    // The connection table holds the real connections and nothing else.
    let held = (IDLE + 1 + NEW) as u64;
    if now.flows != held || now.insert_failed != was.insert_failed {
        setup.fail(&format!(
            "after the flood the connection table holds {} flows, expected the {IDLE} idle, \
             the watched and the {NEW} new connections ({held}): {was:?} -> {now:?}",
            now.flows
        ));
    }
    let listed = conns(&setup);
    let mut wrong = listing_errors(&setup, &listed, &during, "new connection");
    wrong.extend(listing_errors(&setup, &listed, &idle, "idle connection"));
    let spoofed_listed: Vec<_> = listed
        .connections
        .iter()
        .filter(|f| spoofed(f.client))
        .collect();
    if !listed
        .connections
        .iter()
        .any(|f| f.client_addr() == watched_client)
    {
        wrong.push(format!(
            "the watched connection {watched_client}: not listed"
        ));
    }
    if let Some(f) = spoofed_listed.iter().find(|f| f.state != "SYN_RECV") {
        wrong.push(format!("a spoofed tuple has a confirmed flow: {f:?}"));
    }
    if spoofed_listed.len() as u64 > first_windows {
        wrong.push(format!(
            "{} spoofed tuples are listed (pending), more than the first windows' \
             {first_windows}",
            spoofed_listed.len()
        ));
    }
    if !wrong.is_empty() {
        setup.fail(&format!(
            "lb conns after the flood:\n  {}",
            wrong.join("\n  ")
        ));
    }
    eprintln!(
        "{TEST}: lb conns after the flood: {} flows, {} of them spoofed (pending SYN_RECV); \
         {tuples} spoofed and {NEW} real SYNs - {stateless} unrecorded - {} pending = {} lost \
         or retransmitted",
        listed.connections.len(),
        spoofed_listed.len(),
        spoofed_listed.len(),
        (tuples + NEW as u64) as i64 - stateless as i64 - spoofed_listed.len() as i64
    );

    // Past flood mode, its ACK grace period and the health checks' fall
    // intervals, the connections opened during the flood live in the
    // connection table.
    let quiet = flood_end + FLOOD_HOLD + ACK_GRACE + INTERVAL * (FALL + 1);
    if let Some(wait) = quiet.checked_duration_since(Instant::now()) {
        thread::sleep(wait);
    }
    let calm = setup.stats();
    let flood_now = flood_of(&setup, &calm);
    if flood_now.active || flood_now.picking_up_acks {
        setup.fail(&format!(
            "{:?} after the flood's end: {flood_now:?}",
            flood_end.elapsed()
        ));
    }
    watcher.stop();
    let mut all: Vec<HeldConn> = idle.into_iter().chain(during).collect();
    let servers: Vec<String> = all.iter().map(|c| c.server().to_owned()).collect();
    let outcomes = ping_each(&mut all);
    let (watched, watch_outcome) = watcher.finish();
    let mut broken: Vec<String> = outcomes
        .iter()
        .zip(&servers)
        .enumerate()
        .filter_map(|(i, (outcome, server))| {
            let what = if i < IDLE { "idle" } else { "during-flood" };
            outcome
                .as_ref()
                .map(|e| format!("{what} connection {i} (to {server}): {e}"))
        })
        .collect();
    if let Err(e) = watch_outcome {
        broken.push(format!("the watched connection (to {watched_server}): {e}"));
    }
    if !broken.is_empty() {
        setup.fail(&format!(
            "{:?} after the flood's end, connections no longer reach their real server:\n  \
             {}\nlb stats: flows {:?}, flood {:?}, verdicts {:?}",
            flood_end.elapsed(),
            broken.join("\n  "),
            calm.flows,
            calm.flood,
            calm.verdicts
        ));
    }
    let (idle, during) = all.split_at_mut(IDLE);
    let listed = conns(&setup);
    let mut wrong = listing_errors(&setup, &listed, during, "during-flood connection");
    wrong.extend(listing_errors(&setup, &listed, idle, "idle connection"));
    if !wrong.is_empty() {
        setup.fail(&format!(
            "lb conns after flood mode and its grace period:\n  {}",
            wrong.join("\n  ")
        ));
    }

    // New connections are scheduled as usual again.
    let was = calm.flows.ipv4;
    let mut later = setup.open(vip, LATER);
    setup.ping_all(&mut later, "new connections after flood mode");
    let now = setup.stats().flows.ipv4;
    if now.stateless_syns != was.stateless_syns
        || now.hashed_acks != was.hashed_acks
        || now.flows != was.flows + LATER as u64
    {
        setup.fail(&format!(
            "{LATER} new connections after flood mode were not scheduled as usual: {was:?} -> \
             {now:?}"
        ));
    }
    let wrong = listing_errors(&setup, &conns(&setup), &later, "later connection");
    if !wrong.is_empty() {
        setup.fail(&format!(
            "lb conns of the later connections:\n  {}",
            wrong.join("\n  ")
        ));
    }
    setup.assert_all_up("after the flood and the health checks' fall intervals");
    let mut all: Vec<HeldConn> = all.into_iter().chain(later).collect();
    all.push(watched);
    setup.ping_all(&mut all, "at the end");
    eprintln!(
        "{TEST}: {:?} after the flood's end: flood mode off, every connection answered by \
         its real server, the {NEW} during-flood connections ESTABLISHED in the connection \
         table ({split:?}); {LATER} later connections scheduled: {:?}",
        flood_end.elapsed(),
        client::count_conns(&all[IDLE + NEW..IDLE + NEW + LATER])
    );
    drop(all);
    setup.finish();
}

#[test]
fn syn_flood_guard_off_never_enters_flood_mode() {
    const TEST: &str = "syn_flood_guard_off_never_enters_flood_mode";
    /// Tuples of the flood: five times the table, in one burst.
    const BURST: u32 = 5 * MAX_FLOWS;
    /// Connections opened before and after the flood.
    const CONNS: usize = 5;
    if skip_unless_root(TEST) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let vip = IpAddr::from(VIP4);
    let mut setup = Director::start_configured(
        TEST,
        Spec::tcp(WEIGHTS.len(), PORT),
        |config| {
            config.max_flows = MAX_FLOWS;
            config.max_flows_v6 = MAX_FLOWS;
            config.syn_flood_rate = Some(0);
        },
        |bed| vec![bed.service("web", vip, PORT, Protocol::Tcp, Health::tcp(PORT), &WEIGHTS)],
    );
    let mut held = setup.open(vip, CONNS);
    setup.ping_all(&mut held, "before the flood");
    let before = setup.stats();
    let guard = flood_of(&setup, &before);
    if guard != FloodStats::default() {
        setup.fail(&format!("the guard is not off: {guard:?}"));
    }
    let client = setup.bed.client();
    let flood = syn_flood(&setup, vip, BURST);
    let flood_over = AtomicBool::new(false);
    let flood_start = Instant::now();
    let (sent, samples) = thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_until(&setup, &flood_over, flood_start));
        let sent = flood.send(&client.ns, &client.iface);
        // Flood mode would last a hold after the burst: keep sampling.
        thread::sleep(FLOOD_HOLD);
        flood_over.store(true, Ordering::Relaxed);
        (sent, sampler.join().expect("the sampler thread panicked"))
    });
    let sent = sent.unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
    let samples = samples.unwrap_or_else(|e| setup.fail(&e));
    let after = setup.stats();
    let (was, now) = (before.flows.ipv4, after.flows.ipv4);
    let evicted = now.evictions - was.evictions;
    eprintln!(
        "{TEST}: flood: {BURST} spoofed SYNs, {sent:?}; {} samples of lb stats; lb: +{} SYNs \
         forwarded unrecorded, +{} ACKs picked up, +{evicted} pending evictions; tables \
         {was:?} -> {now:?}",
        samples.len(),
        now.stateless_syns - was.stateless_syns,
        now.hashed_acks - was.hashed_acks,
    );
    let on: Vec<_> = samples
        .iter()
        .map(|s| s.flood)
        .chain(after.flood)
        .filter(|f| f.active || f.picking_up_acks || f.syn_flood_rate != 0)
        .collect();
    if !on.is_empty() || samples.is_empty() {
        setup.fail(&format!(
            "with syn_flood_rate = 0, flood mode started ({} samples): {on:?}",
            samples.len()
        ));
    }
    // Without the guard every SYN opens a pending flow: the table churns.
    let tuples = u64::from(BURST);
    if now.stateless_syns != 0
        || now.hashed_acks != 0
        || evicted < at_least(tuples) - u64::from(MAX_FLOWS)
        || now.flows != was.flows
    {
        setup.fail(&format!(
            "with the guard off, the flood's SYNs did not all go to the pending table \
             ({evicted} evictions): {was:?} -> {now:?}"
        ));
    }
    let mut fresh = setup.open(vip, CONNS);
    let mut all: Vec<HeldConn> = held.into_iter().chain(fresh.drain(..)).collect();
    setup.ping_all(&mut all, "after the flood");
    let end = setup.stats().flows.ipv4;
    if end.hashed_acks != 0 || end.stateless_syns != 0 || end.flows != (2 * CONNS) as u64 {
        setup.fail(&format!("after the flood: {end:?}"));
    }
    let split: BTreeMap<String, usize> = client::count_conns(&all);
    eprintln!("{TEST}: connections after the flood: {split:?}");

    // `lb reload` with the guard on reaches the data path at once, and the
    // connections go on.
    setup.config.syn_flood_rate = Some(SYN_FLOOD_RATE);
    setup.reload();
    let guard = flood_of(&setup, &setup.stats());
    if guard.syn_flood_rate != SYN_FLOOD_RATE || guard.active {
        setup.fail(&format!("after the reload with the guard on: {guard:?}"));
    }
    setup.ping_all(&mut all, "after the reload");
    drop(all);
    setup.finish();
}
