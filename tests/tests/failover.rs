//! End-to-end test of director failover with connection sync: two
//! directors on one segment, real keepalived (VRRP) moving the VIP between
//! them, the real `lb run` on both with a `[sync]` section naming the other,
//! and three real servers holding the VIP on `lo`
//! ([`lb_tests::pair::DirectorPair`] on [`lb_tests::TestBed::build_pair`]).
//!
//! Director 1 (192.0.2.2) runs keepalived as `state MASTER`, priority 150,
//! director 2 (192.0.2.3) as `state BACKUP`, priority 100, one
//! `vrrp_instance` (same `virtual_router_id`, `advert_int 1`, `virtual_ipaddress
//! { 192.0.2.200/32 dev lbd0 }`, no `nopreempt`, no `virtual_server`). The
//! VIP is configured on neither director but by keepalived. Both `lb`s
//! serve 192.0.2.200:8080 (wlc, TCP health checks every second, fall 2,
//! rise 2) with a 1 s sweep interval.
//!
//! Each failover test (the master's keepalived stopped, or the master's
//! link cut):
//! 1. starts both keepalived and waits until director 1 holds the VIP,
//!    then `lb` on both, and waits until they are ready and every backend
//!    is up on both;
//! 2. opens 60 TCP connections from the client to the VIP (each learns the
//!    real server that answered it and stays open) and starts a 256 MiB
//!    upload through the VIP, paced at 16 MiB/s so it lasts through the
//!    failover, checked by a hash the real server computes;
//! 3. waits until director 2's `lb stats --json` shows at least 61 flows
//!    installed from sync, then stops director 1's keepalived (SIGTERM to
//!    its pid) or sets director 1's NIC down, and waits until director 2
//!    holds the VIP (and director 1 does not); then every one of the 60
//!    connections must still answer from its original real server,
//!    director 2's connection table must map each to it, 20 connections
//!    opened now (director 2 master) must work, the upload (which must
//!    still have been running when the VIP moved) must arrive whole with
//!    the right hash, and director 2 must have forwarded packets;
//! 4. fails back: starts director 1's keepalived again (once director 1's
//!    table knows the 20 connections opened on director 2), or sets its
//!    NIC up again (director 1 heard nothing while its link was down: it
//!    must get what it missed from director 2 by the time it forwards);
//!    waits until director 1 holds the VIP again; at once every
//!    connection, the 60 and the 20, must answer from its original real
//!    server (the client's TCP retransmits for up to the 10 s a ping may
//!    take), and director 1 must be forwarding again;
//! 5. waits the health checks' interval × (fall + 1) and two sweep
//!    intervals, then checks everything again: every backend up on both,
//!    every connection answering from its real server, and both directors'
//!    connection tables mapping every connection to it (a sync that does
//!    not keep the backup's copies alive would show here); no sync message
//!    may have been rejected on either director.
//!
//! A third test sends forged and replayed sync messages: it captures (an
//! `AF_PACKET` socket in director 2's namespace) the sync messages director
//! 1 sends while 60 connections open, then, from director 1's namespace (a
//! UDP socket on 192.0.2.2, an ephemeral port), sends director 2's sync
//! port the largest captured message unchanged (`messages_rejected_replay`
//! must rise by one), the same with its middle byte flipped
//! (`messages_rejected_auth` by one) and 10 random bytes
//! (`messages_rejected_malformed` by one); each time the other rejection
//! counters and director 2's flow count (`flows` in `lb stats --json`) must
//! not change, and afterwards the 60 connections still answer and director
//! 2's table still maps each to its real server.
//!
//! The tests run one at a time (VRRP timing on a busy 2-core machine). The
//! bed's guards stop keepalived by its pids, `lb`, the real servers, and
//! remove the namespaces by name, also when a test fails.
//!
//! They need root; without it they print `SKIPPED (needs root)` and pass,
//! unless `CI` is set, where they fail. `LB_BIN` names the `lb` binary
//! (default: `target/release/lb`).

use std::{
    io::Read as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    Health, Protocol, VIP4,
    client::{self, HeldConn, count_conns},
    packet::PacketSocket,
    pair::{DIRECTORS, DirectorPair, PairSpec, udp_payload},
    skip_unless_root,
    stats::SyncRejections as _,
};

/// The service's port.
const PORT: u16 = 8080;
/// Weights of rs1, rs2, rs3.
const WEIGHTS: [u32; 3] = [1000, 500, 800];
/// Connections held open through failover and failback.
const CONNS: usize = 60;
/// The flows director 2 must know before the failover: the held
/// connections and the upload.
const FLOWS: u64 = CONNS as u64 + 1;
/// Connections opened while director 2 is master.
const LATER: usize = 20;
/// The upload through the VIP.
const TRANSFER: u64 = 256 << 20;
/// Its pace: 16 s for 256 MiB, longer than a failover.
const RATE: u64 = 16 << 20;
/// The sweep interval of both `lb`s.
const SWEEP: Duration = Duration::from_secs(1);
/// How long sync may take to bring a peer's table up to date.
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);
/// How long VRRP may take to move the VIP (the backup takes over after
/// three missed adverts, about 3.6 s).
const VRRP_TIMEOUT: Duration = Duration::from_secs(20);

/// Sync messages rejected: (auth, replay, malformed).
type Rejections = (u64, u64, u64);

/// One test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// How director 1 fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// Its keepalived stops (SIGTERM): it gives the VIP up at once.
    StopKeepalived,
    /// Its NIC goes down: director 2 takes over after missing its adverts.
    LinkDown,
}

#[test]
fn failover_when_the_masters_keepalived_stops_keeps_every_connection() {
    failover(
        "failover_when_the_masters_keepalived_stops_keeps_every_connection",
        Cut::StopKeepalived,
    );
}

#[test]
fn failover_when_the_masters_link_goes_down_keeps_every_connection() {
    failover(
        "failover_when_the_masters_link_goes_down_keeps_every_connection",
        Cut::LinkDown,
    );
}

/// Starts the pair, both `lb`s syncing.
fn start(test: &'static str) -> DirectorPair {
    let spec = PairSpec {
        real_servers: WEIGHTS.len(),
        port: PORT,
        sync: true,
    };
    DirectorPair::start(
        test,
        spec,
        |config| config.sweep_interval = Some(SWEEP),
        |bed| {
            vec![bed.service(
                "web",
                VIP4.into(),
                PORT,
                Protocol::Tcp,
                Health::tcp(PORT),
                &WEIGHTS,
            )]
        },
    )
}

/// The failover tests (see the module docs).
fn failover(test: &'static str, cut: Cut) {
    if skip_unless_root(test) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = start(test);

    // 2. Connections and the upload, through director 1.
    let mut conns = pair.open(CONNS);
    eprintln!("{test}: {CONNS} connections: {:?}", count_conns(&conns));
    let mut upload_conn = pair.open(1).pop().expect("one connection");
    let upload_server = upload_conn.server().to_owned();
    let progress = Arc::new(AtomicU64::new(0));
    let sent = progress.clone();
    let upload_started = Instant::now();
    let upload = thread::Builder::new()
        .name("upload".to_owned())
        .spawn(move || upload_conn.upload_paced(TRANSFER, Some(RATE), &sent))
        .unwrap_or_else(|e| pair.fail(&format!("spawning the upload: {e}")));

    // 3. Failover, once director 2 knows every flow.
    let (sync, lag) = pair.wait_sync(1, "61 flows installed", SYNC_TIMEOUT, |s| {
        s.flows_installed >= FLOWS
    });
    eprintln!(
        "{test}: director 2 installed {} flows from sync {lag:?} after the upload started \
         (lag_ms {:?})",
        sync.flows_installed, sync.lag_ms
    );
    // The count may include refreshes: every held connection must be there.
    let held: Vec<&HeldConn> = conns.iter().collect();
    pair.wait_flows_known(1, &held, "director 2 before the failover", SYNC_TIMEOUT);
    let forwarded_by_2 = pair.stats(1).forwarded_pkts();
    let cut_at = Instant::now();
    match cut {
        Cut::StopKeepalived => pair.stop_vrrp(0),
        Cut::LinkDown => pair.set_link(0, false),
    }
    pair.wait_master(1, VRRP_TIMEOUT);
    let uploaded = progress.load(Ordering::Relaxed);
    eprintln!(
        "{test}: director 2 holds the VIP {:?} after {cut:?} began; {} MiB of the upload sent",
        cut_at.elapsed(),
        uploaded >> 20
    );
    if uploaded >= TRANSFER {
        pair.fail("the upload was over before the VIP moved: it must last through the failover");
    }
    pair.ping_all(&mut conns, "after the failover to director 2");
    let mut later = pair.open(LATER);
    eprintln!(
        "{test}: {LATER} connections opened on director 2: {:?}",
        count_conns(&later)
    );
    pair.ping_all(&mut later, "connections opened on director 2");
    let report = upload
        .join()
        .unwrap_or_else(|_| pair.fail("the upload thread panicked"))
        .unwrap_or_else(|e| pair.fail(&format!("the upload through the failover: {e:#}")));
    if report.received != report.sent || report.received_hash != report.sent_hash {
        pair.fail(&format!(
            "the upload to {upload_server} through the failover arrived damaged: {report:?}"
        ));
    }
    eprintln!(
        "{test}: the upload to {upload_server} arrived whole after {:?} ({} MiB, hash {:016x})",
        upload_started.elapsed(),
        report.received >> 20,
        report.received_hash
    );
    let now_forwarded_by_2 = pair.stats(1).forwarded_pkts();
    if now_forwarded_by_2 <= forwarded_by_2 {
        pair.fail(&format!(
            "director 2 forwarded nothing as master ({forwarded_by_2} packets before, \
             {now_forwarded_by_2} after)"
        ));
    }
    eprintln!(
        "{test}: director 2 forwarded {} packets as master",
        now_forwarded_by_2 - forwarded_by_2
    );
    let everything: Vec<&HeldConn> = conns.iter().chain(&later).collect();
    pair.wait_flows_known(1, &everything, "director 2 as master", SYNC_TIMEOUT);

    // 4. Failback.
    let forwarded_by_1 = pair.stats(0).forwarded_pkts();
    let failback_at = Instant::now();
    match cut {
        Cut::StopKeepalived => {
            let later_refs: Vec<&HeldConn> = later.iter().collect();
            let took = pair.wait_flows_known(
                0,
                &later_refs,
                "director 1 learning the connections opened on director 2",
                SYNC_TIMEOUT,
            );
            eprintln!("{test}: director 1 knew the {LATER} new connections after {took:?}");
            pair.start_vrrp(0);
        }
        Cut::LinkDown => pair.set_link(0, true),
    }
    let took = pair.wait_master(0, VRRP_TIMEOUT);
    eprintln!(
        "{test}: director 1 holds the VIP again {took:?} after the failback began \
         ({:?} after the failover)",
        failback_at.duration_since(cut_at)
    );
    // What director 1 does not know as it takes the traffic back.
    let unknown = pair.flows_not_matching(0, everything.iter().copied());
    eprintln!(
        "{test}: director 1 took the VIP back not knowing {} of {} connections",
        unknown.len(),
        everything.len()
    );
    drop(everything);
    for (held, what) in [
        (&mut conns, "the first connections"),
        (&mut later, "the connections opened on director 2"),
    ] {
        if let Err(e) = client::ping_all(held.iter_mut()) {
            pair.fail(&format!(
                "{what}, after the failback to director 1: {e:#}; director 1 took the VIP back \
                 not knowing {} connections (client, server, its table): {unknown:?}",
                unknown.len()
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = pair.stats(0).forwarded_pkts();
        if now > forwarded_by_1 {
            break;
        }
        if Instant::now() > deadline {
            pair.fail(&format!(
                "director 1 forwarded nothing after the failback ({forwarded_by_1} packets \
                 before, {now} after)"
            ));
        }
        pair.ping_all(&mut conns, "after the failback to director 1");
        thread::sleep(Duration::from_millis(200));
    }

    // 5. The timers: health checks and sweeps go by.
    for i in DIRECTORS {
        pair.wait_all_up(i, Duration::from_secs(15));
    }
    let wait = (Health::TCP_INTERVAL * (Health::TCP_FALL + 1)).max(SWEEP * 2) + SWEEP;
    thread::sleep(wait);
    for i in DIRECTORS {
        pair.assert_all_up(i, "after the timers");
    }
    pair.ping_all(&mut conns, "after the timers");
    pair.ping_all(
        &mut later,
        "connections opened on director 2, after the timers",
    );
    for i in DIRECTORS {
        let missing = pair.flows_not_matching(i, conns.iter().chain(&later));
        if !missing.is_empty() {
            pair.fail(&format!(
                "after the timers, director {}'s table does not map {} connections to their \
                 real servers (client, server, table): {missing:?}",
                i + 1,
                missing.len()
            ));
        }
    }
    for i in DIRECTORS {
        let sync = pair.sync_stats(i);
        eprintln!("{test}: director {} sync: {sync:?}", i + 1);
        if sync.rejected() != (0, 0, 0) {
            pair.fail(&format!(
                "director {} rejected sync messages of a healthy peer (auth, replay, malformed): \
                 {:?}",
                i + 1,
                sync.rejected()
            ));
        }
    }

    drop(conns);
    drop(later);
    pair.finish();
}

#[test]
fn forged_and_replayed_sync_messages_are_rejected() {
    const TEST: &str = "forged_and_replayed_sync_messages_are_rejected";
    if skip_unless_root(TEST) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = start(TEST);
    let (d1, d2) = (pair.director(0).ipv4, pair.director(1).ipv4);
    let port = pair.sync_port();

    // Capture what director 1 sends director 2 while connections open.
    let capture = pair
        .director(1)
        .ns
        .run(|| PacketSocket::capture("lbd0", Duration::from_millis(200)))
        .unwrap_or_else(|e| pair.fail(&format!("capturing on director 2: {e:#}")));
    let mut conns = pair.open(CONNS);
    pair.wait_sync(1, "60 flows installed", SYNC_TIMEOUT, |s| {
        s.flows_installed >= CONNS as u64
    });
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match capture.recv() {
            Ok(Some(frame)) => {
                if let Some(payload) = udp_payload(&frame, d1, d2, port) {
                    messages.push(payload.to_vec());
                }
            }
            Ok(None) if !messages.is_empty() => break,
            Ok(None) => {}
            Err(e) => pair.fail(&format!("capturing on director 2: {e}")),
        }
        if Instant::now() > deadline {
            if messages.is_empty() {
                pair.fail(&format!(
                    "no sync message from {d1} to {d2}:{port} captured on director 2"
                ));
            }
            break;
        }
    }
    drop(capture);
    let message = messages
        .iter()
        .max_by_key(|m| m.len())
        .cloned()
        .expect("a captured message");
    eprintln!(
        "{TEST}: captured {} sync messages from director 1 ({} to {} bytes)",
        messages.len(),
        messages.iter().map(Vec::len).min().unwrap_or(0),
        message.len()
    );

    let base = pair.stats(1);
    let base_sync = base
        .sync()
        .unwrap_or_else(|e| pair.fail(&format!("director 2: {e:#}")));
    let base_flows = base.flow_count();
    let (auth, replay, malformed) = base_sync.rejected();
    let mut forged = message.clone();
    let middle = forged.len() / 2;
    forged[middle] ^= 0xff;
    let mut random = [0u8; 10];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .unwrap_or_else(|e| pair.fail(&format!("reading /dev/urandom: {e}")));
    let cases: [(&str, &[u8], Rejections); 3] = [
        (
            "the captured message, replayed",
            &message,
            (auth, replay + 1, malformed),
        ),
        (
            "the message with its middle byte flipped",
            &forged,
            (auth + 1, replay + 1, malformed),
        ),
        (
            "10 random bytes",
            &random,
            (auth + 1, replay + 1, malformed + 1),
        ),
    ];
    for (what, payload, expected) in cases {
        pair.send_to_sync_port(0, 1, payload);
        let (sync, took) = pair.wait_sync(1, &format!("rejecting {what}"), SYNC_TIMEOUT, |s| {
            let (a, r, m) = s.rejected();
            a + r + m >= expected.0 + expected.1 + expected.2
        });
        // Anything counted late would show a moment later.
        thread::sleep(Duration::from_millis(300));
        let stats = pair.stats(1);
        let sync_now = stats
            .sync()
            .unwrap_or_else(|e| pair.fail(&format!("director 2: {e:#}")));
        if sync_now.rejected() != expected {
            pair.fail(&format!(
                "after {what}: rejections (auth, replay, malformed) {:?}, expected {expected:?} \
                 (before: {:?}); sync stats: {sync_now:#?}",
                sync_now.rejected(),
                base_sync.rejected()
            ));
        }
        if stats.flow_count() != base_flows {
            pair.fail(&format!(
                "after {what}: director 2 has {} flows, {base_flows} before: {:#?}",
                stats.flow_count(),
                stats.flows
            ));
        }
        eprintln!(
            "{TEST}: director 2 rejected {what} ({} bytes) within {took:?}: {:?}",
            payload.len(),
            sync.rejected()
        );
    }

    pair.ping_all(&mut conns, "after the forged messages");
    let missing = pair.flows_not_matching(1, &conns);
    if !missing.is_empty() {
        pair.fail(&format!(
            "after the forged messages, director 2's table does not map {} connections to their \
             real servers (client, server, table): {missing:?}",
            missing.len()
        ));
    }
    drop(conns);
    pair.finish();
}
