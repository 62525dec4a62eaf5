//! `lb-bench`: measures lb's XDP data path against reference programs.
//! Run through `cargo xtask bench` (root).
//!
//! Prints aligned tables on stdout and writes `results.json` (every figure,
//! every round, the machine and the parameters) and `results.svg` into
//! `--out`. The micro-benchmarks ([`micro`]) time the programs with
//! `BPF_PROG_TEST_RUN` on one pinned CPU (known flows from the flow cache
//! and from the connection table, new flows in a large and in a 1,024-flow
//! table, and in flood mode); the live benchmark ([`live`]) forwards real
//! frames between network namespaces. With `--katran PATH`, [`katran`]
//! measures Katran's balancer beside lb, the same frames the same way, per
//! call and on the live bed.

mod control;
mod katran;
mod live;
mod micro;
mod report;

use std::{fs, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use clap::Parser;

/// The reference programs (`bench-ebpf`), embedded by build.rs.
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));

/// Command line of `lb-bench`.
#[derive(Parser)]
#[command(
    about = "Benchmarks lb's XDP data path against a MAC-swap XDP_TX program and an empty one",
    args_override_self = true
)]
struct Cli {
    /// Smoke run: 3 rounds, 200k packets and 100k calls per figure. Its
    /// figures are NOT the published ones.
    #[arg(long)]
    quick: bool,
    /// Skip the live-traffic benchmark (network namespaces).
    #[arg(long)]
    skip_live: bool,
    /// Skip the control plane's sweep benchmark (about 2 minutes: 30 s of
    /// sweeps at each of 1 k, 100 k and 1 M flows).
    #[arg(long)]
    skip_control: bool,
    /// Interleaved rounds; each figure is the median over them (at least 5 for
    /// a full run).
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Packets per figure for the cases timed with `repeat` (at least 1,000,000
    /// for a full run).
    #[arg(long, value_name = "N")]
    packets: Option<u32>,
    /// Calls (one packet each) per figure for the per-call cases (at least
    /// 1,000,000 for a full run; above 1,024 for the 1,024-flow-table cases
    /// to evict).
    #[arg(long, value_name = "N")]
    calls: Option<u32>,
    /// CPU to run on (default: the last online CPU).
    #[arg(long, value_name = "CPU")]
    cpu: Option<usize>,
    /// Katran's XDP balancer object (`balancer.bpf.o`, built from Katran's
    /// source as docs/performance.md shows), to measure lb against it (per
    /// call, and live; with --live-only, live only).
    #[arg(long, value_name = "PATH")]
    katran: Option<PathBuf>,
    /// Directory for results.json and results.svg.
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    out: PathBuf,
    /// Run only the live-traffic benchmark and print its table and target
    /// lines (no results.json): for repeating the live cases, whose ratios
    /// move more from run to run than the others.
    #[arg(long)]
    live_only: bool,
    /// With --live-only: only the live case of this name, as the table
    /// names it ("1 flow", "10k established flows", "new flow every
    /// packet").
    #[arg(long, value_name = "NAME", requires = "live_only")]
    live_case: Option<String>,
    /// With --live-only: run the live benchmark N times, each in a bed of
    /// its own, then print each row's ratio over the runs (lowest, median,
    /// highest) and in how many runs it met its target.
    #[arg(
        long,
        value_name = "N",
        requires = "live_only",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    live_runs: u32,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lb-bench loads XDP programs: run it as root (`sudo -E cargo xtask bench`)");
    }
    if let Some(object) = &cli.katran
        && !object.is_file()
    {
        bail!(
            "--katran {}: no such file; give the balancer.bpf.o built from Katran's source \
             as docs/performance.md (\"Against Katran\") shows",
            object.display()
        );
    }
    let online = online_cpus();
    let (rounds, packets, calls) = if cli.quick {
        (3, 200_000, 100_000)
    } else {
        (7, 2_000_000, 1_000_000)
    };
    let params = micro::Params {
        rounds: cli.rounds.unwrap_or(rounds),
        packets: cli.packets.unwrap_or(packets),
        calls: cli.calls.unwrap_or(calls),
        trim: 0.01,
        cpu: cli.cpu.unwrap_or(online - 1),
    };
    if !cli.quick && (params.rounds < 5 || params.packets < 1_000_000 || params.calls < 1_000_000) {
        eprintln!(
            "lb-bench: warning: fewer than 5 rounds or 1,000,000 packets per figure; \
             these figures are below the published method"
        );
    }
    if params.calls <= micro::SMALL_TABLE_FLOWS {
        eprintln!(
            "lb-bench: warning: {} calls per figure fit in the {}-flow table: its new-flow cases \
             will not evict",
            params.calls,
            micro::SMALL_TABLE_FLOWS
        );
    }
    pin_to_cpu(params.cpu)?;
    if cli.live_only {
        let mut runs = Vec::new();
        for run in 1..=cli.live_runs {
            if cli.live_runs > 1 {
                println!("live run {run} of {}", cli.live_runs);
            }
            let rows = live::run(
                cli.quick,
                online,
                cli.live_case.as_deref(),
                cli.katran.as_deref(),
            )
            .with_context(|| format!("live-traffic benchmark, run {run}"))?;
            print!("{}", live::section(&rows));
            runs.push(rows);
        }
        if runs.len() > 1 {
            print!("{}", live::spread(&runs));
        }
        return Ok(());
    }
    let results = micro::run(&params)?;
    // lb's sweep schedule over this window, per table size: 30 s even in a
    // quick run, since a shorter one holds the first sweep of a 1 M-flow
    // table and not the pause after it, and overstates the share.
    let window = Duration::from_secs(30);
    let control = if cli.skip_control {
        Vec::new()
    } else {
        control::run(params.rounds, window).context("the control plane's sweep")?
    };
    let katran = match &cli.katran {
        Some(object) => katran::Comparison::Measured {
            object: object.clone(),
            rows: katran::run(object, &params).context("the comparison with Katran")?,
        },
        None => katran::Comparison::NotMeasured(katran::HOW_TO),
    };
    let live = if cli.skip_live {
        None
    } else {
        Some(
            live::run(cli.quick, online, None, cli.katran.as_deref())
                .context("live-traffic benchmark")?,
        )
    };
    let meta = report::Meta {
        date: utc_now(),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpu_model: cpu_model(),
        online_cpus: online,
        source: git_describe(),
        quick: cli.quick,
        params,
    };
    let report = report::Report::new(meta, results, katran, control, live);
    print!("{}", report.table());
    print!("{}", control::table(&report.control));
    print!("{}", report.katran.table());
    if let Some(rows) = &report.live {
        print!("\n{}", live::section(rows));
    }
    report.write(&cli.out)
}

/// Pins this process (and so every `BPF_PROG_TEST_RUN`) to `cpu`.
fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

/// Number of online CPUs.
fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The CPU's `model name` from /proc/cpuinfo.
fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned())
}

/// `git describe --always --dirty` of the workspace, if git can tell.
fn git_describe() -> Option<String> {
    let out = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The current UTC time as RFC 3339 (seconds).
fn utc_now() -> String {
    // SAFETY: time(NULL) and gmtime_r with valid pointers have no other preconditions.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        libc::gmtime_r(&now, &mut tm);
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}
