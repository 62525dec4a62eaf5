//! Live forwarding between network namespaces: lb's XDP program against the
//! trivial MAC-swap `XDP_TX` program, on real frames through a veth pair.
//!
//! ```text
//!  lbbench-PID-gen                         lbbench-PID-dir
//!  bench_gen (BPF_PROG_TEST_RUN,           lb_xdp, bench_mac_swap or Katran
//!   live frames) --XDP_TX--> g0 ========== d0 --XDP_TX--+
//!  bench_sink (XDP on g0) <-- g0 ========== d0 <--------+
//! ```
//!
//! The generator program runs through `BPF_PROG_TEST_RUN` in live-frames mode
//! with g0 as its ingress device: each frame gets a client frame's Ethernet
//! addresses (the test run recycles pages as the forwarder left them) and a
//! source port (and source address octet) from a counter, and leaves g0
//! with `XDP_TX`, so it arrives on the director's d0 as a client sent it.
//! The program under test forwards it back out of d0 with
//! `XDP_TX`; the sink on g0 counts it per destination MAC and drops it. The
//! sink also makes the veth pair deliver `XDP_TX` frames at all (a veth does
//! so only when its peer has an XDP program). No bridge, no network stack.
//!
//! Both programs are measured in the same run, alternately, on the same
//! traffic; the forwarded rate is what the sink counted per second of
//! generation. With `--katran PATH`, Katran's balancer (built as
//! docs/performance.md shows) is then measured the same way against the
//! trivial program, in rounds of its own on the same traffic, set up as
//! its control plane would for the same VIP (`crate::katran::LiveKatran`),
//! with g0 as its gateway: it tunnels each frame (IPIP) where lb rewrites
//! MACs, each as in production.
//!
//! Each pattern runs twice: with the director's NAPI inline in
//! the generator's softirq (one CPU does everything) and, given two CPUs,
//! with it in a NAPI thread on a CPU of its own. lb is attached exactly as
//! `lb run` does it (driver mode, maps filled through `lb::datapath`, d0
//! registered with its MAC filter, the SYN-flood guard at `lb run`'s
//! default rate), with three backends weighted
//! 1000/500/800 that have static MACs, so the sink also shows the weighted
//! split.
//!
//! The SYN flood (a new flow in every frame) runs lb as `lb run` would meet
//! it: past the guard's rate, lb is in flood mode and forwards the SYNs by
//! the hash of their tuple without a table entry (`lb_common::flood`). Its
//! row also says what share of lb's SYNs went that way, and whether the
//! flood left established flows alone: before it, [`KEPT_FLOWS`] flows of
//! other clients are established through lb (ACKs of a sloppy-TCP service,
//! confirmed into the connection table); after it, each must still be
//! there, established, on the same backend. The issue's target for the
//! flood: at least [`SYN_FLOOD_TARGET`] times the trivial program's rate.

use std::{
    fmt::Write as _,
    fs::{self, File},
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use lb::datapath::{
    Datapath,
    maps::{FlowCapacity, FlowTable},
};
use lb_common::{
    Attachment, BACKEND_STATE_UP, Backend, BackendSet, DEFAULT_SYN_FLOOD_RATE,
    EVENT_PENDING_OPENED, EVENT_STATELESS_SYN, FlowKey, NicFilter, PROTO_TCP,
    SERVICE_FLAG_SLOPPY_TCP, Service, ServiceKey, conn_state::STATE_ESTABLISHED,
};
use lb_tests::{netns::ifindex, xdp_case::xdp_md};

use crate::{BENCH_OBJECT, katran::LiveKatran};

/// The virtual service: 192.0.2.200:8080/TCP.
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
/// The service's port.
const VIP_PORT: u16 = 8080;
/// The clients' network (the generator varies the last octet).
const CLIENT_NET: [u8; 3] = [198, 51, 100];
/// The network of the flows established before the SYN flood: none of the
/// flood's tuples (from [`CLIENT_NET`]) is one of theirs.
const KEPT_NET: [u8; 3] = [203, 0, 113];
/// Flows established before the SYN flood, that it must leave in place.
const KEPT_FLOWS: u64 = 10_000;
/// Runs of the generator over the flows to establish (each sends every
/// flow twice) before giving up on the ones the veth ring dropped. With
/// two CPUs the ring drops about three frames in four, and five runs left
/// 2 to 11 % of the flows unestablished; forty leave none in practice.
const ESTABLISH_TRIES: usize = 40;
/// The issue's target for the SYN flood: lb forwards at least this share
/// of the trivial program's rate.
pub const SYN_FLOOD_TARGET: f64 = 0.5;
/// The issue's target for 10 k established flows: lb forwards at least this
/// share of the trivial program's rate.
pub const ESTABLISHED_TARGET: f64 = 0.9;
/// MAC of g0; the trivial program sends frames back to it.
const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
/// MAC of d0.
const DIR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x20];
/// The real servers: address, MAC (its last byte indexes the sink's
/// counters), weight.
const BACKENDS: [(Ipv4Addr, [u8; 6], u32); 3] = [
    (Ipv4Addr::new(192, 0, 2, 11), [0x02, 0, 0, 0, 0, 0x01], 1000),
    (Ipv4Addr::new(192, 0, 2, 12), [0x02, 0, 0, 0, 0, 0x02], 500),
    (Ipv4Addr::new(192, 0, 2, 13), [0x02, 0, 0, 0, 0, 0x03], 800),
];
/// Allowed deviation of a backend's share from its weight's share.
const SPLIT_TOLERANCE: f64 = 0.10;
/// Frames per batch of the live test run (the kernel's maximum is 256).
const BATCH: u32 = 64;
/// Ethernet (14) + IPv4 (20) + TCP (20), padded to the 60-byte minimum
/// frame (64 bytes on the wire with the FCS).
const FRAME_LEN: usize = 60;
/// TCP flags of the frames.
const TCP_SYN: u8 = 0x02;
/// TCP ACK flag.
const TCP_ACK: u8 = 0x10;
/// The CPU the generator runs on (when there are two or more).
const GEN_CPU: usize = 0;
/// The CPU the director's NAPI thread runs on: the program under test, and
/// the sink in the same softirq (when there are two CPUs or more).
const FWD_CPU: usize = 1;
/// How long to wait after a test run for frames still in the veth rings.
const DRAIN: Duration = Duration::from_millis(50);

/// One traffic pattern of the live benchmark.
struct Case {
    /// Name in the table.
    name: &'static str,
    /// Distinct flows the generator rotates over; 0 = a new flow per frame.
    flows: u64,
    /// TCP flags: ACKs for established flows, SYNs for new ones.
    tcp_flags: u8,
    /// The issue's lower bound on lb's rate over the trivial program's.
    target: Option<f64>,
    /// Whether [`KEPT_FLOWS`] flows are established before it and checked
    /// after it (the SYN flood).
    keeps_established: bool,
}

/// The traffic patterns, in the order they run.
const CASES: [Case; 3] = [
    Case {
        name: "1 flow",
        flows: 1,
        tcp_flags: TCP_ACK,
        target: None,
        keeps_established: false,
    },
    Case {
        name: "10k established flows",
        flows: 10_000,
        tcp_flags: TCP_ACK,
        target: Some(ESTABLISHED_TARGET),
        keeps_established: false,
    },
    Case {
        name: "new flow every packet",
        flows: 0,
        tcp_flags: TCP_SYN,
        target: Some(SYN_FLOOD_TARGET),
        keeps_established: true,
    },
];

/// What lb did under the SYN flood, from its own counters and tables.
#[derive(Debug, serde::Serialize)]
pub struct FloodCheck {
    /// lb's SYN-flood guard: new TCP flows per second on one CPU (`lb
    /// run`'s default).
    pub syn_flood_rate: u32,
    /// Whether lb entered flood mode (`FLOOD_UNTIL` set).
    pub entered_flood_mode: bool,
    /// SYNs lb forwarded in flood mode, without a table entry (warm-up and
    /// rounds).
    pub stateless_syns: u64,
    /// SYNs that opened a pending flow (before flood mode, or in windows
    /// below the rate).
    pub pending_opened: u64,
    /// `stateless_syns` over all of lb's SYNs.
    pub stateless_share: f64,
    /// Flows established in the connection table before the flood (of
    /// [`KEPT_FLOWS`] sent).
    pub established_before: u64,
    /// Of those, the ones still there after it, established, on the same
    /// backend.
    pub established_kept: u64,
}

/// One backend's part of what lb forwarded, as the sink saw it.
#[derive(Debug, serde::Serialize)]
pub struct BackendShare {
    /// The real server's address.
    pub backend: String,
    /// Its weight.
    pub weight: u32,
    /// Frames the sink received with this backend's MAC.
    pub packets: u64,
    /// `packets` over all frames lb forwarded.
    pub share: f64,
    /// The weight's share of the total weight.
    pub expected_share: f64,
}

/// The result of one traffic pattern.
#[derive(Debug, serde::Serialize)]
pub struct LiveRow {
    /// The traffic pattern.
    pub case: String,
    /// Frames per second (millions) forwarded by lb, as counted by the sink
    /// (median over the rounds).
    pub lb_mpps: f64,
    /// The same with the trivial MAC-swap `XDP_TX` program.
    pub trivial_mpps: f64,
    /// lb's rate over the trivial program's: the median over the rounds of
    /// each round's ratio (a round runs the two programs back to back, so
    /// the VM's slower drifts cancel within it).
    pub ratio: f64,
    /// lb's rate in each round (Mpps), in order.
    pub lb_round_mpps: Vec<f64>,
    /// The trivial program's rate in each round (Mpps), in order.
    pub trivial_round_mpps: Vec<f64>,
    /// Frames per second (millions) the generator sent during lb's rounds.
    pub lb_generated_mpps: f64,
    /// The same during the trivial program's rounds.
    pub trivial_generated_mpps: f64,
    /// Frames sent during lb's measured rounds.
    pub lb_sent: u64,
    /// Frames the sink received during lb's measured rounds.
    pub lb_received: u64,
    /// Frames sent during the trivial program's measured rounds.
    pub trivial_sent: u64,
    /// Frames the sink received during the trivial program's measured rounds.
    pub trivial_received: u64,
    /// Per-backend split of lb's forwarded frames.
    pub split: Vec<BackendShare>,
    /// What the split was checked against: `"weights"` (each backend within
    /// 10 % of its weight's share) or `"one backend"` (one flow: every frame
    /// to the same backend).
    pub split_check: &'static str,
    /// Whether the split passed that check.
    pub split_ok: bool,
    /// Where the generator and the forwarder ran: `"1 CPU"` (the director's
    /// NAPI runs inline in the generator's softirq: generator, forwarder and
    /// sink share one CPU) or `"2 CPUs"` (generator on one CPU, the
    /// director's threaded NAPI with the program under test and the sink on
    /// the other).
    pub cpus: &'static str,
    /// The issue's lower bound on `ratio`, if any (10 k established flows,
    /// the SYN flood).
    pub target: Option<f64>,
    /// Whether `ratio` meets `target`.
    pub target_met: Option<bool>,
    /// The SYN flood: flood mode and the established flows it kept.
    pub flood: Option<FloodCheck>,
    /// Katran's balancer on the same traffic, when measured (`--katran`).
    pub katran: Option<KatranLive>,
}

/// Katran's balancer on the same traffic, in rounds of its own against
/// the trivial program, after lb's. It tunnels each frame to its real
/// (IPIP, 20 bytes more) where lb rewrites MACs: each does what it does
/// in production.
#[derive(Debug, serde::Serialize)]
pub struct KatranLive {
    /// Frames per second (millions) the sink counted (median over the rounds).
    pub mpps: f64,
    /// Katran's rate over the trivial program's: the median over Katran's
    /// rounds of each round's ratio.
    pub ratio: f64,
    /// Katran's rate in each round (Mpps), in order.
    pub round_mpps: Vec<f64>,
}

impl KatranLive {
    /// Katran's figures from its `samples` and the trivial program's of
    /// Katran's rounds.
    fn of(samples: &[Sample], trivial: &[Sample]) -> Self {
        let round_mpps = round_rates(samples);
        Self {
            mpps: median(round_mpps.clone()),
            ratio: median_ratio(&round_mpps, &round_rates(trivial)),
            round_mpps,
        }
    }
}

/// Where the director's NAPI (the program under test, then the sink) runs.
#[derive(Clone, Copy, PartialEq)]
enum Placement {
    /// In the softirq of the generator's CPU: the whole pipeline on one CPU.
    Inline,
    /// In a NAPI kernel thread pinned to [`FWD_CPU`], the generator on
    /// [`GEN_CPU`].
    Split,
}

impl Placement {
    /// The placement's name in the rows.
    fn name(self) -> &'static str {
        match self {
            Placement::Inline => "1 CPU",
            Placement::Split => "2 CPUs",
        }
    }
}

/// Runs the live benchmark (root). `quick` = short runs for a smoke test;
/// `online_cpus`: the machine's, counted before the bench pinned itself to
/// one (the split placement needs two); `only`: the name of the one case to
/// run, else all; `katran`: Katran's balancer object, to measure it too.
pub fn run(
    quick: bool,
    online_cpus: usize,
    only: Option<&str>,
    katran: Option<&Path>,
) -> anyhow::Result<Vec<LiveRow>> {
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|case| only.is_none_or(|name| case.name == name))
        .collect();
    if cases.is_empty() {
        let names: Vec<_> = CASES
            .iter()
            .map(|case| format!("{:?}", case.name))
            .collect();
        bail!(
            "no live case is named {:?}: the cases are {}",
            only.unwrap_or_default(),
            names.join(", ")
        );
    }
    // (rounds, frames per measured run)
    let (rounds, frames) = if quick { (2, 200_000) } else { (9, 1_000_000) };
    let bed = Bed::create()?;
    let mut bench = Bench::load(&bed, katran)?;
    let mut placements = vec![Placement::Inline];
    if online_cpus > FWD_CPU {
        placements.push(Placement::Split);
    }
    let mut rows = Vec::new();
    for placement in placements {
        bed.place(placement)?;
        for case in &cases {
            rows.push(
                bench
                    .case(&bed, case, placement, rounds, frames)
                    .with_context(|| {
                        format!("live benchmark, {:?} on {}", case.name, placement.name())
                    })?,
            );
        }
    }
    Ok(rows)
}

/// The live benchmark's part of the printed report: a heading, then
/// [`table`].
pub fn section(rows: &[LiveRow]) -> String {
    format!("live traffic\n{}\n", table(rows))
}

/// Each row's ratio over several runs of [`run`] (each a list of rows in
/// the same order): every run's, the lowest, the median and the highest,
/// and for a row with a target, in how many runs it was met; then
/// Katran's, when every run measured it.
pub fn spread(runs: &[Vec<LiveRow>]) -> String {
    let mut out = format!(
        "live ratios over {} runs\n{:<22} {:<6} {:>6} {:>6} {:>7}  {}\n",
        runs.len(),
        "live, 64 B frames",
        "CPUs",
        "lowest",
        "median",
        "highest",
        "each run"
    );
    let Some(first) = runs.first() else {
        return out;
    };
    for (i, row) in first.iter().enumerate() {
        let ratios: Vec<f64> = runs.iter().map(|rows| rows[i].ratio).collect();
        let target = match row.target {
            Some(target) => {
                let met = runs
                    .iter()
                    .filter(|rows| rows[i].target_met == Some(true))
                    .count();
                format!("  [>= {target}x met in {met} of {} runs]", runs.len())
            }
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<22} {:<6} {}{target}",
            row.case,
            cpu_count(row.cpus),
            range(&ratios),
        );
        let katran: Option<Vec<f64>> = runs
            .iter()
            .map(|rows| rows[i].katran.as_ref().map(|k| k.ratio))
            .collect();
        if let Some(katran) = katran {
            let _ = writeln!(out, "{:<22} {:<6} {}  (Katran)", "", "", range(&katran));
        }
    }
    out
}

/// The number of CPUs in a row's `cpus` ("1 CPU", "2 CPUs"), for the
/// tables' CPUs column.
fn cpu_count(cpus: &str) -> &str {
    cpus.trim_end_matches(" CPUs").trim_end_matches(" CPU")
}

/// Lowest, median and highest of `ratios` (not empty), then each of them.
fn range(ratios: &[f64]) -> String {
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    format!(
        "{lowest:>6.3} {:>6.3} {highest:>7.3}  {}",
        median(ratios.to_vec()),
        each.join(" ")
    )
}

/// Aligned text table of the rows.
fn table(rows: &[LiveRow]) -> String {
    let mut out = format!(
        "{:<22} {:<6} {:>8} {:>9} {:>6} {:>8} {:>9} {:>6}  {}\n",
        "live, 64 B frames",
        "CPUs",
        "lb Mpps",
        "triv Mpps",
        "ratio",
        "gen(lb)",
        "gen(triv)",
        "lost",
        "split seen by the sink: share (expected)"
    );
    for row in rows {
        let split: Vec<String> = row
            .split
            .iter()
            .map(|b| {
                format!(
                    "{} {:.1}% ({:.1}%)",
                    b.backend,
                    100.0 * b.share,
                    100.0 * b.expected_share
                )
            })
            .collect();
        let verdict = if row.split_ok { "ok" } else { "FAILED" };
        let _ = writeln!(
            out,
            "{:<22} {:<6} {:>8.3} {:>9.3} {:>6.2} {:>8.3} {:>9.3} {:>5.1}%  {} [{verdict}: {}]",
            row.case,
            cpu_count(row.cpus),
            row.lb_mpps,
            row.trivial_mpps,
            row.ratio,
            row.lb_generated_mpps,
            row.trivial_generated_mpps,
            lost_percent(row.lb_sent, row.lb_received),
            split.join(", "),
            row.split_check,
        );
        if let Some(f) = &row.flood {
            // Flows the veth ring never let through were not established:
            // a shortfall of the test bed, told apart from a flow lost.
            let kept = if f.established_kept != f.established_before {
                "FAILED"
            } else if f.established_before != KEPT_FLOWS {
                "ok, but the bed established too few"
            } else {
                "ok"
            };
            let _ = writeln!(
                out,
                "{:<29} guard {} SYNs/s per CPU, flood mode {}: {:.1}% of lb's SYNs stateless \
                 ({} stateless, {} opened a pending flow); established kept: {}/{} of {KEPT_FLOWS} \
                 sent [{kept}]",
                "",
                f.syn_flood_rate,
                if f.entered_flood_mode {
                    "entered"
                } else {
                    "NOT entered"
                },
                100.0 * f.stateless_share,
                f.stateless_syns,
                f.pending_opened,
                f.established_kept,
                f.established_before,
            );
        }
        if let Some(k) = &row.katran {
            let _ = writeln!(
                out,
                "{:<29} Katran: {:.3} Mpps, {:.2}x the trivial program (IPIP to its real)",
                "", k.mpps, k.ratio,
            );
        }
    }
    for row in rows {
        if let (Some(target), Some(met)) = (row.target, row.target_met) {
            let _ = writeln!(
                out,
                "target (issue 16): live {} ({}) >= {target}x the trivial program: {:.4}x [{}]",
                row.case,
                row.cpus,
                row.ratio,
                if met { "met" } else { "MISSED" }
            );
        }
    }
    out.push_str(
        "Mpps: frames the sink counted per second of generation, median of alternating \
         rounds. ratio: median of the rounds' lb / trivial (each round runs both programs \
         back to back). gen: frames generated per second (gen > Mpps: the forwarder was the \
         bottleneck). lost: lb's frames generated but not forwarded (veth ring full).\n\
         CPUs 1: generator, forwarder (the director veth's NAPI, run inline in the \
         generator's softirq) and sink all on one CPU: Mpps is the rate of the whole \
         pipeline. CPUs 2: generator on CPU 0; the director's NAPI thread (program under \
         test, then the sink) on CPU 1, where frames and their pages arrive from the other \
         CPU. Neither is a dedicated forwarding core with a NIC: compare lb with the trivial \
         program in the same row, not with published single-core figures.\n\
         new flow every packet: lb's SYN-flood guard at lb run's default; stateless = SYNs \
         forwarded in flood mode without a table entry; established kept = flows of other \
         clients established before the flood, still in the connection table after it on \
         the same backend.\n\
         Katran (with --katran): its balancer in rounds of its own against the trivial \
         program, after lb's, its ratio measured as lb's is; it tunnels (IPIP, 20 bytes \
         more per frame) where lb rewrites MACs, each as in production.\n",
    );
    out
}

/// Percentage of `sent` frames that were not `received`.
fn lost_percent(sent: u64, received: u64) -> f64 {
    100.0 * sent.saturating_sub(received) as f64 / sent.max(1) as f64
}

/// The two namespaces and the veth pair between them, removed on drop.
struct Bed {
    /// Name of the generator namespace.
    gen_ns: String,
    /// Name of the director namespace.
    dir_ns: String,
    /// The generator's veth (client side), in the generator namespace.
    gen_if: String,
    /// The director's veth, in the director namespace; named after the pid
    /// so that its NAPI thread can be told apart from other veths'.
    dir_if: String,
    /// The generator namespace, open for `setns`.
    gen_fd: File,
    /// The director namespace, open for `setns`.
    dir_fd: File,
}

impl Bed {
    /// Creates `lbbench-PID-gen` and `lbbench-PID-dir` joined by a veth pair
    /// (g0 = `lbgPID`, d0 = `lbdPID`), with IPv6 off (no stray router
    /// solicitations or MLD reports reach the sink) and GRO on d0, so that
    /// [`Bed::place`] can switch its NAPI to a thread of its own.
    fn create() -> anyhow::Result<Self> {
        let pid = std::process::id();
        // Drop removes whatever part of this exists.
        let mut bed = Self {
            gen_ns: format!("lbbench-{pid}-gen"),
            dir_ns: format!("lbbench-{pid}-dir"),
            gen_if: format!("lbg{pid}"),
            dir_if: format!("lbd{pid}"),
            gen_fd: File::open("/dev/null")?,
            dir_fd: File::open("/dev/null")?,
        };
        ip(&["netns", "add", &bed.gen_ns])?;
        ip(&["netns", "add", &bed.dir_ns])?;
        bed.gen_fd = netns_file(&bed.gen_ns)?;
        bed.dir_fd = netns_file(&bed.dir_ns)?;
        for fd in [&bed.gen_fd, &bed.dir_fd] {
            in_netns(fd, || {
                for conf in ["all", "default"] {
                    let key = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                    fs::write(&key, "1").with_context(|| format!("writing 1 to {key}"))?;
                }
                Ok(())
            })?;
        }
        let (g, d) = (&bed.gen_ns, &bed.dir_ns);
        ip(&[
            "-n",
            g,
            "link",
            "add",
            &bed.gen_if,
            "address",
            &mac_str(GEN_MAC),
            "type",
            "veth",
            "peer",
            "name",
            &bed.dir_if,
            "address",
            &mac_str(DIR_MAC),
            "netns",
            d,
        ])?;
        for (ns, iface) in [(g, &bed.gen_if), (d, &bed.dir_if)] {
            ip(&["-n", ns, "link", "set", iface, "up"])?;
        }
        // A veth has a NAPI instance once GRO is on (or XDP attached); only
        // then can it be made threaded (see `place`).
        bed.exec_dir(&format!("ethtool -K {} gro on", bed.dir_if))?;
        Ok(bed)
    }

    /// Runs the director veth's NAPI inline (softirq of the CPU that
    /// queued the frames: the generator's) or in a kernel thread pinned to
    /// [`FWD_CPU`].
    fn place(&self, placement: Placement) -> anyhow::Result<()> {
        let threaded = u8::from(placement == Placement::Split);
        self.exec_dir(&format!(
            "echo {threaded} > /sys/class/net/{}/threaded",
            self.dir_if
        ))?;
        if placement == Placement::Split {
            set_affinity(self.napi_thread()?, FWD_CPU)
                .context("pinning the director's NAPI thread")?;
        }
        Ok(())
    }

    /// Runs the shell command `script` in the director namespace with its
    /// own /sys (`ip netns exec`, for sysfs and ethtool; no BPF there).
    fn exec_dir(&self, script: &str) -> anyhow::Result<()> {
        run_command(Command::new("ip").args(["netns", "exec", &self.dir_ns, "sh", "-c", script]))
    }

    /// The pid of the director veth's NAPI kernel thread (`napi/IFNAME-ID`,
    /// truncated to 15 characters).
    fn napi_thread(&self) -> anyhow::Result<libc::pid_t> {
        let prefix = format!("napi/{}", self.dir_if);
        for entry in fs::read_dir("/proc")? {
            let entry = entry?;
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else {
                continue;
            };
            let Ok(comm) = fs::read_to_string(entry.path().join("comm")) else {
                continue;
            };
            let comm = comm.trim_end();
            if comm
                .strip_prefix(&prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
            {
                return Ok(pid);
            }
        }
        bail!("no NAPI thread {prefix}-* found (threaded NAPI on the veth did not take)")
    }
}

/// Pins thread `tid` (0 = the calling thread) to `cpu`.
fn set_affinity(tid: libc::pid_t, cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only read and write that set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

impl Drop for Bed {
    fn drop(&mut self) {
        for ns in [&self.gen_ns, &self.dir_ns] {
            if !Path::new("/var/run/netns").join(ns).exists() {
                continue;
            }
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("live benchmark: could not delete network namespace {ns}: {e:#}");
            }
        }
    }
}

/// Opens `/var/run/netns/NAME`.
fn netns_file(name: &str) -> anyhow::Result<File> {
    let path = format!("/var/run/netns/{name}");
    File::open(&path).with_context(|| format!("opening {path}"))
}

/// Runs `ip args...`.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    run_command(Command::new("ip").args(args))
}

/// Runs `command` and fails with its stderr when it fails.
fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `02:00:00:00:00:10`.
fn mac_str(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Runs `f` on a thread that has entered the network namespace `ns`, and
/// waits for it. The mount namespace (and so bpffs) stays this process's.
fn in_netns<R: Send>(ns: &File, f: impl FnOnce() -> anyhow::Result<R> + Send) -> anyhow::Result<R> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: `ns` is an open namespace file; setns only moves this thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns");
                }
                f()
            })
            .join()
            .map_err(|_| anyhow!("a thread inside a benchmark namespace panicked"))?
    })
}

/// Which program forwards on d0 during a run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Forwarder {
    /// lb's `lb_xdp`.
    Lb,
    /// The trivial `bench_mac_swap`.
    Trivial,
    /// Katran's balancer (`--katran`).
    Katran,
}

/// Frames sent and received, and the time the generation took.
struct Sample {
    /// Frames generated.
    sent: u64,
    /// Frames the sink counted, per last byte of the destination MAC.
    received: [u64; 256],
    /// Wall time of the generating test run.
    elapsed: Duration,
}

impl Sample {
    /// All frames the sink counted.
    fn total(&self) -> u64 {
        self.received.iter().sum()
    }
}

/// How a forwarder is measured against the trivial program in one case.
#[derive(Clone, Copy)]
struct Alternation {
    /// The frame the generator starts from.
    frame: [u8; FRAME_LEN],
    /// Measured rounds (each runs both programs).
    rounds: usize,
    /// Frames per program per round.
    frames: u32,
    /// Frames of each program's warm-up run.
    warm_up: u32,
}

/// The reference programs (generator, sink, MAC swap) and the g0 facts.
struct Bench {
    /// `bench-ebpf`, with bench_gen, bench_sink and bench_mac_swap loaded.
    ebpf: Ebpf,
    /// The sink's counters.
    sink: PerCpuArray<MapData, u64>,
    /// g0's ifindex (the generator's ingress device).
    gen_ifindex: u32,
    /// d0's ifindex.
    dir_ifindex: u32,
    /// Katran's balancer, when measured (`--katran`).
    katran: Option<LiveKatran>,
}

impl Bench {
    /// Loads the reference programs, and Katran's balancer from
    /// `katran_object` if given, and attaches the sink to g0.
    fn load(bed: &Bed, katran_object: Option<&Path>) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(BENCH_OBJECT).context("loading the benchmark XDP object")?;
        for name in ["bench_gen", "bench_sink", "bench_mac_swap"] {
            xdp_mut(&mut ebpf, name)?
                .load()
                .with_context(|| format!("the kernel rejected {name}"))?;
        }
        let sink = PerCpuArray::try_from(
            ebpf.take_map("SINK_COUNTS")
                .ok_or_else(|| anyhow!("map SINK_COUNTS missing"))?,
        )?;
        write_setting(&mut ebpf, "GEN_ETHERNET", client_ethernet())?;
        let gen_ifindex = in_netns(&bed.gen_fd, || {
            xdp_mut(&mut ebpf, "bench_sink")?
                .attach(&bed.gen_if, XdpMode::Driver)
                .context("attaching the sink to g0")?;
            ifindex(&bed.gen_if)
        })?;
        let dir_ifindex = in_netns(&bed.dir_fd, || ifindex(&bed.dir_if))?;
        // Katran tunnels to its reals through the gateway: here g0.
        let katran = katran_object
            .map(|object| LiveKatran::load(object, VIP, VIP_PORT, GEN_MAC))
            .transpose()
            .context("loading Katran's balancer for the live benchmark")?;
        Ok(Self {
            ebpf,
            sink,
            gen_ifindex,
            dir_ifindex,
            katran,
        })
    }

    /// Measures one traffic pattern: `rounds` alternating runs of lb and the
    /// trivial program, `frames` frames each, then as many of Katran and
    /// the trivial program if Katran is loaded.
    fn case(
        &mut self,
        bed: &Bed,
        case: &Case,
        placement: Placement,
        rounds: usize,
        frames: u32,
    ) -> anyhow::Result<LiveRow> {
        // A fresh lb per case: an empty connection table, zero connection counts.
        let mut dp = self.load_lb(bed)?;
        let kept = if case.keeps_established {
            Some(self.establish(bed, &mut dp)?)
        } else {
            None
        };
        self.set_generator(case.flows)?;
        let frame = frame(CLIENT_NET, case.tcp_flags);

        let alternation = Alternation {
            frame,
            rounds,
            frames,
            // Enough for lb (and Katran) to learn the established flows.
            warm_up: (2 * case.flows).clamp(50_000, u64::from(frames)) as u32,
        };
        let (lb, trivial) = self.alternate(bed, &mut dp, Forwarder::Lb, &alternation)?;
        let mut row = row(case, placement, &lb, &trivial);
        if self.katran.is_some() {
            // Rounds of its own, so that lb's figures are measured the same
            // way with or without it (interleaved, it lowered lb's ratio:
            // docs/performance.md, "Against Katran").
            let (katran, trivial) =
                self.alternate(bed, &mut dp, Forwarder::Katran, &alternation)?;
            row.katran = Some(KatranLive::of(&katran, &trivial));
        }
        if let Some(before) = kept {
            row.flood = Some(flood_check(&dp, &before)?);
        }
        Ok(row)
    }

    /// `forwarder` and the trivial program, warmed up and then measured in
    /// alternating rounds (each going first in turn), as `alternation`
    /// says: the samples of each.
    fn alternate(
        &mut self,
        bed: &Bed,
        dp: &mut Datapath,
        forwarder: Forwarder,
        alternation: &Alternation,
    ) -> anyhow::Result<(Vec<Sample>, Vec<Sample>)> {
        let Alternation {
            frame,
            rounds,
            frames,
            warm_up,
        } = *alternation;
        let mut order = [forwarder, Forwarder::Trivial];
        for program in order {
            self.measure(bed, dp, program, &frame, warm_up)?;
        }
        let (mut measured, mut trivial) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for program in order {
                let sample = self.measure(bed, dp, program, &frame, frames)?;
                if program == Forwarder::Trivial {
                    trivial.push(sample);
                } else {
                    measured.push(sample);
                }
            }
            order.reverse();
        }
        Ok((measured, trivial))
    }

    /// Sets the generator to rotate over `flows` flows (0: a new flow per
    /// frame), from flow 0.
    fn set_generator(&mut self, flows: u64) -> anyhow::Result<()> {
        for (name, value) in [("GEN_FLOWS", flows), ("GEN_COUNTER", 0)] {
            write_setting(&mut self.ebpf, name, value)?;
        }
        Ok(())
    }

    /// Establishes [`KEPT_FLOWS`] flows from [`KEPT_NET`] through lb (their
    /// ACKs, which the sloppy-TCP service confirms into the connection
    /// table), sending them again while the veth ring dropped some (at most
    /// [`ESTABLISH_TRIES`] times), and returns those established.
    fn establish(&mut self, bed: &Bed, dp: &mut Datapath) -> anyhow::Result<Vec<(FlowKey, u16)>> {
        self.set_generator(KEPT_FLOWS)?;
        let frame = frame(KEPT_NET, TCP_ACK);
        let mut established = Vec::new();
        for _ in 0..ESTABLISH_TRIES {
            self.measure(bed, dp, Forwarder::Lb, &frame, 2 * KEPT_FLOWS as u32)?;
            established = established_flows(dp)?;
            if established.len() as u64 == KEPT_FLOWS {
                break;
            }
        }
        Ok(established)
    }

    /// Loads lb's data path and provisions the service (not attached yet),
    /// with the SYN-flood guard at `lb run`'s default rate and d0
    /// registered as `lb run` registers a director NIC: its MAC filter
    /// (frames to d0's MAC only) and its place among the redirect targets.
    fn load_lb(&self, bed: &Bed) -> anyhow::Result<Datapath> {
        let mut dp = Datapath::load(FlowCapacity::default(), None)?;
        dp.maps.set_flood_guard(DEFAULT_SYN_FLOOD_RATE)?;
        dp.maps
            .set_nic_filter(&NicFilter::new(&bed.dir_if, self.dir_ifindex, DIR_MAC, &[]))?;
        dp.maps.set_tx_port(self.dir_ifindex)?;
        let mut set = BackendSet {
            len: BACKENDS.len() as u32,
            ..BackendSet::default()
        };
        for (slot, (addr, mac, weight)) in BACKENDS.iter().enumerate() {
            let attachment = Attachment {
                mac: *mac,
                nic_mac: DIR_MAC,
                ifindex: self.dir_ifindex,
            };
            set.backends[slot] =
                Backend::new(IpAddr::V4(*addr), attachment, *weight, BACKEND_STATE_UP);
        }
        dp.maps.set_service(
            &[ServiceKey::new(IpAddr::V4(VIP), VIP_PORT, PROTO_TCP, 0)],
            Service {
                id: 0,
                // sloppy_tcp: the established cases send ACKs of flows never opened by a SYN.
                flags: SERVICE_FLAG_SLOPPY_TCP,
                ..Service::default()
            },
            &set,
        )?;
        Ok(dp)
    }

    /// Attaches `forwarder` to d0, sends `frames` frames, detaches it, and
    /// returns what the sink counted meanwhile.
    fn measure(
        &mut self,
        bed: &Bed,
        dp: &mut Datapath,
        forwarder: Forwarder,
        frame: &[u8; FRAME_LEN],
        frames: u32,
    ) -> anyhow::Result<Sample> {
        let link = in_netns(&bed.dir_fd, || match forwarder {
            Forwarder::Lb => dp.attach(&bed.dir_if, XdpMode::Driver).map(|()| None),
            Forwarder::Trivial | Forwarder::Katran => self
                .reference(forwarder)?
                .attach(&bed.dir_if, XdpMode::Driver)
                .map(Some)
                .with_context(|| format!("attaching {forwarder:?} to d0")),
        })?;
        let before = self.sink_counts()?;
        let ctx = xdp_md(FRAME_LEN as u32, self.gen_ifindex);
        let generator = xdp(&self.ebpf, "bench_gen")?;
        let elapsed = in_netns(&bed.gen_fd, || {
            set_affinity(0, GEN_CPU).context("pinning the generator")?;
            let start = Instant::now();
            generator
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(&ctx),
                    repeat: frames,
                    attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                    ..TestRunOptions::default()
                })
                .context("BPF_PROG_TEST_RUN (live frames) of bench_gen")?;
            Ok(start.elapsed())
        })?;
        thread::sleep(DRAIN);
        let after = self.sink_counts()?;
        in_netns(&bed.dir_fd, || match link {
            None => dp.detach_all(),
            Some(link) => Ok(self.reference(forwarder)?.detach(link)?),
        })?;
        let mut received = [0u64; 256];
        for (r, (a, b)) in received.iter_mut().zip(after.iter().zip(before.iter())) {
            *r = a - b;
        }
        Ok(Sample {
            sent: u64::from(frames),
            received,
            elapsed,
        })
    }

    /// The program of a forwarder other than lb (whose [`Datapath`]
    /// attaches itself).
    fn reference(&mut self, forwarder: Forwarder) -> anyhow::Result<&mut Xdp> {
        match forwarder {
            Forwarder::Trivial => xdp_mut(&mut self.ebpf, "bench_mac_swap"),
            Forwarder::Katran => self
                .katran
                .as_mut()
                .map(|katran| &mut katran.program)
                .ok_or_else(|| anyhow!("Katran's balancer is not loaded")),
            Forwarder::Lb => bail!("lb's data path attaches itself"),
        }
    }

    /// The sink's counters, summed over CPUs.
    fn sink_counts(&self) -> anyhow::Result<[u64; 256]> {
        let mut counts = [0u64; 256];
        for (index, count) in counts.iter_mut().enumerate() {
            *count = self.sink.get(&(index as u32), 0)?.iter().sum();
        }
        Ok(counts)
    }
}

/// The XDP program `name` of the benchmark object.
fn xdp<'a>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a Xdp> {
    ebpf.program(name)
        .ok_or_else(|| anyhow!("program {name} missing from the benchmark object"))?
        .try_into()
        .map_err(Into::into)
}

/// The XDP program `name` of the benchmark object, mutably.
fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the benchmark object"))?
        .try_into()
        .map_err(Into::into)
}

/// The key of flow `n` of the generator from `net` (source port `n` mod
/// 65536, last octet of the source address `n / 65536`).
fn generated_flow(net: [u8; 3], n: u64) -> FlowKey {
    let client = Ipv4Addr::new(net[0], net[1], net[2], (n >> 16) as u8);
    FlowKey::new(
        IpAddr::V4(client),
        n as u16,
        IpAddr::V4(VIP),
        VIP_PORT,
        PROTO_TCP,
        0,
    )
    .expect("two IPv4 addresses")
}

/// The flows of [`KEPT_NET`] that `dp`'s connection table holds
/// established, with their backend slots.
fn established_flows(dp: &Datapath) -> anyhow::Result<Vec<(FlowKey, u16)>> {
    let mut flows = Vec::new();
    for n in 0..KEPT_FLOWS {
        let key = generated_flow(KEPT_NET, n);
        if let Some((FlowTable::Confirmed, flow)) = dp.maps.flow_in(&key)?
            && u32::from(flow.state) == STATE_ESTABLISHED
        {
            flows.push((key, flow.backend_slot));
        }
    }
    Ok(flows)
}

/// What lb's counters and tables say after the SYN flood, given the flows
/// established `before` it.
fn flood_check(dp: &Datapath, before: &[(FlowKey, u16)]) -> anyhow::Result<FloodCheck> {
    let after: std::collections::HashMap<FlowKey, u16> =
        established_flows(dp)?.into_iter().collect();
    let established_kept = before
        .iter()
        .filter(|(key, slot)| after.get(key) == Some(slot))
        .count() as u64;
    let events = dp.maps.flow_events(false)?;
    let stateless_syns = events[EVENT_STATELESS_SYN as usize];
    let pending_opened = events[EVENT_PENDING_OPENED as usize];
    Ok(FloodCheck {
        syn_flood_rate: DEFAULT_SYN_FLOOD_RATE,
        entered_flood_mode: dp.maps.flood_until()? != 0,
        stateless_syns,
        pending_opened,
        stateless_share: stateless_syns as f64 / (stateless_syns + pending_opened).max(1) as f64,
        established_before: before.len() as u64,
        established_kept,
    })
}

/// The Ethernet header of a client's frame: to d0, from g0, IPv4 (what
/// [`frame`] starts with, and what the generator restores).
fn client_ethernet() -> [u8; 14] {
    let mut header = [0u8; 14];
    header[..6].copy_from_slice(&DIR_MAC);
    header[6..12].copy_from_slice(&GEN_MAC);
    header[12..].copy_from_slice(&0x0800u16.to_be_bytes());
    header
}

/// Writes `value` at index 0 of the generator's setting map `name` (a
/// one-entry array of `bench-ebpf`).
fn write_setting<V: aya::Pod>(ebpf: &mut Ebpf, name: &str, value: V) -> anyhow::Result<()> {
    let mut map = Array::<_, V>::try_from(
        ebpf.map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?,
    )?;
    map.set(0, value, 0)
        .with_context(|| format!("writing {name}"))
}

/// A TCP segment from a client of `net` to the VIP, addressed to d0 (the
/// generator fills in the source port and the last octet of the source
/// address).
fn frame(net: [u8; 3], tcp_flags: u8) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..14].copy_from_slice(&client_ethernet());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = PROTO_TCP;
    ip[12..15].copy_from_slice(&net);
    ip[16..20].copy_from_slice(&VIP.octets());
    let tcp = &mut f[34..54];
    tcp[2..4].copy_from_slice(&VIP_PORT.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    if tcp_flags & TCP_ACK != 0 {
        tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    }
    tcp[12] = 5 << 4;
    tcp[13] = tcp_flags;
    tcp[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    f
}

/// Millions of frames per second the sink counted in `s`.
fn mpps(packets: u64, elapsed: Duration) -> f64 {
    packets as f64 / elapsed.as_secs_f64() / 1e6
}

/// The median of `values` (not empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The forwarded rate (Mpps) of each sample, in order.
fn round_rates(samples: &[Sample]) -> Vec<f64> {
    samples.iter().map(|s| mpps(s.total(), s.elapsed)).collect()
}

/// The median over the rounds of a program's rate over the trivial
/// program's in the same round.
fn median_ratio(rates: &[f64], trivial_rates: &[f64]) -> f64 {
    median(
        rates
            .iter()
            .zip(trivial_rates)
            .map(|(rate, trivial)| rate / trivial)
            .collect(),
    )
}

/// Summarises the samples of one case into its row.
fn row(case: &Case, placement: Placement, lb: &[Sample], trivial: &[Sample]) -> LiveRow {
    let generated =
        |samples: &[Sample]| median(samples.iter().map(|s| mpps(s.sent, s.elapsed)).collect());
    let (lb_round_mpps, trivial_round_mpps) = (round_rates(lb), round_rates(trivial));
    let lb_received: u64 = lb.iter().map(Sample::total).sum();
    let total_weight: u32 = BACKENDS.iter().map(|b| b.2).sum();
    let split: Vec<BackendShare> = BACKENDS
        .iter()
        .map(|(addr, mac, weight)| {
            let packets: u64 = lb.iter().map(|s| s.received[usize::from(mac[5])]).sum();
            BackendShare {
                backend: addr.to_string(),
                weight: *weight,
                packets,
                share: packets as f64 / lb_received.max(1) as f64,
                expected_share: f64::from(*weight) / f64::from(total_weight),
            }
        })
        .collect();
    let to_backends: u64 = split.iter().map(|b| b.packets).sum();
    let (split_check, split_ok) = if case.flows == 1 {
        (
            "one backend",
            to_backends == lb_received && split.iter().any(|b| b.packets == lb_received),
        )
    } else {
        (
            "weights",
            to_backends == lb_received
                && split.iter().all(|b| {
                    (b.share - b.expected_share).abs() <= SPLIT_TOLERANCE * b.expected_share
                }),
        )
    };
    let ratio = median_ratio(&lb_round_mpps, &trivial_round_mpps);
    LiveRow {
        case: case.name.to_owned(),
        lb_mpps: median(lb_round_mpps.clone()),
        trivial_mpps: median(trivial_round_mpps.clone()),
        ratio,
        lb_round_mpps,
        trivial_round_mpps,
        lb_generated_mpps: generated(lb),
        trivial_generated_mpps: generated(trivial),
        lb_sent: lb.iter().map(|s| s.sent).sum(),
        lb_received,
        trivial_sent: trivial.iter().map(|s| s.sent).sum(),
        trivial_received: trivial.iter().map(Sample::total).sum(),
        split,
        split_check,
        split_ok,
        cpus: placement.name(),
        target: case.target,
        target_met: case.target.map(|target| ratio >= target),
        flood: None,
        katran: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of `case` on `cpus` with lb at `ratio` of the trivial program.
    fn row_at(case: &str, cpus: &'static str, ratio: f64, target: Option<f64>) -> LiveRow {
        LiveRow {
            case: case.to_owned(),
            lb_mpps: ratio,
            trivial_mpps: 1.0,
            ratio,
            lb_round_mpps: vec![ratio],
            trivial_round_mpps: vec![1.0],
            lb_generated_mpps: ratio,
            trivial_generated_mpps: 1.0,
            lb_sent: 1,
            lb_received: 1,
            trivial_sent: 1,
            trivial_received: 1,
            split: Vec::new(),
            split_check: "weights",
            split_ok: true,
            cpus,
            target,
            target_met: target.map(|target| ratio >= target),
            flood: None,
            katran: None,
        }
    }

    #[test]
    fn spread_gives_each_rows_range_and_how_often_it_met_its_target() {
        // Katran measured in every run for the second row, in one run only
        // for the first.
        let run = |one_flow, established, katran: Option<f64>| {
            let with_katran = |mut row: LiveRow, ratio: Option<f64>| {
                row.katran = ratio.map(|ratio| KatranLive {
                    mpps: ratio,
                    ratio,
                    round_mpps: vec![ratio],
                });
                row
            };
            vec![
                with_katran(row_at("1 flow", "1 CPU", one_flow, None), katran),
                with_katran(
                    row_at(
                        "10k established flows",
                        "2 CPUs",
                        established,
                        Some(ESTABLISHED_TARGET),
                    ),
                    Some(katran.unwrap_or(0.5)),
                ),
            ]
        };
        let text = spread(&[
            run(0.93, 0.91, Some(0.6)),
            run(0.95, 0.80, None),
            run(0.94, 0.89, None),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "live ratios over 3 runs");
        assert!(
            lines[2].starts_with("1 flow")
                && lines[2].ends_with("0.930  0.940   0.950  0.930 0.950 0.940"),
            "{text}"
        );
        assert!(
            lines[3]
                .contains("0.800  0.890   0.910  0.910 0.800 0.890  [>= 0.9x met in 1 of 3 runs]"),
            "{text}"
        );
        assert!(
            lines[4].ends_with("0.500  0.500   0.600  0.600 0.500 0.500  (Katran)"),
            "{text}"
        );
        assert_eq!(lines.len(), 5, "{text}");
    }
}
